"""E branches of learned-query cross-attention (paper Eq. 2–3), evaluated in the cheapest exact order.

Shapes: B batch, N patches, d vision width, E branches, h heads, M queries, c LLM width (c = h·c_h).

Branch e computes O^(e) = softmax(Q^(e) K^(e)ᵀ / √c_h + β·B^(e)) V^(e) with K = X W_Kᵀ, V = X W_Vᵀ.
Since Q^(e) is a parameter and M ≪ N, d < c, two exact reassociations avoid forming K and V (N×c):

    Q Kᵀ = (Q W_K) Xᵀ            the key projection folds into the queries, once per batch
    softmax(·) V = (softmax(·) X) W_Vᵀ   the value projection acts on M rows, not N

Per image and branch this costs 2·h·M·N·d + M·d·c MACs (plus M·c·d once per batch for Q W_K) against
2·N·d·c + 2·M·N·c the textbook way. A key bias would add a constant per query row and cancel in the
softmax, so there is none; a value bias passes through unchanged because attention rows sum to 1.
With many heads the reassociated logits cost more, so `order="auto"` picks by the cost model.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Order = Literal["auto", "reassociated", "textbook"]


def attention_macs(
    batch: int,
    num_patches: int,
    vision_dim: int,
    llm_dim: int,
    num_queries: int,
    heads: int,
    reassociated: bool,
) -> int:
    """MACs of one branch on `batch` images (matmuls only; softmax and bias adds excluded)."""
    n, d, c, m, h = num_patches, vision_dim, llm_dim, num_queries, heads
    if reassociated:
        return batch * (2 * h * m * n * d + m * d * c) + m * c * d
    return batch * (2 * n * d * c + 2 * m * n * c)


class ScopedAttention(nn.Module):
    """E independent attention branches from learned queries to X. (B, N, d) -> (E, B, M, c)."""

    def __init__(
        self,
        *,
        vision_dim: int,
        llm_dim: int,
        num_queries: int,
        branches: int,
        num_heads: int = 1,
        value_bias: bool = False,
        order: Order = "auto",
    ) -> None:
        super().__init__()
        if llm_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide llm_dim={llm_dim}")
        if order not in ("auto", "reassociated", "textbook"):
            raise ValueError(f"order={order!r}; accepted: 'auto', 'reassociated', 'textbook'")
        self.vision_dim, self.llm_dim, self.num_queries = vision_dim, llm_dim, num_queries
        self.branches, self.num_heads, self.order = branches, num_heads, order
        self.head_dim = llm_dim // num_heads
        # Layouts are chosen so the reassociated products read each weight without a transpose
        # (and its gradient lands contiguous): W_Kᵀ as (E, c, d), W_V as (E, d, c), as in V = X W_V.
        self.query = nn.Parameter(torch.empty(branches, num_queries, llm_dim))  # Q^(e): (E, M, c)
        self.key_weight = nn.Parameter(
            torch.empty(branches, llm_dim, vision_dim)
        )  # W_Kᵀ: (E, c, d)
        self.value_weight = nn.Parameter(
            torch.empty(branches, vision_dim, llm_dim)
        )  # W_V: (E, d, c)
        self.value_bias = nn.Parameter(torch.zeros(branches, llm_dim)) if value_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.query, std=0.02)
        bound = 1.0 / math.sqrt(self.vision_dim)  # nn.Linear's default range, per branch
        nn.init.uniform_(self.key_weight, -bound, bound)
        nn.init.uniform_(self.value_weight, -bound, bound)

    def reassociates(self, batch: int, num_patches: int) -> bool:
        """Whether this forward takes the reassociated order (always, unless the cost model says no)."""
        if self.order != "auto":
            return self.order == "reassociated"
        dims = (num_patches, self.vision_dim, self.llm_dim, self.num_queries, self.num_heads)
        return attention_macs(batch, *dims, reassociated=True) <= attention_macs(
            batch, *dims, reassociated=False
        )

    def macs(self, batch: int, num_patches: int) -> int:
        """MACs of all branches for the order this module takes."""
        dims = (num_patches, self.vision_dim, self.llm_dim, self.num_queries, self.num_heads)
        return self.branches * attention_macs(
            batch, *dims, reassociated=self.reassociates(batch, num_patches)
        )

    def forward(self, x: Tensor, bias: Tensor | None = None, beta: float = 0.0) -> Tensor:
        """x (B, N, d), bias (E, M, N) or None, scaled by beta -> (E, B, M, c)."""
        if self.reassociates(x.shape[0], x.shape[1]):
            return self._reassociated(x, bias, beta)
        return self._textbook(x, bias, beta)

    def _reassociated(self, x: Tensor, bias: Tensor | None, beta: float) -> Tensor:
        B, N, d = x.shape
        E, M, h, ch = self.branches, self.num_queries, self.num_heads, self.head_dim
        q = self.query.view(E, M, h, ch).transpose(1, 2)  # (E, h, M, c_h)
        wk = self.key_weight.view(E, h, ch, d)  # (E, h, c_h, d)
        a = torch.matmul(q, wk) * ch**-0.5  # (E, h, M, c_h) x (E, h, c_h, d) -> (E, h, M, d)
        a = a.reshape(1, E * h * M, d).expand(B, -1, -1)  # shared by the batch (stride 0)
        xt = x.transpose(1, 2)  # (B, d, N)
        if bias is not None and beta != 0.0:
            b = bias.unsqueeze(1).expand(E, h, M, N).reshape(E * h * M, N)  # a view when h = 1
            logits = torch.baddbmm(b, a, xt, beta=beta)  # β·B + a Xᵀ: (B, E·h·M, N)
        else:
            logits = torch.bmm(a, xt)  # (B, E·h·M, d) x (B, d, N) -> (B, E·h·M, N)
        p = torch.softmax(logits, dim=-1, dtype=torch.float32).to(x.dtype)
        px = torch.bmm(p, x)  # (B, E·h·M, N) x (B, N, d) -> (B, E·h·M, d)
        px = px.view(B, E, h, M, d).permute(1, 2, 0, 3, 4).reshape(E, h, B * M, d)
        wv = self.value_weight.view(E, d, h, ch).transpose(
            1, 2
        )  # (E, h, d, c_h), a view when h = 1
        out = torch.matmul(px, wv)  # (E, h, B·M, d) x (E, h, d, c_h) -> (E, h, B·M, c_h)
        out = out.permute(0, 2, 1, 3).reshape(E, B, M, h * ch)  # a view when h = 1
        return out if self.value_bias is None else out + self.value_bias[:, None, None, :]

    def _textbook(self, x: Tensor, bias: Tensor | None, beta: float) -> Tensor:
        B, N, d = x.shape
        E, M, h, ch = self.branches, self.num_queries, self.num_heads, self.head_dim
        k = F.linear(x, self.key_weight.reshape(E * h * ch, d))  # (B, N, E·c)
        v = x @ self.value_weight.transpose(0, 1).reshape(d, E * h * ch)  # (B, N, E·c)
        k = k.view(B, N, E * h, ch).transpose(1, 2)  # (B, E·h, N, c_h)
        v = v.view(B, N, E * h, ch).transpose(1, 2)  # (B, E·h, N, c_h)
        q = self.query.view(E, M, h, ch).transpose(1, 2).reshape(1, E * h, M, ch)
        mask = None
        if bias is not None and beta != 0.0:  # the same bias for every head of a branch
            mask = (beta * bias).unsqueeze(1).expand(E, h, M, N).reshape(1, E * h, M, N)
            mask = mask.to(x.dtype)
        out = F.scaled_dot_product_attention(q.expand(B, -1, -1, -1), k, v, attn_mask=mask)
        out = out.view(B, E, h, M, ch).permute(1, 0, 3, 2, 4).reshape(E, B, M, h * ch)
        return out if self.value_bias is None else out + self.value_bias[:, None, None, :]
