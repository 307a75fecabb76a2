"""Two CPU processes with gloo, started the way a user starts them (the msr command re-executes
itself under the params' launcher): DeepSpeed ZeRO-2 (stage 1) and ZeRO-3 (stage 2, the LLM built
under zero.Init), bf16, under `torchrun` and under the `deepspeed` launcher (which passes
`--local_rank=N` first); `msr train`; `msr features` and `msr eval` split over two processes.

Ranks must train on disjoint samples, end with identical parameters, and the saved model must load
and equal them; two-process features and answers must equal one-process ones. The first DeepSpeed
use on a machine compiles its CPU comm op (~40 s, then cached).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from msr.config import Params, parse_params
from msr.projectors import files as pfiles
from msr.train.loop import state_digest, train
from stages import features, models, synth
from tests.conftest import tiny_params

# several processes each: `make test-slow` (CI runs it)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DIST = {
    "per_device_batch": 4,
    "num_devices": 2,
    "launcher": "torchrun",
    "max_steps": 3,
    "log_every": 1,
    "loader_workers": 0,
    "shuffle_buffer": 20,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Params:
    root = tmp_path_factory.mktemp("dist")
    params = tiny_params(root)
    raw = params.model_dump(mode="json")
    raw["data"]["synth"].update(pretrain_images=40, instruct_images=40)  # 4 shards per split
    raw["llm"]["dtype"] = "fp32"
    raw["pretrain"].update(DIST, deepspeed=str(ROOT / "configs/deepspeed/zero2.json"))
    raw["finetune"].update(DIST, deepspeed=str(ROOT / "configs/deepspeed/zero3.json"))
    params = parse_params(raw)
    synth.run(params)
    models.run(params)
    features.run(params, workers=0)
    return params


def msr(params: Params, command: str, *args: str, where: Path) -> None:
    """`msr <command> --params <file> ...` as a user runs it, from a fresh process."""
    where.mkdir(parents=True, exist_ok=True)
    params_file = where / f"{command}.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, str(ROOT / "cli.py"), command, "--params", str(params_file), *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_two_nodes_stage1(workspace: Params, tmp_path: Path) -> None:
    """Two torchrun agents on this machine as two nodes (nodes.count=2, one process each, c10d
    rendezvous), started side by side as SLURM's srun starts one per node: ranks see disjoint
    samples, end with identical parameters, and the saved projector equals them."""
    from msr.runtime import free_port

    raw = workspace.model_dump(mode="json")
    raw["paths"]["pretrain"] = str(tmp_path / "pretrain")
    raw["pretrain"]["num_devices"] = 1
    port = free_port()
    raw["nodes"] = {
        "count": 2,
        "master_addr": "127.0.0.1",
        "master_port": port,
        "job_id": f"t{port}",
    }
    params = parse_params(raw)
    params_file = tmp_path / "pretrain.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    trace = tmp_path / "trace"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, str(ROOT / "cli.py"), "pretrain", "--params", str(params_file),
           "--trace-samples", str(trace)]  # fmt: skip
    nodes = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(o[-3000:] for o in outs)
    digests = check_ranks(trace)
    saved = pfiles.load_projector(Path(params.paths.pretrain))
    assert state_digest(saved.state_dict()) == digests["projector"]


def launch(params: Params, stage: str, trace: Path) -> None:
    msr(params, stage, "--trace-samples", str(trace), where=trace.parent)


def with_launcher(params: Params, launcher: str) -> Params:
    raw = params.model_dump(mode="json")
    raw["pretrain"]["launcher"] = raw["finetune"]["launcher"] = launcher
    return parse_params(raw)


def check_ranks(trace: Path) -> dict[str, str]:
    keys = [set((trace / f"samples-rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]  # disjoint samples
    digests = [json.loads((trace / f"params-rank{r}.json").read_text()) for r in (0, 1)]
    assert digests[0] == digests[1]  # identical parameters on both ranks
    return digests[0]


def test_zero2_stage1_two_processes(workspace: Params, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    launch(workspace, "pretrain", trace)
    digests = check_ranks(trace)
    saved = pfiles.load_projector(Path(workspace.paths.pretrain))
    assert state_digest(saved.state_dict()) == digests["projector"]  # the saved model matches


def test_plain_torch_stage1_two_processes_under_ddp(workspace: Params, tmp_path: Path) -> None:
    """Without a DeepSpeed config, ranks under torchrun share gradients through DDP."""
    raw = workspace.model_dump(mode="json")
    raw["paths"]["pretrain"] = str(tmp_path / "pretrain")
    raw["pretrain"]["deepspeed"] = None
    params = parse_params(raw)
    trace = tmp_path / "trace"
    launch(params, "pretrain", trace)
    digests = check_ranks(trace)
    saved = pfiles.load_projector(Path(params.paths.pretrain))
    assert state_digest(saved.state_dict()) == digests["projector"]


def test_zero3_stage2_two_processes(workspace: Params, tmp_path: Path) -> None:
    raw = workspace.model_dump(mode="json")
    raw["pretrain"].update(launcher="none", num_devices=1, deepspeed=None, max_steps=1)
    train(parse_params(raw), "pretrain")  # a stage-1 projector to start from, single process
    trace = tmp_path / "trace"
    launch(workspace, "finetune", trace)
    check_saved_model(workspace, check_ranks(trace))


def check_saved_model(params: Params, digests: dict[str, str]) -> None:
    out = Path(params.paths.finetune)
    assert state_digest(pfiles.load_projector(out).state_dict()) == digests["projector"]
    llm = AutoModelForCausalLM.from_pretrained(out / "llm", dtype=torch.float32)
    assert state_digest(llm.state_dict()) == digests["llm"]


def test_msr_train_under_the_deepspeed_launcher(workspace: Params, tmp_path: Path) -> None:
    """`msr train` runs both stages, each on 2 ranks started by `deepspeed` (ZeRO-2 then ZeRO-3)."""
    params = with_launcher(workspace, "deepspeed")
    trace = tmp_path / "trace"
    msr(params, "train", "--trace-samples", str(trace), where=tmp_path)
    stage1 = check_ranks(trace / "pretrain")
    saved = pfiles.load_projector(Path(params.paths.pretrain))
    assert state_digest(saved.state_dict()) == stage1["projector"]
    check_saved_model(params, check_ranks(trace / "finetune"))
    # the DVC out holds no timings or paths: the skip report only, the same on every rerun
    report = json.loads((Path(params.paths.finetune) / "skips.json").read_text())
    assert set(report) == {"trained", "skipped_bad", "unused", "bad_share", "by_reason", "keys"}
    assert report["trained"] == 3 * 4 * 2  # 3 steps × 4 per rank × 2 ranks


def digest_files(root: Path, pattern: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob(pattern))}


def test_features_on_two_processes_equal_one(workspace: Params, tmp_path: Path) -> None:
    raw = workspace.model_dump(mode="json")
    raw["paths"]["features"] = str(tmp_path / "features")
    raw["data"].update(launcher="torchrun", num_devices=2)
    msr(parse_params(raw), "features", "--device", "cpu", where=tmp_path)
    one, two = Path(workspace.paths.features), tmp_path / "features"
    assert digest_files(two, "*.tar") == digest_files(one, "*.tar") != {}
    assert pq.read_table(two / "manifest.parquet").equals(pq.read_table(one / "manifest.parquet"))
    assert (two / "skips.json").read_text() == (one / "skips.json").read_text()


def test_eval_on_two_processes_equals_one(workspace: Params, tmp_path: Path) -> None:
    from stages import eval as evaluate

    raw = workspace.model_dump(mode="json")
    raw["paths"]["finetune"] = str(tmp_path / "finetune")
    raw["pretrain"].update(launcher="none", deepspeed=None, max_steps=1)
    raw["finetune"].update(launcher="none", deepspeed=None, max_steps=1)
    raw["eval"].update(batch_size=3, max_new_tokens=8, dtype="fp32")
    model = parse_params(raw)
    train(model, "pretrain")
    train(model, "finetune")
    one = {**raw, "paths": {**raw["paths"], "eval": str(tmp_path / "one")}}
    two = {**raw, "paths": {**raw["paths"], "eval": str(tmp_path / "two")}}
    one["paths"]["reports"], two["paths"]["reports"] = str(tmp_path / "r1"), str(tmp_path / "r2")
    one["paths"]["data"], two["paths"]["data"] = (
        str(tmp_path / "d1"),
        str(tmp_path / "d2"),
    )  # caches
    two["eval"] = {**raw["eval"], "launcher": "torchrun", "num_devices": 2}
    evaluate.run(parse_params(one))
    msr(parse_params(two), "eval", where=tmp_path)
    names = [*model.eval.synth]
    assert names
    for name in names:
        a = (tmp_path / "one" / name / "answers.jsonl").read_text()
        b = (tmp_path / "two" / name / "answers.jsonl").read_text()
        assert a == b and a.count("\n") > 3  # same answers, same order
    r1 = json.loads((tmp_path / "r1" / "eval.json").read_text())
    r2 = json.loads((tmp_path / "r2" / "eval.json").read_text())
    assert r1["benchmarks"] == r2["benchmarks"] and r1["categories"] == r2["categories"]
