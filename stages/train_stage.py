"""Stages `pretrain` and `finetune`: one training stage, in this process (the command relaunches
itself under the params' launcher first, `msr.runtime.relaunch`)."""

from __future__ import annotations

from pathlib import Path

from msr.config import Params
from msr.train.loop import Progress, Stage, TrainResult, train
from msr.train.resume import Resume


def run(
    params: Params,
    stage: Stage,
    *,
    resume: Resume,
    progress: Progress | None = None,
    trace_dir: Path | None = None,
) -> TrainResult:
    log_dir = Path(params.paths.reports) / stage
    return train(
        params, stage, resume=resume, progress=progress, log_dir=log_dir, trace_dir=trace_dir
    )
