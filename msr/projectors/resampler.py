"""Vanilla resampler (paper Eq. 1–2): M learned queries attend to all N patches, one branch, no bias.

Y = softmax(Q Kᵀ / √c) V with K = X W_K, V = X W_V (d→c); no LayerNorm, W_Q, W_O or FFN. It uses the
same exact reassociated evaluation as MS-Resampler (`scoped_attention.py`), so the two compare fairly.
"""

from __future__ import annotations

from torch import Tensor

from msr.projectors.base import Projector
from msr.projectors.grid import Grid
from msr.projectors.scoped_attention import Order, ScopedAttention


class Resampler(Projector, name="resampler"):
    """Learned-query cross-attention. (B, N, d) -> (B, M, c)."""

    def __init__(
        self,
        *,
        vision_dim: int,
        llm_dim: int,
        num_queries: int,
        num_heads: int = 1,
        value_bias: bool = False,
        order: Order = "auto",
        grid: Grid | None = None,
    ) -> None:
        super().__init__(vision_dim=vision_dim, llm_dim=llm_dim, num_queries=num_queries, grid=grid)
        self.attention = ScopedAttention(
            vision_dim=vision_dim,
            llm_dim=llm_dim,
            num_queries=num_queries,
            branches=1,
            num_heads=num_heads,
            value_bias=value_bias,
            order=order,
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (B, M, c)"""
        self.input_grid(x)
        return self.attention(x)[0]  # (1, B, M, c) -> (B, M, c)

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        return self.attention.macs(batch, grid[0] * grid[1])
