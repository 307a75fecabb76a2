"""`msr compare`: experiments side by side in the layout of the paper's Table 1.

Each experiment is a params.yaml and its metrics — from `dvc exp show --json` (workspace, commits,
branches and their experiments) or any list of (name, params, eval.json, profile.json). One row per
experiment: projector, M, the options that differ between the rows, one column per benchmark (its
headline score), **Avg.**, and the projector's MACs, parameters and visual tokens.

Avg. follows the paper: the mean over benchmarks of score / baseline score, in percent, against a
baseline experiment the user names (LLaVA-1.5's MLP in the paper), over the benchmarks both have
with a baseline score above 0. The synthetic sets add a per-category table: accuracy minus the
majority-answer baseline of that category.

Uncertainty: every score carries its 95 % interval (from eval.json), Avg. a bootstrap interval.
Where two experiments answered the same questions (their `eval_items.json` lists the same units),
each experiment is tested against the baseline, paired: McNemar's exact test for right/wrong units,
a paired bootstrap otherwise, with the difference's 95 % interval; a difference is marked only when
p < 0.05. Experiments whose params differ only in seeds form a group: mean ± sd over seeds and
the interval of the pooled units.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from msr.eval.stats import avg_interval, bootstrap_mean, paired
from msr.report.markdown import table
from msr.utils.io import atomic_save_figure

ALPHA = 0.05
SEED_KEYS = ("seed", "seeds")


@dataclass(frozen=True)
class Experiment:
    name: str
    params: dict[str, Any]  # params.yaml as a mapping
    eval: dict[str, Any] | None  # reports/eval.json
    profile: dict[str, Any] | None  # reports/profile.json
    rev: str | None = None  # the git revision its files are read from ("workspace": the disk)
    items: dict[str, Any] | None = field(default=None, compare=False)  # reports/eval_items.json

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
    their experiments, in that order; entries without eval metrics are left out. Input of another
    shape is a CompareError saying what was expected."""
    try:
        return _from_exp_show(rows)
    except (AttributeError, KeyError, TypeError) as err:
        raise CompareError(
            "not a `dvc exp show --json` output: expected a list of commits, each an object with "
            f"'rev', 'data' and 'experiments' ({type(err).__name__}: {err})"
        ) from None


def _from_exp_show(rows: list[dict[str, Any]]) -> list[Experiment]:
    if not isinstance(rows, list):
        raise TypeError(f"the top level is a {type(rows).__name__}, not a list")
    found: list[Experiment] = []

    def add(entry: dict[str, Any], name: str, rev: str | None = None) -> None:
        data = entry.get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data")
        if not params:
            return
        reports = params.get("paths", {}).get("reports", "reports")
        metrics = data.get("metrics") or {}
        ev = (metrics.get(f"{reports}/eval.json") or {}).get("data")
        prof = (metrics.get(f"{reports}/profile.json") or {}).get("data")
        if ev:
            found.append(Experiment(name, params, ev, prof, rev or str(entry.get("rev", "?"))))

    for row in rows:
        rev = str(row.get("rev", "?"))
        add(row, row.get("name") or (rev if rev == "workspace" else rev[:7]), rev)
        for exp in row.get("experiments") or []:
            if (exp.get("executor") or {}).get("state") in ("queued", "running", "failed"):
                continue  # not run (yet): DVC shows the base commit's metrics for it
            for r in exp.get("revs") or []:
                add(r, r.get("name") or exp.get("name") or str(r.get("rev", "?"))[:7])
    names = [e.name for e in found]
    found = [e for i, e in enumerate(found) if e.name not in names[:i]]  # first of each name
    if found and found[0].name == "workspace" and any(_same(found[0], e) for e in found[1:]):
        found = found[1:]  # a clean workspace is its commit: one row
    return found


def _same(a: Experiment, b: Experiment) -> bool:
    return a.params == b.params and a.eval == b.eval


def attach_items(
    experiments: list[Experiment], read: Callable[[str, str], str | None]
) -> list[Experiment]:
    """Each experiment with its scored units: `read(rev, path)` gives the text of
    `<paths.reports>/eval_items.json` at that revision, or None (then no paired test for it)."""
    out = []
    for e in experiments:
        reports = e.params.get("paths", {}).get("reports", "reports")
        text = read(e.rev or "workspace", f"{reports}/eval_items.json")
        try:
            items = json.loads(text) if text else None
        except json.JSONDecodeError:
            items = None
        out.append(replace(e, items=items if isinstance(items, dict) else None))
    return out


