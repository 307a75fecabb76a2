"""A projector's own files: `projector.safetensors` (its weights) and `projector.json` (its name,
dimensions, budget, grid and every option, defaults filled in). Loading into another projector type
or shape is an error that lists every difference — never a partial load; a damaged file is an
error naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

from safetensors.torch import save as safetensors_bytes

from msr.projectors.base import Projector
from msr.projectors.registry import build_projector, projector_options, validate_options
from msr.utils.io import atomic_write, atomic_write_json
from msr.utils.reading import CheckpointError, read_json, read_tensors

PROJECTOR_WEIGHTS, PROJECTOR_CONFIG = "projector.safetensors", "projector.json"


def projector_config(projector: Projector, options: dict[str, Any]) -> dict[str, Any]:
    """What identifies a projector's parameters: name, dims, budget, grid and every option
    (defaults filled in, so spelling a default out changes nothing)."""
    defaults = {k: d for k, (_, d) in projector_options(projector.name).items()}
    options = {k: v for k, v in {**defaults, **options}.items() if k != "grid"}
    options = json.loads(json.dumps(options))  # the json form, as it is stored
    return {
        "name": projector.name,
        "vision_dim": projector.vision_dim,
        "llm_dim": projector.llm_dim,
        "num_queries": projector.num_queries,
        "grid": list(projector.grid) if projector.grid else None,
        "options": dict(sorted(options.items())),
        "params": sum(p.numel() for p in projector.parameters()),
    }


def save_projector(out: Path, projector: Projector, options: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in projector.state_dict().items()}
    data = safetensors_bytes(state)

    def write(f: BinaryIO) -> None:
        f.write(data)

    atomic_write(out / PROJECTOR_WEIGHTS, write)
    atomic_write_json(out / PROJECTOR_CONFIG, projector_config(projector, options))


def build_from_config(cfg: dict[str, Any]) -> Projector:
    """A freshly initialised projector of a `projector_config`."""
    options = validate_options(cfg["name"], cfg["options"])
    grid = tuple(cfg["grid"]) if cfg["grid"] else None
    options.pop("grid", None)
    return build_projector(
        cfg["name"],
        vision_dim=cfg["vision_dim"],
        llm_dim=cfg["llm_dim"],
        num_queries=cfg["num_queries"],
        grid=grid,
        **options,
    )


def load_projector(
    directory: Path,
    expected: dict[str, Any] | None = None,
    fix: str = "rerun the stage that wrote it",
) -> Projector:
    """Build the projector a checkpoint describes and load its weights (strict).

    `expected` is the config the caller needs (from `projector_config` of a freshly built projector):
    any difference is a CheckpointError listing each field, checkpoint vs expected. A damaged file
    is a CheckpointError naming it and `fix`.
    """
    cfg_path = directory / PROJECTOR_CONFIG
    if not cfg_path.exists():
        raise CheckpointError(
            f"no projector checkpoint in {directory} ({PROJECTOR_CONFIG} missing); {fix}"
        )
    cfg = read_json(cfg_path, fix)
    fields = ("name", "vision_dim", "llm_dim", "num_queries", "grid", "options")
    if not isinstance(cfg, dict) or any(k not in cfg for k in fields):
        raise CheckpointError(f"{cfg_path} is damaged (it needs the fields {list(fields)}); {fix}")
    if expected is not None:
        diffs = [
            f"{key}: checkpoint has {cfg.get(key)!r}, params ask for {expected.get(key)!r}"
            for key in ("name", "vision_dim", "llm_dim", "num_queries", "grid", "options", "params")
            if cfg.get(key) != expected.get(key)
        ]
        if diffs:
            raise CheckpointError(
                f"{directory} holds a different projector than the params describe: "
                + "; ".join(diffs)
            )
    try:
        projector = build_from_config(cfg)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{cfg_path} describes no projector msr can build: {err}") from None
    state = read_tensors(directory / PROJECTOR_WEIGHTS, fix)
    missing, unexpected = projector.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not fit a {cfg['name']} projector: missing {missing}, unexpected {unexpected}"
        )
    return projector
