"""Bad input as a new user's data and a crashed disk produce it: every case ends in a one-line error
naming the value, or in a named skip in skips.json — never a traceback, never a silent drop — and
the stage's outputs are complete or absent."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from msr.config import Params, parse_params
from msr.data.llava import DataError, read_llava_json
from msr.data.skips import TooManySkips
from msr.train.loop import train
from stages import features


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height but whose data is one pixel's: what a
    decompression bomb or a damaged file looks like to a reader that trusts the header."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _record(rid: str, image: str | None, answer: str = "A red circle.") -> dict[str, Any]:
    human = "<image>\nDescribe the image." if image else "Say hello."
    turns = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return {"id": rid, **({"image": image} if image else {}), "conversations": turns}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (32, 24), (0, 128, 255)).save(root / "ok.jpg")
    return root


# --- data records: the reader counts and names each, or stops with the file and the offset -------

RECORDS: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "lone surrogate in an answer": (
        lambda root: _record("s", "ok.jpg", answer="A red \udc80 circle."),
        r"invalid text: turn 1 holds a lone surrogate '\\udc80' at character 6",
    ),
    "lone surrogate in an id": (
        lambda root: _record("id\udc80", "ok.jpg"),
        "invalid text: the id holds a lone surrogate",
    ),
    "absolute image path": (
        lambda root: _record("abs", "/etc/passwd"),
        "image path outside the image folder: '/etc/passwd' .*data.images_outside_root=true",
    ),
    "'..' image path": (
        lambda root: _record("up", "../images/ok.jpg"),
        "image path outside the image folder: '../images/ok.jpg'",
    ),
    "no image token": (
        lambda root: {
            **_record("t", "ok.jpg"),
            "conversations": _record("x", None)["conversations"],
        },
        "image token count: no '<image>' tokens",
    ),
    "image token in a text-only record": (
        lambda root: {
            **_record("t", None),
            "conversations": _record("x", "ok.jpg")["conversations"],
        },
        "image token in a text-only sample",
    ),
    "huge image (declared 30000²)": (
        lambda root: (
            (root / "bomb.png").write_bytes(png_declaring(30000, 30000)),
            _record("bomb", "bomb.png"),
        )[1],
        r"image too large: .*bomb.png",
    ),
    "strip image (60000×2)": (
        lambda root: (
            Image.new("RGB", (60000, 2)).save(root / "strip.png"),
            _record("strip", "strip.png"),
        )[1],
        r"image aspect ratio: .*strip.png is 60000×2 \(30000:1\), more than data.max_image_aspect=20",
    ),
    "missing image": (lambda root: _record("m", "nope.jpg"), "missing image: .*nope.jpg"),
    "image is a folder": (
        lambda root: ((root / "dir.jpg").mkdir(), _record("d", "dir.jpg"))[1],
        "missing image: .*dir.jpg",
    ),
    "not an image": (
        lambda root: ((root / "text.jpg").write_text("hello"), _record("n", "text.jpg"))[1],
        "unreadable image: .*text.jpg",
    ),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_a_bad_record_is_a_named_skip_at_the_reader(
    case: str, images: Path, tmp_path: Path
) -> None:
    make, reason = RECORDS[case]
    data = tmp_path / "data.json"
    data.write_text(json.dumps([_record("good", "ok.jpg"), make(images)]))
    result = read_llava_json(data, images)
    assert [r.id for r in result.records] == ["good"]
    (skip,) = result.skips
    assert re.search(reason, skip.reason), skip.reason
    with pytest.raises(DataError, match=f"{data}: record .*: {reason}"):
        read_llava_json(data, images, strict=True)


def test_an_outside_path_is_read_when_the_param_allows_it(images: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps([_record("up", "../images/ok.jpg")]))
    assert len(read_llava_json(data, images, outside_root=True).records) == 1


def test_a_json_that_is_not_utf8_names_the_file_and_the_byte(tmp_path: Path) -> None:
    data = tmp_path / "latin1.json"
    text = json.dumps([_record("a", "ok.jpg", answer="caf\u00e9")], ensure_ascii=False)
    data.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    with pytest.raises(DataError, match=rf"{data} is not UTF-8: byte 0xe9 at offset {offset} "):
        read_llava_json(data, tmp_path)


# --- images at encoding: bounded before decoding, every failure a counted skip --------------------


def _with_data(params: Params, tmp_path: Path, rows: list[dict[str, Any]], **data: Any) -> Params:
    """params whose pretrain json is `rows` over the synthetic pretrain images (copied)."""
    images = tmp_path / "pretrain_images"
    if not images.exists():
        shutil.copytree(params.data.pretrain_images, images)
    (tmp_path / "pretrain.json").write_text(json.dumps(rows))
    raw = params.model_dump(mode="json")
    raw["paths"]["features"] = str(tmp_path / "features")
    raw["paths"]["pretrain"] = str(tmp_path / "pretrain")
    raw["data"].update(pretrain_json=str(tmp_path / "pretrain.json"), pretrain_images=str(images))
    raw["data"].update(data)
    return parse_params(raw)


def _synthetic_rows(params: Params) -> list[dict[str, Any]]:
    return json.loads(Path(params.data.pretrain_json).read_text())


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [
        ("bomb.png", lambda p: p.write_bytes(png_declaring(30000, 30000)), "image too large"),
        ("strip.png", lambda p: Image.new("RGB", (60000, 2)).save(p), "image aspect ratio"),
        ("tall.png", lambda p: Image.new("RGB", (3, 20000)).save(p), "image aspect ratio"),
        ("cut.png", lambda p: p.write_bytes(png_declaring(64, 64)), "unreadable image"),
    ],
)
def test_an_image_out_of_bounds_is_a_counted_skip_at_encoding(
    tiny_workspace: Params, tmp_path: Path, name: str, write: Callable[[Path], Any], reason: str
) -> None:
    rows = _synthetic_rows(tiny_workspace)
    p = _with_data(tiny_workspace, tmp_path, rows, max_skip_share=1.0)
    write(Path(p.data.pretrain_images) / name)
    (tmp_path / "pretrain.json").write_text(json.dumps([*rows, _record("bad", name)]))
    report = features.run(p, workers=0)
    skips = json.loads((tmp_path / "features" / "skips.json").read_text())
    (skip,) = skips["encoding"]
    assert skip["reason"].startswith(f"{reason}: ") and name in skip["reason"]
    assert f"pretrain: 1 of {len(rows) + 1} records (reader: {reason}: 1" in report.summary()


def test_a_misspelled_image_folder_is_counted_in_the_summary_and_stops_the_stage(
    tiny_workspace: Params, tmp_path: Path
) -> None:
    rows = _synthetic_rows(tiny_workspace)
    p = _with_data(tiny_workspace, tmp_path, rows)
    raw = p.model_dump(mode="json")
    raw["data"]["pretrain_images"] = str(tmp_path / "pretrain_imgs")
    with pytest.raises(TooManySkips, match=rf"features \(pretrain\): {len(rows)} of {len(rows)} "):
        features.run(parse_params(raw), workers=0)
    skips = json.loads((tmp_path / "features" / "skips.json").read_text())
    assert len(skips["encoding"]) == len(rows)


# --- the skip share: one population on both sides of the fraction ------------------------------


def test_reader_skips_count_against_the_records_offered_not_the_samples_trained(
    tiny_workspace: Params, tmp_path: Path
) -> None:
    """1,500 records, 25 of them with a missing image (1.67 %): at data.max_skip_share=0.02 stage 1
    runs to its end; at 0.01 it stops before its first step, naming the reason."""
    synthetic = _synthetic_rows(tiny_workspace)
    rows = [{**synthetic[n % len(synthetic)], "id": f"r{n:04d}"} for n in range(1475)]
    rows += [_record(f"gone{n:02d}", f"00000/missing{n:02d}.jpg") for n in range(25)]
    p = _with_data(tiny_workspace, tmp_path, rows, max_skip_share=0.02)
    raw = p.model_dump(mode="json")
    raw["pretrain"].update(per_device_batch=32, log_every=100, loader_workers=0)
    raw["pretrain"]["epochs"] = 1.0
    p = parse_params(raw)
    features.run(p, workers=0)
    result = train(p, "pretrain")
    assert result.samples == 1475 // 32 * 32
    report = json.loads((Path(p.paths.pretrain) / "skips.json").read_text())
    assert report["by_reason"]["reader: missing image"] == 25
    raw["data"]["max_skip_share"] = 0.01
    raw["paths"]["pretrain"] = str(tmp_path / "pretrain-strict")
    with pytest.raises(TooManySkips, match=r"pretrain \(pretrain features\): 25 of 1500 samples"):
        train(parse_params(raw), "pretrain")
    assert not (tmp_path / "pretrain-strict" / "projector.safetensors").exists()
