"""Patch-grid geometry shared by the projectors: infer H×W from N, tile the grid into M regions.

Notation: N = H·W patch tokens, row-major (token l = y·W + x); M = m_h·m_w regions of s_h×s_w tokens.
"""

from __future__ import annotations

import math

Grid = tuple[int, int]
DEFAULT_GRID: Grid = (
    24,
    24,
)  # CLIP-ViT-L/14 at 336 px; sizes grid-shaped parameters when grid=None


def resolve_grid(num_patches: int, grid: Grid | None = None) -> Grid:
    """The (H, W) of `num_patches` tokens: `grid` if given (checked), else the square root of N."""
    if grid is not None:
        h, w = grid
        if h * w != num_patches:
            raise ValueError(
                f"grid={tuple(grid)} holds {h * w} patches but the features have N={num_patches}; "
                f"pass grid=(H, W) with H·W = {num_patches}"
            )
        return int(h), int(w)
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"N={num_patches} patches is not a square grid; pass grid=(H, W) with H·W = {num_patches}"
        )
    return side, side


def region_layout(grid: Grid, num_queries: int) -> Grid:
    """(m_h, m_w): tile the H×W grid into M = m_h·m_w equal regions.

    A square M uses √M×√M regions (the paper's case); otherwise the factorisation whose aspect is
    closest to the grid's. Raises ValueError naming the numbers that do not fit.
    """
    h, w = grid
    if num_queries < 1:
        raise ValueError(f"num_queries={num_queries}: must be a positive integer")
    root = math.isqrt(num_queries)
    if root * root == num_queries and h % root == 0 and w % root == 0:
        return root, root
    fits = [
        (mh, num_queries // mh)
        for mh in range(1, num_queries + 1)
        if num_queries % mh == 0 and h % mh == 0 and w % (num_queries // mh) == 0
    ]
    if not fits:
        raise ValueError(
            f"num_queries={num_queries} does not tile the {h}×{w} grid: M must be m_h·m_w with m_h "
            f"dividing H={h} and m_w dividing W={w}; square choices are {square_budgets(grid)}"
        )
    return min(fits, key=lambda m: abs(math.log((m[0] / m[1]) / (h / w))))


def region_size(grid: Grid, num_queries: int) -> Grid:
    """(s_h, s_w): the side of one region when M regions tile the grid."""
    mh, mw = region_layout(grid, num_queries)
    return grid[0] // mh, grid[1] // mw


def square_budgets(grid: Grid) -> list[int]:
    """Every square M = m² whose m divides both H and W, largest first (e.g. 576, 144, 64, 36, … for 24×24)."""
    h, w = grid
    return [m * m for m in range(min(h, w), 0, -1) if h % m == 0 and w % m == 0]
