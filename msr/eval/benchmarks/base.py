"""The benchmark interface: read questions from a local directory in the benchmark's own layout,
score predictions with the official rule, write the official answer / submission files.

A benchmark's directory must hold its `files`; a missing one is an error listing every expected
file and where it goes. Per-category accuracy comes with its 95 % interval and two baselines
that ignore the question: the majority answer of the category (always the most common gold answer),
never 1/#answers, and the question-blind upper bound (per image and category, the best single
answer). Where questions come as minimal pairs (`extra["pair"]`), a pair counts only if both are
right.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from msr.data.images import DEFAULT_LIMITS, ImageSkip, open_bytes, open_image
from msr.eval.stats import interval, wilson

SHORT = "\nAnswer the question using a single word or phrase."
MC = "\nAnswer with the option's letter from the given choices directly."


class BenchmarkMissing(FileNotFoundError):
    """A benchmark directory or file is not where the adapter reads it."""


class BadImage(ValueError):
    """A benchmark image that cannot be decoded or breaks the size limits; names the file."""


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes come from: a file, or bytes embedded in the question file."""

    path: Path | None = None
    data: bytes | None = None

    def open(self) -> Image.Image:
        """The decoded image, bounded as training images are (`msr.data.images`); a file that
        cannot be used is a `BadImage` naming it (an evaluation skips no question)."""
        if self.data is not None:
            try:
                return open_bytes(self.data, "an embedded image", DEFAULT_LIMITS)
            except ImageSkip as err:
                raise BadImage(str(err)) from None
        assert self.path is not None
        if not self.path.exists():
            raise BenchmarkMissing(f"image {self.path} does not exist")
        try:
            return open_image(self.path, DEFAULT_LIMITS)
        except ImageSkip as err:
            raise BadImage(str(err)) from None

    def digest(self) -> str:
        raw = self.data if self.data is not None else self.path.read_bytes() if self.path else b""
        return hashlib.sha1(raw).hexdigest()


@dataclass(frozen=True)
class Question:
    key: str  # unique within the benchmark: joins predictions, answers and the cache
    qid: Any  # the question id exactly as the source writes it (int or str)
    text: str  # the user turn after "<image>\n", suffixes included
    prompt: str  # the `prompt` field of LLaVA's answer line
    image: ImageRef | None
    category: str | None = None
    gold: Any = None  # what the scorer compares with
    extra: dict[str, Any] = field(default_factory=dict)


