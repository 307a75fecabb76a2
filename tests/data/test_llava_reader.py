"""LLaVA json readers: every kind of bad record is skipped with its reason, or an error when strict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from msr.data.llava import DataError, read_llava_json


def image_sample(
    rid: Any, image: str, q: str = "<image>\nWhat is this?", a: str = "A cat."
) -> dict[str, Any]:
    return {
        "id": rid,
        "image": image,
        "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "coco" / "train2017" / "ok.jpg")
    (tmp_path / "coco" / "train2017" / "broken.jpg").write_bytes(b"not an image at all")
    return tmp_path


def write(root: Path, rows: Any) -> Path:
    path = root / "data.json"
    path.write_text(json.dumps(rows))
    return path


BAD = [
    ("missing image", image_sample("m1", "coco/train2017/nope.jpg")),
    ("unreadable image", image_sample("u1", "coco/train2017/broken.jpg")),
    (
        "wrong role order",
        {
            "id": "r1",
            "image": "coco/train2017/ok.jpg",
            "conversations": [
                {"from": "gpt", "value": "<image>\nhi"},
                {"from": "human", "value": "x"},
            ],
        },
    ),
    ("image token count: no", image_sample("n1", "coco/train2017/ok.jpg", q="What is this?")),
    (
        "image token count: 2",
        image_sample("n2", "coco/train2017/ok.jpg", q="<image>\n<image> twice"),
    ),
    (
        "image token in a text-only sample",
        {
            "id": "t1",
            "model": "",
            "conversations": [
                {"from": "human", "value": "<image> hi"},
                {"from": "gpt", "value": "x"},
            ],
        },
    ),
    ("malformed record", {"id": "x1", "conversations": "hello"}),
    ("wrong role order", {"id": "o1", "conversations": [{"from": "human", "value": "q"}]}),
]


@pytest.mark.parametrize(("reason", "row"), BAD, ids=[r for r, _ in BAD])
def test_bad_record_is_skipped_with_reason(root: Path, reason: str, row: dict[str, Any]) -> None:
    good = image_sample("g1", "coco/train2017/ok.jpg")
    result = read_llava_json(write(root, [good, row]), root)
    assert [r.id for r in result.records] == ["g1"]
    assert len(result.skips) == 1 and reason in result.skips[0].reason
    assert result.report()["skipped"] == 1


@pytest.mark.parametrize(("reason", "row"), BAD, ids=[r for r, _ in BAD])
def test_bad_record_is_an_error_when_strict(root: Path, reason: str, row: dict[str, Any]) -> None:
    with pytest.raises(DataError, match=reason):
        read_llava_json(write(root, [row]), root, strict=True)


def test_good_records(root: Path) -> None:
    rows = [
        image_sample(
            71234567, "coco/train2017/ok.jpg", q="Give a caption.\n<image>"
        ),  # int id, trailing token
        {
            "id": "Zq9_0",
            "model": "",
            "conversations": [
                {"from": "human", "value": "Name two primes."},
                {"from": "gpt", "value": "2 and 3."},
            ],
        },
    ]
    result = read_llava_json(write(root, rows), root, strict=True)
    a, b = result.records
    assert (a.id, a.image, a.source) == ("71234567", "coco/train2017/ok.jpg", "coco")
    assert (b.image, b.source) == (None, "text")
    assert a.conversations[0] == ("human", "Give a caption.\n<image>")


def test_duplicate_ids(root: Path) -> None:
    rows = [image_sample("d", "coco/train2017/ok.jpg"), image_sample("d", "coco/train2017/ok.jpg")]
    result = read_llava_json(write(root, rows), root)
    assert len(result.records) == 1 and "duplicate id" in result.skips[0].reason


def test_malformed_json_names_file_and_position(root: Path) -> None:
    path = root / "broken.json"
    path.write_text('[{"id": 1,\n "conversations": [}')
    with pytest.raises(DataError, match=r"broken.json is not valid json: .* line 2"):
        read_llava_json(path, root)


def test_not_a_list(root: Path) -> None:
    with pytest.raises(DataError, match="must hold a json array"):
        read_llava_json(write(root, {"id": 1}), root)


def test_missing_file(root: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_llava_json(root / "nope.json", root)
