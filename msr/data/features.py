"""`msr features`: encode every training image once with the frozen tower into WebDataset shards.

Per split (pretrain, instruct): read and validate the LLaVA json, group records by image, plan shards
(`shards.py`), then encode the shards this rank owns (index % world_size == rank) that are not done.
Batches are encoded by a few streams at once (threads; on a CPU one stream per core beats one
multi-threaded stream), each decoding its own images (uint8) while another runs the tower, or by one
stream fed by DataLoader decoding workers (accelerators); features are stored fp16 (N×d) with the
image's records as json, and each shard's sha256 is taken as it is written. Each finished tar is renamed into place, then
its manifest fragment is written, so an interrupted run redoes only the shard it was writing and a
rerun with the same encoder writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from msr.data.images import DEFAULT_LIMITS, ImageLimits, ImageSkip, open_image
from msr.data.llava import DataError, Skip, read_llava_json
from msr.data.shards import (
    Item,
    ShardPlan,
    items_per_shard,
    merge_manifest,
    plan_items,
    plan_shards,
    shard_state,
    skip_reason,
    split_rows,
    write_fragment,
)
from msr.data.skips import SkipLedger, check_share
from msr.data.streams import ordered_map
from msr.data.tar_writer import ShardWriter
from msr.models.preprocess import ImageSpec, prepare_hwc, stack_hwc
from msr.models.vision import VisionBackbone
from msr.utils.io import atomic_file, atomic_write_json

log = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Source:
    split: str
    json: Path
    images: Path


@dataclass
class FeatureReport:
    images: int = 0
    text_only: int = 0
    skipped: list[Skip] = field(default_factory=list)  # the reader's
    decode_skipped: int = 0  # images of this run that could not be decoded or broke a limit
    shards_written: int = 0
    shards_total: int = 0
    bytes_written: int = 0
    seconds: float = 0.0  # wall time of encoding (planning and merging excluded)
    encoder_seconds: float = 0.0  # time in the tower's forward, summed over streams
    # time in the streams decoding and preparing images, summed over streams (with decoding
    # workers, only batching their arrays: the decoding itself is in the worker processes)
    decode_seconds: float = 0.0
    streams: int = 1
    # after the merge, over every shard (this run's and earlier ones'): records skipped by the
    # reader or at decoding, by split
    ledgers: dict[str, SkipLedger] = field(default_factory=dict)
    offered: dict[str, int] = field(default_factory=dict)  # records offered, by split

    def summary(self) -> str:
        skips = self._skips()
        if not self.shards_written and not self.decode_skipped:
            return f"nothing to encode: all {self.shards_total} shards are up to date{skips}"
        rate = self.images / self.seconds if self.seconds else 0.0
        return (
            f"{self.images} images encoded, {self.shards_written}/{self.shards_total} shards "
            f"written, {self.bytes_written / 1e9:.2f} GB, {rate:.0f} img/s{skips}"
        )

    def _skips(self) -> str:
        if not self.ledgers:  # not merged: this run's own
            n = len(self.skipped) + self.decode_skipped
            return f"; {n} skipped (see skips.json once merged)" if n else "; 0 skipped"
        parts = [
            f"{split}: {ledger.bad} of {self.offered[split]} records ({ledger.describe(3)})"
            for split, ledger in self.ledgers.items()
            if ledger.bad
        ]
        return f"; skipped — {'; '.join(parts)} (skips.json)" if parts else "; 0 skipped"

    def check_share(self, limit: float) -> None:
        """`TooManySkips` when a split's skipped records exceed `limit` of those offered."""
        for split, ledger in self.ledgers.items():
            check_share(ledger.bad, self.offered[split], limit, f"features ({split})", ledger)


