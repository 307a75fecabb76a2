"""Stage `report`: one page that summarises the run from the other stages' reports."""

from __future__ import annotations

from pathlib import Path

from msr.config import Params
from msr.report.summary import summary
from msr.utils.io import atomic_write_text


def run(params: Params) -> str:
    text = summary(params)
    atomic_write_text(Path(params.paths.reports) / "summary.md", text)
    return text
