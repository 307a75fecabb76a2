"""Where a command runs: its processes, ranks and device. Every stage asks here.

The params choose a launcher (`none`, `torchrun`, `deepspeed`), a number of devices per stage and
of nodes (`nodes`); `relaunch` starts the same `msr` command under that launcher when this process
was not started by one, so `dvc repro` scales from a laptop to 8 GPUs, and to several nodes with one
such command per node (docs/gpus.md). Inside the launcher,
`topology` gives each process its rank and device and starts the process group once; `finish` ends
it (workers can otherwise abort at interpreter exit).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from msr.config import Nodes

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


NODE_RANK_VARS = ("SLURM_NODEID", "NODE_RANK", "GROUP_RANK")


def master_addr(nodes: Nodes, env: Mapping[str, str]) -> str:
    """The first node's address: `nodes.master_addr`, else $MASTER_ADDR."""
    addr = nodes.master_addr or env.get("MASTER_ADDR")
    if not addr:
        raise ValueError(
            f"nodes.count={nodes.count} needs the first node's address: set nodes.master_addr or "
            "$MASTER_ADDR (SLURM: scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)"
        )
    return addr


def node_rank(nodes: Nodes, env: Mapping[str, str]) -> int:
    """This node's rank: `nodes.rank`, else the first of $SLURM_NODEID, $NODE_RANK, $GROUP_RANK."""
    if nodes.rank is not None:
        rank = nodes.rank
    else:
        found = next((env[v] for v in NODE_RANK_VARS if env.get(v, "").isdigit()), None)
        if found is None:
            raise ValueError(
                f"nodes.count={nodes.count} with one deepspeed launcher per node needs this node's "
                f"rank: set nodes.rank or one of ${', $'.join(NODE_RANK_VARS)}"
            )
        rank = int(found)
    if rank >= nodes.count:
        raise ValueError(
            f"node rank {rank} is outside nodes.count={nodes.count} (0..{nodes.count - 1})"
        )
    return rank


def launch_command(
    launcher: str,
    num_devices: int,
    argv: list[str],
    nodes: Nodes | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The command that starts `msr <argv>` on `num_devices` processes of this node, and, with
    `nodes.count` > 1, joins it to the other nodes' (torchrun: c10d rendezvous at the master's
    address; deepspeed: the hostfile). The DeepSpeed launcher passes `--local_rank=N` first;
    `cli.main` accepts it."""
    nodes = nodes or Nodes()
    env = os.environ if env is None else env
    exe = msr_executable()
    many = nodes.count > 1
    if launcher == "torchrun":
        where = (
            [
                f"--nnodes={nodes.count}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={master_addr(nodes, env)}:{nodes.master_port}",
                f"--rdzv-id={nodes.job_id}",
            ]
            if many
            else ["--standalone"]
        )
        return [sys.executable, "-m", "torch.distributed.run", *where,
                f"--nproc_per_node={num_devices}", "--no-python", exe, *argv]  # fmt: skip
    if launcher == "deepspeed":
        ds = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        if not many:
            return [ds, f"--num_gpus={num_devices}", f"--master_port={free_port()}",
                    "--no_python", exe, *argv]  # fmt: skip
        if nodes.hostfile is None or not Path(nodes.hostfile).is_file():
            raise ValueError(
                f"launcher=deepspeed on nodes.count={nodes.count} needs nodes.hostfile, a file "
                f"with one `host slots=N` line per node; got {nodes.hostfile!r}"
            )
        where = [f"--hostfile={nodes.hostfile}", f"--num_nodes={nodes.count}",
                 f"--master_addr={master_addr(nodes, env)}", f"--master_port={nodes.master_port}"]  # fmt: skip
        if not nodes.ssh:
            where += ["--no_ssh", f"--node_rank={node_rank(nodes, env)}"]
        return [ds, *where, f"--num_gpus={num_devices}", "--no_python", exe, *argv]
    raise ValueError(
        f"launcher={launcher!r} starts no processes; accepted: 'torchrun', 'deepspeed'"
    )


def relaunch(
    launcher: str, num_devices: int, argv: list[str], nodes: Nodes | None = None
) -> int | None:
    """The exit code of `msr <argv>` run under `launcher`; None when this process does the work
    itself (no launcher asked for, or already inside one)."""
    if launcher == "none" or inside_launcher():
        if nodes is not None and nodes.count > 1 and not inside_launcher():
            raise ValueError(
                f"nodes.count={nodes.count} but this stage's launcher is 'none': set its launcher "
                "to torchrun or deepspeed"
            )
        return None
    return subprocess.call(launch_command(launcher, num_devices, argv, nodes))


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