class Benchmark:
    """Base class; subclasses set `name`, `files`, `main` and implement `load`, `correct`, `metrics`."""

    name: ClassVar[str] = ""
    files: ClassVar[tuple[str, ...]] = ()  # relative to root, for the missing-files message
    main: ClassVar[str] = ""  # the headline metric in the results table
    higher: ClassVar[float] = 100.0  # scale of the headline metric

    def __init__(self, root: Path, label: str | None = None) -> None:
        self.root = Path(root)
        self.label = label or self.name

    def check(self) -> None:
        missing = [f for f in self.files if not (self.root / f).exists()]
        if missing:
            listing = "\n".join(
                f"  {self.root / f}" + ("   <- missing" if f in missing else "") for f in self.files
            )
            raise BenchmarkMissing(
                f"benchmark {self.label!r}: {len(missing)} expected file(s) missing under {self.root}. "
                f"It reads (LLaVA-1.5's layout):\n{listing}"
            )

    def questions(self, limit: int | None = None) -> list[Question]:
        self.check()
        qs = self.load()
        return qs[:limit] if limit else qs

    def load(self) -> list[Question]:
        raise NotImplementedError

    def correct(self, q: Question, prediction: str) -> float:
        """Score in [0, 1] of one prediction."""
        raise NotImplementedError

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        """Official metrics; default: accuracy in percent."""
        return {"acc": 100 * _mean(self.correct(q, predictions[q.key]) for q in questions)}

    def gold_text(self, q: Question) -> str:
        """The answer a constant predictor would have to give to be right (for majority baselines)."""
        return str(q.gold)

    def topic(self, q: Question) -> str | None:
        """The question category per-category accuracy groups by (the benchmark's own by default)."""
        return q.category

    def per_category(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, dict[str, float]]:
        """Accuracy per category with its interval, the majority-answer baseline and the
        question-blind upper bound of that category, and pair accuracy where there are pairs."""
        groups: dict[str, list[Question]] = defaultdict(list)
        for q in questions:
            topic = self.topic(q)
            if topic is not None:
                groups[topic].append(q)
        out = {}
        for cat, qs in sorted(groups.items()):
            scores = [self.correct(q, predictions[q.key]) for q in qs]
            lo, hi = interval(scores)
            row = {
                "n": len(qs),
                "acc": 100 * _mean(scores),
                "lo": 100 * lo,
                "hi": 100 * hi,
                "majority": 100 * self.majority(qs),
                "blind": 100 * self.blind(qs),
            }
            pairs = pair_scores(qs, scores)
            if pairs:
                plo, phi = wilson(sum(pairs), len(pairs))
                row |= {"pairs": len(pairs), "pair_acc": 100 * _mean(pairs)}
                row |= {"pair_lo": 100 * plo, "pair_hi": 100 * phi}
            out[cat] = row
        return out

    def majority(self, qs: Sequence[Question]) -> float:
        """Best score of answering one constant among the most common gold answers."""
        common = [a for a, _ in Counter(self.gold_text(q) for q in qs).most_common(5)]
        return max((_mean(self.correct(q, a) for q in qs) for a in common), default=0.0)

    def blind(self, qs: Sequence[Question]) -> float:
        """The question-blind upper bound: the best a policy that sees the image but not the
        question can score, i.e. per image the best single answer to all of its questions."""
        by_image: dict[str, list[Question]] = defaultdict(list)
        for q in qs:
            by_image[image_key(q)].append(q)
        total = 0.0
        for group in by_image.values():
            candidates = dict.fromkeys(self.gold_text(q) for q in group)
            total += max(sum(self.correct(q, a) for q in group) for a in candidates)
        return total / len(qs) if qs else 0.0

    def items(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, Any]:
        """The scored units behind the accuracy, for intervals and paired tests between runs: a
        key and a score in [0, 1] per unit (here a question), its category, its pair, and a
        digest of the questions (text, gold, image bytes), so that two runs are paired only
        on the same questions. `metric` names the mean of the units."""
        return {
            "metric": "acc",
            "digest": questions_digest(questions),
            "keys": [q.key for q in questions],
            "scores": [self.correct(q, predictions[q.key]) for q in questions],
            "topics": [self.topic(q) for q in questions],
            "pairs": [q.extra.get("pair") for q in questions],
        }

    def write_answers(
        self, out: Path, questions: Sequence[Question], records: Sequence[dict[str, Any]]
    ) -> list[Path]:
        """Official answer / submission files beyond answers.jsonl (none by default)."""
        return []


def image_key(q: Question) -> str:
    """What identifies a question's image: its path, else a hash of its bytes, else its key."""
    if q.image is None:
        return f"key:{q.key}"
    if q.image.path is not None:
        return str(q.image.path)
    return q.image.digest()


def questions_digest(questions: Sequence[Question]) -> str:
    """What the questions are: keys, texts, golds and image bytes, hashed."""
    h = hashlib.sha1()
    images: dict[str, str] = {}
    for q in questions:
        ref = image_key(q)
        if ref not in images:
            images[ref] = q.image.digest() if q.image is not None else ""
        h.update(json.dumps([q.key, q.text, repr(q.gold), images[ref]]).encode())
    return h.hexdigest()[:16]


def pair_scores(qs: Sequence[Question], scores: Sequence[float]) -> list[float]:
    """1.0 per minimal pair whose questions are all right, else 0.0 (pairs by `extra["pair"]`)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for q, s in zip(qs, scores, strict=True):
        if q.extra.get("pair"):
            groups[q.extra["pair"]].append(s)
    return [float(all(v == 1.0 for v in vs)) for vs in groups.values() if len(vs) >= 2]


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid json ({err.msg})") from None
    return rows
