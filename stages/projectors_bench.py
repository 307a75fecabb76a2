"""Stage `projectors_bench`: time every projector; write projectors_bench.json (metrics) and .md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msr.config import Params
from msr.profile.projector_bench import bench_projectors
from msr.report.projectors_bench import render
from msr.utils.io import write_report


def run(params: Params, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the benchmark of `params.bench`; returns the result written to `out_dir` (default reports/)."""
    result = bench_projectors(params.bench, params.projector.options)
    out = Path(out_dir) if out_dir is not None else Path(params.paths.reports)
    write_report(out / "projectors_bench", result, render(result))
    return result
