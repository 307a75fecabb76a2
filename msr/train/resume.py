"""Which checkpoint a run may continue from: the same stage params, model, data and world size."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from msr.config import Params, Train
from msr.projectors import Projector
from msr.projectors import files as pfiles
from msr.train import checkpoint as ckpt
from msr.train.data import TrainingError

log = logging.getLogger(__name__)
Resume = Literal["no", "auto", "yes"]


def identity(
    params: Params,
    stage: str,
    cfg: Train,
    world_size: int,
    projector: Projector,
    options: dict[str, Any],
) -> str:
    """What a resumable checkpoint must match: stage params, model, data, world size."""
    blob = {
        "stage": stage,
        "train": cfg.model_dump(mode="json"),
        "llm": params.llm.model_dump(mode="json"),
        "vision": params.vision.model_dump(mode="json"),
        "projector": pfiles.projector_config(projector, options),
        "features": params.paths.features,
        "world": world_size,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def should_resume(ckdir: Path, identity: str, resume: Resume, main: bool) -> bool:
    """True when `ckdir` holds a checkpoint of this identity and `resume` allows continuing it."""
    state = ckdir / "last" / "state.json"
    if not state.exists():
        if resume == "yes":
            raise TrainingError(f"--resume yes: no checkpoint in {ckdir}")
        return False
    if resume == "no":
        if main:
            log.warning("not resuming from %s (--resume no); starting over", ckdir)
        return False
    saved = ckpt.read_json(state, ckpt.RESUME_FIX)
    saved = saved.get("identity") if isinstance(saved, dict) else None
    if saved == identity and resume in ("auto", "yes"):
        return True
    if resume == "yes":
        raise TrainingError(
            f"--resume yes: the checkpoint in {ckdir} was made with other params or world size"
        )
    if main:
        log.warning("not resuming from %s (other params); starting over", ckdir)
    return False
