"""C-Abstractor of Honeybee (Cha et al., "Honeybee: Locality-enhanced Projector for Multimodal LLM",
CVPR 2024; https://github.com/kakaobrain/honeybee, `honeybee/projectors/projectors.py`).

x + pos_emb → RegStage s1 (depth 3) → AdaptiveAvgPool2d(√M) → RegStage s2 (depth 3) → readout
Linear(hidden→c) → SiLU → Linear(c→c). Each block is timm's RegNet `Bottleneck` (timm 0.9.8,
https://github.com/huggingface/pytorch-image-models, `timm/models/regnet.py`) as Honeybee builds it:
bottle_ratio 1, depthwise 3×3 (group_size 1), squeeze-excitation 0.25, LayerNorm2d (eps 1e-6), SiLU.
1×1 convs are written as Linear on channels-last tensors (same weights and arithmetic, no permutes).
Honeybee takes CLIP layer −1 (the others take −2): set `vision.feature_layer` accordingly.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msr.projectors.base import Projector
from msr.projectors.grid import DEFAULT_GRID, Grid
from msr.projectors.layers import build_mlp, mlp_macs


class RegBottleneck(nn.Module):
    """timm RegNet Bottleneck, channels-last. (B, H, W, C_in) -> (B, H, W, C)."""

    def __init__(self, in_dim: int, dim: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        rd = round(in_dim * se_ratio)
        self.conv1 = nn.Linear(in_dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)  # depthwise
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.se_reduce = nn.Linear(dim, rd)
        self.se_expand = nn.Linear(rd, dim)
        self.conv3 = nn.Linear(dim, dim, bias=False)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        # timm's shortcut: identity when the width is kept, else conv1x1 + norm
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_dim == dim
            else nn.Sequential(nn.Linear(in_dim, dim, bias=False), nn.LayerNorm(dim, eps=1e-6))
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C_in) -> (B, H, W, C)"""
        shortcut = self.shortcut(x)
        x = F.silu(self.norm1(self.conv1(x)))
        x = self.conv2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # depthwise 3×3 on (B, C, H, W)
        x = F.silu(self.norm2(x))
        gate = x.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1, C): squeeze
        gate = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(gate))))  # excite
        x = self.norm3(self.conv3(x * gate))
        return F.silu(x + shortcut)

    def macs(self, tokens: int, images: int) -> int:
        c_in, c = self.conv1.in_features, self.conv1.out_features
        rd = self.se_reduce.out_features
        proj = 0 if isinstance(self.shortcut, nn.Identity) else tokens * c_in * c
        return tokens * (c_in * c + 9 * c + c * c) + images * 2 * c * rd + proj


class CAbstractor(Projector, name="c_abstractor"):
    """Convolutional abstractor. (B, N, d) -> (B, M, c); M must be a square; grid defaults to 24×24."""

    def __init__(
        self,
        *,
        vision_dim: int,
        llm_dim: int,
        num_queries: int,
        depth: int = 3,
        mlp_depth: int = 2,
        hidden_dim: int | None = None,
        pos_emb: bool = True,
        grid: Grid | None = None,
    ) -> None:
        super().__init__(
            vision_dim=vision_dim,
            llm_dim=llm_dim,
            num_queries=num_queries,
            grid=grid or DEFAULT_GRID,
        )
        assert self.grid is not None
        side = math.isqrt(num_queries)
        if side * side != num_queries or side > min(self.grid):
            raise ValueError(
                f"c_abstractor pools to √M×√M, so num_queries must be a square ≤ {min(self.grid) ** 2}, "
                f"got {num_queries}"
            )
        self.side = side
        hidden = hidden_dim or vision_dim
        n = self.grid[0] * self.grid[1]
        self.pos_emb = nn.Parameter(torch.zeros(1, n, vision_dim)) if pos_emb else None
        self.s1 = nn.Sequential(
            *[RegBottleneck(vision_dim if i == 0 else hidden, hidden) for i in range(depth)]
        )
        self.s2 = nn.Sequential(*[RegBottleneck(hidden, hidden) for _ in range(depth)])
        self.readout = build_mlp(hidden, llm_dim, mlp_depth, "silu")
        self.hidden_dim, self.mlp_depth = hidden, mlp_depth
        self.apply(_honeybee_init)
        if self.pos_emb is not None:
            nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (B, M, c)"""
        h, w = self.input_grid(x)
        B = x.shape[0]
        if self.pos_emb is not None:
            x = x + self.pos_emb  # Honeybee adds in place; out of place keeps the caller's features
        x = self.s1(x.view(B, h, w, -1))  # (B, H, W, hidden)
        x = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), self.side).permute(
            0, 2, 3, 1
        )  # (B, √M, √M, hidden)
        x = self.s2(x.contiguous())
        return self.readout(x.reshape(B, self.num_queries, -1))  # (B, M, hidden) -> (B, M, c)

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        n, m = grid[0] * grid[1], self.num_queries
        s1 = sum(cast(RegBottleneck, block).macs(batch * n, batch) for block in self.s1)
        s2 = sum(cast(RegBottleneck, block).macs(batch * m, batch) for block in self.s2)
        return s1 + s2 + mlp_macs(self.hidden_dim, self.llm_dim, self.mlp_depth, batch * m)


def _honeybee_init(module: nn.Module) -> None:
    """Honeybee's `_init_weights`: conv and linear weights N(0, 0.02), biases 0 (norms keep 1 / 0)."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
