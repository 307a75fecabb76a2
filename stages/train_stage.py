"""Shared by the `pretrain` and `finetune` stages: run under the params' launcher, or in-process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from msr.config import Params
from msr.train.distributed import inside_launcher, launch_command
from msr.train.loop import Progress, Stage, TrainResult, stage_config, train
from msr.train.resume import Resume


def needs_launch(params: Params, stage: Stage) -> bool:
    """True when the params ask for a launcher and this process was not started by one."""
    return stage_config(params, stage).launcher != "none" and not inside_launcher()


def relaunch(params: Params, stage: Stage, argv: list[str]) -> int:
    """Start this same command under the launcher (torchrun / deepspeed); returns its exit code."""
    cfg = stage_config(params, stage)
    return subprocess.call(launch_command(cfg.launcher, cfg.num_devices, argv))


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
