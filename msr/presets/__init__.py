"""Named presets: complete params files shipped with the package (`tiny` is the default params.yaml)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import yaml

from msr.config import Params, ParamsError, apply_override
from msr.resolve import resolve_params

PRESET_DIR = Path(__file__).parent
# Every value that makes a stage compute in bf16, set to fp32: for CPUs without native bf16
# instructions, where bf16 runs tens of times slower than fp32 (msr.utils.precision).
FP32 = (
    "vision.dtype=fp32",
    "llm.dtype=fp32",
    "pretrain.bf16=false",
    "finetune.bf16=false",
    "eval.dtype=fp32",
    "profile.dtype=fp32",
    "bench.dtypes=[fp32]",
)


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset `name`; ValueError naming the known presets otherwise."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(list_presets())}")
    return path


def params_file(value: str | Path) -> Path:
    """What `--params` names: a params file, or the file of the preset of that name."""
    path = Path(value)
    if path.exists():
        return path
    if str(value) in list_presets():
        return preset_path(str(value))
    raise ParamsError(
        f"params file {path} does not exist; a preset's name works too: {', '.join(list_presets())}"
    )


def preset_text(name: str, overrides: Sequence[str] = ()) -> str:
    """The preset's complete params YAML, validated before it is returned: the file itself, with
    its comments, or with `key.path=value` overrides applied (then without the comments, and with
    a header that lists the overrides)."""
    text = preset_path(name).read_text()
    raw = yaml.safe_load(text)
    resolve_params(copy.deepcopy(raw), overrides, source=f"preset {name}")  # as load_params will
    for item in overrides:
        apply_override(raw, item)
    if not overrides:
        return text
    header = [f"# preset {name} (`msr preset show {name}` has it with its comments), with:"]
    header += [f"#   {item}" for item in overrides]
    return "\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def load_preset(name: str) -> Params:
    """The typed params of preset `name`."""
    return resolve_params(yaml.safe_load(preset_path(name).read_text()), source=f"preset {name}")


def describe_presets() -> list[tuple[str, str]]:
    """(name, the first sentence of the preset's header comment) of every preset."""
    rows = []
    for name in list_presets():
        text = preset_path(name).read_text()
        head = " ".join(x.lstrip("# ") for x in text.splitlines() if x[:1] == "#")
        rows.append((name, head.split(":", 1)[-1].split(". ")[0].strip().rstrip(".") + "."))
    return rows
