"""The launch commands msr generates: one node (torchrun --standalone, deepspeed), several nodes
(torchrun c10d rendezvous; deepspeed with a hostfile, from one node over ssh or one launcher per
node as SLURM's srun starts them), and the errors that name what a multi-node run lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from msr.config import Nodes
from msr.runtime import launch_command, relaunch

ARGV = ["pretrain", "--params", "params.yaml"]


def options(cmd: list[str]) -> list[str]:
    stop = cmd.index("--no-python") if "--no-python" in cmd else cmd.index("--no_python")
    start = 3 if cmd[1:3] == ["-m", "torch.distributed.run"] else 1
    return cmd[start:stop]


def test_one_node_commands() -> None:
    torchrun = launch_command("torchrun", 2, ARGV)
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    assert options(torchrun) == ["--standalone", "--nproc_per_node=2"]
    assert torchrun[-4:] == [torchrun[-4], *ARGV] and torchrun[-4].endswith("msr")
    ds = launch_command("deepspeed", 2, ARGV)
    assert Path(ds[0]).name == "deepspeed" and ds[1] == "--num_gpus=2"
    assert ds[2].startswith("--master_port=") and ds[-3:] == ARGV


def test_torchrun_on_several_nodes_meets_at_the_master() -> None:
    cmd = launch_command("torchrun", 8, ARGV, Nodes(count=4, master_addr="gpu-a01", job_id="run7"))
    assert options(cmd) == [
        "--nnodes=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu-a01:29500",
        "--rdzv-id=run7",
        "--nproc_per_node=8",
    ]
    from_env = launch_command("torchrun", 8, ARGV, Nodes(count=2), env={"MASTER_ADDR": "10.0.0.5"})
    assert "--rdzv-endpoint=10.0.0.5:29500" in from_env
    with pytest.raises(
        ValueError, match=r"nodes.count=2 needs the first node's address.*MASTER_ADDR"
    ):
        launch_command("torchrun", 8, ARGV, Nodes(count=2), env={})


@pytest.fixture
def hostfile(tmp_path: Path) -> str:
    path = tmp_path / "hostfile"
    path.write_text("gpu-a01 slots=8\ngpu-a02 slots=8\n")
    return str(path)


def test_deepspeed_on_several_nodes_one_launcher_per_node(hostfile: str) -> None:
    """SLURM: `srun` starts msr on every node; each deepspeed launcher knows its node's rank."""
    slurm = {"MASTER_ADDR": "gpu-a01", "SLURM_NODEID": "1"}
    cmd = launch_command("deepspeed", 8, ARGV, Nodes(count=2, hostfile=hostfile), env=slurm)
    assert options(cmd) == [
        f"--hostfile={hostfile}",
        "--num_nodes=2",
        "--master_addr=gpu-a01",
        "--master_port=29500",
        "--no_ssh",
        "--node_rank=1",
        "--num_gpus=8",
    ]
    given = launch_command("deepspeed", 8, ARGV, Nodes(count=2, hostfile=hostfile, rank=0,
                                                      master_addr="gpu-a01"), env={})  # fmt: skip
    assert "--node_rank=0" in given
    with pytest.raises(
        ValueError, match=r"needs this node's rank: set nodes.rank or one of \$SLURM_NODEID"
    ):
        launch_command(
            "deepspeed", 8, ARGV, Nodes(count=2, hostfile=hostfile), env={"MASTER_ADDR": "a"}
        )
    with pytest.raises(ValueError, match=r"node rank 2 is outside nodes.count=2"):
        launch_command(
            "deepspeed",
            8,
            ARGV,
            Nodes(count=2, hostfile=hostfile),
            env={"MASTER_ADDR": "a", "NODE_RANK": "2"},
        )


def test_deepspeed_over_ssh_starts_every_node_from_the_first(hostfile: str) -> None:
    cmd = launch_command("deepspeed", 8, ARGV, Nodes(count=2, hostfile=hostfile, ssh=True,
                                                    master_addr="gpu-a01"), env={})  # fmt: skip
    assert "--no_ssh" not in cmd and not any(c.startswith("--node_rank") for c in cmd)
    assert f"--hostfile={hostfile}" in cmd and "--num_nodes=2" in cmd


def test_deepspeed_on_several_nodes_needs_a_hostfile(tmp_path: Path) -> None:
    for hostfile in (None, str(tmp_path / "missing")):
        with pytest.raises(
            ValueError, match=r"needs nodes.hostfile, a file with one `host slots=N`"
        ):
            launch_command("deepspeed", 8, ARGV, Nodes(count=2, hostfile=hostfile, master_addr="a"))


def test_several_nodes_need_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match=r"nodes.count=2 but this stage's launcher is 'none'"):
        relaunch("none", 1, ARGV, Nodes(count=2))
    assert relaunch("none", 1, ARGV, Nodes()) is None


def test_the_slurm_script_in_the_docs_uses_these_options(repo_root: Path) -> None:
    """docs/gpus.md's sbatch script: one `msr` per node by srun, the master from scontrol, and DVC
    told afterwards (`dvc commit`) what the stage wrote."""
    text = (repo_root / "docs" / "gpus.md").read_text()
    script = text[text.index("#!/bin/bash\n#SBATCH") :]
    script = script[: script.index("```")]
    for needed in ("--ntasks-per-node=1", "scontrol show hostnames", "srun", "nodes.count",
                   "MASTER_ADDR", "msr pretrain", "dvc commit"):  # fmt: skip
        assert needed in script, needed