def seed_keys(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every params key path that names a seed of a run (`*.seed`, `*.seeds`; not `eval_seed`,
    which picks the questions), with its value."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= seed_keys(v, f"{path}.")
        elif k in SEED_KEYS:
            out[path] = v
    return out


def _without_seeds(params: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _without_seeds(v) if isinstance(v, dict) else v
        for k, v in params.items()
        if k not in SEED_KEYS
    }


def seed_groups(experiments: list[Experiment]) -> list[list[Experiment]]:
    """Experiments whose params differ only in seeds, grouped (groups of two or more)."""
    groups: dict[str, list[Experiment]] = {}
    for e in experiments:
        groups.setdefault(json.dumps(_without_seeds(e.params), sort_keys=True), []).append(e)
    return [g for g in groups.values() if len(g) > 1]


def _units(e: Experiment, bench: str) -> dict[str, Any] | None:
    u = (e.items or {}).get(bench)
    return u if isinstance(u, dict) and "scores" in u else None


def paired_tests(e: Experiment, base: Experiment) -> dict[str, Any]:
    """`e` against `base` per benchmark and per category, where both scored the same units."""
    out: dict[str, Any] = {}
    for bench in e.items or {}:
        a, b = _units(base, bench), _units(e, bench)
        if a is None or b is None:
            continue
        if a["keys"] != b["keys"] or a.get("digest") != b.get("digest"):
            out[bench] = {"note": "different questions: not paired"}
            continue
        test = paired(a["scores"], b["scores"])
        entry: dict[str, Any] = {**test, "significant": test["p"] < ALPHA, "categories": {}}
        topics = b.get("topics") or []
        for cat in dict.fromkeys(t for t in topics if t is not None):
            idx = [i for i, t in enumerate(topics) if t == cat]
            t = paired([a["scores"][i] for i in idx], [b["scores"][i] for i in idx])
            entry["categories"][cat] = {**t, "significant": t["p"] < ALPHA}
        out[bench] = entry
    return out


def group_summary(group: list[Experiment]) -> dict[str, Any]:
    """mean ± sd over seeds of each headline score, and the 95 % interval of the pooled units."""
    benches = list(dict.fromkeys(b for e in group for b in (e.eval or {}).get("headline", {})))
    scores: dict[str, Any] = {}
    for b in benches:
        values = [(e.eval or {}).get("headline", {}).get(b) for e in group]
        values = [v for v in values if v is not None]
        units = [u for e in group if (u := _units(e, b)) is not None]
        lo = hi = None
        same = len(units) == len(group) and all(
            u["keys"] == units[0]["keys"] and u.get("digest") == units[0].get("digest")
            for u in units
        )
        if same and units[0]["scores"]:
            # clustered by question: each question's score averaged over the seeds, then the
            # interval of their mean (the seeds answered the same questions: not k·n draws)
            columns = zip(*(u["scores"] for u in units), strict=True)
            lo, hi = bootstrap_mean([statistics.mean(col) for col in columns])
        scores[b] = {
            "mean": statistics.mean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "runs": len(values),
            "pooled_lo": None if lo is None else 100 * lo,
            "pooled_hi": None if hi is None else 100 * hi,
        }
    varying = sorted({k for e in group for k, v in seed_keys(e.params).items()
                      if len({json.dumps(seed_keys(x.params).get(k)) for x in group}) > 1})  # fmt: skip
    return {"experiments": [e.name for e in group], "seeds": varying, "scores": scores}


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
        units = {b: u["scores"] for b in benchmarks if (u := _units(e, b)) is not None}
        ratio_of = {
            b: head[b] / ref[b]
            for b in benchmarks
            if head.get(b) is not None and ref.get(b) not in (None, 0)
        }
        avg_ci = avg_interval(ratio_of, units) if ratio_of else None
        rows.append(
            {
                "experiment": e.name,
                "projector": e.projector,
                "M": e.budget,
                "options": {k: e.options[k] for k in differing if k in e.options},
                "scores": {b: head.get(b) for b in benchmarks},
                "avg": 100 * sum(ratios) / len(ratios) if ratios else None,
                "avg_interval": None if avg_ci is None else list(avg_ci),
                "intervals": {
                    b: {
                        "metric": v["metric"],
                        "lo": v["lo"],
                        "hi": v["hi"],
                        "headline": v["metric"] == ((e.eval or {}).get("main") or {}).get(b),
                    }
                    for b, v in ((e.eval or {}).get("intervals") or {}).items()
                },
                "paired": paired_tests(e, base) if e is not base else {},
                "projector_macs": prof.get("projector_macs"),
                "projector_params": (prof.get("params") or {}).get("projector"),
                "categories": _categories(e),
            }
        )

    # the baseline first, then by budget (largest first), projector and name
    def order(r: dict[str, Any]) -> tuple[bool, int, str, str]:
        return r["experiment"] != base_name, -int(r["M"] or 0), r["projector"], r["experiment"]

    rows.sort(key=order)
    groups = [group_summary(g) for g in seed_groups(experiments)]
    return {
        "baseline": base_name,
        "benchmarks": benchmarks,
        "options": differing,
        "rows": rows,
        "seed_groups": groups,
    }


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


def _cell(r: dict[str, Any], b: str) -> str:
    """A score, its 95 % interval, and ↑/↓ where it differs from the baseline's (paired, p < 0.05)."""
    v = r["scores"][b]
    if v is None:
        return "–"
    text, iv = _num(v), r.get("intervals", {}).get(b)
    test = r.get("paired", {}).get(b) or {}
    arrow = (" ↑" if test["diff"] > 0 else " ↓") if test.get("significant") else ""
    if iv is None:
        return text + arrow
    if iv["headline"]:  # the interval and the test are of this score
        return f"{text} [{iv['lo']:.1f}, {iv['hi']:.1f}]{arrow}"
    # another quantity than the headline (POPE's F1, MME's sum): name the units' metric
    return f"{text} ({iv['metric']} [{iv['lo']:.1f}, {iv['hi']:.1f}]{arrow})"


def render_markdown(result: dict[str, Any]) -> str:
    rows, benches, opts = result["rows"], result["benchmarks"], result["options"]
    head = ["experiment", "projector", "M", *opts, *benches, "Avg.", "proj. MACs", "proj. params"]
    body = [
        [
            r["experiment"],
            f"`{r['projector']}`",
            _num(r["M"]),
            *[json.dumps(r["options"][k]) if k in r["options"] else "–" for k in opts],
            *[_cell(r, b) for b in benches],
            _num(r["avg"])
            + (
                f" [{r['avg_interval'][0]:.1f}, {r['avg_interval'][1]:.1f}]"
                if r.get("avg_interval")
                else ""
            ),
            _macs(r["projector_macs"]),
            _num(r["projector_params"]),
        ]
        for r in rows
    ]
    lines = [
        "# Experiments compared",
        "",
        f"Avg. = mean over benchmarks of score / score of `{result['baseline']}`, in percent (the "
        "paper's definition). MACs: pure multiply-accumulates of one image through the projector. "
        "Brackets: 95 % intervals (of the named unit metric where it is not the headline, e.g. "
        "POPE's accuracy beside its F1). ↑/↓: differs from the baseline in a paired test on the "
        "same questions (p < 0.05); no arrow is no difference found, not a tie.",
        "",
        table(head, body),
    ]
    tests = [
        [r["experiment"], b, f"{100 * t['diff']:+.1f}", f"[{100 * t['lo']:+.1f}, {100 * t['hi']:+.1f}]",
         f"{t['p']:.3g}", t["test"], t["n"], "yes" if t["significant"] else "no"]
        for r in rows
        for b, t in r.get("paired", {}).items()
        if "diff" in t
    ]  # fmt: skip
    if tests:
        lines += [
            "",
            f"## Paired tests against `{result['baseline']}` (same questions)",
            "",
            "Δ = this experiment − the baseline, in points of the set's unit score (MMBench: "
            "circular questions); interval by paired bootstrap over units.",
            "",
            table(
                ["experiment", "set", "Δ", "95 % interval", "p", "test", "units", "significant"],
                tests,
                "llrlrlrl",
            ),
        ]
    cat_tests = [
        [r["experiment"], f"{b}/{c}", f"{100 * t['diff']:+.1f}",
         f"[{100 * t['lo']:+.1f}, {100 * t['hi']:+.1f}]", f"{t['p']:.3g}", t["n"],
         "yes" if t["significant"] else "no"]
        for r in rows
        for b, bt in r.get("paired", {}).items()
        for c, t in (bt.get("categories") or {}).items()
    ]  # fmt: skip
    if cat_tests:
        lines += [
            "",
            "### By category",
            "",
            table(
                [
                    "experiment",
                    "set/category",
                    "Δ",
                    "95 % interval",
                    "p",
                    "questions",
                    "significant",
                ],
                cat_tests,
                "llrlrrl",
            ),
        ]
    groups = result.get("seed_groups") or []
    if groups:
        lines += ["", "## Seeds grouped", "",
                  "Experiments whose params differ only in seeds: mean ± sd over the runs, and "
                  "the 95 % interval of the mean over questions of each question's score averaged "
                  "over the runs.", ""]  # fmt: skip
        gbenches = list(dict.fromkeys(b for g in groups for b in g["scores"]))
        lines.append(
            table(
                ["experiments", "seeds varied", *gbenches],
                [
                    [
                        ", ".join(g["experiments"]),
                        ", ".join(g["seeds"]) or "–",
                        *[_group_cell(g["scores"].get(b)) for b in gbenches],
                    ]
                    for g in groups
                ],
            )
        )
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


def _group_cell(v: dict[str, Any] | None) -> str:
    if not v or v["mean"] is None:
        return "–"
    text = f"{v['mean']:.1f}" + (f" ± {v['sd']:.1f}" if v["sd"] is not None else "")
    if v["pooled_lo"] is not None:
        text += f" [{v['pooled_lo']:.1f}, {v['pooled_hi']:.1f}]"
    return f"{text} (n={v['runs']})"


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
