"""Whether bf16 is fast here: a CPU without native bf16 runs it tens of times slower than fp32.

The presets compute in bf16 (features, training autocast, evaluation). On a GPU with bf16 and on a
CPU with native bf16 instructions (x86: AVX512-BF16 or AMX) that is 2–4× faster than fp32. Without
them (an AVX2-only x86 CPU, as in most laptops), oneDNN emulates bf16 matmuls: on a 2-core AVX2
machine a SmolLM2-135M training step took 19–30× longer in bf16 than in fp32, and DINOv2-S 5×
(benchmarks/precision.py), so a one-hour run takes days. CPU flags do not tell the whole story (the
emulation differs by instruction set and library version), so this measures: one linear layer in
each dtype, once per process (~0.3 s).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SLOW = 1.5  # bf16 slower than fp32 by more than this: warn
FP32_HINT = (
    "msr preset use <name> --fp32 (or make small-real FP32=1) computes everything in fp32 "
    "(vision.dtype, llm.dtype, eval.dtype, profile.dtype: fp32; pretrain.bf16, finetune.bf16: "
    "false)"
)


@functools.cache
def bf16_slowdown(tokens: int = 256, width: int = 576, repeats: int = 3) -> float:
    """Time of one linear layer (`tokens` × `width` → 4·`width`, an LLM's MLP up-projection) on this
    CPU in bf16 over fp32 (> 1: bf16 is slower). The best of `repeats` runs after one warm-up, at
    torch's current thread count."""
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(tokens, width).to(dtype)
        w = torch.randn(4 * width, width).to(dtype)
        with torch.no_grad():
            F.linear(x, w)  # warm-up: oneDNN picks and caches its kernel
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                F.linear(x, w)
                times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


def check_bf16_speed(
    fields: Sequence[str], device: torch.device, slowdown: float | None = None
) -> float | None:
    """Warn once per call site when `fields` (params that ask for bf16) compute on a CPU where bf16
    is more than `SLOW` times slower than fp32; returns the slowdown measured (None: not a CPU, or
    nothing asks for bf16). `slowdown` replaces the measurement (tests)."""
    if not fields or device.type != "cpu":
        return None
    ratio = bf16_slowdown() if slowdown is None else slowdown
    if ratio > SLOW:
        log.warning(
            "%s: bf16 on this CPU runs %.0f× slower than fp32 (no native bf16 instructions), so "
            "this stage will take far longer than the preset's stated time; for this machine, %s",
            ", ".join(fields),
            ratio,
            FP32_HINT,
        )
    return ratio
