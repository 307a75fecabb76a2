"""Training throughput on the tiny preset, in one run:

- samples/s and tokens/s of stage 1 (pretrain) and stage 2 (finetune), and the share of the loop's
  wall time spent waiting for the next batch once the loader runs (target ≤ 5%), with the one-off
  wait for the first batch (worker start-up, shuffle buffer) reported on its own;
- the same stage-2 step with and without a DeepSpeed engine (ZeRO-2) on one process.

Needs the features of the active params (`dvc repro features`). Runs alternate between the plain and
the DeepSpeed loop so both see the same machine state; medians are reported.
Usage: python benchmarks/train.py [--params params.yaml] [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msr.config import parse_params
from msr.profile.environment import environment
from msr.resolve import load_params
from msr.train.loop import train
from msr.utils.io import write_report

ROOT = Path(__file__).resolve().parents[1]


def variant(params: Any, work: Path, stage: str, steps: int, deepspeed: str | None = None) -> Any:
    raw = params.model_dump(mode="json")
    raw["paths"].update(
        pretrain=str(work / "pretrain"), finetune=str(work / "finetune"), reports=str(work / "r")
    )
    raw[stage].update(
        max_steps=steps,
        save_every=10**6,
        log_every=10**6,
        deepspeed=deepspeed,
        launcher="none",
        num_devices=1,
    )
    return parse_params(raw)


def measure(params: Any, stage: str) -> dict[str, float]:
    r = train(params, stage)  # type: ignore[arg-type]
    return {
        "samples_per_s": r.samples / r.seconds,
        "tokens_per_s": r.tokens / r.seconds,
        "step_ms": 1e3 * r.seconds / r.steps,
        "data_wait_share": (r.data_wait_seconds - r.startup_wait_seconds) / r.seconds,
        "startup_wait_s": r.startup_wait_seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="reports/train_bench")
    args = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    params = load_params(args.params)
    work = Path(tempfile.mkdtemp(prefix="msr-train-bench-"))
    zero2 = str(ROOT / "configs/deepspeed/zero2.json")
    runs: dict[str, list[dict[str, float]]] = {
        "pretrain": [],
        "finetune": [],
        "finetune_deepspeed": [],
    }
    try:
        train(variant(params, work, "pretrain", 2), "pretrain")  # a stage-1 projector for stage 2
        for _ in range(args.repeats):
            runs["pretrain"].append(
                measure(variant(params, work / "p", "pretrain", args.steps), "pretrain")
            )
            runs["finetune"].append(
                measure(variant(params, work, "finetune", args.steps), "finetune")
            )
            ds = variant(params, work, "finetune", args.steps, deepspeed=zero2)
            runs["finetune_deepspeed"].append(measure(ds, "finetune"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "environment": environment(),
        "steps": args.steps,
        "batch": {
            "pretrain": params.pretrain.per_device_batch,
            "finetune": params.finetune.per_device_batch,
        },
        "median": {
            k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()
        },
        "runs": runs,
    }
    med = result["median"]
    result["deepspeed_step_ratio"] = (
        med["finetune_deepspeed"]["step_ms"] / med["finetune"]["step_ms"]
    )
    result["data_wait_met"] = all(
        med[s]["data_wait_share"] <= 0.05 for s in ("pretrain", "finetune")
    )
    write_report(args.out, result, render(result))
    print(render(result))


def render(r: dict[str, Any]) -> str:
    env, med = r["environment"], r["median"]
    rows = [
        f"| {name} | {m['samples_per_s']:.1f} | {m['tokens_per_s']:.0f} | {m['step_ms']:.0f} | "
        f"{100 * m['data_wait_share']:.1f}% | {m['startup_wait_s']:.2f} s |"
        for name, m in med.items()
    ]
    return "\n".join(
        [
            "# Training benchmark (tiny preset)",
            "",
            f"Device: {env['device']} ({env['cpu']}), {env['threads']} threads, torch {env['torch']}; "
            f"{r['steps']} steps per run, batch {r['batch']}, median of {len(r['runs']['pretrain'])} alternating runs.",
            "",
            "| run | samples/s | tokens/s | ms/step | data wait (steady state) | first batch |",
            "| :--- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"- Data wait ≤ 5% of step time: {'met' if r['data_wait_met'] else 'NOT met'}.",
            f"- Stage-2 step with a DeepSpeed engine (ZeRO-2, one process) / without: {r['deepspeed_step_ratio']:.2f}×.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
