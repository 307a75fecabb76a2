"""The lean shard writer writes tars that webdataset and tarfile read back, with a true checksum."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds

from msr.data.tar_writer import RECORD, ShardWriter


def write(path: Path, samples: list[tuple[str, dict, np.ndarray | None]]) -> ShardWriter:
    with path.open("wb") as f, ShardWriter(f) as sink:
        for key, meta, feats in samples:
            sink.write(key, meta, feats)
    return sink


def test_webdataset_reads_back_what_was_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [
        (
            "instruct-a",
            {"key": "instruct-a", "records": [{"id": "1"}]},
            rng.standard_normal((576, 64)).astype(np.float16),
        ),
        ("text_2", {"key": "text_2", "records": []}, None),  # a text-only sample: json alone
        (
            "k" * 150,
            {"key": "long"},
            rng.standard_normal((3, 4)).astype(np.float32),
        ),  # > 100 chars: pax
    ]
    tar = tmp_path / "s.tar"
    sink = write(tar, samples)
    got = list(
        wds.DataPipeline(wds.SimpleShardList([str(tar)]), wds.tarfile_to_samples(), wds.decode())
    )
    assert [s["__key__"] for s in got] == [k for k, _, _ in samples]
    for (_, meta, feats), s in zip(samples, got, strict=True):
        assert s["json"] == meta
        if feats is None:
            assert "npy" not in s
        else:
            assert s["npy"].dtype == feats.dtype and np.array_equal(s["npy"], feats)
    data = tar.read_bytes()
    assert sink.size == len(data) and sink.size % RECORD == 0
    assert sink.hexdigest() == hashlib.sha256(data).hexdigest()
    with tarfile.open(tar) as t:  # a plain POSIX tar: fixed owner, mtime 0, read-only members
        members = t.getmembers()
    assert {m.mtime for m in members} == {0} and {m.uname for m in members} == {"msr"}
    assert len(members) == 5 and all(m.mode == 0o444 for m in members)


def test_same_content_same_bytes(tmp_path: Path) -> None:
    feats = np.arange(12, dtype=np.float16).reshape(3, 4)
    a = write(tmp_path / "a.tar", [("x", {"k": 1}, feats)])
    b = write(tmp_path / "b.tar", [("x", {"k": 1}, feats.copy())])
    assert a.hexdigest() == b.hexdigest()
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_non_contiguous_features_are_written_as_their_values() -> None:
    feats = np.arange(24, dtype=np.float16).reshape(4, 6)[:, ::2]  # a strided view
    buf = io.BytesIO()
    with ShardWriter(buf) as sink:
        sink.write("x", {}, feats)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        npy = t.extractfile("x.npy")
        assert npy is not None
        assert np.array_equal(np.load(io.BytesIO(npy.read())), feats)
