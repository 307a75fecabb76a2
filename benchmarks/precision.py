"""bf16 against fp32 on this machine, side by side, for the small-real preset's two models: is the
preset's bf16 the fast choice here, or should this machine run `msr preset use small-real --fp32`?

    python benchmarks/precision.py                 # needs the small-real extra (SmolLM2's GGUF)
    python benchmarks/precision.py --batch 16      # the preset's batch (slow where bf16 is)

Measured, each in the precision the pipeline uses for it:
- features: DINOv2 ViT-S/14 at 336 px (577 tokens; random weights, the same compute), bf16 or
  fp32 weights, images per second;
- stage 1: SmolLM2-135M frozen (weights in llm.dtype, autocast when pretrain.bf16), forward and
  backward to its input embeddings, seconds per sample;
- stage 2: SmolLM2-135M trained (fp32 weights, autocast when finetune.bf16), forward and backward
  to every weight, seconds per sample.
The two precisions alternate so both see the same machine state; medians after one warm-up.
Seconds per step at the preset's batch of 16 are the per-sample time × 16. Writes
reports/precision_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import Dinov2Config, Dinov2Model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lm_loss import batch, load_llm

from msr.models.loss import lm_loss
from msr.profile.environment import environment
from msr.profile.timing import time_round_robin
from msr.utils.io import write_report
from msr.utils.precision import bf16_slowdown

PRECISIONS = ("bf16", "fp32")
# DINOv2 ViT-S/14 (github.com/facebookresearch/dinov2): 12 blocks of width 384, 6 heads
DINOV2_S = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "patch_size": 14}


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls alternating, after one untimed call each."""
    return {k: t.median_ms / 1e3 for k, t in time_round_robin(fns, repeats, warmup=1).items()}


def autocast(bf16: bool) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def vision_steps(images: int, size: int) -> dict[str, Callable[[], object]]:
    config = Dinov2Config(**DINOV2_S, image_size=size)
    towers = {p: Dinov2Model(config).eval() for p in PRECISIONS}
    towers["bf16"].to(torch.bfloat16)
    pixels = torch.randn(images, 3, size, size)

    def step(p: str) -> Callable[[], object]:
        dtype = torch.bfloat16 if p == "bf16" else torch.float32

        @torch.no_grad()
        def forward() -> torch.Tensor:
            return towers[p](pixel_values=pixels.to(dtype)).last_hidden_state

        return forward

    return {p: step(p) for p in PRECISIONS}


def llm_steps(preset: str, b: int, tokens: int, labelled: int) -> tuple[dict, dict, str]:
    """Stage-1 (frozen) and stage-2 (trained) training steps of the preset's LLM per precision."""
    llm, name = load_llm(preset)
    ids, attn, labels = batch(llm.config.vocab_size, b, tokens, labelled)
    frozen = {"fp32": copy.deepcopy(llm).float(), "bf16": llm.to(torch.bfloat16)}
    for m in frozen.values():
        m.requires_grad_(False).train()
    trained = copy.deepcopy(frozen["fp32"]).requires_grad_(True)

    def stage1(p: str) -> Callable[[], object]:
        model = frozen[p]

        def step() -> None:
            embeds = model.get_input_embeddings()(ids).float().requires_grad_(True)
            with autocast(p == "bf16"):
                lm_loss(model, embeds, attn, labels).backward()

        return step

    def stage2(p: str) -> Callable[[], object]:
        def step() -> None:
            trained.zero_grad(set_to_none=True)
            with autocast(p == "bf16"):
                embeds = trained.get_input_embeddings()(ids)
                lm_loss(trained, embeds, attn, labels).backward()

        return step

    return {p: stage1(p) for p in PRECISIONS}, {p: stage2(p) for p in PRECISIONS}, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small-real")
    ap.add_argument("--images", type=int, default=2, help="images per vision forward")
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--batch", type=int, default=4, help="sequences per LLM step")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--labelled", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="reports/precision_bench")
    args = ap.parse_args()
    torch.manual_seed(0)
    vision = median_seconds(vision_steps(args.images, args.image_size), args.repeats)
    stage1, stage2, name = llm_steps(args.preset, args.batch, args.tokens, args.labelled)
    s1 = median_seconds(stage1, args.repeats)
    s2 = median_seconds(stage2, args.repeats)
    result: dict[str, Any] = {
        "llm": name,
        "image_size": args.image_size,
        "images": args.images,
        "batch": args.batch,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "linear_bf16_slowdown": round(bf16_slowdown(), 2),
        "images_per_second": {p: round(args.images / vision[p], 2) for p in PRECISIONS},
        "stage1_seconds_per_sample": {p: round(s1[p] / args.batch, 3) for p in PRECISIONS},
        "stage2_seconds_per_sample": {p: round(s2[p] / args.batch, 3) for p in PRECISIONS},
        "environment": environment(),
    }
    write_report(args.out, result, render(result))
    print(render(result))


def render(r: dict[str, Any]) -> str:
    env, ips = r["environment"], r["images_per_second"]
    s1, s2 = r["stage1_seconds_per_sample"], r["stage2_seconds_per_sample"]
    rows = [
        ("features: DINOv2-S images/s", ips["bf16"], ips["fp32"], ips["fp32"] / ips["bf16"]),
        ("stage 1: s per step of 16", 16 * s1["bf16"], 16 * s1["fp32"], s1["bf16"] / s1["fp32"]),
        ("stage 2: s per step of 16", 16 * s2["bf16"], 16 * s2["fp32"], s2["bf16"] / s2["fp32"]),
    ]
    faster = (
        "bf16"
        if all(row[3] < 1 for row in rows)
        else "fp32"
        if all(row[3] > 1 for row in rows)
        else "mixed"
    )
    return "\n".join(
        [
            "# bf16 against fp32 on this machine",
            "",
            f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}. DINOv2-S/14 at "
            f"{r['image_size']} px, {r['images']} images per forward; {r['llm']} on "
            f"{r['batch']} × {r['tokens']} tokens per step (stage 1: frozen, stage 2: trained), "
            f"scaled to the preset's batch of 16. Medians of {r['repeats']} after one warm-up, "
            "the two precisions alternating.",
            "",
            "| work | bf16 | fp32 | fp32 speed-up |",
            "| :--- | ---: | ---: | ---: |",
            *(f"| {w} | {b:.2f} | {f:.2f} | {x:.2f}× |" for w, b, f, x in rows),
            "",
            f"One LLM-sized linear layer: bf16 takes {r['linear_bf16_slowdown']:.1f}× fp32's time "
            "(the check `msr` runs before a bf16 stage on a CPU). Faster here: "
            + {
                "bf16": "bf16, the presets' choice.",
                "fp32": "fp32: run `msr preset use <name> --fp32`.",
                "mixed": "neither everywhere.",
            }[faster],
            "",
        ]
    )


if __name__ == "__main__":
    main()
