"""A plain, obviously correct MS-Resampler (Eq. 3–8) for tests and benchmarks; not registered.

It reads the weights of an `MSResampler` and evaluates the paper's equations the textbook way: a
Python loop over branches and heads, K and V formed explicitly, softmax written out, fusion as written
in Eq. 7–8. The fast module must match it; `msr projectors bench` times it as the baseline order.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from msr.projectors.fusion import (
    AttentionFusion,
    ChannelMLPFusion,
    ConcatMLPFusion,
    fusion_macs,
)
from msr.projectors.grid import Grid
from msr.projectors.ms_resampler import MSResampler
from msr.projectors.scope import scope_bias
from msr.projectors.scoped_attention import attention_macs


def reference_branches(module: MSResampler, x: Tensor) -> list[Tensor]:
    """O^(e) for every branch, each (B, M, c), by Eq. 3."""
    grid = module.input_grid(x)
    att = module.attention
    h, ch = att.num_heads, att.head_dim
    outputs = []
    for e, kernel in enumerate(module.kernels):
        bias = (
            module.scope[e]
            if module.scope is not None
            else scope_bias(grid, module.num_queries, kernel)
        )
        bias = bias.to(x)
        K = x @ att.key_weight[e].T  # (B, N, c)
        V = x @ att.value_weight[e]  # (B, N, c)
        if att.value_bias is not None:
            V = V + att.value_bias[e]
        heads = []
        for j in range(h):
            cols = slice(j * ch, (j + 1) * ch)
            logits = (
                att.query[e][:, cols] @ K[..., cols].transpose(1, 2) / math.sqrt(ch)
            )  # (B, M, N)
            logits = logits + module.beta * bias
            weights = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
            weights = weights / weights.sum(dim=-1, keepdim=True)
            heads.append(weights @ V[..., cols])  # (B, M, c_h)
        outputs.append(torch.cat(heads, dim=-1))
    return outputs


def reference_fuse(module: MSResampler, outputs: list[Tensor]) -> Tensor:
    """Fuse the branch outputs as the paper writes it. list of (B, M, c) -> (B, M, c)."""
    fusion = module.fusion_name
    stacked = torch.stack(outputs)  # (E, B, M, c)
    if fusion == "average":
        return stacked.sum(dim=0) / len(outputs)
    if fusion == "channel_mlp":  # Eq. 7–8: z_ij = [O^(1)_ij … O^(E)_ij]
        cm = cast(ChannelMLPFusion, module.fusion)
        z = torch.stack(outputs, dim=-1)  # (B, M, c, E)
        w1, b1 = cm.fc1.weight, cm.fc1.bias  # (h, E), (h,)
        w2, b2 = cm.fc2.weight[0], cm.fc2.bias[0]  # (h,), ()
        hidden = F.gelu(torch.einsum("bmce,he->bmch", z, w1) + b1)
        return torch.einsum("bmch,h->bmc", hidden, w2) + b2
    if fusion == "attention":
        score = cast(AttentionFusion, module.fusion).score
        scores = stacked @ score.weight[0] + score.bias[0]  # (E, B, M)
        weights = torch.exp(scores - scores.amax(0))
        alpha = weights / weights.sum(0)
        return (alpha[..., None] * stacked).sum(dim=0)
    if fusion == "mlp":
        mix = cast(ConcatMLPFusion, module.fusion)
        z = torch.cat(outputs, dim=-1)  # (B, M, E·c)
        return mix.fc2(F.gelu(mix.fc1(z)))
    raise ValueError(f"reference has no fusion {fusion!r}")


def reference_forward(module: MSResampler, x: Tensor) -> Tensor:
    """(B, N, d) -> (B, M, c): Eq. 3–8 the textbook way, with the module's weights."""
    return reference_fuse(module, reference_branches(module, x))


def reference_macs(module: MSResampler, batch: int, grid: Grid) -> int:
    """MACs of `reference_forward`: E·B·(2·N·d·c + 2·M·N·c) plus the fusion."""
    n, E = grid[0] * grid[1], len(module.kernels)
    att = module.attention
    per_branch = attention_macs(
        batch, n, att.vision_dim, att.llm_dim, att.num_queries, att.num_heads, reassociated=False
    )
    fuse = fusion_macs(
        module.fusion_name,
        branches=E,
        llm_dim=att.llm_dim,
        hidden=module.fusion_hidden,
        tokens=batch * att.num_queries,
    )
    return E * per_branch + fuse
