"""Fusion of the E branch outputs of MS-Resampler (paper Eq. 7–8 and the Table 6 ablations).

Every fusion maps the stacked branch outputs (E, B, M, c) to (B, M, c).
- `channel_mlp` (default, Eq. 7–8): for each token i and channel j, z_ij ∈ R^E holds the E branch
  values and O_ij = w₂ᵀ φ(W₁ z_ij + b₁) + b₂ with W₁ ∈ R^{h×E} shared by every (i, j). It never mixes
  positions or channels: h·E + 2h + 1 parameters.
- `average`: the mean of the branches.
- `attention`: per-token softmax weights over the branches, from a learned score w·O^(e)_i + b.
- `mlp`: concatenate the branches to E·c channels, then Linear(E·c→c) → GELU → Linear(c→c)
  (channel-mixing).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msr.projectors.channel_mlp import Impl, channel_mlp

FusionName = Literal["channel_mlp", "average", "attention", "mlp"]
FUSIONS = ("channel_mlp", "average", "attention", "mlp")


class ChannelMLPFusion(nn.Module):
    """Eq. 7–8: a tiny MLP over the branch axis, shared by all tokens and channels.

    `impl` picks the implementation of the same function (`msr.projectors.channel_mlp`): the native
    CPU kernel where it applies (`auto`), or PyTorch ops (`torch`). It is not part of the checkpoint.
    """

    def __init__(self, branches: int, hidden: int, impl: Impl = "auto") -> None:
        super().__init__()
        self.fc1 = nn.Linear(branches, hidden)  # W₁ (h, E), b₁ (h)
        self.fc2 = nn.Linear(hidden, 1)  # w₂ (1, h), b₂ (1)
        self.impl: Impl = impl

    def forward(self, o: Tensor) -> Tensor:
        """(E, B, M, c) -> (B, M, c)"""
        E, B, M, c = o.shape
        z = o.reshape(E, B * M * c)  # one column z_ij per (token, channel)
        # compute in the branches' dtype (bf16 under autocast); autocast would mix dtypes inside
        no_autocast = (
            torch.autocast(z.device.type, enabled=False)
            if z.device.type in ("cpu", "cuda")
            else nullcontext()
        )
        with no_autocast:
            out = channel_mlp(
                z, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.impl
            )
        return out.view(B, M, c)


class AverageFusion(nn.Module):
    """The plain mean of the branches; no parameters."""

    def forward(self, o: Tensor) -> Tensor:
        """(E, B, M, c) -> (B, M, c)"""
        return o.mean(dim=0)


class AttentionFusion(nn.Module):
    """Softmax over branches of a learned per-token score: O_i = Σ_e α_ei O^(e)_i."""

    def __init__(self, llm_dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(llm_dim, 1)

    def forward(self, o: Tensor) -> Tensor:
        """(E, B, M, c) -> (B, M, c)"""
        alpha = torch.softmax(self.score(o), dim=0)  # (E, B, M, 1)
        return (alpha * o).sum(dim=0)


class ConcatMLPFusion(nn.Module):
    """Concatenate the branches along channels and mix them: E·c → c → c."""

    def __init__(self, branches: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(branches * llm_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, o: Tensor) -> Tensor:
        """(E, B, M, c) -> (B, M, c)"""
        E, B, M, c = o.shape
        z = o.permute(1, 2, 0, 3).reshape(B, M, E * c)  # channel index e·c + j
        return self.fc2(F.gelu(self.fc1(z)))


def build_fusion(name: str, *, branches: int, llm_dim: int, hidden: int) -> nn.Module:
    """The fusion module `name`; ValueError naming the accepted ones otherwise."""
    if name == "channel_mlp":
        return ChannelMLPFusion(branches, hidden)
    if name == "average":
        return AverageFusion()
    if name == "attention":
        return AttentionFusion(llm_dim)
    if name == "mlp":
        return ConcatMLPFusion(branches, llm_dim)
    raise ValueError(f"unknown fusion {name!r}; accepted: {', '.join(FUSIONS)}")


def fusion_macs(name: str, *, branches: int, llm_dim: int, hidden: int, tokens: int) -> int:
    """MACs of the fusion's matmuls for `tokens` = B·M output tokens."""
    E, c = branches, llm_dim
    if name == "channel_mlp":
        return tokens * c * (hidden * E + hidden)
    if name == "attention":
        return E * tokens * c
    if name == "mlp":
        return tokens * (E * c * c + c * c)
    return 0
