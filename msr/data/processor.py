"""The prompt processor: a conversation and its image → the model's inputs, the same way for training
(the whole conversation, answers labelled) and for generation (the prompt of one question, which
ends where the answer begins). One object does the template, the tokenization around `<image>`, the
expansion of the image to the projector's M positions and the padding into a batch, so the two
paths cannot drift apart (HF's processors, nanoVLM's: https://github.com/huggingface/nanoVLM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from msr.data.templates import Template
from msr.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Encoded, encode, tokenize_with_image


@dataclass(frozen=True)
class Padded:
    input_ids: Tensor  # (B, T) long
    labels: Tensor  # (B, T) long, IGNORE_INDEX on padding and unsupervised tokens
    attention_mask: Tensor  # (B, T) long
    image_mask: Tensor  # (B, T) bool: True on the M image positions of each image sample


@dataclass(frozen=True)
class PromptProcessor:
    tokenizer: Any
    template: Template
    num_image_tokens: int  # M: the positions one image takes
    max_length: int  # training examples are cut here (a cut into the image is a BadSample)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def conversation(self, key: str, turns: Sequence[tuple[str, str]], has_image: bool) -> Encoded:
        """A training example: every answer token labelled; `BadSample` when it cannot be trained
        on (template, truncation into the image, nothing left to learn)."""
        return encode(
            key,
            turns,
            self.tokenizer,
            self.template,
            self.num_image_tokens,
            self.max_length,
            has_image,
        )

    def prompt(self, question: str, has_image: bool) -> Encoded:
        """The generation prompt of one question (the template's, as LLaVA's evaluation builds
        it): ids with the image expanded to M pad positions, nothing labelled."""
        ids, _ = tokenize_with_image(self.template.prompt(question, has_image), self.tokenizer)
        start = ids.index(IMAGE_TOKEN_INDEX) if IMAGE_TOKEN_INDEX in ids else None
        if start is not None:
            ids = ids[:start] + [self.pad_id] * self.num_image_tokens + ids[start + 1 :]
        return Encoded(ids, [IGNORE_INDEX] * len(ids), start)

    def pad(self, examples: Sequence[Encoded], side: Literal["right", "left"]) -> Padded:
        """A batch: right-padded for training, left-padded for generation (each prompt then ends
        where its answer begins)."""
        T = max(len(e.input_ids) for e in examples)
        B = len(examples)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        image_mask = torch.zeros((B, T), dtype=torch.bool)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            at = 0 if side == "right" else T - n
            ids[i, at : at + n] = torch.tensor(e.input_ids)
            labels[i, at : at + n] = torch.tensor(e.labels)
            attention[i, at : at + n] = 1
            if e.image_start is not None:
                start = at + e.image_start
                image_mask[i, start : start + self.num_image_tokens] = True
        return Padded(ids, labels, attention, image_mask)
