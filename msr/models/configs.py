"""Model configs without weights: a local model directory, a config shipped with msr for the real
presets' hub ids (msr/presets/configs/), or the tiny preset's build params — so the geometry and
the analytic profile of any preset are known offline, before anything is loaded."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from msr.config import LLM, Params, Vision
from msr.models import tiny
from msr.models.vision import VisionBackbone, vision_class
from msr.utils.resources import resolve

SHIPPED = Path(__file__).resolve().parents[1] / "presets" / "configs"


def shipped_path(model: str) -> Path:
    return SHIPPED / f"{model.replace('/', '__')}.json"


def vision_config(v: Vision) -> PretrainedConfig:
    """The vision part of the backbone's config."""
    local = Path(v.model)
    if (local / "config.json").exists():
        config = AutoConfig.from_pretrained(local)
    elif shipped_path(v.model).exists():
        raw = json.loads(shipped_path(v.model).read_text())
        config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    elif v.build is not None:
        config = tiny.vision_config(v.build, v.image_size)
    else:
        raise ValueError(_missing("vision", v.model))
    return vision_class(config, v.model).vision_config(config)


def vision_family(v: Vision) -> type[VisionBackbone]:
    return vision_class(vision_config(v), v.model)


def vision_grid(v: Vision) -> tuple[int, int]:
    """The (H, W) patch grid the backbone produces at `v.image_size` — the projector's grid."""
    patch = int(vision_config(v).patch_size)
    if v.image_size % patch:
        raise ValueError(
            f"vision.image_size={v.image_size} is not a multiple of {v.model}'s patch size {patch}"
        )
    return v.image_size // patch, v.image_size // patch


def llm_config(m: LLM) -> PretrainedConfig:
    local = Path(resolve(m.model)) if m.model.startswith("pip:") else Path(m.model)
    if m.gguf_file is not None and local.is_dir():
        gguf = local / m.gguf_file
        stat = gguf.stat() if gguf.exists() else None
        key = (str(gguf), stat.st_mtime_ns, stat.st_size) if stat else None
        return copy.deepcopy(_gguf_config(local, m.gguf_file, key))
    if (local / "config.json").exists():
        return AutoConfig.from_pretrained(local)
    if shipped_path(m.model).exists():
        raw = json.loads(shipped_path(m.model).read_text())
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    if m.build is not None:
        return tiny.llm_config(m.build, m.build.vocab_size, m.max_length)
    raise ValueError(_missing("llm", m.model))


@functools.lru_cache(maxsize=4)
def _gguf_config(local: Path, gguf_file: str, key: tuple[str, int, int] | None) -> PretrainedConfig:
    """A GGUF's config, read once per process per file version (`key`): transformers parses every
    metadata field of the file, tokenizer included (~5 s for SmolLM2-135M), and the params of a
    preset are loaded by every command."""
    return AutoConfig.from_pretrained(local, gguf_file=gguf_file)


def _missing(section: str, model: str) -> str:
    return (
        f"no config for {section}.model={model!r}: not a local model directory, not shipped with msr "
        f"(known: {', '.join(p.stem.replace('__', '/') for p in sorted(SHIPPED.glob('*.json')))}); "
        f"pass a local path or add {shipped_path(model).name} to {SHIPPED}"
    )


def check_projector_fits(params: Params) -> None:
    """Build the params' projector on the meta device for the backbones' widths and grid, so a
    budget the grid cannot take (`num_queries=50` on 24×24) fails when the params are loaded, not
    after the run starts. Skipped while a backbone's config is not available offline (a model
    the `models` stage has not converted yet); the run checks it again when it builds."""
    import torch

    from msr.projectors import create_projector, output_tokens

    try:
        vision, llm = vision_config(params.vision), llm_config(params.llm)
        grid = vision_grid(params.vision)
    except (ValueError, OSError, ImportError):  # not available offline yet: checked when built
        return
    p = params.projector
    m = output_tokens(p.name, p.num_queries, grid[0] * grid[1])
    if m >= params.llm.max_length:
        raise ValueError(
            f"{p.name} gives {m} visual tokens per image, but llm.max_length={params.llm.max_length} "
            f"leaves no room for the text: every image sample would be cut; raise llm.max_length "
            f"(to {m} + the longest conversation) or lower projector.num_queries"
        )
    with torch.device("meta"):
        create_projector(p, int(vision.hidden_size), int(llm.hidden_size), grid)
