"""Pixel-shuffle projector (space-to-depth, then an MLP head).

Each s_h×s_w block of the grid becomes one token of s_h·s_w·d channels, channel (dy·s_w + dx)·d + ch,
tokens row-major (InternVL `ps_version` v2 and nanoVLM agree on this order). Heads:
- `internvl` (default; the paper cites InternVL, Chen et al., arXiv 2312.14238; `mlp1` in
  https://github.com/OpenGVLab/InternVL): LayerNorm(s²d) → Linear(s²d→c) → GELU → Linear(c→c).
- `nanovlm` (https://github.com/huggingface/nanoVLM, `models/modality_projector.py`): one
  Linear(s²d→c) without bias, initialised N(0, 0.02).
InternVL fixes the ratio to 0.5 (s = 2, M = 144); other budgets use the integer s = H/√M, so the
head's input width (and parameter count) grows with s: this is how the design scales, not a choice.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from msr.projectors.base import Projector
from msr.projectors.grid import DEFAULT_GRID, Grid, region_layout
from msr.projectors.layers import space_to_depth


class PixelShuffleProjector(Projector, name="pixel_shuffle"):
    """Space-to-depth + MLP head. (B, N, d) -> (B, M, c); the grid sizes the head (default 24×24)."""

    def __init__(
        self,
        *,
        vision_dim: int,
        llm_dim: int,
        num_queries: int,
        head: Literal["internvl", "nanovlm"] = "internvl",
        grid: Grid | None = None,
    ) -> None:
        super().__init__(
            vision_dim=vision_dim,
            llm_dim=llm_dim,
            num_queries=num_queries,
            grid=grid or DEFAULT_GRID,
        )
        assert self.grid is not None
        self.layout = region_layout(self.grid, num_queries)
        block = (self.grid[0] // self.layout[0]) * (self.grid[1] // self.layout[1])
        width = block * vision_dim  # s_h·s_w·d
        self.head_name = head
        if head == "internvl":
            self.head: nn.Module = nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, llm_dim),
                nn.GELU(),
                nn.Linear(llm_dim, llm_dim),
            )
        elif head == "nanovlm":
            self.head = nn.Linear(width, llm_dim, bias=False)
            nn.init.normal_(self.head.weight, std=0.02)
        else:
            raise ValueError(
                f"unknown pixel_shuffle head {head!r}; accepted: 'internvl', 'nanovlm'"
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (B, M, c)"""
        grid = self.input_grid(x)
        return self.head(space_to_depth(x, grid, self.layout))  # (B, M, s_h·s_w·d) -> (B, M, c)

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        tokens = batch * self.num_queries
        width = self.vision_dim * (grid[0] * grid[1]) // self.num_queries
        macs = tokens * width * self.llm_dim
        return macs + (tokens * self.llm_dim * self.llm_dim if self.head_name == "internvl" else 0)
