"""Feature shards: deterministic planning, per-shard manifest fragments, verification and merge.

Items (one per image, or per text-only record) are cut into shards of a fixed item count, so shard i
always covers the same items: any process can encode any shard, and a finished shard is recognised
by its fragment (`{split}-%06d.parquet`: its manifest rows, the tar's size and sha256, and a hash of
its planned items and encoder). A tar whose size or checksum differs from its fragment was truncated
or edited: that is an error naming the shard, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from msr.data.llava import Record
from msr.data.skips import SkipLedger
from msr.utils.io import atomic_write

MANIFEST = "manifest.parquet"
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("image", pa.string()),
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("record_ids", pa.list_(pa.string())),
        ("has_features", pa.bool_()),
        ("status", pa.string()),  # ok | skipped
        ("reason", pa.string()),
        ("encoder", pa.string()),
    ]
)


class ShardError(ValueError):
    """A shard on disk that does not match its manifest entry; the message names the shard."""


@dataclass(frozen=True)
class Item:
    key: str
    split: str
    image: str | None
    source: str
    records: tuple[Record, ...]

    def meta(self) -> dict[str, Any]:
        """The json stored next to the features in the shard."""
        return {
            "key": self.key,
            "split": self.split,
            "image": self.image,
            "source": self.source,
            "records": [
                {"id": r.id, "conversations": [list(t) for t in r.conversations]}
                for r in self.records
            ],
        }


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    items: tuple[Item, ...]
    digest: str = field(default="")

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


def sample_key(text: str) -> str:
    """A WebDataset-safe key (no dots or slashes) that stays readable."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def plan_items(records: Sequence[Record], split: str) -> list[Item]:
    """Group records by image (first appearance order); each text-only record is its own item."""
    by_image: dict[str, list[Record]] = {}
    order: list[tuple[str, str | None]] = []
    for r in records:
        if r.image is None:
            order.append((f"text_{sample_key(r.id)}", None))
            by_image[order[-1][0]] = [r]
        else:
            if r.image not in by_image:
                order.append((r.image, r.image))
                by_image[r.image] = []
            by_image[r.image].append(r)
    items, keys = [], set()
    for k, image in order:
        key = k if image is None else sample_key(image.rsplit(".", 1)[0])
        if key in keys:
            raise ValueError(
                f"two samples map to the key {key!r} (image {image!r}); rename one of the files"
            )
        keys.add(key)
        recs = tuple(by_image[k])
        items.append(Item(key, split, image, recs[0].source, recs))
    return items


def plan_shards(items: Sequence[Item], per_shard: int, encoder_id: str) -> list[ShardPlan]:
    """Cut items into shards of `per_shard` items; each plan carries a digest of its content."""
    plans = []
    for index, start in enumerate(range(0, len(items), per_shard)):
        chunk = tuple(items[start : start + per_shard])
        h = hashlib.sha256(encoder_id.encode())
        for it in chunk:
            h.update(json.dumps(it.meta(), sort_keys=True).encode())
        plans.append(ShardPlan(chunk[0].split, index, chunk, h.hexdigest()[:16]))
    return plans


