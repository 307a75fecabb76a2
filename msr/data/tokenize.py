"""Tokenization with the image placeholder and label masking.

The text is split at `<image>` and each chunk tokenized on its own, keeping one BOS (LLaVA's
`tokenizer_image_token`); the placeholder then expands to the projector's M positions. A token is
supervised iff its character span overlaps an answer span of the rendered template, so labels come
from the same tokenization the model sees — no per-round length arithmetic, no silent mismatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from msr.data.templates import IMAGE_TOKEN, Template, TemplateError

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200


class BadSample(ValueError):
    """A sample that cannot be trained on; the message starts with its key."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]  # image positions hold the pad id
    labels: list[int]  # IGNORE_INDEX where not supervised
    image_start: int | None  # first of the M image positions, None for text-only

    @property
    def supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenize_with_image(text: str, tokenizer: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """ids and character offsets; `<image>` becomes one IMAGE_TOKEN_INDEX."""
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            offsets.append((pos - len(IMAGE_TOKEN), pos))
        enc = tokenizer(chunk, return_offsets_mapping=True)
        chunk_ids, chunk_offs = list(enc["input_ids"]), list(enc["offset_mapping"])
        if i > 0 and chunk_ids and chunk_ids[0] == tokenizer.bos_token_id:
            chunk_ids, chunk_offs = chunk_ids[1:], chunk_offs[1:]  # one BOS for the whole text
        ids += chunk_ids
        offsets += [(s + pos, e + pos) if e > s else (pos, pos) for s, e in chunk_offs]
        pos += len(chunk) + len(IMAGE_TOKEN)
    return ids, offsets


def encode(
    key: str,
    turns: Sequence[tuple[str, str]],
    tokenizer: Any,
    template: Template,
    num_image_tokens: int,
    max_length: int,
    has_image: bool,
) -> Encoded:
    """Render, tokenize, expand the image to `num_image_tokens` positions, mask, truncate."""
    try:
        rendered = template.render(turns)
    except TemplateError as err:
        raise BadSample(f"{key}: template {template.name!r}: {err}") from None
    if rendered.text.count(IMAGE_TOKEN) != int(has_image):
        raise BadSample(
            f"{key}: {rendered.text.count(IMAGE_TOKEN)} '<image>' tokens in the rendered text, "
            f"expected {int(has_image)}"
        )
    ids, offsets = tokenize_with_image(rendered.text, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids: list[int] = []
    labels: list[int] = []
    image_start = None
    for tok, (s, e) in zip(ids, offsets, strict=True):
        if tok == IMAGE_TOKEN_INDEX:
            image_start = len(input_ids)
            input_ids += [pad] * num_image_tokens
            labels += [IGNORE_INDEX] * num_image_tokens
            continue
        supervised = e > s and any(s < b and e > a for a, b in rendered.spans)
        input_ids.append(tok)
        labels.append(tok if supervised else IGNORE_INDEX)
    if image_start is not None and image_start + num_image_tokens > max_length:
        raise BadSample(
            f"{key}: max_length={max_length} cuts into the image tokens "
            f"(positions {image_start}..{image_start + num_image_tokens - 1})"
        )
    out = Encoded(input_ids[:max_length], labels[:max_length], image_start)
    if out.supervised == 0:
        raise BadSample(
            f"{key}: every label is masked after truncation to {max_length} tokens "
            f"({len(input_ids)} before); nothing to learn from this sample"
        )
    return out
