"""What training does across ranks: collectives on counts and skip ledgers, ZeRO-3 loading, the
DeepSpeed config (processes, ranks and devices are `msr.runtime`'s). DeepSpeed JSON files in `configs/deepspeed/` give the ZeRO stage and buckets; the
batch sizes and clipping come from the params. Mixed precision is torch.autocast (bf16) in both the
plain path (fp32 weights); with DeepSpeed and `bf16` the engine holds bf16 weights and fp32 master
weights in the optimizer, as LLaVA-1.5's scripts run it (the configs' `"bf16": {"enabled": "auto"}`
follows the stage's `bf16` param).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from msr.config import Train
from msr.data.skips import SkipLedger
from msr.runtime import Topology


def all_min(value: int, topo: Topology) -> int:
    return _all_reduce(value, topo, dist.ReduceOp.MIN)


def all_sum(value: int, topo: Topology) -> int:
    return _all_reduce(value, topo, dist.ReduceOp.SUM)


def _all_reduce(value: int, topo: Topology, op: Any) -> int:
    """One int reduced over every rank (collective when there are several)."""
    if topo.world_size == 1:
        return value
    t = torch.tensor(
        [value], dtype=torch.long, device=topo.device if topo.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(t, op=op)
    return int(t.item())


def gather_skips(ledger: SkipLedger, topo: Topology) -> SkipLedger:
    """Every rank's skip ledger merged (collective: all ranks call it)."""
    if topo.world_size == 1:
        return SkipLedger.from_state(ledger.state())
    parts: list[Any] = [None] * topo.world_size
    dist.all_gather_object(parts, ledger.state())
    merged = SkipLedger()
    for part in parts:
        merged.merge(SkipLedger.from_state(part))
    return merged


@contextmanager
def zero3_loading(cfg: Train, topo: Topology) -> Iterator[None]:
    """Inside: transformers builds models under `deepspeed.zero.Init` when the stage's DeepSpeed
    config is ZeRO-3, so each rank holds 1/world_size of the weights (only rank 0 reads the
    checkpoint's values, the others see shapes)."""
    conf = deepspeed_config(cfg, topo)
    if conf.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else None)
    keep = HfDeepSpeedConfig(conf)  # transformers holds a weak reference: keep it alive inside
    try:
        yield
    finally:
        del keep
        unset_hf_deepspeed_config()


def deepspeed_config(cfg: Train, topo: Topology) -> dict[str, Any]:
    """The DeepSpeed config file of the params, with batch sizes and clipping filled in."""
    if cfg.deepspeed is None:
        raise ValueError("deepspeed config path is not set in the params")
    path = Path(cfg.deepspeed)
    if not path.exists():
        raise FileNotFoundError(
            f"DeepSpeed config {path} does not exist (configs/deepspeed/zero2.json, zero3.json ship with msr)"
        )
    conf = json.loads(path.read_text())
    conf["train_micro_batch_size_per_gpu"] = cfg.per_device_batch
    conf["gradient_accumulation_steps"] = cfg.grad_accum
    conf["train_batch_size"] = cfg.per_device_batch * cfg.grad_accum * topo.world_size
    conf["gradient_clipping"] = cfg.max_grad_norm or 0.0
    bf16 = conf.setdefault("bf16", {})
    if bf16.get("enabled", False) == "auto":
        bf16["enabled"] = cfg.bf16
    conf.setdefault("zero_allow_untested_optimizer", True)  # torch's AdamW as the client optimizer
    return conf
