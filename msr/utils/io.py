"""Atomic artifact writes: write a temp file next to the target, fsync, then rename over it.

A crash leaves either the old file or the new one, never a truncated artifact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A temp file in the target's directory, renamed to `path` when the block ends without error
    (removed when it raises)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual mode
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temp file in the target's directory, then rename it to `path`."""
    with atomic_file(path) as f:
        write(f)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(f: BinaryIO) -> None:
        f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_report(stem: str | Path, result: Any, markdown: str) -> tuple[Path, Path]:
    """A report's two files, each written atomically: `<stem>.json` (the result, for programs and
    `dvc metrics`) and `<stem>.md` (its rendering, for people)."""
    stem = Path(stem)
    return (
        atomic_write_json(stem.with_name(f"{stem.name}.json"), result),
        atomic_write_text(stem.with_name(f"{stem.name}.md"), markdown),
    )


def atomic_save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """A matplotlib figure saved as PNG through a temp file and a rename; the figure is closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
