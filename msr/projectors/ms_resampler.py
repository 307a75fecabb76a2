"""MS-Resampler: multi-scope visual resampling (Li et al., "MS-Resampler: Multi-Scope Visual
Resampling for Efficient Multimodal LLMs", arXiv 2606.31383, Eq. 3–8).

E resampler branches share the same M region anchors; branch e adds β·B^(e) to its attention
logits, where B^(e) (Eq. 4–5, `scope.py`) keeps query i within a k_e×k_e window around its region.
The branch outputs are fused token-by-token, channel-by-channel (Eq. 7–8, `fusion.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msr.projectors.base import Projector
from msr.projectors.fusion import FusionName, build_fusion, fusion_macs
from msr.projectors.grid import DEFAULT_GRID, Grid, region_layout
from msr.projectors.scope import scope_bias, scope_bias_stack
from msr.projectors.scoped_attention import Order, ScopedAttention

# Tables 1 and 4–6 of the paper use {2, 6, 14}; the text of Sec. 4.1 says {2, 6, 24}.
KERNEL_SETS: dict[str, tuple[int, ...]] = {"tables": (2, 6, 14), "text": (2, 6, 24)}


def resolve_kernels(kernels: list[int] | str) -> tuple[int, ...]:
    """A named kernel set or an explicit list -> a tuple of positive ints."""
    if isinstance(kernels, str):
        if kernels not in KERNEL_SETS:
            raise ValueError(
                f"unknown kernel set {kernels!r}; named sets: "
                + ", ".join(f"{k}={list(v)}" for k, v in KERNEL_SETS.items())
                + ", or give a list of ints"
            )
        return KERNEL_SETS[kernels]
    if not kernels or any(not isinstance(k, int) or k < 1 for k in kernels):
        raise ValueError(f"kernels must be a non-empty list of positive ints, got {kernels!r}")
    return tuple(kernels)


class MSResampler(Projector, name="ms_resampler"):
    """Multi-scope resampler. (B, N, d) -> (B, M, c)."""

    def __init__(
        self,
        *,
        vision_dim: int,
        llm_dim: int,
        num_queries: int,
        kernels: list[int] | str = "tables",
        beta: float = 4.0,
        learnable_bias: bool = False,
        fusion: FusionName = "channel_mlp",
        fusion_hidden: int = 8,
        num_heads: int = 1,
        value_bias: bool = False,
        order: Order = "auto",
        grid: Grid | None = None,
    ) -> None:
        if learnable_bias and grid is None:
            grid = DEFAULT_GRID
        super().__init__(vision_dim=vision_dim, llm_dim=llm_dim, num_queries=num_queries, grid=grid)
        self.kernels = resolve_kernels(kernels)
        self.beta = float(beta)
        if self.grid is not None:
            region_layout(self.grid, num_queries)  # fail early if M does not tile the grid
        E = len(self.kernels)
        self.attention = ScopedAttention(
            vision_dim=vision_dim,
            llm_dim=llm_dim,
            num_queries=num_queries,
            branches=E,
            num_heads=num_heads,
            value_bias=value_bias,
            order=order,
        )
        self.fusion_name = fusion
        self.fusion_hidden = fusion_hidden
        self.fusion = build_fusion(fusion, branches=E, llm_dim=llm_dim, hidden=fusion_hidden)
        # A learnable bias starts from Eq. 5 and is trained; a fixed one is rebuilt per grid from a cache.
        self.scope: nn.Parameter | None = None
        if learnable_bias:
            assert self.grid is not None
            init = torch.stack([scope_bias(self.grid, num_queries, k) for k in self.kernels])
            self.scope = nn.Parameter(init)  # (E, M, N)

    def bias(self, grid: Grid, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The (E, M, N) scope bias for this grid."""
        if self.scope is not None:
            return self.scope.to(dtype)
        return scope_bias_stack(grid, self.num_queries, self.kernels, device, dtype)

    def forward_branches(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (E, B, M, c): every branch's O^(e) before fusion."""
        grid = self.input_grid(x)
        bias = self.bias(grid, x.device, x.dtype) if self.beta != 0.0 else None
        return self.attention(x, bias, self.beta)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (B, M, c)"""
        return self.fusion(self.forward_branches(x))

    @torch.no_grad()
    def branch_attention(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (E, B, M, N): each branch's attention probabilities, heads averaged:
        softmax(Q Kᵀ/√c_h + β·B) as the module computes it (Eq. 3), evaluated in fp32."""
        att = self.attention
        x = x.float()
        E, M, h, ch = att.branches, att.num_queries, att.num_heads, att.head_dim
        q = att.query.float().view(E, M, h, ch).transpose(1, 2)  # (E, h, M, c_h)
        k = torch.einsum("bnd,ecd->ebnc", x, att.key_weight.float())  # (E, B, N, c)
        k = k.view(E, x.shape[0], -1, h, ch).transpose(2, 3)  # (E, B, h, N, c_h)
        logits = q[:, None] @ k.transpose(-1, -2) * ch**-0.5  # (E, B, h, M, N)
        if self.beta != 0.0:
            bias = self.bias(self.input_grid(x), x.device, x.dtype)  # (E, M, N)
            logits = logits + self.beta * bias[:, None, None]
        return torch.softmax(logits, dim=-1).mean(dim=2)  # (E, B, M, N)

    def scope_share(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (E,): the share of each branch's attention that falls inside its scope
        window (Eq. 5's zeros), averaged over queries and images."""
        probs = self.branch_attention(x)  # (E, B, M, N)
        window = scope_bias_stack(self.input_grid(x), self.num_queries, self.kernels, x.device,
                                  torch.float32) == 0  # (E, M, N)  # fmt: skip
        return (probs * window[:, None]).sum(-1).mean(dim=(1, 2))

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        n = grid[0] * grid[1]
        fuse = fusion_macs(
            self.fusion_name,
            branches=len(self.kernels),
            llm_dim=self.llm_dim,
            hidden=self.fusion_hidden,
            tokens=batch * self.num_queries,
        )
        return self.attention.macs(batch, n) + fuse

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernels={list(self.kernels)}, beta={self.beta}, "
            f"learnable_bias={self.scope is not None}, fusion={self.fusion_name!r}"
        )


__all__ = ["KERNEL_SETS", "MSResampler", "resolve_kernels"]
