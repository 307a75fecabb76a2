"""Named sets of projector configurations for `msr probe` (params `probe.grid`), like the paper's
tables are named recipes: an experiment picks one by name instead of spelling a list in params.

`claim` tests the paper's central claim (multi-scope ≥ the best single scope, the gap widening as
M shrinks; its Table 4): MS-Resampler with kernels {2, 6, 14}, each of those scopes alone (E = 1),
the vanilla resampler, average pooling, pixel-shuffle, and LLaVA-1.5's MLP at all N tokens (the
upper bound: nothing is compressed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProbeSpec:
    label: str  # the row in the tables
    projector: str
    options: dict[str, Any] = field(default_factory=dict)


def _ms(kernels: list[int]) -> dict[str, Any]:
    return {"kernels": kernels, "beta": 4.0, "fusion": "channel_mlp", "fusion_hidden": 8}


GRIDS: dict[str, tuple[ProbeSpec, ...]] = {
    "claim": (
        ProbeSpec("ms_resampler {2,6,14}", "ms_resampler", _ms([2, 6, 14])),
        ProbeSpec("single scope k=2", "ms_resampler", _ms([2])),
        ProbeSpec("single scope k=6", "ms_resampler", _ms([6])),
        ProbeSpec("single scope k=14", "ms_resampler", _ms([14])),
        ProbeSpec("resampler", "resampler"),
        ProbeSpec("avgpool", "avgpool"),
        ProbeSpec("pixel_shuffle", "pixel_shuffle"),
        ProbeSpec("mlp (all N tokens)", "mlp"),
    ),
    "baselines": (
        ProbeSpec("ms_resampler {2,6,14}", "ms_resampler", _ms([2, 6, 14])),
        ProbeSpec("resampler", "resampler"),
        ProbeSpec("avgpool", "avgpool"),
    ),
}


def grid_specs(grid: str, active: str, active_options: dict[str, Any]) -> tuple[ProbeSpec, ...]:
    """The configurations of `grid`; `active` is the params' own projector with its options."""
    if grid == "active":
        return (ProbeSpec(active, active, dict(active_options)),)
    if grid not in GRIDS:
        raise ValueError(f"unknown probe grid {grid!r}; known: active, {', '.join(GRIDS)}")
    return GRIDS[grid]
