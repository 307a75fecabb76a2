"""Uncertainty of scores: 95 % intervals for one run, paired tests for two runs on the same items.

- `wilson`: the Wilson score interval of a proportion (right for 0/1 items, good at small n and
  near 0 or 1, where the normal interval is not).
- `bootstrap_mean`: a percentile bootstrap interval of a mean of items scored in [0, 1] (soft VQA
  scores, pair accuracy as a mean of pairs, Avg. over benchmarks).
- `paired`: two runs scored on the same items. For 0/1 items McNemar's exact test (a two-sided
  binomial test on the discordant items; https://doi.org/10.1007/BF02295996); otherwise a paired
  bootstrap. Either way the difference's interval is a paired bootstrap over items.

All resampling uses a fixed seed, so a report is the same every time it is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054
RESAMPLES = 2000


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % interval of the proportion k/n, in [0, 1]; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, min(p, centre - half))  # exact at the ends, no rounding
    hi = 1.0 if k >= n else min(1.0, max(p, centre + half))
    return lo, hi


def _binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def bootstrap_mean(
    values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of `values`."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def interval(values: Sequence[float]) -> tuple[float, float]:
    """95 % interval of the mean of item scores: Wilson for 0/1 items, bootstrap otherwise."""
    if _binary(values):
        return wilson(sum(values), len(values))
    return bootstrap_mean(values)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b items right only in run A, c right only in run B."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(
    a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Run B against run A on the same items (same order): the difference of means (B − A), its
    95 % paired-bootstrap interval, the p-value and the test that gave it."""
    if len(a) != len(b):
        raise ValueError(f"paired items differ in number: {len(a)} vs {len(b)}")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = y - x
    if d.size == 0:
        return {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0, "test": "none", "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))
    boot = d[idx].mean(axis=1)
    lo, hi = (float(v) for v in np.quantile(boot, [0.025, 0.975]))
    if _binary(a) and _binary(b):
        only_a = int(((x == 1) & (y == 0)).sum())
        only_b = int(((x == 0) & (y == 1)).sum())
        p, test = mcnemar_exact(only_a, only_b), "mcnemar"
    else:  # two-sided bootstrap p: how often the resampled difference crosses zero
        centred = boot - d.mean()
        count = int((np.abs(centred) >= abs(d.mean())).sum())
        p = min(1.0, (count + 1) / (resamples + 1))
        test = "paired bootstrap"
    return {"diff": float(d.mean()), "lo": lo, "hi": hi, "p": p, "test": test, "n": int(d.size)}


def avg_interval(
    ratios: dict[str, float],
    units: dict[str, Sequence[float]],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float] | None:
    """95 % bootstrap interval of Avg. (the mean over benchmarks of score ÷ baseline score, in
    percent): each benchmark's units are resampled and its ratio scaled by the resampled unit mean
    over the observed one (the baseline held fixed). Approximate where a headline is not the
    mean of its units (POPE's F1, MME's sum): their ratio moves with the units' mean. None if a
    benchmark has no units."""
    names = [n for n in ratios if units.get(n)]
    if not names or len(names) != len(ratios):
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for n in names:
        x = np.asarray(units[n], dtype=np.float64)
        mean = x.mean()
        idx = rng.integers(0, x.size, size=(resamples, x.size))
        factor = x[idx].mean(axis=1) / mean if mean > 0 else np.ones(resamples)
        total += ratios[n] * factor
    lo, hi = np.quantile(100 * total / len(names), [0.025, 0.975])
    return float(lo), float(hi)
