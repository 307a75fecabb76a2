"""Step metrics: a log line, and dvclive files so `dvc plots` and `dvc exp show` see training.

dvclive writes `<dir>/metrics.json` (the last values plus the run summary) and one TSV per metric
under `<dir>/plots/metrics/train/`; dvc.yaml declares both. They hold what the run learned (loss,
lr, counts), never how fast it ran: DVC outs carry no timings, so a rerun that trains the same
weights writes the same files. Throughput, seconds and peak GPU memory go to the log line and to
`<dir>/timings.json` (not a DVC out, not in git). Only rank 0 writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from msr.utils.io import atomic_write_json

log = logging.getLogger(__name__)
TRACKED = ("loss", "lr")  # step metrics that go to dvclive; the rest are measurements
SUMMARY = ("steps", "samples", "tokens", "first_loss", "last_loss", "skipped", "unused")
TIMINGS = ("seconds", "data_wait_seconds", "startup_wait_seconds")
TIMINGS_FILE = "timings.json"


class MetricLogger:
    def __init__(self, directory: Path | None, *, enabled: bool, resumed_step: int = 0) -> None:
        self.live: Any = None
        self.enabled, self.directory = enabled, directory
        self.last: dict[str, float] = {}  # the last logged step metrics
        if enabled and directory is not None:
            from dvclive import Live

            self.live = Live(
                str(directory), resume=resumed_step > 0, save_dvc_exp=False, dvcyaml=None
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.last = metrics
        if self.live is not None:
            self.live.step = step
            for key in TRACKED:
                if key in metrics:
                    self.live.log_metric(f"train/{key}", metrics[key])
            self.live.make_summary()

    def close(self, summary: dict[str, Any]) -> None:
        """The run's totals into metrics.json; its seconds, throughput and peak GPU memory (on
        CUDA) into timings.json."""
        if self.live is None:
            return
        for key in SUMMARY:
            self.live.summary[key] = summary[key]
        self.live.end()
        assert self.directory is not None
        seconds = max(float(summary["seconds"]), 1e-9)
        atomic_write_json(
            self.directory / TIMINGS_FILE,
            {
                **{k: summary[k] for k in TIMINGS},
                "samples_per_s": summary["samples"] / seconds,
                "tokens_per_s": summary["tokens"] / seconds,
                **{k: v for k, v in self.last.items() if k == "max_memory_gb"},
            },
        )
