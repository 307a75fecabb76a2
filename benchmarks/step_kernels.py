"""One training step of a preset's MLLM with each kernel choice, side by side in one run:

- the optimizer: torch's AdamW as a loop of small ops per tensor (its default off CUDA) vs one fused
  kernel (`msr.train.engine.adamw`, which picks it where the device has it);
- the LLM's attention while training: sdpa vs eager (`pretrain.attention`, `finetune.attention`).

The step is the stage's: forward under bf16 autocast (when the stage trains in bf16), backward, clip,
optimizer step, on a batch of the stage's shape — B samples of T tokens, the first M after a short
prompt being image tokens from random features, the last `--labelled` share labelled — with the
preset's LLM and projector (random projector weights), so it needs the preset's models (`msr
models`) but no feature cache. The configurations take one step each in turn; medians are reported.
Usage: python benchmarks/step_kernels.py [--preset small-real] [--stage finetune] [--tokens 150]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msr.data.skips import SkipLedger
from msr.models.vision import describe_vision
from msr.presets import load_preset
from msr.profile.environment import environment
from msr.runtime import topology
from msr.train.data import FeatureSplit
from msr.train.engine import adamw, param_groups
from msr.train.loop import build_model, stage_config
from msr.utils.io import write_report

ROOT = Path(__file__).resolve().parents[1]
PROMPT = 4  # tokens before the image block (role markers)


def make_batch(
    batch: int, tokens: int, image_tokens: int, features: tuple[int, int], vocab: int, share: float
) -> dict[str, torch.Tensor]:
    """Random ids; image positions PROMPT..PROMPT+M; the last `share` of each row labelled."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, tokens), generator=g)
    image_mask = torch.zeros(batch, tokens, dtype=torch.bool)
    image_mask[:, PROMPT : PROMPT + image_tokens] = True
    labels = torch.full((batch, tokens), -100)
    first = tokens - max(1, round(share * tokens))
    labels[:, first:] = ids[:, first:]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
        "image_mask": image_mask,
        "features": torch.randn(batch, *features, generator=g),
        "labels": labels,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="small-real")
    ap.add_argument("--stage", choices=("pretrain", "finetune"), default="finetune")
    ap.add_argument("--tokens", type=int, default=150, help="tokens per sample, image included")
    ap.add_argument("--labelled", type=float, default=0.15, help="share of tokens with a label")
    ap.add_argument("--repeats", type=int, default=8, help="timed steps per configuration")
    ap.add_argument(
        "--out", default=None, help="report stem (default reports/<preset>/step_kernels)"
    )
    args = ap.parse_args()
    params = load_preset(args.preset)
    cfg = stage_config(params, args.stage)
    v = params.vision
    _, width, grid = describe_vision(v.model, **v.backbone_options)
    data = FeatureSplit([], {}, width, grid, SkipLedger())
    topo = topology()
    # the stage's model and trainable weights; its projector random (no stage-1 file needed)
    model, _ = build_model(params, "pretrain", cfg, topo, data)
    model.train()
    batch = make_batch(
        cfg.per_device_batch,
        args.tokens,
        model.num_image_tokens,
        (grid[0] * grid[1], width),
        model.llm.config.vocab_size,
        args.labelled,
    )
    batch = {k: t.to(topo.device) for k, t in batch.items()}
    optimizers = {fused: adamw(param_groups(model, cfg), 1e-6, fused) for fused in (False, True)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(topo.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def sync() -> None:
        if topo.device.type == "cuda":
            torch.cuda.synchronize()

    def step(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
        """Seconds of (forward + backward, clip + optimizer step)."""
        sync()
        start = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        sync()
        middle = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return middle - start, time.perf_counter() - middle

    configs = [(a, f) for a in ("sdpa", "eager") for f in (False, True)]
    names = {c: f"{c[0]}, {'fused' if c[1] else 'loop'}" for c in configs}
    runs: dict[str, dict[str, list[float]]] = {
        names[c]: {"step": [], "optimizer": []} for c in configs
    }
    for repeat in range(args.repeats + 1):  # the first round warms up (allocations, state)
        for attention, fused in configs:  # one step each, in turn: drift hits every config alike
            model.llm.set_attn_implementation(attention)
            compute, update = step(optimizers[fused])
            if repeat:
                runs[names[attention, fused]]["step"].append(compute + update)
                runs[names[attention, fused]]["optimizer"].append(update)
    median = {k: {m: statistics.median(t) for m, t in r.items()} for k, r in runs.items()}
    base = median["sdpa, loop"]["step"]
    result: dict[str, Any] = {
        "environment": environment(),
        "preset": args.preset,
        "stage": args.stage,
        "batch": cfg.per_device_batch,
        "tokens": args.tokens,
        "image_tokens": model.num_image_tokens,
        "labelled": args.labelled,
        "trainable_params": sum(p.numel() for p in trainable),
        "bf16": cfg.bf16,
        "median_s": median,
        "speedup_vs_sdpa_loop": {k: base / m["step"] for k, m in median.items()},
        "runs": runs,
    }
    out = args.out or str(ROOT / "reports" / args.preset / "step_kernels")
    write_report(out, result, render(result))
    print(render(result))


def render(r: dict[str, Any]) -> str:
    env = r["environment"]
    rows = [
        f"| {k} | {m['step']:.2f} | {m['optimizer']:.2f} | {r['speedup_vs_sdpa_loop'][k]:.2f}× |"
        for k, m in r["median_s"].items()
    ]
    return "\n".join(
        [
            f"# One {r['stage']} step of {r['preset']}: attention kernel × optimizer",
            "",
            f"Device: {env['device']} ({env['cpu']}), {env['threads']} threads, torch "
            f"{env['torch']}; batch {r['batch']} × {r['tokens']} tokens ({r['image_tokens']} image "
            f"tokens, {100 * r['labelled']:.0f}% labelled), {r['trainable_params'] / 1e6:.1f} M "
            f"trainable parameters, {'bf16 autocast' if r['bf16'] else 'fp32'}; median of "
            f"{len(next(iter(r['runs'].values()))['step'])} steps each, taken in turn.",
            "",
            "| attention, optimizer | s/step | of which clip + optimizer | speed-up |",
            "| :--- | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    main()
