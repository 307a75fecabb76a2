"""Folding the image normalisation into the patch embedding: conv((x/255 − μ)/σ) is a conv of the
raw 0..255 pixels with weights W/(255σ) and the extra bias Σ W·(−μ/σ).

Exact in real arithmetic for a conv without padding; in bf16 it rounds the scaled weights and the
bias once more than HF's path, so features differ from HF's bf16 features by up to about twice HF's
own bf16 error (tested). Only bf16 folds: fp32 is the reference path and keeps HF's arithmetic (the
fold's cancellation of large terms moves fp32 features by ~3e-5 relative, which an exported model
would not reproduce to 1e-4), and in fp16 the scaled weights would turn subnormal.
"""

from __future__ import annotations

import torch
from torch import nn


def folds_normalization(dtype: str) -> bool:
    """Whether a tower of this dtype folds the normalisation into its patch embedding (bf16 only)."""
    return dtype == "bf16"


@torch.no_grad()
def fold_normalization(
    conv: nn.Conv2d, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> None:
    """Make `conv` take 0..255 pixels in place of (x/255 − mean)/std: its weights are scaled by
    1/(255·std) per input channel and it gains the bias Σ W·(−mean/std) (exact with no padding,
    where every output sees the whole kernel). Computed in fp64, stored in the conv's dtype."""
    if conv.padding not in ((0, 0), 0, "valid") or conv.in_channels != 3:
        raise ValueError(
            f"cannot fold normalisation into {conv}: it needs 3 input channels and no padding"
        )
    w = conv.weight.double()  # (d, 3, p, p)
    std_ = torch.tensor(std, dtype=torch.float64, device=w.device)
    scale = 1.0 / (255.0 * std_)
    shift = -torch.tensor(mean, dtype=torch.float64, device=w.device) / std_
    bias = (w * shift.view(1, 3, 1, 1)).sum((1, 2, 3))  # (d,)
    if conv.bias is not None:
        bias += conv.bias.double()
    conv.weight.copy_(w * scale.view(1, 3, 1, 1))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
