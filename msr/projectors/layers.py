"""Small building blocks shared by the projectors: MLP heads and region pooling / space-to-depth.

Tokens are row-major on an H×W grid; regions are s_h×s_w blocks, M = m_h·m_w of them, row-major.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from msr.projectors.grid import Grid

Activation = Literal["gelu", "silu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "silu": nn.SiLU}


def build_mlp(in_dim: int, out_dim: int, depth: int = 2, act: Activation = "gelu") -> nn.Sequential:
    """LLaVA's `mlp{depth}x_gelu`: Linear(in→out), then (act, Linear(out→out)) × (depth − 1)."""
    if depth < 1:
        raise ValueError(f"mlp depth must be ≥ 1, got {depth}")
    if act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; accepted: {', '.join(_ACTIVATIONS)}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [_ACTIVATIONS[act](), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def mlp_macs(in_dim: int, out_dim: int, depth: int, tokens: int) -> int:
    """MACs of `build_mlp(in_dim, out_dim, depth)` on `tokens` tokens."""
    return tokens * (in_dim * out_dim + (depth - 1) * out_dim * out_dim)


def region_blocks(x: Tensor, grid: Grid, layout: Grid) -> Tensor:
    """(B, N, C) -> (B, M, s_h·s_w, C): the tokens of each region, row-major inside the region."""
    B, _, C = x.shape
    (h, w), (mh, mw) = grid, layout
    sh, sw = h // mh, w // mw
    x = x.view(B, mh, sh, mw, sw, C).permute(0, 1, 3, 2, 4, 5)  # (B, m_h, m_w, s_h, s_w, C)
    return x.reshape(B, mh * mw, sh * sw, C)


def region_mean(x: Tensor, grid: Grid, layout: Grid) -> Tensor:
    """(B, N, C) -> (B, M, C): exact mean over each s_h×s_w region (= AdaptiveAvgPool2d when it tiles)."""
    B, _, C = x.shape
    (h, w), (mh, mw) = grid, layout
    return x.view(B, mh, h // mh, mw, w // mw, C).mean(dim=(2, 4)).reshape(B, mh * mw, C)


def space_to_depth(x: Tensor, grid: Grid, layout: Grid) -> Tensor:
    """(B, N, C) -> (B, M, s_h·s_w·C), channel index (dy·s_w + dx)·C + ch (InternVL v2 / nanoVLM order)."""
    blocks = region_blocks(x, grid, layout)  # (B, M, s_h·s_w, C)
    return blocks.flatten(2)
