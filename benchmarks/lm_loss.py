"""The training loss with logits at every position (HF's) against logits at labelled positions only
(msr.models.loss), side by side in one run: seconds per forward+backward step of the LLM alone.

    python benchmarks/lm_loss.py                       # the small-real preset's SmolLM2-135M
    python benchmarks/lm_loss.py --preset tiny         # the tiny preset's Llama (built from config)

A batch is `--batch` sequences of `--tokens` tokens with `--labelled` labelled tokens each, in two
answer spans (the small-real instruct mix: ~93 tokens, ~6–9 labelled). The two losses alternate so
both see the same machine state; medians are reported with the largest loss difference. Writes
reports/lm_loss_bench.{json,md}.
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

from msr.models.configs import llm_config
from msr.models.llm import load_causal_lm
from msr.models.loss import lm_loss
from msr.presets import preset_path
from msr.profile.environment import environment
from msr.resolve import load_params
from msr.utils.io import write_report


def load_llm(preset: str) -> tuple[torch.nn.Module, str]:
    p = load_params(preset_path(preset))
    if p.llm.build is not None:  # tiny: built from its config, random weights
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(llm_config(p.llm)).to(torch.bfloat16), "built"
    llm = load_causal_lm(p.llm.model, gguf_file=p.llm.gguf_file, dtype=p.llm.dtype)
    return llm, p.llm.gguf_file or p.llm.model


def batch(vocab: int, b: int, t: int, labelled: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    labels = torch.full((b, t), -100)
    half = labelled // 2
    for s, n in ((t // 2, half), (t - (labelled - half), labelled - half)):
        labels[:, s : s + n] = ids[:, s : s + n]
    return ids, torch.ones(b, t, dtype=torch.long), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small-real")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--labelled", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="reports/lm_loss_bench")
    args = ap.parse_args()
    torch.manual_seed(0)
    llm, name = load_llm(args.preset)
    llm.train()
    ids, attn, labels = batch(llm.config.vocab_size, args.batch, args.tokens, args.labelled)
    embed = llm.get_input_embeddings()

    def full() -> torch.Tensor:
        out = llm(inputs_embeds=embed(ids), attention_mask=attn, labels=labels, use_cache=False)
        return out.loss

    def labelled_only() -> torch.Tensor:
        return lm_loss(llm, embed(ids), attn, labels)

    times: dict[str, list[float]] = {"full": [], "labelled": []}
    losses: dict[str, list[float]] = {"full": [], "labelled": []}
    for i in range(args.repeats + 1):  # the first round warms up
        for key, fn in (("full", full), ("labelled", labelled_only)):
            llm.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = fn()
            loss.backward()
            if i:
                times[key].append(time.perf_counter() - t0)
                losses[key].append(float(loss.detach()))
    med = {k: statistics.median(v) for k, v in times.items()}
    result: dict[str, Any] = {
        "llm": name,
        "vocab": llm.config.vocab_size,
        "batch": args.batch,
        "tokens": args.tokens,
        "labelled": args.labelled,
        "repeats": args.repeats,
        "seconds_per_step": {k: round(v, 3) for k, v in med.items()},
        "speedup": round(med["full"] / med["labelled"], 2),
        "max_loss_diff": max(abs(a - b) for a, b in zip(*losses.values(), strict=True)),
        "environment": environment(),
    }
    write_report(args.out, result, render(result))
    print(render(result))


def render(r: dict[str, Any]) -> str:
    env, s = r["environment"], r["seconds_per_step"]
    return (
        "# Loss on labelled tokens only\n\n"
        f"{r['llm']} (vocabulary {r['vocab']}), bf16, forward+backward of the LLM on "
        f"{r['batch']} × {r['tokens']} tokens with {r['labelled']} labelled per sequence; "
        f"median of {r['repeats']}, alternating; {env['cpu']}, {env['threads']} threads.\n\n"
        "| loss | s/step |\n| :--- | ---: |\n"
        f"| HF (logits at every position) | {s['full']:.3f} |\n"
        f"| msr.models.loss (labelled positions) | {s['labelled']:.3f} |\n\n"
        f"Speed-up {r['speedup']:.2f}×; largest loss difference {r['max_loss_diff']:.2e}.\n"
    )


if __name__ == "__main__":
    main()
