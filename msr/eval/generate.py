"""Batched greedy generation with a response cache.

Prompts are built with the model's conversation template and LLaVA's evaluation suffixes, the image
placeholder expanded to the projector's M positions, and left-padded into batches; generation runs
on `inputs_embeds` with the KV cache. Responses are cached by (model fingerprint, image content,
full prompt, generation arguments), so a rerun or an added benchmark generates only what is new.
Each distinct image is encoded once per run (POPE asks six questions of an image, MMBench's circular
copies four): its features are kept, up to a memory bound, by content hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from msr.data.templates import Template
from msr.eval.benchmarks.base import ImageRef, Question
from msr.models.mllm import MLLM
from msr.models.preprocess import ImageSpec, prepare

log = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class GenerationArgs:
    max_new_tokens: int = 128
    do_sample: bool = False  # greedy, LLaVA's --temperature 0


@functools.lru_cache(maxsize=65536)
def _digest(image: ImageRef) -> str:
    """An image's content hash, once per image (POPE and MME ask several questions per image)."""
    return image.digest()


def _prepared(image: ImageRef, spec: ImageSpec) -> Tensor:
    """uint8 (3, S, S) of one image; `BadImage` (from `open`) names a file that cannot be used."""
    img = image.open()
    try:
        return prepare(img, spec)
    finally:
        img.close()


def stop_ids(tokenizer: Any, template: Template) -> list[int]:
    """The token ids generation stops on: EOS and each of the template's stop strings that is one
    token of the vocabulary (ChatML's `<|im_end|>`)."""
    stops = {tokenizer.eos_token_id}
    for s in template.stop_strings:
        sid = tokenizer.convert_tokens_to_ids(s) if s in tokenizer.get_vocab() else None
        if sid is not None and sid != tokenizer.unk_token_id:
            stops.add(sid)
    return sorted(i for i in stops if i is not None)


class ResponseCache:
    """An append-only jsonl of {key, text}; a torn last line (a crash mid-write) is ignored.
    `also`: more files to read (each rank of a multi-process eval appends to its own)."""

    def __init__(self, path: Path, also: Sequence[Path] = ()) -> None:
        self.path = path
        self.entries: dict[str, str] = {}
        for source in dict.fromkeys([*also, path]):
            if not source.exists():
                continue
            for line in source.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.entries[row["key"]] = row["text"]
                except (json.JSONDecodeError, KeyError):
                    continue
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, items: dict[str, str]) -> None:
        with self.path.open("a") as f:
            for key, text in items.items():
                f.write(json.dumps({"key": key, "text": text}) + "\n")
            f.flush()
        self.entries.update(items)


class FeatureMemo:
    """Vision features by image content hash, least recently used first out beyond `max_bytes`."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[str, Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, digest: str) -> Tensor | None:
        features = self.entries.get(digest)
        if features is not None:
            self.entries.move_to_end(digest)
        return features

    def put(self, digest: str, features: Tensor) -> None:
        self.entries[digest] = features
        self.bytes += features.numel() * features.element_size()
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


class Generator:
    def __init__(
        self,
        model: MLLM,
        args: GenerationArgs,
        cache: ResponseCache | None = None,
        memo: FeatureMemo | None = None,
    ) -> None:
        if model.tokenizer is None or model.template is None:
            raise ValueError(
                "generation needs the model's tokenizer and template (MLLM.from_pretrained)"
            )
        self.m, self.args, self.cache = model, args, cache
        self.memo = memo if memo is not None else FeatureMemo()
        self.template = model.template
        self.processor = model.processor
        self.pad_id = self.processor.pad_id
        self.stop_ids = stop_ids(model.tokenizer, self.template)

    def prompt(self, q: Question) -> str:
        return self.template.prompt(q.text, has_image=q.image is not None)

    def key(self, q: Question) -> str:
        image = _digest(q.image) if q.image is not None else ""
        blob = json.dumps([self.m.fingerprint, image, self.prompt(q), asdict(self.args)])
        return hashlib.sha256(blob.encode()).hexdigest()

    def answer(
        self, questions: Sequence[Question], batch_size: int, progress: Progress | None = None
    ) -> list[str]:
        """Predictions in question order; cached ones are not generated again."""
        keys = [self.key(q) for q in questions]
        out: list[str | None] = [self.cache.get(k) if self.cache else None for k in keys]
        todo = [i for i, o in enumerate(out) if o is None]
        if progress is not None and len(todo) < len(questions):
            progress(len(questions) - len(todo))
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            texts = self.generate([questions[i] for i in idx])
            for i, t in zip(idx, texts, strict=True):
                out[i] = t
            if self.cache is not None:
                self.cache.put({keys[i]: t for i, t in zip(idx, texts, strict=True)})
            if progress is not None:
                progress(len(idx))
        return [o if o is not None else "" for o in out]

    @torch.no_grad()
    def generate(self, questions: Sequence[Question]) -> list[str]:
        """One left-padded batch, greedy."""
        new = self.m.generate(
            *self.inputs(questions),
            max_new_tokens=self.args.max_new_tokens,
            do_sample=self.args.do_sample,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        return [self.decode(row.tolist()) for row in new]

    @torch.no_grad()
    def inputs(self, questions: Sequence[Question]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The prompts of one batch, left-padded so that each ends where its answer begins:
        (B, T) input ids, (B, T) attention mask, (B, T) image positions, (I, N, d) features."""
        model = self.m
        prompts = [self.processor.prompt(q.text, q.image is not None) for q in questions]
        batch = self.processor.pad(prompts, side="left")
        device = next(model.llm.parameters()).device
        input_ids, attention, image_mask = batch.input_ids, batch.attention_mask, batch.image_mask
        images = [q.image for q in questions if q.image is not None]
        features = self.features(images) if images else None
        return input_ids.to(device), attention.to(device), image_mask.to(device), features

    def features(self, images: Sequence[ImageRef]) -> Tensor:
        """(I, N, d) features of the images in order; each distinct image not in the memo is
        encoded (once, in one batch), the others are taken from it."""
        digests = [_digest(im) for im in images]
        batch = {d: f for d in dict.fromkeys(digests) if (f := self.memo.get(d)) is not None}
        todo = {d: im for d, im in zip(digests, images, strict=True) if d not in batch}
        self.memo.hits += len(digests) - len(todo)
        self.memo.misses += len(todo)
        if todo:
            model = self.m
            assert model.vision is not None
            spec = model.vision.spec
            pixels = torch.stack([_prepared(im, spec) for im in todo.values()])  # uint8
            for d, f in zip(todo, model.encode_images(pixels), strict=True):  # (N, d) each
                batch[d] = f
                self.memo.put(d, f)
        return torch.stack([batch[d] for d in digests])  # (I, N, d)

    def decode(self, ids: list[int]) -> str:
        for n, t in enumerate(ids):
            if t in self.stop_ids:
                ids = ids[:n]
                break
        text = self.m.tokenizer.decode(ids, skip_special_tokens=True)
        for s in self.template.stop_strings:
            text = text.split(s)[0]
        return text.strip()
