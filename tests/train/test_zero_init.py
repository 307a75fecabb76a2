"""ZeRO-3 loading: under zero.Init each rank holds 1/world_size of the LLM in host memory.

A Llama of ~100 M parameters (~200 MB in bf16) is saved once, then loaded the way a ZeRO-3 stage
loads it (`msr.train.distributed.zero3_loading` around `load_causal_lm`) and wrapped in a DeepSpeed
engine (bf16 weights, fp32 master weights), by 1 and by 2 processes under torchrun, and — for
comparison — by 2 processes with the ZeRO-2 config (weights not partitioned). Each rank reports
its peak RSS growth over loading + engine setup (ru_maxrss after minus RSS before).

Expected for ZeRO-3: growth ≈ (bf16 + fp32 master) / world_size + c, i.e. 600 MB/W + c here, for
the ranks that only receive their shard; rank 0 also reads the checkpoint's values (transformers
copies them in from rank 0), so it carries the file's pages on top. ZeRO-2 keeps the full bf16
weights on every rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

# several processes loading a 100 M-parameter Llama: `make test-slow` (CI runs it)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, os, resource, sys
from pathlib import Path
import deepspeed, psutil, torch
from msr.config import Train
from msr.models.llm import load_causal_lm
from msr.train.distributed import deepspeed_config, zero3_loading
from msr.runtime import finish, topology

model, ds, out = sys.argv[1:4]
topo = topology()
deepspeed.init_distributed(dist_backend="gloo")
cfg = Train(lr=1e-5, per_device_batch=1, num_devices=topo.world_size, deepspeed=ds, max_grad_norm=None)
before = psutil.Process().memory_info().rss
with zero3_loading(cfg, topo):
    llm = load_causal_lm(model, dtype="bf16")
local = sum(getattr(p, "ds_tensor", p).numel() * p.element_size() for p in llm.parameters())
optimizer = torch.optim.AdamW(llm.parameters(), lr=1e-5)
engine, *_ = deepspeed.initialize(model=llm, optimizer=optimizer, config=deepspeed_config(cfg, topo))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
Path(out, f"rank{topo.rank}.json").write_text(json.dumps(
    {"growth": peak - before, "local_bytes": local, "world": topo.world_size}))
finish(topo)
os._exit(0)
"""


@pytest.fixture(scope="module")
def big_llm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    cfg = LlamaConfig(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=12,
        num_key_value_heads=12,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = LlamaForCausalLM(cfg)
    nbytes = sum(p.numel() for p in shapes.parameters()) * 2  # bf16
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("big-llm")
    model.save_pretrained(path)
    return path, nbytes


def load_on(world: int, config: str, model: Path, out: Path) -> list[dict[str, float]]:
    out.mkdir(parents=True)
    script = out / "load.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world}",
        str(script),
        str(model),
        str(ROOT / "configs" / "deepspeed" / config),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def test_zero3_host_memory_per_rank_scales_with_world_size(
    big_llm: tuple[Path, int], tmp_path: Path
) -> None:
    model, nbytes = big_llm
    one = load_on(1, "zero3.json", model, tmp_path / "w1")
    two = load_on(2, "zero3.json", model, tmp_path / "w2")
    full = load_on(2, "zero2.json", model, tmp_path / "w2-zero2")
    mb = 1 << 20
    figures = {
        "model MB": nbytes / mb,
        "zero3 w=1 growth MB": [r["growth"] / mb for r in one],
        "zero3 w=2 growth MB": [r["growth"] / mb for r in two],
        "zero2 w=2 growth MB": [r["growth"] / mb for r in full],
    }
    print(json.dumps(figures, indent=1))
    # what each rank keeps: all of it, half of it (ZeRO-3 shards are padded, so ≤ half + a bit)
    assert one[0]["local_bytes"] >= 0.99 * nbytes
    assert all(r["local_bytes"] <= 0.51 * nbytes for r in two)
    assert all(r["local_bytes"] >= 0.99 * nbytes for r in full)
    # peak host memory: bf16 weights + fp32 masters are 3 × the bf16 size. One process holds all of
    # it; each of 2 ranks half of it plus a constant (measured ~60–100 MB; allowed: 150 MB = 0.75 ×
    # the bf16 size, still far below the ~1.2 GB a rank would hold unpartitioned). Measured on
    # 2 cores: 1204–1254 MB for 1 process, 638–737 MB per rank of 2 (ZeRO-2: 661 MB), model 202 MB.
    g1 = one[0]["growth"]
    assert g1 > 2.5 * nbytes, figures
    assert all(r["growth"] < g1 / 2 + 0.75 * nbytes for r in two), figures
