"""Train one projector with the readout on cached probe features, and score it on held-out scenes.

The projector is trained from scratch with the readout (both see only the probe's questions), so
its accuracy per question type measures what M tokens of that design can carry of the image, with
no LLM in the way. A run is a pure function of its arguments and seed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from msr.probe.grids import ProbeSpec
from msr.probe.questions import TYPES, Vocabulary
from msr.probe.readout import Readout
from msr.projectors import build_projector, output_tokens
from msr.projectors.ms_resampler import MSResampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSet:
    """Features of a set of scenes and their questions as indices."""

    features: Tensor  # (S, N, d), stored in fp16
    questions: list[Tensor]  # per scene: (Q_s, 2) rows of (question id, answer id)

    def __post_init__(self) -> None:
        if self.features.shape[0] != len(self.questions):
            raise ValueError(
                f"{self.features.shape[0]} feature rows for {len(self.questions)} scenes"
            )


@dataclass(frozen=True)
class Settings:
    steps: int
    batch: int
    questions_per_image: int
    lr: float
    width: int
    dtype: str = "bf16"
    ablation: str = "none"


def _autocast(dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _tokens(projector: torch.nn.Module, x: Tensor, ablation: str, width: int) -> Tensor:
    """(B, N, d) -> (B, M, c); under an ablation the image is never read."""
    if ablation == "no_tokens":
        return torch.zeros(x.shape[0], 1, width)
    y = projector(x)
    if ablation == "noise":
        return torch.randn_like(y)
    return y


def train_and_score(
    spec: ProbeSpec,
    budget: int,
    seed: int,
    train: ProbeSet,
    test: ProbeSet,
    vocab: Vocabulary,
    settings: Settings,
) -> dict[str, Any]:
    """Train spec's projector at `budget` with a fresh readout; held-out accuracy per type."""
    s = settings
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    _, n, d = train.features.shape
    m = output_tokens(spec.projector, budget, n)
    projector = build_projector(
        spec.projector, vision_dim=d, llm_dim=s.width, num_queries=m, **spec.options
    )
    questions, answers = vocab.questions, vocab.answers
    allowed = torch.zeros(len(questions), len(answers), dtype=torch.bool)
    for i, (qtype, _) in enumerate(questions):
        for a in vocab.allowed(qtype):
            allowed[i, answers.index(a)] = True
    readout = Readout(
        width=s.width, num_questions=len(questions), num_answers=len(answers), allowed=allowed
    )
    params = [*projector.parameters(), *readout.parameters()]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, s.lr, total_steps=s.steps, pct_start=0.05)
    projector.train()
    readout.train()
    loss = torch.tensor(0.0)
    for _ in range(s.steps):
        idx = torch.randint(0, len(train.questions), (s.batch,), generator=gen)
        qa = torch.stack([_draw(train.questions[i], s.questions_per_image, gen) for i in idx])
        x = train.features[idx].float()  # (B, N, d)
        with _autocast(s.dtype):
            logits = readout(_tokens(projector, x, s.ablation, s.width), qa[..., 0])  # (B, Q, A)
        loss = F.cross_entropy(logits.float().flatten(0, 1), qa[..., 1].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    result = score(projector, readout, test, vocab, s)
    result["final_loss"] = float(loss.detach())
    if isinstance(projector, MSResampler) and s.ablation == "none":
        x = test.features[: min(64, len(test.questions))].float()
        result["scope_share"] = [round(float(v), 4) for v in projector.scope_share(x)]
    return result


def _draw(qa: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k rows of a scene's (question, answer) table, without replacement where it has k."""
    if len(qa) >= k:
        return qa[torch.randperm(len(qa), generator=gen)[:k]]
    return qa[torch.randint(0, len(qa), (k,), generator=gen)]


@torch.no_grad()
def score(
    projector: torch.nn.Module,
    readout: Readout,
    test: ProbeSet,
    vocab: Vocabulary,
    s: Settings,
    batch: int = 64,
) -> dict[str, Any]:
    """Per question type: questions, right answers, and `majority`: how many a policy that reads
    the question but not the image gets right (per question, its most common answer)."""
    projector.eval()
    readout.eval()
    qtype = torch.tensor([TYPES.index(t) for t, _ in vocab.questions])
    right = torch.zeros(len(TYPES), dtype=torch.long)
    total = torch.zeros(len(TYPES), dtype=torch.long)
    golds: dict[int, list[int]] = {}  # question id -> gold answer ids
    for start in range(0, len(test.questions), batch):
        rows = test.questions[start : start + batch]
        width = max(len(r) for r in rows)
        qa = torch.zeros(len(rows), width, 2, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            qa[i, : len(r)], valid[i, : len(r)] = r, True
        x = test.features[start : start + len(rows)].float()
        with _autocast(s.dtype):
            logits = readout(_tokens(projector, x, s.ablation, s.width), qa[..., 0])
        ok = (logits.float().argmax(-1) == qa[..., 1]) & valid  # (B, Q)
        t = qtype[qa[..., 0]]
        for k in range(len(TYPES)):
            mine = valid & (t == k)
            right[k] += int((ok & mine).sum())
            total[k] += int(mine.sum())
        for q, a in zip(qa[..., 0][valid].tolist(), qa[..., 1][valid].tolist(), strict=True):
            golds.setdefault(q, []).append(a)
    majority = torch.zeros(len(TYPES), dtype=torch.long)
    for q, answers in golds.items():
        majority[qtype[q]] += max(answers.count(a) for a in set(answers))
    out: dict[str, Any] = {"types": {}}
    for k, name in enumerate(TYPES):
        out["types"][name] = {"n": int(total[k]), "right": int(right[k]),
                              "majority": int(majority[k])}  # fmt: skip
    return out
