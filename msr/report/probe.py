"""The probe report: `probe.json` (DVC metrics), `probe.md` (accuracy per question type and budget,
with intervals and the majority baseline) and `plots/probe.png` (accuracy against M)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from msr.config import Params
from msr.eval.stats import wilson
from msr.probe.questions import TYPES
from msr.report.markdown import table
from msr.utils.io import atomic_save_figure


def _cell(types: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over seeds of one question type: mean ± sd of the runs, the pooled interval."""
    accs = [100 * t["right"] / t["n"] for t in types if t["n"]]
    right, n = sum(t["right"] for t in types), sum(t["n"] for t in types)
    lo, hi = wilson(right, n)
    return {
        "acc": statistics.mean(accs) if accs else None,
        "sd": statistics.stdev(accs) if len(accs) > 1 else None,
        "lo": 100 * lo,
        "hi": 100 * hi,
        "n": n,
        "majority": 100 * sum(t["majority"] for t in types) / n if n else None,
    }


def summarize(runs: list[dict[str, Any]], params: Params) -> dict[str, Any]:
    """Runs grouped by (label, budget) over seeds; 'all' is the mean over the question types."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["label"], r["budget"])].append(r)
    rows = []
    for (label, budget), rs in groups.items():
        ok = [r for r in rs if "types" in r]
        row: dict[str, Any] = {"label": label, "projector": rs[0]["projector"], "M": budget,
                               "seeds": [r["seed"] for r in ok]}  # fmt: skip
        if not ok:
            row["error"] = rs[0].get("error")
            rows.append(row)
            continue
        row["types"] = {t: _cell([r["types"][t] for r in ok]) for t in TYPES}
        per_seed = [
            statistics.mean(
                100 * r["types"][t]["right"] / r["types"][t]["n"]
                for t in TYPES
                if r["types"][t]["n"]
            )
            for r in ok
        ]
        row["all"] = {"acc": statistics.mean(per_seed),
                      "sd": statistics.stdev(per_seed) if len(per_seed) > 1 else None}  # fmt: skip
        shares = [r["scope_share"] for r in ok if "scope_share" in r]
        if shares:
            row["scope_share"] = [round(statistics.mean(v), 4) for v in zip(*shares, strict=True)]
        rows.append(row)
    p = params.probe
    return {
        "settings": {
            "grid": p.grid,
            "scenes": p.scenes,
            "eval_scenes": p.eval_scenes,
            "objects": list(p.objects),
            "steps": p.steps,
            "batch": p.batch,
            "width": p.width,
            "ablation": p.ablation,
            "vision": params.vision.model,
        },
        "rows": rows,
        "runs": runs,
    }


def _fmt(c: dict[str, Any]) -> str:
    if c.get("acc") is None:
        return "–"
    sd = f" ± {c['sd']:.1f}" if c.get("sd") is not None else ""
    return f"{c['acc']:.1f}{sd} [{c['lo']:.1f}, {c['hi']:.1f}]"


def render_markdown(s: dict[str, Any]) -> str:
    st = s["settings"]
    done = [r for r in s["rows"] if "types" in r]
    lines = [
        "# Probe: what survives the projector",
        "",
        f"Each projector of grid `{st['grid']}` is trained from scratch at each budget M with a "
        f"small question-conditioned readout (no LLM) on {st['scenes']} scenes of "
        f"{st['objects'][0]}–{st['objects'][1]} shapes ({st['steps']} steps of {st['batch']} "
        f"images, token width {st['width']}), then scored on {st['eval_scenes']} held-out scenes. "
        "Cells: accuracy, mean ± sd over seeds, and the 95 % Wilson interval of all seeds' answers "
        "pooled. The question-only row is what reading the question but not the image scores "
        "(per question, its most common held-out answer: an upper bound of that policy, fitted on "
        "the held-out answers themselves): a projector is measured by how far above it it gets."
        + (
            f" **Ablation: {st['ablation']}** (the image never reaches the readout)."
            if st["ablation"] != "none"
            else ""
        ),
        "",
    ]
    if done:
        header = ["projector", "M", "seeds", *TYPES, "mean of types"]
        body = [
            [f"`{r['label']}`", r["M"], len(r["seeds"]), *[_fmt(r["types"][t]) for t in TYPES],
             f"{r['all']['acc']:.1f}" + (f" ± {r['all']['sd']:.1f}" if r["all"]["sd"] else "")]
            for r in sorted(done, key=lambda r: (-r["M"], r["label"]))
        ]  # fmt: skip
        majority = ["question only (no image)", "", "",
                    *[f"{done[0]['types'][t]['majority']:.1f}" for t in TYPES], ""]  # fmt: skip
        lines.append(table(header, [*body, majority], "lrr" + "l" * len(TYPES) + "r"))
    failed = [r for r in s["rows"] if "types" not in r]
    if failed:
        lines += ["", "Not run (the design does not fit the budget):", ""]
        lines += [f"- `{r['label']}` at M = {r['M']}: {r['error']}" for r in failed]
    shares = [r for r in done if r.get("scope_share")]
    if shares:
        lines += [
            "",
            "## MS-Resampler: attention inside each branch's scope window",
            "",
            "The share of each branch's attention mass that falls inside its window (Eq. 5's "
            "zeros), averaged over queries, 64 held-out images and seeds, after training.",
            "",
            table(
                ["projector", "M", "share per branch (kernels in order)"],
                [
                    [
                        f"`{r['label']}`",
                        r["M"],
                        ", ".join(f"{100 * v:.1f} %" for v in r["scope_share"]),
                    ]
                    for r in shares
                ],
                "lrl",
            ),
        ]
    return "\n".join(lines) + "\n"


def plot(s: dict[str, Any], path: Path) -> None:
    """Accuracy against M per projector, one panel per question type and one for their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in s["rows"] if "types" in r]
    panels = [*TYPES, "mean of types"]
    fig, grid = plt.subplots(2, 3, figsize=(11.0, 6.4))
    axes = grid.flatten()
    budgets = sorted({r["M"] for r in done})
    labels = list(dict.fromkeys(r["label"] for r in done))
    cmap = plt.get_cmap("tab10")
    for ax, panel in zip(axes, panels, strict=True):
        for i, label in enumerate(labels):
            rs = sorted((r for r in done if r["label"] == label), key=lambda r: r["M"])
            ms = [r["M"] for r in rs]
            if panel == "mean of types":
                ys = [r["all"]["acc"] for r in rs]
                err = [[r["all"]["sd"] or 0.0 for r in rs]] * 2
            else:
                ys = [r["types"][panel]["acc"] for r in rs]
                err = [[y - r["types"][panel]["lo"] for y, r in zip(ys, rs, strict=True)],
                       [r["types"][panel]["hi"] - y for y, r in zip(ys, rs, strict=True)]]  # fmt: skip
            ax.errorbar(ms, ys, yerr=err, marker="o", ms=3, capsize=2, color=cmap(i % 10),
                        label=label, linestyle="-" if len(ms) > 1 else "none")  # fmt: skip
        if panel != "mean of types" and done:
            ax.axhline(done[0]["types"][panel]["majority"], color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(m) for m in budgets])
        ax.minorticks_off()
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("M (visual tokens)", fontsize=8)
    for ax in grid[:, 0]:
        ax.set_ylabel("held-out accuracy (%)")
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("probe: accuracy against M (bars: 95 % interval; mean panel: sd over seeds; "
                 "dotted: question only, no image)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    atomic_save_figure(fig, path)
