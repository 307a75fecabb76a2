"""Where a command runs: its processes, ranks and device. Every stage asks here.

The params choose a launcher (`none`, `torchrun`, `deepspeed`) and a number of devices per stage;
`relaunch` starts the same `msr` command under that launcher when this process was not started by
one, so `dvc repro` scales from a laptop to 8 GPUs with the same command. Inside the launcher,
`topology` gives each process its rank and device and starts the process group once; `finish` ends
it (workers can otherwise abort at interpreter exit).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

LAUNCHERS = ("none", "torchrun", "deepspeed")


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


def ranks() -> tuple[int, int]:
    """(rank, world_size) from the launcher's environment, (0, 1) without one."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def device_for(device: str = "auto") -> torch.device:
    """`cpu`, `cuda` (this process's GPU: LOCAL_RANK), or `auto`: cuda when there is one."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r}; accepted: 'auto', 'cpu', 'cuda'")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", local)


def topology(device: str = "auto") -> Topology:
    """This process's rank and device; starts the process group when there are several (NCCL on
    GPUs, gloo on CPUs), once."""
    rank, world = ranks()
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = device_for(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Topology(rank, local, world, dev)


def barrier(topo: Topology) -> None:
    if topo.world_size > 1:
        dist.barrier()


def finish(topo: Topology) -> None:
    """Tear down the process group, after every rank is done."""
    if topo.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def msr_executable() -> str:
    """The installed `msr` console script of this interpreter's environment."""
    here = Path(sys.executable).parent / "msr"
    found = str(here) if here.is_file() else shutil.which("msr")
    if found is None:
        raise FileNotFoundError(
            "the `msr` command is not installed in this environment (`pip install -e .` installs "
            "it); a launcher starts it on every process"
        )
    return found


def launch_command(launcher: str, num_devices: int, argv: list[str]) -> list[str]:
    """The command that starts `msr <argv>` on `num_devices` local processes. The DeepSpeed
    launcher passes `--local_rank=N` first; `cli.main` accepts it."""
    exe = msr_executable()
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={num_devices}", "--no-python", exe, *argv]  # fmt: skip
    if launcher == "deepspeed":
        ds = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        return [ds, f"--num_gpus={num_devices}", f"--master_port={free_port()}", "--no_python",
                exe, *argv]  # fmt: skip
    raise ValueError(
        f"launcher={launcher!r} starts no processes; accepted: 'torchrun', 'deepspeed'"
    )


def relaunch(launcher: str, num_devices: int, argv: list[str]) -> int | None:
    """The exit code of `msr <argv>` run under `launcher`; None when this process does the work
    itself (no launcher asked for, or already inside one)."""
    if launcher == "none" or inside_launcher():
        return None
    return subprocess.call(launch_command(launcher, num_devices, argv))


def strip_local_rank(argv: list[str]) -> list[str]:
    """The DeepSpeed launcher starts `msr --local_rank=N <command> ...`; the rank is also in the
    LOCAL_RANK environment variable, so the argument is dropped (set in the env when missing)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--local_rank" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--local_rank="):
            value, i = arg.partition("=")[2], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        os.environ.setdefault("LOCAL_RANK", value)
    return out
