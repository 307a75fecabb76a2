"""MAC counting with `torch.utils.flop_counter` (FLOPs / 2), on real or meta tensors.

torch's formula for `convolution_backward` drops `groups` from the weight gradient, so a depthwise
conv's backward is over-counted ~C-fold; `_conv_backward_flop` replaces it with the exact count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


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


_CUSTOM = {torch.ops.aten.convolution_backward: _conv_backward_flop}


def counted_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of the matmuls, convs and attention that `fn()` runs."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        fn()
    return counter.get_total_flops() // 2
