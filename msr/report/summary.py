"""`reports/summary.md`: the run on one page — configuration, training, evaluation headline,
efficiency of the active projector and the projector benchmark targets — from the stages' json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from msr.config import Params
from msr.projectors import active_options, output_tokens
from msr.report.markdown import num, si


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


class SummaryError(ValueError):
    """The params describe another run than the one whose reports are on disk."""


def recorded(params: Params) -> dict[str, Any] | None:
    """What the trained model in `paths.finetune` was built from (its `mllm.json`), or None."""
    path = Path(params.paths.finetune) / "mllm.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_same_run(params: Params, run: dict[str, Any]) -> None:
    """SummaryError listing each value where the params (e.g. with `--set`) and the trained model
    differ: a summary states what produced its numbers, not what the params would produce."""
    p, proj = params.projector, run["projector"]
    grid = proj.get("grid") or [0, 0]
    asked = json.loads(json.dumps(active_options(p)))  # the json form, as the model stores it
    pairs = {
        "vision.model": (params.vision.model, run["vision"]["model"]),
        "llm.model": (params.llm.model, run["llm"]["model"]),
        "projector.name": (p.name, proj["name"]),
        "M": (output_tokens(p.name, p.num_queries, grid[0] * grid[1]), proj["num_queries"]),
        **{
            f"projector.options.{p.name}.{k}": (v, proj["options"].get(k)) for k, v in asked.items()
        },
    }
    diffs = [f"{k}: params {a!r}, model {b!r}" for k, (a, b) in pairs.items() if a != b]
    if diffs:
        raise SummaryError(
            f"the model in {params.paths.finetune} was not trained with these params "
            f"({'; '.join(diffs)}): rerun the pipeline (`dvc repro`) or summarise without --set"
        )


def summary(params: Params) -> str:
    r = Path(params.paths.reports)
    run = recorded(params)
    if run is not None:
        check_same_run(params, run)
    p = params.projector
    template = run["template"] if run is not None else params.llm.template
    lines = [
        "# Run summary",
        "",
        f"Vision `{params.vision.model}` (layer {params.vision.feature_layer}, {params.vision.select}) → "
        f"projector `{p.name}` (M = {p.num_queries}, options {active_options(p)}) → LLM `{params.llm.model}` "
        f"(template `{template}`)" + ("." if run is not None else " — no trained model yet."),
        "",
    ]
    for stage in ("pretrain", "finetune"):
        m = _load(r / stage / "metrics.json")
        if m:
            lines.append(f"- {stage}: {m.get('steps')} steps, {m.get('samples')} samples, loss "
                         f"{num(m.get('first_loss'), 3)} → {num(m.get('last_loss'), 3)}"
                         + (f"; {m['skipped']} samples skipped as unusable, {m['unused']} read but not "
                            "trained on (skips.json)" if "skipped" in m else ""))  # fmt: skip
    ev = _load(r / "eval.json")
    if ev:
        heads = ", ".join(f"{k} {num(v, 1)}" for k, v in ev["headline"].items() if v is not None)
        lines.append(f"- evaluation: {heads}; Avg. {num(ev.get('avg'), 1)} (details: eval.md)")
    prof = _load(r / "profile.json")
    if prof:
        lines.append(f"- efficiency: {prof['visual_tokens']} visual tokens, projector {si(prof['projector_macs'])}MACs, "
                     f"LLM {si(prof['llm_macs'])}MACs, KV cache {si(prof['kv_cache_bytes'], 'B')} (details: profile.md)")  # fmt: skip
    bench = _load(r / "projectors_bench.json")
    if bench and bench.get("targets"):
        t = bench["targets"]
        speed = ", ".join(
            f"{dt} {v['speedup']:.2f}×"
            for dt, v in t.get("speedup_vs_textbook_fwd_bwd", {}).items()
        )
        lines.append(
            f"- MS-Resampler forward+backward vs the textbook loop: {speed} (details: projectors_bench.md)"
        )
        share = ", ".join(
            f"{dt} {100 * v['share']:.0f}%" for dt, v in t.get("fusion_share_fwd_bwd", {}).items()
        )
        if share:
            lines.append(
                f"- the channel-wise fusion's share of MS-Resampler forward+backward: {share}"
            )
    lines.append("")
    return "\n".join(lines)
