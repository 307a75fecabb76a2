"""The training loader: feature shards → examples (one per record) → shuffled, optionally grouped
by modality and length → padded batches.

Deterministic: the order is a function of (shards, seed, epoch), so a resumed run can skip to the
batch it stopped at and see the same data. Split across ranks by shard (`shards_for_rank`) and
across DataLoader workers by shard. A sample that cannot be trained on (template cannot be split,
every label masked) raises `BadSample` with its key, or, when not strict, is skipped and travels
as a (key, reason) pair on the next batch (`Batch.skipped`) — so a skip met in a loader worker
reaches the training process; a last, empty batch carries what is left at the end. The incomplete
last batch is reported the same way (`loader: ...`). See msr.data.skips.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from msr.data.processor import PromptProcessor
from msr.data.skips import reason_of
from msr.data.templates import Template
from msr.data.tokenize import BadSample, Encoded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    key: str
    input_ids: list[int]
    labels: list[int]
    image_start: int | None
    features: np.ndarray | None  # (N, d) fp16, None for text-only

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Batch:
    input_ids: Tensor  # (B, T) long, right-padded
    labels: Tensor  # (B, T) long, IGNORE_INDEX on padding and unsupervised tokens
    attention_mask: Tensor  # (B, T) long
    image_mask: Tensor  # (B, T) bool: True on the M image positions of each image sample
    features: Tensor  # (I, N, d) fp16: the I image samples of the batch, in order
    keys: list[str]
    skipped: list[tuple[str, str]] = field(
        default_factory=list
    )  # (key, reason) since the last batch

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.attention_mask.to(device),
            self.image_mask.to(device),
            self.features.to(device),
            self.keys,
            self.skipped,
        )

    @classmethod
    def only_skips(cls, skipped: list[tuple[str, str]]) -> Batch:
        """An empty batch that carries skip reports (the end of a worker's stream)."""
        empty = torch.zeros((0, 0), dtype=torch.long)
        return cls(empty, empty, empty, empty.bool(), torch.empty(0), [], skipped)

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(examples: Sequence[Example], processor: PromptProcessor) -> Batch:
    """Right-pad a list of examples into a Batch (the processor's padding)."""
    padded = processor.pad(
        [Encoded(e.input_ids, e.labels, e.image_start) for e in examples], side="right"
    )
    feats = [
        torch.from_numpy(np.ascontiguousarray(e.features))
        for e in examples
        if e.image_start is not None and e.features is not None
    ]
    features = torch.stack(feats) if feats else torch.empty(0)
    return Batch(
        padded.input_ids,
        padded.labels,
        padded.attention_mask,
        padded.image_mask,
        features,
        [e.key for e in examples],
    )


def shards_for_rank(shards: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Rank r takes shards r, r + W, r + 2W, ...; every rank needs at least one."""
    mine = list(shards[rank::world_size])
    if not mine:
        raise ValueError(
            f"rank {rank} of {world_size} gets no shard: only {len(shards)} shard(s); use fewer processes or smaller shards"
        )
    return mine


class ExampleStream(IterableDataset[Batch]):
    """Batches of one epoch over `shards`, deterministic in (seed, epoch)."""

    def __init__(
        self,
        shards: Sequence[str],
        *,
        tokenizer: Any,
        template: Template,
        num_image_tokens: int,
        max_length: int,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        shuffle_buffer: int = 1000,
        group_by_modality_length: bool = False,
        strict: bool = False,
        drop_last: bool = True,
    ) -> None:
        if not shards:
            raise ValueError(
                "no feature shards to train on: run `msr features` (or check paths.features)"
            )
        self.shards = list(shards)
        self.processor = PromptProcessor(tokenizer, template, num_image_tokens, max_length)
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.shuffle_buffer, self.group = shuffle_buffer, group_by_modality_length
        self.strict, self.drop_last = strict, drop_last
        self.pending: list[tuple[str, str]] = []  # skips not yet handed out on a batch

    def _examples(self, shards: Sequence[str], rng: random.Random) -> Iterator[Example]:
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(list(shards)), wds.tarfile_to_samples(), wds.decode()
        )
        for sample in pipeline:
            meta, feats = sample["json"], sample.get("npy")
            has_image = meta["image"] is not None
            if has_image and feats is None:
                raise BadSample(f"{sample['__key__']}: image sample without features in its shard")
            for rec in meta["records"]:
                key = f"{sample['__key__']}/{rec['id']}"
                try:
                    turns = [(str(a), str(b)) for a, b in rec["conversations"]]
                    enc = self.processor.conversation(key, turns, has_image)
                except BadSample as err:
                    if self.strict:
                        raise
                    self.pending.append((key, f"template: {reason_of(str(err))}"))
                    continue
                yield Example(
                    key, enc.input_ids, enc.labels, enc.image_start, feats if has_image else None
                )

    def _shuffled(self, examples: Iterator[Example], rng: random.Random) -> Iterator[Example]:
        """A shuffle buffer that starts yielding after `initial` examples and grows two for one up
        to its size, so the first batch does not wait for a full buffer (webdataset's scheme)."""
        buf: list[Example] = []
        initial = min(100, self.shuffle_buffer)
        for e in examples:
            buf.append(e)
            if len(buf) < self.shuffle_buffer:
                nxt = next(examples, None)
                if nxt is not None:
                    buf.append(nxt)
            if len(buf) >= initial:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def _batches(self, examples: Iterator[Example], rng: random.Random) -> Iterator[list[Example]]:
        if not self.group:
            batch: list[Example] = []
            for e in examples:
                batch.append(e)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if batch and not self.drop_last:
                yield batch
            elif batch:
                self._unused(batch)
            return
        # LLaVA's group_by_modality_length: batches of one modality and similar length, in random
        # order; a window's incomplete batches carry over to the next window
        window = self.batch_size * 16
        pool: list[Example] = []
        for e in examples:
            pool.append(e)
            if len(pool) >= window:
                batches, pool = self._grouped(pool)
                rng.shuffle(batches)
                yield from batches
        batches, rest = self._grouped(pool)
        if rest and not self.drop_last:
            batches += [rest[i : i + self.batch_size] for i in range(0, len(rest), self.batch_size)]
        elif rest:
            self._unused(rest)
        rng.shuffle(batches)
        yield from batches

    def _unused(self, examples: list[Example]) -> None:
        reason = "loader: incomplete last batch (drop_last)"
        self.pending += [(e.key, reason) for e in examples]

    def _grouped(self, pool: list[Example]) -> tuple[list[list[Example]], list[Example]]:
        """Full batches of one modality, sorted by length, and the examples left over."""
        batches, rest = [], []
        for modality in (True, False):
            part = sorted((e for e in pool if (e.features is not None) == modality), key=len)
            full = len(part) - len(part) % self.batch_size
            batches += [part[i : i + self.batch_size] for i in range(0, full, self.batch_size)]
            rest += part[full:]
        return batches, rest

    def __iter__(self) -> Iterator[Batch]:
        rng = random.Random(f"{self.seed}/{self.epoch}")
        shards = list(self.shards)
        rng.shuffle(shards)
        info = get_worker_info()
        if info is not None:  # each DataLoader worker reads its own shards, in a fixed interleave
            shards = shards[info.id :: info.num_workers]
            rng = random.Random(f"{self.seed}/{self.epoch}/{info.id}")
        self.pending = []
        examples = self._shuffled(self._examples(shards, rng), rng)
        for batch in self._batches(examples, rng):
            out = collate(batch, self.processor)
            out.skipped, self.pending = self.pending, []
            yield out
        if self.pending:
            yield Batch.only_skips(self.pending)
            self.pending = []
