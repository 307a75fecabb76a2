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

FusionName = Literal["channel_mlp", "average", "attention", "mlp"]
FUSIONS = ("channel_mlp", "average", "attention", "mlp")


class ChannelMLPFusion(nn.Module):
    """Eq. 7–8: a tiny MLP over the branch axis, shared by all tokens and channels."""

    def __init__(self, branches: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(branches, hidden)  # W₁ (h, E), b₁ (h)
        self.fc2 = nn.Linear(hidden, 1)  # w₂ (1, h), b₂ (1)

    def forward(self, o: Tensor) -> Tensor:
        """(E, B, M, c) -> (B, M, c)"""
        E, B, M, c = o.shape
        z = o.reshape(E, B * M * c)  # one column z_ij per (token, channel)
        # compute in the branches' dtype (bf16 under autocast); autocast would mix dtypes inside
        params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        w1, b1, w2, b2 = (t.to(z.dtype) for t in params)
        no_autocast = (
            torch.autocast(z.device.type, enabled=False)
            if z.device.type in ("cpu", "cuda")
            else nullcontext()
        )
        with no_autocast:
            out = _ChannelMLP.apply(z, w1, b1, w2, b2)
        return out.view(B, M, c)


class _ChannelMLP(torch.autograd.Function):
    """w₂ᵀ GELU(W₁ z + b₁) + b₂ over the columns of z (E, P), in cache-sized column blocks.

    The hidden activations (h, P) are never stored: the backward recomputes them block by block.
    This keeps the elementwise work in cache on CPU and saves h·P activations of memory anywhere.
    """

    @staticmethod
    def forward(ctx, z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        ctx.save_for_backward(z, w1, b1, w2, b2)
        out = torch.empty(1, z.shape[1], dtype=z.dtype, device=z.device)
        for cols in _blocks(z, w1.shape[0]):
            hid = F.gelu(torch.addmm(b1[:, None], w1, z[:, cols]))  # (h, P_blk)
            torch.addmm(b2[:, None], w2, hid, out=out[:, cols])  # (1, P_blk)
        return out[0]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, w1, b1, w2, b2 = ctx.saved_tensors
        grad = grad[None]  # (1, P)
        acc = torch.float32
        gz = torch.empty_like(z) if ctx.needs_input_grad[0] else None
        gw1 = torch.zeros(w1.shape, dtype=acc, device=z.device)
        gb1 = torch.zeros(b1.shape, dtype=acc, device=z.device)
        gw2 = torch.zeros(w2.shape, dtype=acc, device=z.device)
        for cols in _blocks(z, w1.shape[0]):
            zc, gc = z[:, cols], grad[:, cols]
            pre = torch.addmm(b1[:, None], w1, zc)  # (h, P_blk), recomputed
            gw2 += torch.mv(F.gelu(pre), gc[0]).to(acc)  # (h, P_blk) x (P_blk,) -> (h,) = w₂ row
            gpre = torch.ops.aten.gelu_backward(w2.T * gc, pre)  # (h, P_blk)
            gw1 += (gpre @ zc.T).to(acc)  # (h, P_blk) x (P_blk, E) -> (h, E)
            gb1 += gpre.sum(dim=1, dtype=acc)
            if gz is not None:
                torch.mm(w1.T, gpre, out=gz[:, cols])  # (E, h) x (h, P_blk) -> (E, P_blk)
        gb2 = grad.sum(dim=1, dtype=acc)
        return gz, gw1.to(w1.dtype), gb1.to(b1.dtype), gw2.to(w2.dtype), gb2.to(b2.dtype)


def _blocks(z: Tensor, hidden: int) -> list[slice]:
    """Column blocks of z whose (h, P_blk) activations fit in cache on CPU; one block on GPU."""
    total = z.shape[1]
    step = total if z.device.type != "cpu" else max(1024, (1 << 21) // hidden)
    return [slice(i, min(i + step, total)) for i in range(0, total, step)]


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
