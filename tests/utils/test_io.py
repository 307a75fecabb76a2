"""Atomic writes: the target is whole or untouched, whatever happens during the write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

import pytest

from msr.utils.io import atomic_write, atomic_write_text, write_report


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old\n")

    def half(f: BinaryIO) -> None:
        f.write(b"new, but only half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_report_writes_json_and_markdown_beside_each_other(tmp_path: Path) -> None:
    result = {"acc": 0.5, "rows": [1, 2]}
    json_path, md_path = write_report(tmp_path / "r" / "eval.v2", result, "# eval\n")
    assert (json_path.name, md_path.name) == ("eval.v2.json", "eval.v2.md")
    assert json.loads(json_path.read_text()) == result
    assert md_path.read_text() == "# eval\n"
