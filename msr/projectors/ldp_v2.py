"""LDP-v2 projector of MobileVLM V2 (Chu et al., arXiv 2402.03766; `LDPNetV2Projector` in
https://github.com/Meituan-AutoML/MobileVLM, `mobilevlm/model/vision_projector.py`).

Linear(d→c) → GELU → Linear(c→c) on all N tokens; average-pool the grid to m_h×m_w (the original
hard-codes 12×12, i.e. M = 144; here the pool follows M); a PEG (depthwise 3×3 conv with bias, plus
the identity) injects position; flatten row-major. No norm, no positional embedding, default init.
"""

from __future__ import annotations

from torch import Tensor, nn

from msr.projectors.base import Projector
from msr.projectors.grid import Grid, region_layout
from msr.projectors.layers import build_mlp, mlp_macs, region_mean


class LDPv2Projector(Projector, name="ldp_v2"):
    """MLP → region mean → PEG. (B, N, d) -> (B, M, c)."""

    def __init__(
        self,
        *,
        vision_dim: int,
        llm_dim: int,
        num_queries: int,
        grid: Grid | None = None,
    ) -> None:
        super().__init__(vision_dim=vision_dim, llm_dim=llm_dim, num_queries=num_queries, grid=grid)
        if self.grid is not None:
            region_layout(self.grid, num_queries)
        self.mlp = build_mlp(vision_dim, llm_dim, 2, "gelu")
        self.peg = nn.Conv2d(llm_dim, llm_dim, 3, padding=1, groups=llm_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (B, M, c)"""
        grid = self.input_grid(x)
        mh, mw = layout = region_layout(grid, self.num_queries)
        y = region_mean(self.mlp(x), grid, layout)  # (B, N, c) -> (B, M, c)
        B, M, c = y.shape
        fmap = y.view(B, mh, mw, c).permute(0, 3, 1, 2)  # (B, c, m_h, m_w), channels-last memory
        y = (self.peg(fmap) + fmap).permute(0, 2, 3, 1)  # (B, m_h, m_w, c)
        return y.reshape(B, M, c)

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        n = grid[0] * grid[1]
        return (
            mlp_macs(self.vision_dim, self.llm_dim, 2, batch * n)
            + batch * self.num_queries * self.llm_dim * 9
        )
