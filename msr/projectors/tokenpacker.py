"""TokenPacker (Li et al., "TokenPacker: Efficient Visual Projector for Multimodal LLM",
arXiv 2407.02392; https://github.com/CircleRadon/TokenPacker, `llava/model/multimodal_projector/builder.py`).

Region-to-point attention: each of the M queries is a downsampled point of the grid (bilinear
interpolation to m_h×m_w, align_corners=False: an exact 2×2 mean for s = 2, the centre token for s = 3,
the central 2×2 mean for s = 4) and attends only to the s_h·s_w keys of its own region.
- query: interpolate(X) → Linear(d→d, no bias) → LayerNorm(eps 1e-6)
- keys / values: X_multi → Linear(L·d→d) → GELU → Linear(d→d) → LayerNorm, separate weights
- nn.MultiheadAttention(d, d/128 heads) per region (q length 1, k length s_h·s_w)
- output: Linear(d→c) → GELU → Linear(c→c), no residual; trunc-normal(0.02) init on Linears.
`levels` = L feature layers concatenated along channels (the original uses CLIP layers 12, 16, 22, 23:
L = 4, input width 4·d); the query uses the last d channels (the main layer). L = 1 is single-layer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from msr.projectors.base import Projector
from msr.projectors.grid import Grid, region_layout
from msr.projectors.layers import build_mlp, mlp_macs, region_blocks


class TokenPacker(Projector, name="tokenpacker"):
    """Region-local point-to-region attention. (B, N, L·d) -> (B, M, c)."""

    def __init__(
        self,
        *,
        vision_dim: int,
        llm_dim: int,
        num_queries: int,
        levels: int = 1,
        num_heads: int | None = None,
        grid: Grid | None = None,
    ) -> None:
        super().__init__(vision_dim=vision_dim, llm_dim=llm_dim, num_queries=num_queries, grid=grid)
        if levels < 1:
            raise ValueError(f"tokenpacker levels must be ≥ 1, got {levels}")
        if self.grid is not None:
            region_layout(self.grid, num_queries)
        d = vision_dim
        heads = num_heads or max(1, d // 128)
        if d % heads:
            raise ValueError(f"tokenpacker num_heads={heads} must divide vision_dim={d}")
        self.levels = levels
        self.q_proj = nn.Linear(d, d, bias=False)
        self.q_norm = nn.LayerNorm(d, eps=1e-6)
        self.k_proj = build_mlp(levels * d, d, 2, "gelu")
        self.k_norm = nn.LayerNorm(d, eps=1e-6)
        self.v_proj = build_mlp(levels * d, d, 2, "gelu")
        self.v_norm = nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.out = build_mlp(d, llm_dim, 2, "gelu")
        self.apply(_trunc_normal_init)

    @property
    def input_dim(self) -> int:
        return self.levels * self.vision_dim

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, L·d) -> (B, M, c)"""
        grid = self.input_grid(x)
        mh, mw = region_layout(grid, self.num_queries)
        B, d = x.shape[0], self.vision_dim
        points = self.points(x[..., -d:], grid, (mh, mw))  # the main feature layer: (B, M, d)
        q = self.q_norm(self.q_proj(points.view(B * mh * mw, 1, d)))  # (B·M, 1, d)
        k = self.k_norm(self.k_proj(x))  # (B, N, d)
        v = self.v_norm(self.v_proj(x))
        k = region_blocks(k, grid, (mh, mw)).flatten(0, 1)  # (B·M, s_h·s_w, d)
        v = region_blocks(v, grid, (mh, mw)).flatten(0, 1)
        y, _ = self.attn(q, k, v, need_weights=False)  # (B·M, 1, d)
        return self.out(y.view(B, mh * mw, d))  # (B, M, d) -> (B, M, c)

    @staticmethod
    def points(x: Tensor, grid: Grid, layout: Grid) -> Tensor:
        """(B, N, d) -> (B, M, d): the grid downsampled to m_h×m_w, bilinear, align_corners=False."""
        B, _, d = x.shape
        fmap = x.reshape(B, grid[0], grid[1], d).permute(0, 3, 1, 2).float()  # (B, d, H, W)
        pts = F.interpolate(fmap, size=layout, mode="bilinear", align_corners=False)
        return pts.permute(0, 2, 3, 1).reshape(B, layout[0] * layout[1], d).to(x.dtype)

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        n, m, d = grid[0] * grid[1], self.num_queries, self.vision_dim
        q = batch * m * d * d
        kv = 2 * mlp_macs(self.levels * d, d, 2, batch * n)
        attn = batch * m * d * d + 2 * batch * n * d * d + 2 * batch * n * d + batch * m * d * d
        return q + kv + attn + mlp_macs(d, self.llm_dim, 2, batch * m)


def _trunc_normal_init(module: nn.Module) -> None:
    """TokenPacker's `_init_weights`: trunc-normal(0.02) Linears, zero biases (MHA in_proj stays xavier)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
