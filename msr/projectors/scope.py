"""Scope bias of MS-Resampler (paper Eq. 4–5): a 0 / −1 mask that keeps each query near its region.

Query i (row-major over the m_h×m_w regions; region (r, q)) is anchored at the region centre
(y_i, x_i) = (r·s_h + (s_h−1)/2, q·s_w + (s_w−1)/2), a half-integer when a side is even. Token l at
(y, x) is inside the window of kernel k iff |y − y_i| ≤ ⌊k/2⌋ and |x − x_i| ≤ ⌊k/2⌋: B_il = 0 there,
−1 elsewhere. With a half-integer anchor the window is exactly k tokens wide; with an integer one,
2·⌊k/2⌋ + 1.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from msr.projectors.grid import Grid, region_layout


def scope_bias(grid: Grid, num_queries: int, kernel: int) -> Tensor:
    """Float (M, N) bias of Eq. 5 for one kernel: 0 inside query i's window, −1 outside."""
    return _scope_bias_cpu(tuple(grid), num_queries, kernel).clone()


def scope_bias_stack(
    grid: Grid,
    num_queries: int,
    kernels: tuple[int, ...],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(E, M, N) biases of all kernels, built once per (grid, M, kernels, device, dtype) and shared.

    Contract: the returned tensor is cached and shared; callers must not modify it in place.
    """
    return _scope_bias_stack(tuple(grid), num_queries, tuple(kernels), torch.device(device), dtype)


@functools.lru_cache(maxsize=64)
def _scope_bias_stack(
    grid: Grid, num_queries: int, kernels: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> Tensor:
    stack = torch.stack(
        [_scope_bias_cpu(grid, num_queries, k) for k in kernels]
    )  # (E, M, N) on CPU
    if device.type == "meta":
        return torch.empty(stack.shape, dtype=dtype, device=device)
    return stack.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _scope_bias_cpu(grid: Grid, num_queries: int, kernel: int) -> Tensor:
    if kernel < 1:
        raise ValueError(f"scope kernel must be a positive integer, got {kernel}")
    h, w = grid
    mh, mw = region_layout(grid, num_queries)
    sh, sw = h // mh, w // mw
    # Twice the coordinates keeps half-integer anchors exact: 2·y_i = 2·r·s_h + s_h − 1.
    cpu = torch.device(
        "cpu"
    )  # explicit: the cache must never hold a tensor of an ambient device (meta)
    anchor_y = 2 * torch.arange(mh, device=cpu) * sh + sh - 1  # (m_h,)
    anchor_x = 2 * torch.arange(mw, device=cpu) * sw + sw - 1  # (m_w,)
    reach = 2 * (kernel // 2)
    inside_y = (
        2 * torch.arange(h, device=cpu)[None, :] - anchor_y[:, None]
    ).abs() <= reach  # (m_h, H)
    inside_x = (
        2 * torch.arange(w, device=cpu)[None, :] - anchor_x[:, None]
    ).abs() <= reach  # (m_w, W)
    inside = inside_y[:, None, :, None] & inside_x[None, :, None, :]  # (m_h, m_w, H, W)
    bias = inside.reshape(mh * mw, h * w).float() - 1.0  # (M, N): 0 inside, −1 outside
    bias.requires_grad_(False)
    return bias
