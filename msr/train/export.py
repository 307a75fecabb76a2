"""What a finished stage leaves behind: the projector alone (stage 1) or the whole model (stage 2),
written by rank 0 from the full states every rank helps gather, and how to put it back together."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from msr.config import Params
from msr.models.mllm import MLLM, MLLMConfig
from msr.projectors import Projector
from msr.train import checkpoint as ckpt
from msr.train.distributed import Topology, barrier
from msr.train.engine import Engine


def mllm_config(params: Params, projector: Projector, options: dict[str, Any]) -> MLLMConfig:
    """How the trained model is put back together: vision backbone, base LLM, template, projector."""
    v, m = params.vision, params.llm
    return MLLMConfig(
        vision={
            "model": v.model,
            "revision": v.revision,
            "feature_layer": v.feature_layer,
            "select": v.select,
            "image_size": v.image_size,
            "aspect": v.aspect,
            "dtype": v.dtype,
            "final_norm": v.final_norm,
        },
        llm={"model": m.model, "revision": m.revision, "gguf_file": m.gguf_file},
        template=params.finetune.template or m.template,
        system=m.system,
        max_length=m.max_length,
        projector=ckpt.projector_config(projector, options),
    )


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
            projector = ckpt.build_from_config(model.config.projector)
            projector.load_state_dict(proj_state)
            ckpt.save_projector(out, projector, options)
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
