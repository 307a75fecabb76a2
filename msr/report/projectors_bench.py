"""Render the projector benchmark result (json) as `projectors_bench.md`."""

from __future__ import annotations

from typing import Any

from msr.profile.projector_bench import flatten
from msr.report.markdown import num, si, table

CONVENTIONS = (
    "MACs are multiply-accumulates of matmuls, convs and attention (FLOPs = 2 × MACs), per batch; "
    "elementwise ops, norms, pooling and softmax are not counted. *analytic* is each projector's "
    "closed-form formula, *counted* is `torch.utils.flop_counter` on the code as it runs. Forward runs "
    "under no_grad; forward+backward keeps the features frozen (no gradient to X), as in training. "
    "Times are medians of round-robin repeats after warm-up; compare ratios within one table. "
    "*fusion share* = 1 − (MS-Resampler's branches alone) / (the whole MS-Resampler): the cost of "
    "the fusion (Eq. 7–8); the `(torch fusion)` row runs it with PyTorch ops instead of the native "
    "kernel."
)


def render(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# Projector benchmark",
        "",
        f"Device: {env['device']} ({env['cpu']}), {env['threads']} threads, torch {env['torch']}. "
        + "Matmul peak measured in this run: "
        + ", ".join(
            f"{dt} {v:.{0 if v >= 10 else 1}f} GFLOP/s" for dt, v in result["peak_gflops"].items()
        )
        + f". Protocol: median of {result['protocol']['repeats']} repeats after "
        f"{result['protocol']['warmup']} warm-up.",
        "",
        CONVENTIONS,
        "",
    ]
    lines += _targets(result.get("targets", {}))
    rows = flatten(result["results"])
    for scale, dims in result["scales"].items():
        for dt in sorted({r["dtype"] for r in rows if r["scale"] == scale}, reverse=True):
            lines += [
                f"## {scale} scale, {dt}",
                "",
                f"B = {dims['batch']}, grid {dims['grid'][0]}×{dims['grid'][1]} "
                f"(N = {dims['grid'][0] * dims['grid'][1]}), d = {dims['vision_dim']}, "
                f"c = {dims['llm_dim']}, M = {dims['num_queries']}.",
                "",
                _scale_table(rows, scale, dt),
                "",
            ]
    if result.get("skipped"):
        lines += ["## Not run", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(result["skipped"].items())]
        lines.append("")
    return "\n".join(lines)


def _scale_table(rows: list[dict[str, Any]], scale: str, dt: str) -> str:
    pick = {
        (r["projector"], r["mode"]): r for r in rows if r["scale"] == scale and r["dtype"] == dt
    }
    names = list(
        dict.fromkeys(r["projector"] for r in rows if r["scale"] == scale and r["dtype"] == dt)
    )
    header = [
        "projector",
        "M",
        "params",
        "fwd MACs analytic",
        "fwd MACs counted",
        "fwd ms",
        "fwd GFLOP/s",
        "fwd % peak",
        "fwd / mlp",
        "fwd+bwd ms",
        "fwd+bwd % peak",
        "fwd+bwd / mlp",
        "fusion share fwd",
        "fusion share fwd+bwd",
    ]
    body = []
    for name in names:
        f, b = pick.get((name, "forward")), pick.get((name, "forward+backward"))
        if f is None or b is None:
            continue
        body.append(
            [
                f"`{name}`",
                f["tokens"],
                si(f["params"]),
                si(f["macs_analytic"]),
                si(f["macs_counted"]),
                num(f["median_ms"], 1),
                num(f["gflops"], 0),
                num(100 * f["peak_fraction"], 0),
                num(f["ratio_to_mlp"]),
                num(b["median_ms"], 1),
                num(100 * b["peak_fraction"], 0),
                num(b["ratio_to_mlp"]),
                _share(f),
                _share(b),
            ]
        )
    return table(header, body)


def _share(row: dict[str, Any]) -> str:
    share = row.get("fusion_share")
    return "" if share is None else f"{100 * share:.0f}%"


def _targets(targets: dict[str, Any]) -> list[str]:
    if not targets:
        return []
    lines = ["## Targets (paper scale)", ""]
    for dt, t in targets.get("speedup_vs_textbook_fwd_bwd", {}).items():
        lines.append(
            f"- MS-Resampler forward+backward vs the textbook loop, {dt}: **{t['speedup']:.2f}×** "
            f"(target ≥ {t['target']:.0f}×: {'met' if t['met'] else 'NOT met'})"
        )
    for dt, t in targets.get("fusion_share_fwd_bwd", {}).items():
        before = t.get("torch_fusion_share")
        lines.append(
            f"- MS-Resampler's channel-wise fusion, share of its forward+backward, {dt}: "
            f"**{100 * t['share']:.1f}%** (target ≤ {100 * t['target']:.0f}%: "
            f"{'met' if t['met'] else 'NOT met'})"
            + (f"; with the PyTorch fusion {100 * before:.1f}%" if before is not None else "")
        )
    for dt, t in targets.get("forward_vs_mlp", {}).items():
        lines.append(
            f"- MS-Resampler forward time / `mlp` forward time, {dt}: **{t['ratio']:.2f}** "
            f"(target < 1: {'met' if t['met'] else 'NOT met'})"
        )
    m = targets.get("macs_vs_formula")
    if m:
        lines.append(
            f"- MS-Resampler counted MACs {m['counted']:,} vs formula {m['formula']:,}: "
            f"{100 * m['relative_difference']:+.2f}% (target within ±5%: {'met' if m['met'] else 'NOT met'}; "
            "the difference is the fusion MLP, which the formula leaves out)"
        )
    lines.append("")
    return lines