def items_per_shard(shard_mb: int, tokens: int, width: int) -> int:
    """How many image samples of fp16 (tokens × width) features fit in `shard_mb` MB."""
    per_item = tokens * width * 2 + 2048  # features + json and tar headers
    return max(1, shard_mb * 2**20 // per_item)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_fragment(
    out: Path, plan: ShardPlan, rows: list[dict[str, Any]], tar_size: int, tar_sha256: str
) -> None:
    """Record a finished shard: its manifest rows plus the tar's size and checksum."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    meta = {"plan": plan.digest, "tar_size": str(tar_size), "tar_sha256": tar_sha256}
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), **{k: v.encode() for k, v in meta.items()}}
    )
    atomic_write(out / f"{plan.name}.parquet", lambda f: pq.write_table(table, f))


def shard_state(out: Path, plan: ShardPlan, verify: bool) -> str:
    """'done', 'todo' (absent, unfinished, or planned differently) — or ShardError if tampered."""
    tar, frag = out / f"{plan.name}.tar", out / f"{plan.name}.parquet"
    if not frag.exists() or not tar.exists():
        return "todo"
    meta = {k.decode(): v.decode() for k, v in (pq.read_schema(frag).metadata or {}).items()}
    if meta.get("plan") != plan.digest:
        return "todo"  # another plan (new data or encoder): re-encode
    size = tar.stat().st_size
    if str(size) != meta.get("tar_size"):
        raise ShardError(
            f"shard {tar} does not match the manifest: {size} bytes on disk, {meta.get('tar_size')} recorded "
            "(truncated or edited?). Delete it and its .parquet to re-encode."
        )
    if verify and sha256_file(tar) != meta.get("tar_sha256"):
        raise ShardError(
            f"shard {tar} does not match the manifest: sha256 differs from the recorded one (edited?). "
            "Delete it and its .parquet to re-encode."
        )
    return "done"


def merge_manifest(out: Path, plans: Iterable[ShardPlan], fingerprint: dict[str, Any]) -> pa.Table:
    """Concatenate the fragments of every planned shard into manifest.parquet; remove the shards of
    the planned splits that are no longer planned. Shards of a split not planned in this run are
    kept (not listed): a later run with that split reuses them."""
    plans = list(plans)
    missing = [p.name for p in plans if not (out / f"{p.name}.parquet").exists()]
    if missing:
        raise ShardError(
            f"cannot merge: {len(missing)} shard(s) not encoded yet: {', '.join(missing[:5])}"
        )
    tables = [pq.read_table(out / f"{p.name}.parquet").replace_schema_metadata(None) for p in plans]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    table = table.replace_schema_metadata({"fingerprint": json.dumps(fingerprint, sort_keys=True)})
    atomic_write(out / MANIFEST, lambda f: pq.write_table(table, f))
    planned, splits = {p.name for p in plans}, {p.split for p in plans}
    for stale in out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].*"):
        if stale.stem not in planned and stale.stem.rsplit("-", 1)[0] in splits:
            stale.unlink()
    return table


def read_manifest(out: Path) -> tuple[pa.Table, dict[str, Any]]:
    """The manifest and its encoder fingerprint."""
    path = out / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no feature manifest at {path}; run `msr features` first")
    try:
        table = pq.read_table(path)
        fingerprint = json.loads((table.schema.metadata or {}).get(b"fingerprint", b"{}"))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ShardError(
            f"feature manifest {path} is damaged ({type(err).__name__}: {err}); rerun "
            "`msr features --merge-only` to rebuild it from the shards' fragments"
        ) from None
    missing = [c for c in SCHEMA.names if c not in table.column_names]
    if missing:
        raise ShardError(
            f"feature manifest {path} lacks the columns {missing}; rerun `msr features`"
        )
    return table, fingerprint


def check_shards(out: Path, shards: Iterable[str]) -> None:
    """Each listed shard (a tar name in `out`) is on disk at the size its fragment recorded: a
    truncated or missing shard is an error naming it before training starts, not a `tarfile` error
    in a loader worker."""
    for name in shards:
        tar, frag = out / name, (out / name).with_suffix(".parquet")
        if not tar.is_file():
            raise ShardError(
                f"feature shard {tar} is listed in the manifest but missing; rerun `msr features`"
            )
        try:
            meta = pq.read_schema(frag).metadata or {}
        except (pa.ArrowException, OSError) as err:
            raise ShardError(
                f"the fragment {frag} of shard {tar} is missing or damaged ({err}); delete both "
                "and rerun `msr features`"
            ) from None
        recorded, size = meta.get(b"tar_size", b"?").decode(), tar.stat().st_size
        if recorded != str(size):
            raise ShardError(
                f"feature shard {tar} is {size} bytes on disk, {recorded} recorded (truncated or "
                "edited); delete it and its .parquet, then rerun `msr features`"
            )


@dataclass
class SplitRows:
    """One split of a manifest: records per finished shard, and the records skipped at encoding."""

    records: dict[str, int] = field(default_factory=dict)  # shard name -> records in it
    skipped: SkipLedger = field(default_factory=SkipLedger)  # `reader: <reason>` -> record ids

    @property
    def offered(self) -> int:
        return sum(self.records.values()) + self.skipped.bad


def split_rows(table: pa.Table, split: str) -> SplitRows:
    """The rows of `split` in a feature manifest, counted."""
    out = SplitRows()
    rows = zip(
        table["shard"].to_pylist(),
        table["split"].to_pylist(),
        table["status"].to_pylist(),
        table["record_ids"].to_pylist(),
        table["key"].to_pylist(),
        table["reason"].to_pylist(),
        strict=True,
    )
    for shard, split_, status, records, key, reason in rows:
        if split_ != split:
            continue
        if status == "ok":
            out.records[shard] = out.records.get(shard, 0) + len(records or [key])
        elif status == "skipped":
            for rid in records or [key]:
                out.skipped.add(f"reader: {skip_reason(reason)}", str(rid))
    return out


def skip_reason(reason: str | None) -> str:
    """`missing image: data/x.jpg (…)` → `missing image`: what a skip is counted by."""
    return (reason or "unknown").split(":")[0].split(" (")[0][:80]
