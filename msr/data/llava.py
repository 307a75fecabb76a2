"""Readers of LLaVA's training json: LLaVA-Pretrain (`blip_laion_cc_sbu_558k.json`) and LLaVA-1.5
(`llava_v1_5_mix665k.json`), validated record by record.

A bad record — missing or unreadable image, wrong role order, no or several `<image>` tokens in an
image sample, an `<image>` token in a text-only sample, a malformed entry — is counted, listed in the
skip report with its reason and skipped; with `strict=True` it is an error instead. Nothing is
dropped silently.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msr.data.images import DEFAULT_LIMITS, ImageLimits, ImageSkip, check_header

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")


@dataclass(frozen=True)
class Record:
    """One training conversation; `image` is relative to the image root, None for text-only."""

    id: str
    image: str | None
    conversations: tuple[tuple[str, str], ...]  # ((role, text), ...), roles alternate human, gpt
    source: str  # coco, gqa, ocr_vqa, textvqa, vg, text, ... (first path component; "text" if none)


@dataclass
class Skip:
    id: str
    reason: str
    file: str


@dataclass
class ReadResult:
    records: list[Record]
    skips: list[Skip] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The skip report: counts by reason and every skipped record."""
        return {
            "records": len(self.records),
            "skipped": len(self.skips),
            "by_reason": dict(Counter(s.reason.split(":")[0] for s in self.skips)),
            "skips": [s.__dict__ for s in self.skips],
        }


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the record."""


def read_llava_json(
    json_path: str | Path,
    image_root: str | Path,
    *,
    strict: bool = False,
    check_images: bool = True,
    limits: ImageLimits = DEFAULT_LIMITS,
    aspect: str = "pad",
    outside_root: bool = False,
) -> ReadResult:
    """Read and validate a LLaVA-format json array of records. Image paths are relative to
    `image_root`; an absolute or `..` path is a skip unless `outside_root`. With `check_images`,
    each image's header is read and its size checked against `limits`."""
    json_path, image_root = Path(json_path), Path(image_root)
    raw = _load_json(json_path)
    if not isinstance(raw, list):
        raise DataError(f"{json_path} must hold a json array of records, got {type(raw).__name__}")
    result = ReadResult(records=[])
    seen: set[str] = set()
    for n, item in enumerate(raw):
        rid = _record_id(item, n)
        try:
            record = _parse(item, n)
            if record.id in seen:
                raise DataError(f"duplicate id: {record.id!r} appears more than once")
            if record.image is not None:
                _check_path(record.image, outside_root)
                if check_images:
                    try:
                        check_header(image_root / record.image, limits, aspect)
                    except ImageSkip as skip:
                        raise DataError(str(skip)) from None
        except DataError as err:
            if strict:
                raise DataError(f"{json_path}: record {rid}: {err}") from None
            result.skips.append(Skip(rid, str(err), str(json_path)))
            continue
        seen.add(record.id)
        result.records.append(record)
    if result.skips:
        log.warning(
            "%s: skipped %d of %d records (%s)",
            json_path,
            len(result.skips),
            len(raw),
            ", ".join(f"{k}: {v}" for k, v in result.report()["by_reason"].items()),
        )
    return result


def _load_json(path: Path) -> Any:
    """The parsed file, or a `DataError` naming the file and where it went wrong."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"training json {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"training json {path} is a folder, not a json file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8: byte 0x{data[err.start]:02x} at offset {err.start} (line "
            f"{line}); save it as UTF-8"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid json: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None


def _record_id(item: Any, n: int) -> str:
    """The record's id for a skip report (its position when it has none usable)."""
    rid = item.get("id") if isinstance(item, dict) else None
    if isinstance(rid, (str, int)) and not isinstance(rid, bool) and _is_text(str(rid)):
        return str(rid)
    return f"#{n}"


def _is_text(text: str) -> bool:
    """Encodable as UTF-8 (json may carry a lone surrogate such as \\udc80, a tokenizer may not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"invalid text: {where} holds a lone surrogate {text[err.start]!r} at character "
            f"{err.start} (not encodable as UTF-8)"
        ) from None


def _check_path(image: str, outside_root: bool) -> None:
    """An image path stays inside its image folder: relative, without `..`."""
    if outside_root:
        return
    parts = Path(image).parts
    if Path(image).is_absolute() or ".." in parts or image.startswith("~"):
        raise DataError(
            f"image path outside the image folder: {image!r} (paths are relative to the image "
            "folder; set data.images_outside_root=true to allow absolute and '..' paths)"
        )


def _parse(item: Any, n: int) -> Record:
    if not isinstance(item, dict):
        raise DataError(f"malformed record: expected an object, got {type(item).__name__}")
    if "id" not in item or not isinstance(item["id"], (str, int)):
        raise DataError(f"malformed record: missing or non-string/int 'id' (entry {n})")
    _check_text(str(item["id"]), "the id")
    convs = item.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise DataError("malformed record: 'conversations' must be a non-empty list")
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(convs):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            raise DataError(f"malformed record: turn {i} needs string 'from' and 'value'")
        expected = ROLES[i % 2]
        if turn["from"] != expected:
            raise DataError(
                f"wrong role order: turn {i} is from {turn['from']!r}, expected {expected!r}"
            )
        _check_text(turn["value"], f"turn {i}")
        turns.append((turn["from"], turn["value"]))
    if len(turns) % 2:
        raise DataError(f"wrong role order: {len(turns)} turns, the last human turn has no answer")
    image = item.get("image")
    tokens = sum(text.count(IMAGE_TOKEN) for _, text in turns)
    if image is None:
        if tokens:
            raise DataError(
                f"image token in a text-only sample: {tokens} '<image>' but no 'image' key"
            )
        return Record(str(item["id"]), None, tuple(turns), "text")
    if not isinstance(image, str) or not image:
        raise DataError(f"malformed record: 'image' must be a relative path, got {image!r}")
    _check_text(image, "the image path")
    if tokens != 1:
        what = "no" if tokens == 0 else f"{tokens}"
        raise DataError(
            f"image token count: {what} '<image>' tokens in an image sample (exactly one needed)"
        )
    source = image.split("/", 1)[0] if "/" in image else "images"
    return Record(str(item["id"]), image, tuple(turns), source)
