"""Average-pooling baseline: the exact mean of each of M regions of the patch grid, then LLaVA's
`mlp2x_gelu` (pooling before the MLP, so the MLP runs on M tokens, not N). Pooling visual tokens is
a strong compression baseline (Chen et al., "Efficient Large Multi-modal Models via Visual Context
Compression", arXiv 2406.20092).
"""

from __future__ import annotations

from torch import Tensor

from msr.projectors.base import Projector
from msr.projectors.grid import Grid, region_layout
from msr.projectors.layers import build_mlp, mlp_macs, region_mean


class AvgPoolProjector(Projector, name="avgpool"):
    """Region mean + MLP. (B, N, d) -> (B, M, c)."""

    def __init__(
        self,
        *,
        vision_dim: int,
        llm_dim: int,
        num_queries: int,
        depth: int = 2,
        grid: Grid | None = None,
    ) -> None:
        super().__init__(vision_dim=vision_dim, llm_dim=llm_dim, num_queries=num_queries, grid=grid)
        if self.grid is not None:
            region_layout(self.grid, num_queries)
        self.depth = depth
        self.mlp = build_mlp(vision_dim, llm_dim, depth, "gelu")

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (B, M, c)"""
        grid = self.input_grid(x)
        pooled = region_mean(x, grid, region_layout(grid, self.num_queries))  # (B, M, d)
        return self.mlp(pooled)

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        return mlp_macs(self.vision_dim, self.llm_dim, self.depth, batch * self.num_queries)
