"""The probe's readout: a learned query per question (type, content word) attends over the M
visual tokens, and a small MLP answers from what it read. It is small on purpose, so that what it
can answer is what the tokens carry, not what the readout could compute by itself."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Readout(nn.Module):
    """(B, M, c) tokens and (B, Q) question ids -> (B, Q, A) answer logits (disallowed answers of
    each question's type at −inf)."""

    def __init__(
        self, *, width: int, num_questions: int, num_answers: int, allowed: Tensor, heads: int = 4
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"readout width {width} is not a multiple of heads={heads}")
        self.norm = nn.LayerNorm(width)
        self.query = nn.Embedding(num_questions, width)
        self.attend = nn.MultiheadAttention(width, heads, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, num_answers)
        )
        # (num_questions, A): 0 where the answer belongs to the question's type, −inf elsewhere
        self.mask: Tensor
        self.register_buffer("mask", torch.where(allowed, 0.0, float("-inf")), persistent=False)

    def forward(self, tokens: Tensor, questions: Tensor) -> Tensor:
        """(B, M, c), (B, Q) -> (B, Q, A)"""
        kv = self.norm(tokens)  # (B, M, c)
        q = self.query(questions)  # (B, Q, c)
        read, _ = self.attend(q, kv, kv, need_weights=False)  # (B, Q, c)
        logits = self.head(torch.cat([read, q], dim=-1))  # (B, Q, A)
        return logits + self.mask[questions]