class _Images(Dataset[tuple[int, np.ndarray | None, str | None]]):
    """Decode and prepare one image to uint8 (S, S, 3); a failure is returned as a reason, not
    raised."""

    def __init__(
        self, items: Sequence[tuple[Item, Path]], spec: ImageSpec, limits: ImageLimits
    ) -> None:
        self.items, self.spec, self.limits = items, spec, limits

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        item, root = self.items[i]
        assert item.image is not None
        path = root / item.image
        try:
            img = open_image(path, self.limits, self.spec.aspect)
        except ImageSkip as skip:
            return i, None, str(skip)
        try:
            return i, prepare_hwc(img, self.spec), None
        except Exception as err:
            return i, None, f"unreadable image: {path} ({type(err).__name__}: {err})"
        finally:
            img.close()


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def plan(
    sources: Sequence[Source],
    tower: VisionBackbone,
    shard_mb: int,
    strict: bool,
    outside_root: bool = False,
) -> tuple[list[ShardPlan], dict[str, Path], list[Skip]]:
    """Shard plans of every split, the image root of each split, and the reader's skips."""
    plans: list[ShardPlan] = []
    roots, skips = {}, []
    per_shard = items_per_shard(shard_mb, tower.num_tokens, tower.embed_dim)
    for src in sources:
        # images are opened once, when decoded for encoding; a missing or unreadable file is
        # skipped (or an error when strict) there, with the same reasons the reader would give
        result = read_llava_json(
            src.json, src.images, strict=strict, check_images=False, outside_root=outside_root
        )
        skips += result.skips
        items = plan_items(result.records, src.split)
        plans += plan_shards(items, per_shard, tower.fingerprint()["id"])
        roots[src.split] = src.images
    return plans, roots, skips


