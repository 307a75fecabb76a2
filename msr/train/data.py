"""What a training stage reads: the feature shards of its split, checked against the params'
encoder before anything is built, and the samples the features stage already skipped."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from msr.config import Params
from msr.data.loader import Batch
from msr.data.shards import ShardError, check_shards, read_manifest, skip_reason, split_rows
from msr.data.skips import SkipLedger
from msr.models.vision import describe_vision


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class FeatureSplit:
    shards: list[str]  # paths of the split's finished shards, sorted
    records: dict[str, int]  # examples per shard
    width: int  # feature width d
    grid: tuple[int, int]
    skipped: SkipLedger  # records the features stage could not use (reader and encoder)


def feature_split(params: Params, split: str) -> FeatureSplit:
    """The shards of `split` — or an error before training when the cache is missing or was made
    by another encoder than the params describe."""
    v = params.vision
    root = Path(params.paths.features)
    try:
        table, fingerprint = read_manifest(root)
    except (FileNotFoundError, ShardError) as err:
        raise TrainingError(str(err)) from None
    expected, width, grid = describe_vision(v.model, **v.backbone_options)
    if fingerprint.get("id") != expected["id"]:
        diffs = [
            f"{k}: {fingerprint.get(k)!r} vs {expected[k]!r}"
            for k in expected
            if k != "id" and fingerprint.get(k) != expected[k]
        ]
        raise TrainingError(
            f"the features in {root} come from another encoder than the params describe "
            f"(manifest vs params: {'; '.join(diffs)}); rerun `msr features`"
        )
    rows = split_rows(table, split)
    counts, skipped = rows.records, rows.skipped
    source = params.data.pretrain_json if split == "pretrain" else params.data.instruct_json
    for s in _reader_skips(root / "skips.json"):
        if Path(s["file"]) == Path(source):
            skipped.add(f"reader: {skip_reason(s['reason'])}", str(s["id"]))
    if not counts:
        raise TrainingError(
            f"no {split} shards in {root}: the manifest lists none (run `msr features`)"
        )
    try:
        check_shards(root, sorted(counts))
    except ShardError as err:
        raise TrainingError(str(err)) from None
    shards = [str(root / s) for s in sorted(counts)]
    return FeatureSplit(shards, {str(root / s): n for s, n in counts.items()}, width, grid, skipped)


def _reader_skips(path: Path) -> list[dict[str, str]]:
    """The reader's skips that `msr features` wrote (none when it wrote no file)."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())["reader"]
        if not all(isinstance(r, dict) and {"id", "reason", "file"} <= r.keys() for r in rows):
            raise ValueError("a row lacks id, reason or file")
    except (ValueError, KeyError, TypeError) as err:
        raise TrainingError(
            f"{path} is damaged ({type(err).__name__}: {err}); rerun `msr features --merge-only`"
        ) from None
    return list(rows)


def batches_of(loader: Iterable[Batch], skipped: SkipLedger) -> Iterator[Batch]:
    """The loader's batches; the skip reports they carry go into `skipped` (empty batches only
    carry reports)."""
    for batch in loader:
        skipped.extend(batch.skipped)
        if batch.keys:
            yield batch
