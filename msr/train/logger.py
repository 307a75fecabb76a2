"""Step metrics: a log line, and dvclive files so `dvc plots` and `dvc exp show` see training.

dvclive writes `<dir>/metrics.json` (the last values plus the run summary) and one TSV per metric
under `<dir>/plots/metrics/train/`; dvc.yaml declares both. Only rank 0 writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricLogger:
    def __init__(self, directory: Path | None, *, enabled: bool, resumed_step: int = 0) -> None:
        self.live: Any = None
        self.enabled = enabled
        if enabled and directory is not None:
            from dvclive import Live

            self.live = Live(
                str(directory), resume=resumed_step > 0, save_dvc_exp=False, dvcyaml=None
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if self.live is not None:
            self.live.step = step
            for key, value in metrics.items():
                self.live.log_metric(f"train/{key}", value)
            self.live.make_summary()

    def close(self, summary: dict[str, Any]) -> None:
        if self.live is None:
            return
        for key in (
            "steps",
            "samples",
            "tokens",
            "first_loss",
            "last_loss",
            "seconds",
            "data_wait_seconds",
            "skipped",
            "unused",
        ):
            self.live.summary[key] = summary[key]
        self.live.end()
