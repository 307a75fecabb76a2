"""Timing protocol: warm-up, then repeats taken round-robin across candidates, medians reported.

Round-robin order means every candidate sees the same machine state (thermal, other load), so the
ratios between candidates are what a benchmark should report, not absolute times.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Median and spread (min, max) of repeated runs, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_round_robin(
    candidates: Mapping[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, Timing]:
    """Time every candidate `repeats` times, interleaved, after `warmup` untimed calls each."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: Timing(statistics.median(ts), min(ts), max(ts), len(ts))
        for name, ts in samples.items()
    }


def matmul_peak_gflops(
    dtype: torch.dtype,
    size: int = 2048,
    repeats: int = 5,
    device: str = "cpu",
    budget_s: float = 0.5,
) -> float:
    """Achieved GFLOP/s of one square matmul: the reference 'peak' for this machine and dtype.

    The side doubles from 256 up to `size` while the next product (8× the work) would take under
    `budget_s`, so a dtype this machine only emulates (bf16 on a CPU without native bf16: tens of
    times slower) costs seconds, not minutes; a fast one is measured at `size`."""
    side = min(256, size)
    while True:
        a = torch.randn(side, side, dtype=dtype, device=device)
        b = torch.randn(side, side, dtype=dtype, device=device)
        mm = functools.partial(torch.mm, a, b)
        timing = time_round_robin({"mm": mm}, repeats=repeats, warmup=1)["mm"]
        if side >= size or 8 * timing.min_ms * 1e-3 > budget_s:
            return 2 * side**3 / (timing.min_ms * 1e-3) / 1e9
        side *= 2
