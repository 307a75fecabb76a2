"""`msr compare`: experiments from `dvc exp show --json`, the paper's Avg., options that differ."""

from __future__ import annotations

from typing import Any

import pytest

from msr.report.compare import CompareError, compare, from_exp_show, render_csv, render_markdown


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
