"""`msr predict`: questions about images answered by a trained model — one from the command line,
or a JSONL of them in batches (`{"image": …, "question": …, "id": …}` per line; an image path is
relative to the JSONL's folder), answered into a JSONL in the same order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msr.config import Params
from msr.data.images import ImageLimits, ImageSkip, open_image
from msr.eval.benchmarks import ImageRef, Question
from msr.eval.generate import GenerationArgs, Generator
from msr.models.mllm import MLLM
from msr.utils.io import atomic_write_text

MAX_NAMED = 10  # bad lines named in one error


@dataclass(frozen=True)
class Ask:
    id: Any
    image: Path | None
    question: str


def _check_image(path: Path, limits: ImageLimits) -> str | None:
    """Why the image cannot be used, or None."""
    try:
        open_image(path, limits).close()
    except ImageSkip as err:
        return str(err)
    return None


def read_questions(path: Path, limits: ImageLimits) -> list[Ask]:
    """Every line of a questions JSONL, checked before a model loads; ValueError naming each bad
    line (up to ten, and how many in all) and what a line must hold."""
    if not path.is_file():
        raise ValueError(f"--input {path}: no such file")
    asks, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            bad.append(f"line {n}: not json ({err.msg})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            bad.append(f"line {n}: needs a string 'question' (and an 'image' path)")
            continue
        image = row.get("image")
        if image is not None and not isinstance(image, str):
            bad.append(f"line {n}: 'image' must be a path, got {image!r}")
            continue
        image_path = path.parent / image if image is not None else None
        if image_path is not None and (why := _check_image(image_path, limits)):
            bad.append(f"line {n}: {why}")
            continue
        asks.append(Ask(row.get("id", n), image_path, row["question"]))
    if bad:
        more = f" (and {len(bad) - MAX_NAMED} more)" if len(bad) > MAX_NAMED else ""
        raise ValueError(
            f"--input {path}: {len(bad)} bad line(s){more}: " + "; ".join(bad[:MAX_NAMED])
        )
    if not asks:
        raise ValueError(f"--input {path}: no questions (one json object per line)")
    return asks


def _generator(params: Params, model: Path | None) -> Generator:
    loaded = MLLM.from_pretrained(model or Path(params.paths.finetune), dtype=params.eval.dtype)
    return Generator(loaded, GenerationArgs(max_new_tokens=params.eval.max_new_tokens))


def _limits(params: Params) -> ImageLimits:
    return ImageLimits(params.data.max_image_pixels, params.data.max_image_aspect)


def run(params: Params, image: Path, question: str, model: Path | None = None) -> str:
    """The model's answer; ValueError naming a bad image (read, bounded, before the model loads)
    or a damaged model."""
    if why := _check_image(image, _limits(params)):
        raise ValueError(f"--image: {why}")
    generator = _generator(params, model)
    return generator.answer([Question("cli", "cli", question, question, ImageRef(image))], 1)[0]


def run_file(
    params: Params, questions: Path, answers: Path, model: Path | None = None, batch: int = 8
) -> int:
    """Answer every line of `questions` into `answers` (written once, whole); the count."""
    asks = read_questions(questions, _limits(params))
    generator = _generator(params, model)
    qs = [
        Question(str(i), a.id, a.question, a.question, ImageRef(a.image) if a.image else None)
        for i, a in enumerate(asks)
    ]
    texts = generator.answer(qs, batch)
    lines = [
        json.dumps(
            {
                "id": a.id,
                "image": str(a.image) if a.image else None,
                "question": a.question,
                "answer": t,
            },
            ensure_ascii=False,
        )
        for a, t in zip(asks, texts, strict=True)
    ]
    atomic_write_text(answers, "\n".join(lines) + "\n")
    return len(lines)
