"""Process topology: single process, or ranks started by `torchrun` / `deepspeed`; DeepSpeed configs.

The params choose the launcher and the number of devices; `msr pretrain` re-executes itself under
that launcher when it is not already inside one, so `dvc repro` scales from a laptop to 8 GPUs with
the same command. DeepSpeed JSON files in `configs/deepspeed/` give the ZeRO stage and buckets; the
batch sizes and clipping come from the params. Mixed precision is torch.autocast (bf16) in both the
plain path (fp32 weights); with DeepSpeed and `bf16` the engine holds bf16 weights and fp32 master
weights in the optimizer, as LLaVA-1.5's scripts run it (the configs' `"bf16": {"enabled": "auto"}`
follows the stage's `bf16` param).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from msr.config import Train
from msr.data.skips import SkipLedger


@dataclass(frozen=True)
class Topology:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def inside_launcher() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def topology() -> Topology:
    """This process's rank and device; initialises the process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Topology(rank, local, world, device)


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


def barrier(topo: Topology) -> None:
    if topo.world_size > 1:
        dist.barrier()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(launcher: str, num_devices: int, argv: list[str]) -> list[str]:
    """The command that starts `argv` (an msr invocation) on `num_devices` local processes. The
    DeepSpeed launcher passes `--local_rank=N` first; `cli.main` accepts it."""
    cli = str(Path(__file__).resolve().parents[2] / "cli.py")
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={num_devices}",
            cli,
            *argv,
        ]
    if launcher == "deepspeed":
        exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        return [exe, f"--num_gpus={num_devices}", f"--master_port={free_port()}", cli, *argv]
    raise ValueError(
        f"launcher={launcher!r} starts no processes; accepted: 'torchrun', 'deepspeed'"
    )


def relaunch(launcher: str, num_devices: int, argv: list[str]) -> int:
    """Run `msr <argv>` under the launcher and wait; returns its exit code."""
    import subprocess

    return subprocess.call(launch_command(launcher, num_devices, argv))


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


def finish(topo: Topology) -> None:
    """Tear down the process group (workers can otherwise abort at interpreter exit)."""
    if topo.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
