"""Stage `profile`: analytic cost of the active configuration and of every projector × budget,
measured latencies on this device, reports/profile.{json,md} and a bar plot. Projector MACs come in
both conventions (pure and ptflops'); `convention` records which one the caller reports."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from msr.config import Params
from msr.models.configs import vision_grid
from msr.profile.analytic import CONVENTIONS, analytic_profile, projector_macs_key
from msr.profile.measure import measure
from msr.projectors import PROJECTORS, active_options, output_tokens
from msr.report.profile import plot, render
from msr.utils.io import atomic_write_json, write_report

log = logging.getLogger(__name__)


def analytic(params: Params, convention: str = "pure") -> dict[str, Any]:
    """The DESIGN §3 keys for the active params, plus vision MACs and a typical prompt."""
    projector_macs_key(convention)  # ValueError naming the accepted conventions
    return {**analytic_profile(params), "conventions": CONVENTIONS, "convention": convention}


def run(params: Params, convention: str = "pure") -> dict[str, Any]:
    projector_macs_key(convention)
    active = analytic_profile(params)
    rows, not_run = [], []
    grid = vision_grid(params.vision)
    n = grid[0] * grid[1]
    for name in params.profile.projectors or sorted(PROJECTORS):
        budgets = list(dict.fromkeys(output_tokens(name, m, n) for m in params.profile.budgets))
        opts = params.projector.options.get(name, {})
        for m in budgets:
            try:
                rows.append((analytic_profile(params, projector=name, num_queries=m), opts))
            except ValueError as err:
                not_run.append(f"{name} at M={m}: {err}")
    configs = [(c["projector"], c["num_queries"], o) for c, o in rows]
    configs.append((active["projector"], active["num_queries"], active_options(params.projector)))
    measured = measure(params, configs)
    result: dict[str, Any] = {
        **{
            k: active[k]
            for k in (
                "visual_tokens",
                "projector_macs",
                "projector_macs_ptflops",
                "llm_macs",
                "vision_macs",
                "total_macs",
                "kv_cache_bytes",
                "params",
            )
        },
        "conventions": CONVENTIONS,
        "convention": convention,
        "active": active,
        "comparison": [c for c, _ in rows],
        "measured": measured,
        "not_run": not_run,
    }
    reports = Path(params.paths.reports)
    if result["comparison"]:
        plot(result, reports / "plots" / "profile.png")
        result["plot"] = "plots/profile.png"
    write_report(reports / "profile", result, render(result))
    return result


def command(
    params: Params, convention: str, analytic_only: bool, out: Path | None
) -> dict[str, Any]:
    """What `msr profile` prints: the summary in `convention` (`--analytic`: the meta-device
    costs alone, written to `out` when given)."""
    key = projector_macs_key(convention)  # ValueError naming the accepted conventions
    if analytic_only:
        result = analytic(params, convention)
        if out is not None:
            atomic_write_json(out, result)
    else:
        result = run(params, convention)
    fields = ("visual_tokens", key, "llm_macs", "kv_cache_bytes", "params", "convention")
    return {k: result[k] for k in fields}
