"""The evaluation report: `eval.json` (DVC metrics) and `eval.md` — a results row in the layout of
the paper's Table 1 with its "Avg." column, every metric per benchmark, and the synthetic sets by
question category against each category's majority-answer baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from msr.config import Params
from msr.eval.benchmarks.mmvet import NOT_SCORED
from msr.eval.stats import avg_interval
from msr.report.markdown import num, table

COLUMNS = {  # benchmark -> column title (metric)
    "vqav2": "VQAv2 (val acc)",
    "gqa": "GQA (acc)",
    "sqa": "SQA-IMG (acc)",
    "textvqa": "TextVQA (acc)",
    "pope": "POPE (F1)",
    "mme": "MME (perception)",
    "mmbench": "MMB (circular)",
    "seed": "SEED-I (acc)",
    "mmstar": "MMStar (avg)",
    "ocrbench": "OCRBench (/1000)",
    "mmvet": "MM-Vet",
    "synth_textvqa": "synth TextVQA",
    "synth_pope": "synth POPE (F1)",
    "synth_mmbench": "synth MMB",
    "synth_gqa": "synth GQA",
}


def summarize(
    results: dict[str, Any],
    params: Params,
    fingerprint: str,
    items: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """eval.json: headline scores, every metric, 95 % intervals, categories and answer spreads;
    with `eval.reference`, Avg. (and its bootstrap interval when `items` are given)."""
    headline = {
        n: r["metrics"].get(r["main"]) for n, r in results.items() if r["main"] in r["metrics"]
    }
    summary: dict[str, Any] = {
        "model": {
            "fingerprint": fingerprint,
            "projector": params.projector.name,
            "num_queries": params.projector.num_queries,
            "llm": params.llm.model,
            "vision": params.vision.model,
        },
        "benchmarks": {n: {**r["metrics"], "n": r["n"]} for n, r in results.items()},
        "headline": headline,
        "main": {n: r["main"] for n, r in results.items()},
        "intervals": {n: r["interval"] for n, r in results.items() if "interval" in r},
        "categories": {n: r["categories"] for n, r in results.items() if r["categories"]},
        "answers": {n: r["answers"] for n, r in results.items() if "answers" in r},
        "notes": {n: NOT_SCORED for n in results if n == "mmvet"},
        "reference": params.eval.reference,
        "avg": None,
    }
    if params.eval.reference:
        ref = json.loads(Path(params.eval.reference).read_text())["headline"]
        ratios = {k: v / ref[k] for k, v in headline.items() if v is not None and ref.get(k)}
        summary["avg"] = 100 * sum(ratios.values()) / len(ratios) if ratios else None
        if ratios and items:
            ci = avg_interval(ratios, {k: items[k]["scores"] for k in ratios if k in items})
            summary["avg_interval"] = None if ci is None else list(ci)
        summary["reference_headline"] = ref
    return summary


def render(s: dict[str, Any]) -> str:
    m = s["model"]
    names = [n for n in COLUMNS if n in s["benchmarks"]]
    names += [n for n in s["benchmarks"] if n not in COLUMNS]  # eval.custom sets, by their name
    header = ["Model", "Projector", "M", *[COLUMNS.get(n, n) for n in names], "Avg."]
    rows = [
        [
            "this run",
            f"`{m['projector']}`",
            m["num_queries"],
            *[num(s["headline"].get(n), 1) if n != "mmvet" else "–" for n in names],
            num(s["avg"], 1),
        ]
    ]
    if s.get("reference_headline"):
        ref = s["reference_headline"]
        rows.append(["reference", "", "", *[num(ref.get(n), 1) for n in names], "100.0"])
    ivals = s.get("intervals", {})
    lines = [
        "# Evaluation",
        "",
        f"Model `{m['fingerprint']}`: {m['vision']} → `{m['projector']}` (M = {m['num_queries']}) → {m['llm']}. "
        "Greedy decoding with LLaVA-1.5's prompts; scores use each benchmark's official rule.",
        "",
        "## Results",
        "",
        table(header, rows, "lll" + "r" * (len(header) - 3)),
        "",
        "Avg. is the mean over benchmarks of this run's headline score divided by the reference run's "
        + (
            f"(`{s['reference']}`)."
            if s.get("reference")
            else "(no reference run set: `eval.reference`)."
        ),
        "",
    ]
    if s.get("avg_interval"):
        lo, hi = s["avg_interval"]
        lines += [
            f"Avg. 95 % interval (bootstrap over each set's scored units): [{lo:.1f}, {hi:.1f}].",
            "",
        ]
    if ivals:
        lines += [
            "## 95 % intervals",
            "",
            "Per set, the mean of its scored units (questions; MMBench: a question with all its "
            "circular copies) with its 95 % interval (Wilson for right/wrong units, bootstrap for "
            "soft scores). About ±14 points at 50 units, ±6 at 300.",
            "",
            table(
                ["set", "unit metric", "units", "score", "95 % interval"],
                [
                    [n, v["metric"], v["n"], num(v["value"], 1), f"[{v['lo']:.1f}, {v['hi']:.1f}]"]
                    for n, v in ivals.items()
                ],
                "llrrl",
            ),
            "",
        ]
    lines += ["## Every metric", ""]
    for n in names:
        metrics = {k: v for k, v in s["benchmarks"][n].items() if k != "n"}
        note = s["notes"].get(n)
        body = note if note else ", ".join(f"{k} {num(v, 2)}" for k, v in metrics.items())
        lines.append(f"- **{n}** ({s['benchmarks'][n]['n']} questions): {body}")
    if s.get("answers"):
        lines += [
            "",
            "## Answer spread",
            "",
            "The most common answer of each set and its share, beside the most common gold answer's:",
            "a share far above the gold's (one option letter for most multiple-choice questions)",
            "means the model collapsed onto a prior instead of reading the image.",
            "",
            table(
                ["set", "most common answer", "share", "distinct answers", "most common gold"],
                [
                    [
                        n,
                        f"`{a['top']}`",
                        f"{a['top_share']:.1f} %",
                        a["distinct"],
                        f"`{a['gold_top']}` {a['gold_top_share']:.1f} %"
                        if "gold_top" in a
                        else "–",
                    ]
                    for n, a in s["answers"].items()
                ],
                "llrrl",
            ),
        ]
    if s["categories"]:
        lines += [
            "",
            "## By question category",
            "",
            "Accuracy per category (synth GQA: per question type) with its 95 % interval, beside "
            "what a model that ignores the question reaches: the majority answer of the category "
            "and the question-blind bound (per image, the best single answer to all its questions "
            "of the category). Minimal pairs count only when both questions are right; a "
            "question-blind policy gets none. A difference inside an interval is no difference.",
            "",
        ]
        rows = [
            [
                n,
                cat,
                v["n"],
                _with_ci(v, "acc", "lo", "hi"),
                num(v["majority"], 1),
                num(v.get("blind"), 1),
                v.get("pairs", "–"),
                _with_ci(v, "pair_acc", "pair_lo", "pair_hi"),
            ]
            for n, cats in s["categories"].items()
            for cat, v in cats.items()
        ]
        lines.append(
            table(
                [
                    "set",
                    "category",
                    "questions",
                    "accuracy [95 %]",
                    "majority",
                    "question-blind",
                    "pairs",
                    "pair accuracy [95 %]",
                ],
                rows,
                "llrlrrrl",
            )
        )
    lines.append("")
    return "\n".join(lines)


def _with_ci(v: dict[str, Any], key: str, lo: str, hi: str) -> str:
    if v.get(key) is None:
        return "–"
    if v.get(lo) is None:
        return num(v[key], 1)
    return f"{v[key]:.1f} [{v[lo]:.1f}, {v[hi]:.1f}]"
