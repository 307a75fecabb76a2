"""Intervals and paired tests: known values, and constructed answer sets whose significance is
known in both directions."""

from __future__ import annotations

import random

import pytest

from msr.eval.stats import avg_interval, bootstrap_mean, interval, mcnemar_exact, paired, wilson


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998), Table I: 81/263 -> 0.2553–0.3662; 0/10 -> 0–0.2775
    lo, hi = wilson(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-4) and hi == pytest.approx(0.3662, abs=5e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=5e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_the_interval_narrows_as_questions_grow() -> None:
    """About ±14 points at 50 questions, ±6 at 300 (the sizes synth v5 is built for)."""
    lo, hi = wilson(25, 50)
    assert 0.26 < hi - lo < 0.28
    lo, hi = wilson(150, 300)
    assert hi - lo < 0.12


def test_soft_scores_get_a_bootstrap_interval_around_their_mean() -> None:
    rng = random.Random(0)
    values = [rng.choice([0.0, 0.3, 0.6, 0.9, 1.0]) for _ in range(400)]
    mean = sum(values) / len(values)
    lo, hi = interval(values)
    assert lo < mean < hi and hi - lo < 0.1
    assert interval([1.0, 0.0] * 50) == wilson(50, 100)
    assert bootstrap_mean([0.5] * 10) == (0.5, 0.5)


def test_mcnemar_exact_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    # 10 discordant, all one way: 2 · 0.5^10
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(0, 10) == mcnemar_exact(10, 0)


def _runs(n: int, both: int, only_a: int, only_b: int) -> tuple[list[float], list[float]]:
    a = [1.0] * both + [1.0] * only_a + [0.0] * only_b
    b = [1.0] * both + [0.0] * only_a + [1.0] * only_b
    rest = n - len(a)
    return a + [0.0] * rest, b + [0.0] * rest


def test_a_real_difference_is_significant() -> None:
    a, b = _runs(300, both=150, only_a=5, only_b=35)  # B gains 30 questions on the same set
    t = paired(a, b)
    assert t["test"] == "mcnemar" and t["p"] < 1e-4
    assert t["diff"] == pytest.approx(0.1) and 0 < t["lo"] < 0.1 < t["hi"]


def test_a_difference_inside_the_noise_is_not() -> None:
    a, b = _runs(300, both=150, only_a=12, only_b=16)  # +4 questions: no difference found
    t = paired(a, b)
    assert t["p"] > 0.5 and t["lo"] < 0 < t["hi"]
    # the same scores unpaired would have looked like 54 % vs 55.3 %; identical runs: p = 1
    assert paired(a, a)["p"] == 1.0 and paired(a, a)["diff"] == 0.0


def test_soft_scores_use_a_paired_bootstrap_in_both_directions() -> None:
    rng = random.Random(0)
    a = [rng.choice([0.0, 0.3, 0.6, 1.0]) for _ in range(400)]
    better = [min(1.0, v + 0.3) for v in a]
    t = paired(a, better)
    assert t["test"] == "paired bootstrap" and t["p"] < 0.01 and t["lo"] > 0
    noisy = [v if rng.random() < 0.9 else rng.choice([0.0, 1.0]) for v in a]
    t = paired(a, noisy)
    assert t["p"] > 0.05 and t["lo"] < 0 < t["hi"]


def test_paired_runs_must_score_the_same_units() -> None:
    with pytest.raises(ValueError, match="3 vs 2"):
        paired([1.0, 0.0, 1.0], [1.0, 0.0])


def test_avg_interval_contains_avg_and_needs_every_set() -> None:
    units = {"a": [1.0, 0.0] * 100, "b": [1.0] * 150 + [0.0] * 50}
    ratios = {"a": 0.5 / 0.6, "b": 0.75 / 0.7}
    lo, hi = avg_interval(ratios, units)
    avg = 100 * sum(ratios.values()) / 2
    assert lo < avg < hi and hi - lo < 20
    assert avg_interval({**ratios, "c": 1.0}, units) is None
