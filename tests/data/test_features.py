"""Feature caching: shard contents, manifest, idempotent reruns, resume after a crash, tampering,
bad images, and a 2-process split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
import yaml

from msr.config import Params, parse_params
from msr.data.llava import DataError
from msr.data.shards import ShardError, read_manifest
from msr.data.skips import TooManySkips
from msr.data.tar_writer import ShardWriter
from stages import features

ROOT = Path(__file__).resolve().parents[2]


def with_features(params: Params, out: Path, **data: object) -> Params:
    raw = params.model_dump(mode="json")
    raw["paths"]["features"] = str(out)
    raw["data"].update(data)
    return parse_params(raw)


def samples(out: Path) -> dict[str, dict]:
    """Every sample of every shard, by key."""
    got = {}
    for tar in sorted(out.glob("*.tar")):
        for s in wds.DataPipeline(
            wds.SimpleShardList([str(tar)]), wds.tarfile_to_samples(), wds.decode()
        ):
            got[s["__key__"]] = s
    return got


def test_shards_and_manifest(tiny_workspace: Params, tmp_path: Path) -> None:
    p = with_features(tiny_workspace, tmp_path / "f")
    report = features.run(p, workers=0)
    d = p.data.synth
    assert (
        report.images == d.pretrain_images + d.instruct_images and report.text_only == d.text_only
    )
    out = tmp_path / "f"
    assert sorted(x.name for x in out.glob("*.tar")) == [
        "instruct-000000.tar",
        "instruct-000001.tar",
        "pretrain-000000.tar",
    ]
    table, fingerprint = read_manifest(out)
    assert len(table) == d.pretrain_images + d.instruct_images + d.text_only
    assert set(table.column_names) >= {
        "key",
        "shard",
        "image",
        "image_id",
        "source",
        "split",
        "encoder",
    }
    assert (
        fingerprint["layer"] == -2 and fingerprint["select"] == "patch" and fingerprint["weights"]
    )
    assert set(table["encoder"].to_pylist()) == {fingerprint["id"]}
    got = samples(out)
    assert set(got) == set(table["key"].to_pylist())
    img = next(s for s in got.values() if s["json"]["image"])
    assert img["npy"].shape == (576, 64) and img["npy"].dtype == np.float16
    assert img["json"]["records"][0]["conversations"][0][0] == "human"
    text = next(s for s in got.values() if s["json"]["image"] is None)
    assert "npy" not in text and text["json"]["source"] == "text"


def test_features_equal_the_tower_output(tiny_workspace: Params, tmp_path: Path) -> None:
    from PIL import Image

    from msr.models.preprocess import prepare
    from msr.models.vision import vision_for

    p = with_features(tiny_workspace, tmp_path / "f")
    features.run(p, workers=0)
    sample = samples(tmp_path / "f")["00000_000000001"]
    tower = vision_for(p.vision)
    image = Image.open(Path(p.data.pretrain_images) / sample["json"]["image"])
    expected = tower(prepare(image, tower.spec)[None])[0].float().numpy()
    np.testing.assert_allclose(sample["npy"].astype(np.float32), expected, rtol=2e-2, atol=2e-2)


def test_rerun_writes_nothing(tiny_workspace: Params, tmp_path: Path) -> None:
    p = with_features(tiny_workspace, tmp_path / "f")
    features.run(p, workers=0)
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "f").glob("*-*.*")}
    report = features.run(p, workers=0)
    assert report.shards_written == 0 and report.images == 0
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "f").glob("*-*.*")} == before


def test_one_split_first_then_the_rest(tiny_workspace: Params, tmp_path: Path) -> None:
    p = with_features(tiny_workspace, tmp_path / "f")
    d = p.data.synth
    report = features.run(p, workers=0, splits=["pretrain"])
    assert report.images == d.pretrain_images
    assert [x.name for x in (tmp_path / "f").glob("*.tar")] == ["pretrain-000000.tar"]
    assert set(read_manifest(tmp_path / "f")[0]["split"].to_pylist()) == {"pretrain"}
    pretrain = (tmp_path / "f" / "pretrain-000000.tar").stat().st_mtime_ns
    report = features.run(p, workers=0)  # the instruct split only: pretrain is done
    assert report.images == d.instruct_images
    assert (tmp_path / "f" / "pretrain-000000.tar").stat().st_mtime_ns == pretrain
    assert set(read_manifest(tmp_path / "f")[0]["split"].to_pylist()) == {"pretrain", "instruct"}
    with pytest.raises(ValueError, match=r"splits \['eval'\]; accepted"):
        features.run(p, workers=0, splits=["eval"])


def test_one_split_after_both_keeps_the_other_splits_shards(
    tiny_workspace: Params, tmp_path: Path
) -> None:
    """A run of one split lists only that split, and loses none of the other's encoded shards."""
    p = with_features(tiny_workspace, tmp_path / "f")
    features.run(p, workers=0)
    both = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "f").glob("*-*.*")}
    assert any(name.startswith("instruct-") for name in both)
    features.run(p, workers=0, splits=["pretrain"])
    assert set(read_manifest(tmp_path / "f")[0]["split"].to_pylist()) == {"pretrain"}
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "f").glob("*-*.*")} == both
    report = features.run(p, workers=0)  # nothing to encode: both splits listed again
    assert report.images == 0
    assert set(read_manifest(tmp_path / "f")[0]["split"].to_pylist()) == {"pretrain", "instruct"}


