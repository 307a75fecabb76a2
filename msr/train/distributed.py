"""Process topology: single process, or ranks started by `torchrun` / `deepspeed`; DeepSpeed configs.

The params choose the launcher and the number of devices; `msr pretrain` re-executes itself under
that launcher when it is not already inside one, so `dvc repro` scales from a laptop to 8 GPUs with
the same command. DeepSpeed JSON files in `configs/deepspeed/` give the ZeRO stage and buckets; the
batch sizes and clipping come from the params. Mixed precision is torch.autocast (bf16) in both the
plain and the DeepSpeed path, with fp32 master weights, so the two paths compute the same thing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from msr.config import Train


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
    if topo.world_size == 1:
        return value
    t = torch.tensor(
        [value], dtype=torch.long, device=topo.device if topo.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def barrier(topo: Topology) -> None:
    if topo.world_size > 1:
        dist.barrier()


def launch_command(cfg: Train, argv: list[str]) -> list[str]:
    """The command that starts `argv` (this msr invocation) on cfg.num_devices processes."""
    cli = str(Path(__file__).resolve().parents[2] / "cli.py")
    if cfg.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={cfg.num_devices}",
            cli,
            *argv,
        ]
    if cfg.launcher == "deepspeed":
        exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        return [exe, f"--num_gpus={cfg.num_devices}", cli, *argv]
    raise ValueError(
        f"launcher={cfg.launcher!r} starts no processes; accepted: 'torchrun', 'deepspeed'"
    )


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
    conf.setdefault("zero_allow_untested_optimizer", True)  # torch's AdamW as the client optimizer
    return conf


def finish(topo: Topology) -> None:
    """Tear down the process group (workers can otherwise abort at interpreter exit)."""
    if topo.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
