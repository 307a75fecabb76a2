"""MAC counting with `torch.utils.flop_counter` (FLOPs / 2), on real or meta tensors.

Two gaps of torch 2.13's counter are filled here: its `convolution_backward` formula drops `groups`
from the weight gradient (a depthwise conv's backward is over-counted ~C-fold), and the CPU flash
attention kernel that SDPA dispatches to on real CPU tensors is not counted at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)


def _conv_backward_flop(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    *args: Any,
    **kwargs: Any,
) -> int:
    """Every multiply of the forward conv appears once in grad_input and once in grad_weight."""
    transposed, output_mask = args[4], args[7]
    forward = conv_flop_count(
        x_shape, w_shape, grad_out_shape, transposed
    )  # w_shape has C_in/groups
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _cpu_flash_flop(
    query_shape: list[int], key_shape: list[int], value_shape: list[int], *args: Any, **kwargs: Any
) -> int:
    """QKᵀ and attention·V of `_scaled_dot_product_flash_attention_for_cpu`, as for the other SDPA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(
    grad_out_shape: list[int],
    query_shape: list[int],
    key_shape: list[int],
    value_shape: list[int],
    *args: Any,
    **kwargs: Any,
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_CUSTOM = {
    torch.ops.aten.convolution_backward: _conv_backward_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flop,
}


def counted_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of the matmuls, convs and attention that `fn()` runs."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        fn()
    return counter.get_total_flops() // 2
