"""`msr compare`: experiments from `dvc exp show --json`, the paper's Avg., options that differ."""

from __future__ import annotations

from typing import Any

import pytest

from msr.report.compare import (
    CompareError,
    Experiment,
    compare,
    from_exp_show,
    render_csv,
    render_markdown,
)


def entry(name: str, projector: str, options: dict[str, Any], scores: dict[str, float],
          state: str | None = None, m: int = 36) -> dict[str, Any]:  # fmt: skip
    params = {"paths": {"reports": "reports"},
              "projector": {"name": projector, "num_queries": m, "options": {projector: options}}}  # fmt: skip
    metrics = {
        "reports/eval.json": {"data": {"headline": scores, "categories": {}}},
        "reports/profile.json": {"data": {"visual_tokens": m, "projector_macs": 10**6,
                                          "params": {"projector": 7}}},
    }  # fmt: skip
    return {
        "rev": name,
        "name": name,
        "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics},
        "executor": {"state": state} if state else None,
    }


def exp_show() -> list[dict[str, Any]]:
    base = entry("main", "ms_resampler", {"kernels": [2, 6, 14]}, {"a": 50.0, "b": 20.0})
    workspace = {**base, "rev": "workspace", "name": None}
    done = entry("k2", "ms_resampler", {"kernels": [2]}, {"a": 55.0, "b": 10.0})
    other = entry("avg", "avgpool", {}, {"a": 25.0, "b": 20.0})
    queued = entry("later", "mlp", {}, {"a": 50.0, "b": 20.0}, state="queued")

    def exp(e: dict[str, Any]) -> dict[str, Any]:
        return {"name": e["name"], "executor": e.pop("executor"), "revs": [e]}

    base["experiments"] = [exp(done), exp(other), exp(queued)]
    return [workspace, base]


def test_rows_come_from_run_experiments_only() -> None:
    names = [e.name for e in from_exp_show(exp_show())]
    assert names == ["main", "k2", "avg"]  # clean workspace = main; the queued one has not run


def test_avg_is_the_mean_ratio_to_the_baseline() -> None:
    result = compare(from_exp_show(exp_show()), "main")
    rows = {r["experiment"]: r for r in result["rows"]}
    assert rows["main"]["avg"] == pytest.approx(100.0)
    assert rows["k2"]["avg"] == pytest.approx(100 * (55 / 50 + 10 / 20) / 2)  # 80.0
    assert rows["avg"]["avg"] == pytest.approx(100 * (25 / 50 + 20 / 20) / 2)  # 75.0
    assert result["options"] == ["kernels"]  # differs within ms_resampler; avgpool has none
    table = render_markdown(result)
    assert "| avg | `avgpool` | 36 | – |" in table and "[2, 6, 14]" in table
    assert render_csv(result).splitlines()[0].startswith("experiment,projector,M,kernels,a,b,avg")


def test_unknown_baseline_and_nothing_to_compare() -> None:
    with pytest.raises(CompareError, match=r"baseline 'nope' is not an experiment; known: main"):
        compare(from_exp_show(exp_show()), "nope")
    with pytest.raises(CompareError, match="no experiment with evaluation metrics"):
        compare([], None)


def _items(scores: list[float], topic: str = "exist") -> dict[str, Any]:
    n = len(scores)
    return {"gqa": {"metric": "acc", "digest": "q1", "keys": [str(i) for i in range(n)],
                    "scores": scores, "topics": [topic] * n, "pairs": [None] * n}}  # fmt: skip


def _exp(
    name: str, scores: list[float], seed: int = 0, keys_shift: int = 0, main: str = "acc"
) -> Experiment:
    acc = 100 * sum(scores) / len(scores)
    params = {"paths": {"reports": "reports"}, "finetune": {"seed": seed},
              "projector": {"name": "ms_resampler", "num_queries": 36, "options": {}}}  # fmt: skip
    items = _items(scores)
    items["gqa"]["keys"] = [str(i + keys_shift) for i in range(len(scores))]
    ev = {"headline": {"gqa": acc}, "categories": {}, "main": {"gqa": main},
          "intervals": {"gqa": {"metric": "acc", "n": len(scores), "value": acc, "lo": acc - 5,
                                "hi": acc + 5}}}  # fmt: skip
    return Experiment(name, params, ev, None, name, items)


def test_paired_tests_mark_a_real_difference_and_not_a_noisy_one() -> None:
    base = [1.0] * 150 + [0.0] * 150
    better = [1.0] * 150 + [1.0] * 40 + [0.0] * 110  # +40 questions, none lost
    noisy = [0.0] * 10 + [1.0] * 140 + [1.0] * 12 + [0.0] * 138  # −10, +12
    result = compare([_exp("base", base), _exp("better", better, seed=1),
                      _exp("noisy", noisy, seed=2)], "base")  # fmt: skip
    rows = {r["experiment"]: r for r in result["rows"]}
    assert rows["better"]["paired"]["gqa"]["significant"]
    assert rows["better"]["paired"]["gqa"]["test"] == "mcnemar"
    assert rows["better"]["paired"]["gqa"]["categories"]["exist"]["significant"]
    assert not rows["noisy"]["paired"]["gqa"]["significant"]
    text = render_markdown(result)
    assert "63.3 [58.3, 68.3] ↑" in text  # better: interval and arrow
    assert "| noisy | `ms_resampler` | 36 | 50.7 [45.7, 55.7] |" in text  # no arrow: no difference
    assert "## Paired tests against `base`" in text


def test_runs_on_other_questions_are_not_paired() -> None:
    regenerated = _exp("regenerated", [1.0] * 100)
    regenerated.items["gqa"]["digest"] = "q2"  # the same ids, other questions
    result = compare([_exp("base", [1.0, 0.0] * 50), _exp("other", [1.0] * 100, keys_shift=7),
                      regenerated])  # fmt: skip
    rows = {r["experiment"]: r for r in result["rows"]}
    for name in ("other", "regenerated"):
        assert rows[name]["paired"]["gqa"] == {"note": "different questions: not paired"}


def test_an_interval_of_another_metric_than_the_headline_is_named() -> None:
    """POPE's headline is F1, its units' mean accuracy: the bracket says which it is."""
    base = [1.0] * 150 + [0.0] * 150
    result = compare([_exp("base", base, main="f1"),
                      _exp("better", [1.0] * 190 + [0.0] * 110, main="f1")], "base")  # fmt: skip
    text = render_markdown(result)
    assert "63.3 (acc [58.3, 68.3] ↑)" in text


def test_experiments_that_differ_only_in_seeds_are_grouped() -> None:
    runs = [_exp("s0", [1.0] * 60 + [0.0] * 40), _exp("s1", [1.0] * 70 + [0.0] * 30, seed=1)]
    other = _exp("k2", [1.0] * 50 + [0.0] * 50)
    other.params["projector"]["num_queries"] = 64
    result = compare([*runs, other], "s0")
    (group,) = result["seed_groups"]
    assert group["experiments"] == ["s0", "s1"] and group["seeds"] == ["finetune.seed"]
    g = group["scores"]["gqa"]
    assert g["mean"] == pytest.approx(65.0) and g["sd"] == pytest.approx(7.0710678)
    assert g["pooled_lo"] < 65.0 < g["pooled_hi"] and g["runs"] == 2
    assert "65.0 ± 7.1" in render_markdown(result)
