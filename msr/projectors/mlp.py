"""LLaVA-1.5 MLP projector (`mlp2x_gelu`; Liu et al., "Improved Baselines with Visual Instruction
Tuning", arXiv 2310.03744): Linear(d→c) → GELU → Linear(c→c) on every patch; keeps all N tokens.

`depth=1` is LLaVA-1's linear projector. By design it cannot produce M < N: num_queries must be N.
"""

from __future__ import annotations

from torch import Tensor

from msr.projectors.base import Projector
from msr.projectors.grid import Grid
from msr.projectors.layers import build_mlp, mlp_macs


class MLPProjector(Projector, name="mlp"):
    """Per-token MLP. (B, N, d) -> (B, N, c)."""

    keeps_all_tokens = True

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
            self._check_tokens(self.grid[0] * self.grid[1])
        self.depth = depth
        self.mlp = build_mlp(vision_dim, llm_dim, depth, "gelu")

    def _check_tokens(self, num_patches: int) -> None:
        if num_patches != self.num_queries:
            raise ValueError(
                f"mlp keeps every patch token, so num_queries must equal N={num_patches}, "
                f"got {self.num_queries}; use a compressing projector for M < N"
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (B, N, c)"""
        self.input_grid(x)
        self._check_tokens(x.shape[1])
        return self.mlp(x)

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        return mlp_macs(self.vision_dim, self.llm_dim, self.depth, batch * grid[0] * grid[1])
