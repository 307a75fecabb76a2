"""`msr compare`: experiments side by side in the layout of the paper's Table 1.

Each experiment is a params.yaml and its metrics — from `dvc exp show --json` (workspace, commits,
branches and their experiments) or any list of (name, params, eval.json, profile.json). One row per
experiment: projector, M, the options that differ between the rows, one column per benchmark (its
headline score), **Avg.**, and the projector's MACs, parameters and visual tokens.

Avg. follows the paper: the mean over benchmarks of score / baseline score, in percent, against a
baseline experiment the user names (LLaVA-1.5's MLP in the paper), over the benchmarks both have
with a baseline score above 0. The synthetic sets add a per-category table: accuracy minus the
majority-answer baseline of that category.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msr.report.markdown import table
from msr.utils.io import atomic_save_figure


@dataclass(frozen=True)
class Experiment:
    name: str
    params: dict[str, Any]  # params.yaml as a mapping
    eval: dict[str, Any] | None  # reports/eval.json
    profile: dict[str, Any] | None  # reports/profile.json

    @property
    def projector(self) -> str:
        return str(self.params.get("projector", {}).get("name", "?"))

    @property
    def options(self) -> dict[str, Any]:
        p = self.params.get("projector", {})
        return dict(p.get("options", {}).get(self.projector, {}))

    @property
    def budget(self) -> int | None:
        if self.profile is not None:
            return int(self.profile["visual_tokens"])
        return self.params.get("projector", {}).get("num_queries")


class CompareError(ValueError):
    """Nothing to compare, or a baseline that is not among the experiments."""


def from_exp_show(rows: list[dict[str, Any]]) -> list[Experiment]:
    """Experiments of `dvc exp show --json`: the workspace, each commit or branch, and each of
    their experiments, in that order; entries without eval metrics are left out."""
    found: list[Experiment] = []

    def add(entry: dict[str, Any], name: str) -> None:
        data = entry.get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data")
        if not params:
            return
        reports = params.get("paths", {}).get("reports", "reports")
        metrics = data.get("metrics") or {}
        ev = (metrics.get(f"{reports}/eval.json") or {}).get("data")
        prof = (metrics.get(f"{reports}/profile.json") or {}).get("data")
        if ev:
            found.append(Experiment(name, params, ev, prof))

    for row in rows:
        rev = str(row.get("rev", "?"))
        add(row, row.get("name") or (rev if rev == "workspace" else rev[:7]))
        for exp in row.get("experiments") or []:
            if (exp.get("executor") or {}).get("state") in ("queued", "running", "failed"):
                continue  # not run (yet): DVC shows the base commit's metrics for it
            for rev in exp.get("revs") or []:
                add(rev, rev.get("name") or exp.get("name") or str(rev.get("rev", "?"))[:7])
    names = [e.name for e in found]
    found = [e for i, e in enumerate(found) if e.name not in names[:i]]  # first of each name
    if found and found[0].name == "workspace" and any(_same(found[0], e) for e in found[1:]):
        found = found[1:]  # a clean workspace is its commit: one row
    return found


def _same(a: Experiment, b: Experiment) -> bool:
    return a.params == b.params and a.eval == b.eval


def compare(experiments: list[Experiment], baseline: str | None = None) -> dict[str, Any]:
    """The comparison as data: rows (one per experiment), benchmark columns, Avg. per row."""
    if not experiments:
        raise CompareError(
            "no experiment with evaluation metrics: run `dvc exp run` (or `dvc repro`) first"
        )
    names = [e.name for e in experiments]
    base_name = baseline or names[0]
    if base_name not in names:
        raise CompareError(
            f"baseline {base_name!r} is not an experiment; known: {', '.join(names)}"
        )
    base = experiments[names.index(base_name)]
    benchmarks = list(
        dict.fromkeys(b for e in experiments for b in (e.eval or {}).get("headline", {}))
    )
    # options that differ between experiments of the same projector (across projectors every
    # option differs trivially: they have different ones)
    differing = sorted(
        {
            k
            for name in {e.projector for e in experiments}
            for k in {k for e in experiments if e.projector == name for k in e.options}
            if len({json.dumps(e.options.get(k)) for e in experiments if e.projector == name}) > 1
        }
    )
    rows = []
    for e in experiments:
        head = (e.eval or {}).get("headline", {})
        ref = (base.eval or {}).get("headline", {})
        ratios = [
            head[b] / ref[b]
            for b in benchmarks
            if head.get(b) is not None and ref.get(b) not in (None, 0)
        ]
        prof = e.profile or {}
        rows.append(
            {
                "experiment": e.name,
                "projector": e.projector,
                "M": e.budget,
                "options": {k: e.options[k] for k in differing if k in e.options},
                "scores": {b: head.get(b) for b in benchmarks},
                "avg": 100 * sum(ratios) / len(ratios) if ratios else None,
                "projector_macs": prof.get("projector_macs"),
                "projector_params": (prof.get("params") or {}).get("projector"),
                "categories": _categories(e),
            }
        )

    # the baseline first, then by budget (largest first), projector and name
    def order(r: dict[str, Any]) -> tuple[bool, int, str, str]:
        return r["experiment"] != base_name, -int(r["M"] or 0), r["projector"], r["experiment"]

    rows.sort(key=order)
    return {"baseline": base_name, "benchmarks": benchmarks, "options": differing, "rows": rows}


def _categories(e: Experiment) -> dict[str, float]:
    """`set/category` → accuracy − majority baseline, for the synthetic sets."""
    out = {}
    for name, cats in ((e.eval or {}).get("categories") or {}).items():
        for cat, v in cats.items():
            if v.get("majority") is not None:
                out[f"{name}/{cat}"] = v["acc"] - v["majority"]
    return out


def _num(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _macs(v: Any) -> str:
    return "–" if v is None else f"{v / 1e6:.2f} M" if v < 1e9 else f"{v / 1e9:.2f} G"


def render_markdown(result: dict[str, Any]) -> str:
    rows, benches, opts = result["rows"], result["benchmarks"], result["options"]
    head = ["experiment", "projector", "M", *opts, *benches, "Avg.", "proj. MACs", "proj. params"]
    body = [
        [
            r["experiment"],
            f"`{r['projector']}`",
            _num(r["M"]),
            *[json.dumps(r["options"][k]) if k in r["options"] else "–" for k in opts],
            *[_num(r["scores"][b]) for b in benches],
            _num(r["avg"]),
            _macs(r["projector_macs"]),
            _num(r["projector_params"]),
        ]
        for r in rows
    ]
    lines = [
        "# Experiments compared",
        "",
        f"Avg. = mean over benchmarks of score / score of `{result['baseline']}`, in percent (the "
        "paper's definition). MACs: pure multiply-accumulates of one image through the projector.",
        "",
        table(head, body),
    ]
    cats = list(dict.fromkeys(c for r in rows for c in r["categories"]))
    if cats:
        lines += [
            "",
            "## Synthetic sets by category: accuracy − majority-answer baseline (points)",
            "",
            table(
                ["experiment", *cats],
                [[r["experiment"], *[_num(r["categories"].get(c)) for c in cats]] for r in rows],
            ),
        ]
    return "\n".join(lines) + "\n"


def render_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    opts, benches = result["options"], result["benchmarks"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "projector", "M", *opts, *benches, "avg", "projector_macs",
                "projector_params"])  # fmt: skip
    for r in result["rows"]:
        w.writerow([r["experiment"], r["projector"], r["M"],
                    *[json.dumps(r["options"].get(k)) for k in opts],
                    *[r["scores"][b] for b in benches], r["avg"], r["projector_macs"],
                    r["projector_params"]])  # fmt: skip
    return buf.getvalue()


HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo")


def plot(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per benchmark (and Avg.), one bar per experiment; the colour names
    the projector and the hatch the token budget M, so a large grid stays readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, benches = result["rows"], [*result["benchmarks"], "Avg."]
    projectors = list(dict.fromkeys(r["projector"] for r in rows))
    budgets = sorted({r["M"] for r in rows}, reverse=True)
    colors = plt.get_cmap("tab10" if len(projectors) <= 10 else "tab20")
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(
        figsize=(max(6.0, 1.4 * len(benches), 0.12 * len(rows) * len(benches)), 4.2)
    )
    x = np.arange(len(benches))
    for i, r in enumerate(rows):
        values = [r["scores"].get(b) for b in result["benchmarks"]] + [r["avg"]]
        ax.bar(x + i * width, [v or 0.0 for v in values], width,
               color=colors(projectors.index(r["projector"])), edgecolor="white", linewidth=0.3,
               hatch=HATCHES[budgets.index(r["M"]) % len(HATCHES)],
               label=f"{r['experiment']} ({r['projector']}, M={r['M']})")  # fmt: skip
    ax.set_xticks(x + width * (len(rows) - 1) / 2, benches, rotation=20, ha="right")
    ax.set_ylabel("score (Avg.: % of baseline)")
    ax.set_title(f"experiments vs {result['baseline']}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    atomic_save_figure(fig, path)
