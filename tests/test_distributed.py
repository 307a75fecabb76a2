"""Two CPU processes under torchrun with gloo: DeepSpeed ZeRO-2 (stage 1) and ZeRO-3 (stage 2).

Ranks must train on disjoint samples, end with identical parameters, and the saved model must load
and equal them. The first DeepSpeed use on a machine compiles its CPU comm op (~40 s, then cached).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from msr.config import Params, parse_params
from msr.train import checkpoint as ckpt
from msr.train.loop import state_digest, train
from stages import features, models, synth
from tests.conftest import tiny_params

ROOT = Path(__file__).resolve().parents[1]
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


def launch(params: Params, stage: str, trace: Path) -> None:
    params_file = trace.parent / f"{stage}.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        stage,
        "--params",
        str(params_file),
        "--trace-samples",
        str(trace),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


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
    saved = ckpt.load_projector(Path(workspace.paths.pretrain))
    assert state_digest(saved.state_dict()) == digests["projector"]  # the saved model matches


def test_zero3_stage2_two_processes(workspace: Params, tmp_path: Path) -> None:
    raw = workspace.model_dump(mode="json")
    raw["pretrain"].update(launcher="none", num_devices=1, deepspeed=None, max_steps=1)
    train(parse_params(raw), "pretrain")  # a stage-1 projector to start from, single process
    trace = tmp_path / "trace"
    launch(workspace, "finetune", trace)
    digests = check_ranks(trace)
    out = Path(workspace.paths.finetune)
    assert state_digest(ckpt.load_projector(out).state_dict()) == digests["projector"]
    llm = AutoModelForCausalLM.from_pretrained(out / "llm")
    assert state_digest(llm.state_dict()) == digests["llm"]
