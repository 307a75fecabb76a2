"""Scope bias (Eq. 4–5): values, window sizes, anchors, errors and caching."""

from __future__ import annotations

import itertools

import pytest
import torch

from msr.projectors.grid import region_layout, resolve_grid, square_budgets
from msr.projectors.scope import scope_bias, scope_bias_stack


def brute_force_bias(grid: tuple[int, int], m_h: int, m_w: int, kernel: int) -> torch.Tensor:
    """Eq. 4–5 written out with float anchors, one (query, token) pair at a time."""
    h, w = grid
    s_h, s_w = h / m_h, w / m_w
    bias = torch.full((m_h * m_w, h * w), -1.0)
    for r, q in itertools.product(range(m_h), range(m_w)):
        y_i, x_i = r * s_h + (s_h - 1) / 2, q * s_w + (s_w - 1) / 2
        for y, x in itertools.product(range(h), range(w)):
            if abs(y - y_i) <= kernel // 2 and abs(x - x_i) <= kernel // 2:
                bias[r * m_w + q, y * w + x] = 0.0
    return bias


@pytest.mark.parametrize(
    ("grid", "num_queries", "kernel"),
    [
        ((24, 24), 144, 2),
        ((24, 24), 144, 6),
        ((24, 24), 144, 14),
        ((24, 24), 64, 2),
        ((24, 24), 64, 6),
        ((24, 24), 36, 14),
        ((24, 24), 36, 24),
        ((16, 16), 64, 6),
        ((12, 24), 18, 3),
        ((6, 6), 4, 1),
        ((6, 6), 9, 5),
    ],
)
def test_matches_brute_force(grid: tuple[int, int], num_queries: int, kernel: int) -> None:
    m_h, m_w = region_layout(grid, num_queries)
    expected = brute_force_bias(grid, m_h, m_w, kernel)
    got = scope_bias(grid, num_queries, kernel)
    assert got.shape == (num_queries, grid[0] * grid[1])
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_values_are_zero_or_minus_one() -> None:
    bias = scope_bias((24, 24), 64, 6)
    assert set(bias.unique().tolist()) == {-1.0, 0.0}


@pytest.mark.parametrize(
    ("num_queries", "kernel", "side"),
    [(144, 2, 2), (144, 6, 6), (144, 14, 14), (36, 2, 2), (36, 6, 6)],
)
def test_even_region_window_is_k_wide(num_queries: int, kernel: int, side: int) -> None:
    """Half-integer anchors: an interior query sees exactly a k×k window."""
    bias = scope_bias((24, 24), num_queries, kernel)
    inside = (bias == 0).sum(dim=1)
    assert inside.max().item() == side * side  # interior queries
    assert inside.min().item() >= (side // 2 + 1) ** 2  # corners are clipped, never empty


def test_odd_region_window_is_centred() -> None:
    """M = 64 on 24×24: 3×3 regions, integer anchors, kernel 2 covers the region itself."""
    bias = scope_bias((24, 24), 64, 2)
    window = (bias[0] == 0).view(24, 24)
    assert window[:3, :3].all() and window.sum() == 9


def test_region_2_window_equals_own_region_at_144() -> None:
    bias = scope_bias((24, 24), 144, 2)
    query = 13  # region (1, 1): tokens y, x ∈ {2, 3}
    inside = (bias[query] == 0).nonzero().flatten().tolist()
    assert inside == [2 * 24 + 2, 2 * 24 + 3, 3 * 24 + 2, 3 * 24 + 3]


def test_window_covering_the_grid_is_all_zero() -> None:
    assert torch.all(scope_bias((24, 24), 36, 48) == 0)
    assert torch.all(scope_bias((16, 16), 64, 32) == 0)


@pytest.mark.parametrize(
    ("grid", "num_queries"), [((24, 24), 50), ((24, 24), 49), ((16, 16), 36), ((24, 24), 0)]
)
def test_queries_that_do_not_tile_raise(grid: tuple[int, int], num_queries: int) -> None:
    with pytest.raises(ValueError, match=f"num_queries={num_queries}"):
        scope_bias(grid, num_queries, 2)


def test_error_names_the_grid() -> None:
    with pytest.raises(ValueError, match="16×16"):
        scope_bias((16, 16), 36, 2)


def test_bad_kernel_raises() -> None:
    with pytest.raises(ValueError, match="kernel"):
        scope_bias((24, 24), 144, 0)


def test_stack_is_cached_per_key() -> None:
    a = scope_bias_stack((24, 24), 144, (2, 6, 14))
    b = scope_bias_stack((24, 24), 144, (2, 6, 14))
    c = scope_bias_stack((24, 24), 144, (2, 6, 14), dtype=torch.bfloat16)
    assert a is b and a.shape == (3, 144, 576)
    assert c is not a and c.dtype == torch.bfloat16 and torch.equal(c.float(), a)
    assert torch.equal(a[1], scope_bias((24, 24), 144, 6))


def test_scope_bias_returns_a_private_copy() -> None:
    bias = scope_bias((24, 24), 144, 2)
    bias.fill_(5.0)
    assert scope_bias((24, 24), 144, 2).max() == 0.0


def test_grid_helpers() -> None:
    assert resolve_grid(576) == (24, 24)
    assert resolve_grid(288, (12, 24)) == (12, 24)
    with pytest.raises(ValueError, match="not a square"):
        resolve_grid(300)
    with pytest.raises(ValueError, match=r"grid=.*holds"):
        resolve_grid(576, (16, 16))
    assert square_budgets((24, 24))[:4] == [576, 144, 64, 36]
    assert region_layout((12, 24), 18) == (3, 6)


def test_meta_device_context_does_not_poison_the_cache() -> None:
    """Counting MACs on meta tensors first must not leave meta tensors in the cache."""
    with torch.device("meta"):
        meta = scope_bias_stack((12, 12), 16, (2, 4), "meta")
        assert meta.device.type == "meta"
        inner = scope_bias((12, 12), 16, 4)
    assert inner.device.type == "cpu"
    assert scope_bias_stack((12, 12), 16, (2, 4)).device.type == "cpu"