def test_resume_after_crash_mid_shard(
    tiny_workspace: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = with_features(tiny_workspace, tmp_path / "ref")
    features.run(reference, workers=0)
    p = with_features(tiny_workspace, tmp_path / "f")
    calls = {"n": 0}
    original = ShardWriter.write

    def crashing_write(self: ShardWriter, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 20:  # inside the second shard
            raise KeyboardInterrupt("simulated crash")
        original(self, *args)

    monkeypatch.setattr(ShardWriter, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt) as err:
        features.run(p, workers=0, streams=2)
    assert err.tb is not None and not stream_threads()  # the traceback alive, the streams stopped
    out = tmp_path / "f"
    assert [f.name for f in out.glob("*.tar")] == ["pretrain-000000.tar"]  # only the finished shard
    assert not list(out.glob(".*.tmp"))  # the partial shard left no temp file
    monkeypatch.setattr(ShardWriter, "write", original)
    report = features.run(p, workers=0)
    assert report.shards_written == 2  # only the unfinished ones
    ref, got = samples(tmp_path / "ref"), samples(out)
    assert set(ref) == set(got)
    for key, s in ref.items():
        assert s["json"] == got[key]["json"]
        if "npy" in s:
            np.testing.assert_allclose(s["npy"], got[key]["npy"], rtol=1e-2, atol=1e-2)


def test_truncated_shard_is_an_error_naming_it(tiny_workspace: Params, tmp_path: Path) -> None:
    p = with_features(tiny_workspace, tmp_path / "f")
    features.run(p, workers=0)
    tar = tmp_path / "f" / "instruct-000001.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    with pytest.raises(ShardError, match=r"instruct-000001.tar does not match the manifest"):
        features.run(p, workers=0)


def test_edited_shard_is_caught_by_verify(tiny_workspace: Params, tmp_path: Path) -> None:
    p = with_features(tiny_workspace, tmp_path / "f")
    features.run(p, workers=0)
    tar = tmp_path / "f" / "pretrain-000000.tar"
    data = bytearray(tar.read_bytes())
    data[5000] ^= 0xFF
    tar.write_bytes(bytes(data))
    assert features.run(p, workers=0).shards_written == 0  # same size: only a checksum can tell
    with pytest.raises(
        ShardError, match=r"pretrain-000000.tar does not match the manifest: sha256"
    ):
        features.run(p, workers=0, verify=True)


def test_changed_encoder_reencodes(tiny_workspace: Params, tmp_path: Path) -> None:
    p = with_features(tiny_workspace, tmp_path / "f")
    features.run(p, workers=0)
    raw = p.model_dump(mode="json")
    raw["vision"]["feature_layer"] = -1
    report = features.run(parse_params(raw), workers=0)
    assert report.shards_written == 3
    _, fingerprint = read_manifest(tmp_path / "f")
    assert fingerprint["layer"] == -1


@pytest.fixture
def corrupt_copy(tiny_workspace: Params, tmp_path: Path) -> Params:
    """A copy of the synthetic data in which one pretrain image is truncated (header intact)."""
    synth = tmp_path / "synth"
    shutil.copytree(tiny_workspace.paths.synth, synth)
    bad = synth / "pretrain_images" / "00000" / "000000002.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header still parses
    garbage = synth / "pretrain_images" / "00000" / "000000004.jpg"
    garbage.write_bytes(b"this is not an image")  # fails already when the json is read
    raw = tiny_workspace.model_dump(mode="json")
    raw["paths"]["features"] = str(tmp_path / "f")
    raw["data"].update(
        pretrain_json=str(synth / "pretrain.json"),
        pretrain_images=str(synth / "pretrain_images"),
        max_skip_share=1.0,  # the share is tested on its own
    )
    return parse_params(raw)


def test_corrupt_image_is_skipped_and_reported(corrupt_copy: Params, tmp_path: Path) -> None:
    report = features.run(corrupt_copy, workers=0)
    n = corrupt_copy.data.synth.pretrain_images
    assert f"skipped — pretrain: 2 of {n} records (reader: unreadable image: 2" in report.summary()
    assert (
        report.images
        == corrupt_copy.data.synth.pretrain_images + corrupt_copy.data.synth.instruct_images - 2
    )
    skips = json.loads((tmp_path / "f" / "skips.json").read_text())
    assert skips["total"] == 2
    assert (
        "unreadable image" in {s["key"]: s["reason"] for s in skips["encoding"]}["00000_000000002"]
    )
    reasons = {s["key"]: s["reason"] for s in skips["encoding"]}
    assert "unreadable image" in reasons["00000_000000004"]
    table, _ = read_manifest(tmp_path / "f")
    status = dict(zip(table["key"].to_pylist(), table["status"].to_pylist(), strict=True))
    assert status["00000_000000002"] == status["00000_000000004"] == "skipped"
    assert "00000_000000002" not in samples(tmp_path / "f")


def test_features_hold_the_skips_against_max_skip_share(
    corrupt_copy: Params, tmp_path: Path
) -> None:
    """2 of the pretrain records unusable (20 %) stop the stage under a 10 % share — after the
    manifest and skips.json are written, so a rerun with the share raised encodes nothing."""
    raw = corrupt_copy.model_dump(mode="json")
    raw["data"]["max_skip_share"] = 0.1
    n = corrupt_copy.data.synth.pretrain_images
    with pytest.raises(
        TooManySkips,
        match=rf"features \(pretrain\): 2 of {n} samples \(20.0%\) .*data.max_skip_share=0.1; "
        r"top reasons: reader: unreadable image: 2 \(e.g. ",
    ):
        features.run(parse_params(raw), workers=0)
    assert json.loads((tmp_path / "f" / "skips.json").read_text())["total"] == 2
    report = features.run(corrupt_copy, workers=0)
    assert report.shards_written == 0 and "2 of" in report.summary()


def test_corrupt_image_is_an_error_when_strict(corrupt_copy: Params) -> None:
    raw = corrupt_copy.model_dump(mode="json")
    raw["data"]["strict"] = True
    strict = parse_params(raw)
    with pytest.raises(DataError, match="00000_000000002: unreadable image") as err:
        features.run(strict, workers=0, streams=2)
    assert err.tb is not None and not stream_threads()  # stopped with the error, not left encoding


def stream_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("msr-stream")]


def test_missing_image_is_skipped_with_its_reason(corrupt_copy: Params, tmp_path: Path) -> None:
    (Path(corrupt_copy.data.pretrain_images) / "00000" / "000000003.jpg").unlink()
    features.run(corrupt_copy, workers=0)
    skips = json.loads((tmp_path / "f" / "skips.json").read_text())
    assert "missing image" in {s["key"]: s["reason"] for s in skips["encoding"]}["00000_000000003"]


@pytest.mark.slow  # two processes
def test_two_processes_write_disjoint_shards(tiny_workspace: Params, tmp_path: Path) -> None:
    p = with_features(tiny_workspace, tmp_path / "f")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(p.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "features",
        "--params",
        str(params_file),
        "--workers",
        "0",
    ]
    procs = [
        subprocess.Popen(
            [*cmd, "--rank", str(r), "--world-size", "2"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    outputs = [proc.communicate(timeout=300)[0].decode() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert sorted(f.name for f in (tmp_path / "f").glob("*.parquet")) == [
        "instruct-000000.parquet",
        "instruct-000001.parquet",
        "pretrain-000000.parquet",
    ]
    # rank 0 owns shards 0 of each split, rank 1 owns instruct-000001: each wrote only its own
    assert "2/3 shards written" in outputs[0] and "1/3 shards written" in outputs[1], outputs
    merged = subprocess.run(
        [*cmd, "--merge-only"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert merged.returncode == 0, merged.stdout + merged.stderr
    table, _ = read_manifest(tmp_path / "f")
    keys = table["key"].to_pylist()
    assert len(keys) == len(set(keys)) == len(samples(tmp_path / "f"))
    d = p.data.synth
    assert len(keys) == d.pretrain_images + d.instruct_images + d.text_only


@pytest.mark.parametrize(("workers", "streams"), [(0, 2), (1, 1)])
def test_streams_and_decoding_workers_write_what_one_stream_writes(
    tiny_workspace: Params, tmp_path: Path, workers: int, streams: int
) -> None:
    one, other = (
        with_features(tiny_workspace, tmp_path / "1"),
        with_features(tiny_workspace, tmp_path / "2"),
    )
    features.run(one, workers=0, streams=1)
    report = features.run(other, workers=workers, streams=streams)
    assert report.streams == streams and report.images > 0
    assert read_manifest(tmp_path / "1")[0].equals(read_manifest(tmp_path / "2")[0])
    a, b = samples(tmp_path / "1"), samples(tmp_path / "2")
    assert list(a) == list(b)
    for key, s in a.items():
        assert s["json"] == b[key]["json"]
        if "npy" in s:  # thread counts may change the rounding of bf16 sums, not the values
            np.testing.assert_allclose(
                s["npy"].astype(np.float32), b[key]["npy"].astype(np.float32), rtol=2e-2, atol=2e-2
            )
