"""The efficiency report: `profile.md` with a table in the shape of the paper's Table 7 for the
active projector, the comparison across projectors and budgets, and a bar plot. Projector MACs
are shown in both conventions side by side: pure (every multiply-accumulate) and ptflops' (the
paper's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msr.report.markdown import num, si, table
from msr.utils.io import atomic_save_figure

PURE = "proj. MACs (pure)"
PTFLOPS = "proj. MACs (ptflops convention, as the paper's FLOPs column)"
PTFLOPS_NOTE = (
    f"Projector columns: *{PURE}* is `projector_macs`, every multiply-accumulate the "
    f"implementation runs; *{PTFLOPS}* is `projector_macs_ptflops`, counted the way ptflops' "
    "pytorch backend counts (what the paper's Table 7 calls FLOPs are these MACs)."
)


def render(r: dict[str, Any]) -> str:
    a, meas = r["active"], r.get("measured", {})
    lines = ["# Efficiency profile", "", f"Conventions: {r['conventions']}", "", PTFLOPS_NOTE, ""]
    lines += ["## Active configuration (Table 7 layout)", ""]
    header = [
        "vision tokens",
        "total MACs",
        PURE,
        PTFLOPS,
        "LLM MACs",
        "KV cache",
        "params (vision / projector / LLM)",
        "projector ms",
        "TTFT ms",
        "decode tok/s",
    ]
    row = _row(a, meas)
    lines += [
        table(
            header,
            [
                [
                    a["visual_tokens"],
                    si(a["total_macs"]),
                    si(a["projector_macs"]),
                    si(a["projector_macs_ptflops"]),
                    si(a["llm_macs"]),
                    si(a["kv_cache_bytes"], "B"),
                    f"{si(a['params']['vision'])} / {si(a['params']['projector'])} / {si(a['params']['llm'])}",
                    *row,
                ]
            ],
            "r" * len(header),
        ),
        "",
    ]
    p = a["prompt"]
    lines += [
        f"With a typical prompt ({a['visual_tokens']} visual + {p['text_tokens']} text tokens): "
        f"LLM {si(p['llm_macs'])}MACs, KV cache {si(p['kv_cache_bytes'], 'B')}.",
        "",
    ]
    if "skipped" in meas:
        lines += [f"Measured: {meas['skipped']}.", ""]
    elif meas:
        lines += [
            f"Measured on {meas['device']} in {meas['dtype']}: TTFT = vision {num(meas['vision_ms'], 1)} ms + projector "
            "+ LLM prefill of visual and text tokens; peak memory "
            f"{si(meas['peak_memory_bytes'], 'B')} ({meas['peak_memory_kind']}).",
            "",
        ]
    if r.get("comparison"):
        lines += ["## Projectors and budgets", ""]
        header = [
            "projector",
            "M",
            "total MACs",
            PURE,
            PTFLOPS,
            "LLM MACs",
            "KV cache",
            "projector params",
            "projector ms",
            "TTFT ms",
            "decode tok/s",
        ]
        rows = [
            [
                f"`{c['projector']}`",
                c["visual_tokens"],
                si(c["total_macs"]),
                si(c["projector_macs"]),
                si(c["projector_macs_ptflops"]),
                si(c["llm_macs"]),
                si(c["kv_cache_bytes"], "B"),
                si(c["params"]["projector"]),
                *_row(c, meas),
            ]
            for c in r["comparison"]
        ]
        lines += [table(header, rows, "lr" + "r" * (len(header) - 2)), ""]
        if r.get("plot"):
            lines += [f"![cost per projector and budget]({r['plot']})", ""]
    if r.get("not_run"):
        lines += ["Not run: " + "; ".join(r["not_run"]), ""]
    return "\n".join(lines)


def _row(c: dict[str, Any], meas: dict[str, Any]) -> list[str]:
    key = f"{c['projector']}@{c['visual_tokens']}"
    p = meas.get("projectors", {}).get(key)
    llm = meas.get("llm", {}).get(str(c["visual_tokens"]))
    if not p or not llm:
        return ["–", "–", "–"]
    ttft = meas["vision_ms"] + p["projector_ms"] + llm["prefill_ms"]
    return [num(p["projector_ms"], 2), num(ttft, 1), num(llm["decode_tokens_per_s"], 0)]


def plot(r: dict[str, Any], path: Path) -> Path:
    """Bars of LLM + projector MACs per configuration, and measured TTFT when available."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["comparison"]
    labels = [f"{c['projector']} M={c['visual_tokens']}" for c in rows]
    meas = r.get("measured", {})
    panels = 2 if meas.get("llm") else 1
    fig, axes = plt.subplots(
        panels, 1, figsize=(max(8, 0.5 * len(rows)), 4.2 * panels), squeeze=False
    )
    ax = axes[0][0]
    llm = [c["llm_macs"] / 1e9 for c in rows]
    proj = [c["projector_macs"] / 1e9 for c in rows]
    ax.bar(labels, llm, label="LLM (visual tokens)")
    ax.bar(labels, proj, bottom=llm, label="projector")
    ax.set_ylabel("GMACs per image")
    ax.legend()
    ax.tick_params(axis="x", labelsize=8, labelrotation=60)
    if panels == 2:
        ttft = []
        for c in rows:
            row = _row(c, meas)
            ttft.append(float(row[1]) if row[1] != "–" else 0.0)
        axes[1][0].bar(labels, ttft, color="tab:green")
        axes[1][0].set_ylabel(f"TTFT ms ({meas['device']})")
        axes[1][0].tick_params(axis="x", labelsize=8, labelrotation=60)
    for row_axes in axes:
        for axis in row_axes:
            for label in axis.get_xticklabels():
                label.set_horizontalalignment("right")
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=110)