def encode_features(
    sources: Sequence[Source],
    out: Path,
    tower: VisionBackbone,
    *,
    shard_mb: int,
    batch_size: int,
    strict: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
    outside_root: bool = False,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    streams: int = 1,
    verify: bool = False,
    encode: bool = True,
    merge: bool = True,
    progress: Progress | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> FeatureReport:
    """Encode this rank's pending shards (unless `encode=False`); with `merge`, also write
    manifest.parquet and skips.json (an error if any planned shard is not encoded)."""
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = tower.fingerprint()
    plans, roots, reader_skips = plan(sources, tower, shard_mb, strict, outside_root)
    mine = [p for p in plans if p.index % world_size == rank]
    for p in mine:  # temp files of this rank's shards left by a crash
        for tmp in out.glob(f".{p.name}.*.tmp"):
            tmp.unlink()
    todo = [p for p in mine if shard_state(out, p, verify) == "todo"]
    report = FeatureReport(shards_total=len(plans), skipped=list(reader_skips), streams=streams)
    if on_plan is not None:
        on_plan(sum(1 for p in todo for it in p.items if it.image is not None))
    start = time.perf_counter()
    if todo and encode:
        _encode(
            todo,
            out,
            tower,
            roots,
            batch_size,
            workers,
            streams,
            strict,
            limits,
            fingerprint["id"],
            report,
            progress,
        )
    report.seconds = time.perf_counter() - start
    if merge:
        table = merge_manifest(out, plans, fingerprint)
        skipped = [
            {"key": k, "reason": r}
            for k, r, s in zip(
                table["key"].to_pylist(),
                table["reason"].to_pylist(),
                table["status"].to_pylist(),
                strict=True,
            )
            if s == "skipped"
        ]
        atomic_write_json(
            out / "skips.json",
            {
                "reader": [s.__dict__ for s in reader_skips],
                "encoding": skipped,
                "total": len(reader_skips) + len(skipped),
            },
        )
        _tally(report, table, reader_skips, sources)
    log.info("features: %s", report.summary())
    return report


def _tally(
    report: FeatureReport, table: Any, reader_skips: list[Skip], sources: Sequence[Source]
) -> None:
    """Per split, the records offered (read, used or not) and the skipped ones by reason."""
    split_of = {str(src.json): src.split for src in sources}
    for src in sources:
        rows = split_rows(table, src.split)
        report.ledgers[src.split], report.offered[src.split] = rows.skipped, rows.offered
    for skip in reader_skips:
        split = split_of[skip.file]
        report.ledgers[split].add(f"reader: {skip_reason(skip.reason)}", skip.id)
        report.offered[split] += 1


def _encode(
    todo: list[ShardPlan],
    out: Path,
    tower: VisionBackbone,
    roots: dict[str, Path],
    batch_size: int,
    workers: int,
    streams: int,
    strict: bool,
    limits: ImageLimits,
    encoder_id: str,
    report: FeatureReport,
    progress: Progress | None,
) -> None:
    image_items = [(it, roots[it.split]) for p in todo for it in p.items if it.image is not None]
    features = _feature_stream(
        image_items, tower, batch_size, workers, streams, strict, limits, progress, report
    )
    try:
        for plan in todo:
            tar = out / f"{plan.name}.tar"
            with atomic_file(tar) as f, ShardWriter(f) as sink:
                rows = _write_shard(sink, plan, features, encoder_id, report)
            write_fragment(out, plan, rows, sink.size, sink.hexdigest())
            report.shards_written += 1
            report.bytes_written += sink.size
    finally:  # on an error, stop the streams (and decoding workers) now, not when collected
        features.close()


def _write_shard(
    sink: ShardWriter,
    plan: ShardPlan,
    features: Iterator[tuple[str, np.ndarray | None, str | None]],
    encoder_id: str,
    report: FeatureReport,
) -> list[dict[str, Any]]:
    """Write the plan's samples (features drawn from the stream, in order); its manifest rows."""
    rows: list[dict[str, Any]] = []
    for item in plan.items:
        row = {
            "key": item.key,
            "shard": f"{plan.name}.tar",
            "split": item.split,
            "image": item.image,
            "image_id": Path(item.image).stem if item.image else None,
            "source": item.source,
            "record_ids": [r.id for r in item.records],
            "has_features": False,
            "status": "ok",
            "reason": None,
            "encoder": encoder_id,
        }
        feats = None
        if item.image is not None:
            key, feats, reason = next(features)
            assert key == item.key, f"feature stream out of order: {key} != {item.key}"
            if feats is None:
                rows.append({**row, "status": "skipped", "reason": reason})
                report.decode_skipped += 1
                continue
            row["has_features"] = True
            report.images += 1
        else:
            report.text_only += 1
        sink.write(item.key, item.meta(), feats)
        rows.append(row)
    return rows


Batch = list[tuple[int, np.ndarray | None, str | None]]


def _spans(n: int, batch_size: int, streams: int) -> list[list[int]]:
    """Batches of item indices; with several streams the last `streams` batches are cut into
    quarter batches, so that the streams finish together instead of one idling through another's
    last batch."""
    spans = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    if streams == 1:
        return spans
    tail = [i for span in spans[-streams:] for i in span]
    step = max(1, batch_size // 4)
    return spans[:-streams] + [tail[s : s + step] for s in range(0, len(tail), step)]


def _feature_stream(
    items: Sequence[tuple[Item, Path]],
    tower: VisionBackbone,
    batch_size: int,
    workers: int,
    streams: int,
    strict: bool,
    limits: ImageLimits,
    progress: Progress | None,
    report: FeatureReport,
) -> Generator[tuple[str, np.ndarray | None, str | None], None, None]:
    """(key, fp16 features (N, d) or None, skip reason) in item order.

    Batches are encoded by `streams` threads (`streams.py`); images are decoded by `workers`
    processes ahead of them, or, with none, by the stream that encodes the batch, so one
    stream's decoding overlaps another's forward."""
    images = _Images(items, tower.spec, limits)
    spans = _spans(len(items), batch_size, streams)
    jobs: Iterator[Any]
    if workers:
        loader = DataLoader(
            images, batch_sampler=spans, num_workers=workers, collate_fn=_collate, prefetch_factor=4
        )
        jobs = iter(loader)
    else:
        jobs = iter(spans)

    def encode(job: Any) -> tuple[Batch, dict[int, np.ndarray], float, float]:
        start = time.perf_counter()
        batch: Batch = job if workers else [images[i] for i in job]
        ok = [(i, x) for i, x, _ in batch if x is not None]
        if not ok:
            return batch, {}, time.perf_counter() - start, 0.0
        pixels = stack_hwc([x for _, x in ok])  # uint8 (b, 3, S, S)
        decoded = time.perf_counter()
        encoded = tower(pixels).to(torch.float16).cpu().numpy()  # (b, N, d)
        done = time.perf_counter()
        return (
            batch,
            {i: encoded[j] for j, (i, _) in enumerate(ok)},
            decoded - start,
            done - decoded,
        )

    results = ordered_map(encode, jobs, streams)
    try:
        for batch, feats, decode_s, encode_s in results:
            report.decode_seconds += decode_s
            report.encoder_seconds += encode_s
            for i, _, reason in batch:
                key = items[i][0].key
                if reason is not None and strict:
                    raise DataError(f"{key}: {reason}")
                if reason is not None:
                    log.warning("skipping %s: %s", key, reason)
                yield key, feats.get(i), reason
            if progress is not None:
                progress(len(batch))
    finally:  # stop the streams now, also when an error leaves this frame alive in a traceback
        results.close()
