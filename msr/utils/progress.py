"""One progress display for every command: a rich bar per label (a stage, a benchmark), with a short
note beside it (loss and lr, images per second)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class Bars:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def set(self, label: str, done: int, total: int | None = None, note: str = "") -> None:
        """`label` at `done` of `total` (a new bar the first time a label is seen)."""
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total, note=note)
            self.started[label] = time.perf_counter()
        self.progress.update(self.tasks[label], completed=done, total=total, note=note)

    def advance(self, label: str, n: int, unit: str) -> None:
        """`n` more done; the note is the rate in `unit`s per second since the bar started."""
        task = self.tasks.get(label)
        done = (self.progress.tasks[task].completed if task is not None else 0) + n
        total = self.progress.tasks[task].total if task is not None else None
        seconds = time.perf_counter() - self.started.get(label, time.perf_counter())
        rate = done / seconds if seconds > 0 else 0.0
        self.set(
            label, int(done), int(total) if total is not None else None, f"{rate:.0f} {unit}/s"
        )


@contextmanager
def bars(console: Console) -> Iterator[Bars]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        yield Bars(progress)
