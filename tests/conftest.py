"""Shared fixtures: deterministic seeds, small dimensions, a repo-root path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Small but non-trivial widths: d ≠ c so a transposed weight cannot pass by accident.
D, C = 32, 48


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
