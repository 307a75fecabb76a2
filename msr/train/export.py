"""What a finished stage leaves behind: the projector alone (stage 1) or the whole model (stage 2),
written by rank 0 from the full states every rank helps gather, and how to put it back together."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from msr.config import Params
from msr.models.mllm import MLLM
from msr.projectors import files as pfiles
from msr.runtime import Topology, barrier
from msr.train.engine import Engine


def save_stage(
    params: Params,
    stage: str,
    out: Path,
    model: MLLM,
    options: dict[str, Any],
    engine: Engine,
    topo: Topology,
) -> dict[str, dict[str, torch.Tensor]]:
    """Write the stage's artifacts from rank 0 and return the full states (every rank gets them)."""
    proj_state = engine.full_state(model.projector)
    llm_state = engine.full_state(model.llm) if stage == "finetune" else None
    if topo.main:
        if llm_state is None:
            assert model.config is not None
            projector = pfiles.build_from_config(model.config.projector)
            projector.load_state_dict(proj_state)
            pfiles.save_projector(out, projector, options)
        else:
            model.save_pretrained(
                out, dtype=params.llm.dtype, llm_state=llm_state, projector_state=proj_state
            )
    barrier(topo)
    return {"projector": proj_state, **({"llm": llm_state} if llm_state is not None else {})}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes and values of a state dict."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
