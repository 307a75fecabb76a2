"""Your own eval set, declared in the params (`eval.custom`), scored and reported like the built-in
sets (per-category accuracy with majority-answer baselines).

Files:
- questions: LLaVA's `model_vqa_loader` jsonl, one question per line:
  `{"question_id": 7, "image": "dog.jpg", "text": "What animal is this?\\nAnswer ...", "category": "animals"}`
  (`image` relative to the image folder; `category` optional; `text` is the whole user turn, with
  whatever answer-format suffix the set wants);
- answers: jsonl, `{"question_id": 7, "answer": "dog"}`; `answer` is one string or a list of
  strings (VQA's ten human answers, or several accepted ones);
- metric: `vqa_accuracy` (VQA soft accuracy, EvalAI normalisation), `exact_match` (normalised
  prediction equals one accepted answer), or `choice` (the predicted option letter equals the
  answer letter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msr.config import CustomEval
from msr.eval.benchmarks.base import Benchmark, BenchmarkMissing, ImageRef, Question, read_jsonl
from msr.eval.scoring import choice_letter, normalize_answer, vqa_accuracy


class CustomSetError(ValueError):
    """A custom eval file that cannot be read; the message names the file, line and field."""


class Custom(Benchmark):
    """A user's question file + answer file + image folder (see the module doc)."""

    main = "acc"

    def __init__(self, spec: CustomEval) -> None:
        super().__init__(Path(spec.images), label=spec.name)
        self.spec = spec
        self.name = spec.name  # type: ignore[misc]

    def check(self) -> None:
        for what, path in (("questions", self.spec.questions), ("answers", self.spec.answers),
                           ("images", self.spec.images)):  # fmt: skip
            if not Path(path).exists():
                raise BenchmarkMissing(
                    f"eval.custom {self.spec.name!r}: {what} {path} does not exist"
                )

    def load(self) -> list[Question]:
        s = self.spec
        answers: dict[str, Any] = {}
        for n, row in enumerate(_rows(Path(s.answers)), 1):
            qid, answer = (
                _field(row, "question_id", s.answers, n),
                _field(row, "answer", s.answers, n),
            )
            if not (isinstance(answer, str) or (isinstance(answer, list) and answer
                                                 and all(isinstance(a, str) for a in answer))):  # fmt: skip
                raise CustomSetError(
                    f"{s.answers}:{n}: answer must be a string or a non-empty list of strings, "
                    f"got {answer!r}"
                )
            if s.metric == "choice" and not (isinstance(answer, str) and _is_letter(answer)):
                raise CustomSetError(
                    f"{s.answers}:{n}: metric 'choice' needs an option letter (A, B, ...) as the "
                    f"answer, got {answer!r}"
                )
            answers[str(qid)] = answer
        out, seen = [], set()
        for n, row in enumerate(_rows(Path(s.questions)), 1):
            qid = _field(row, "question_id", s.questions, n)
            text = _field(row, "text", s.questions, n)
            if str(qid) in seen:
                raise CustomSetError(f"{s.questions}:{n}: question_id {qid!r} appears twice")
            seen.add(str(qid))
            if str(qid) not in answers:
                raise CustomSetError(
                    f"{s.questions}:{n}: question_id {qid!r} has no line in {s.answers}"
                )
            image = row.get("image")
            ref = None
            if image is not None:
                path = Path(s.images) / image
                if not path.is_file():
                    raise CustomSetError(f"{s.questions}:{n}: image {path} does not exist")
                ref = ImageRef(path)
            gold = answers[str(qid)]
            out.append(Question(str(qid), qid, text, text, ref, row.get("category"), gold))
        if not out:
            raise CustomSetError(f"{s.questions} holds no questions")
        return out

    def correct(self, q: Question, prediction: str) -> float:
        gold = q.gold if isinstance(q.gold, list) else [q.gold]
        if self.spec.metric == "vqa_accuracy":
            return vqa_accuracy(prediction, gold)
        if self.spec.metric == "exact_match":
            return float(normalize_answer(prediction) in {normalize_answer(g) for g in gold})
        return float(choice_letter(prediction) == str(q.gold).strip().upper())

    def gold_text(self, q: Question) -> str:
        gold = q.gold if isinstance(q.gold, list) else [q.gold]
        return max(set(gold), key=gold.count)


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        rows = read_jsonl(path)
    except ValueError as err:
        raise CustomSetError(str(err)) from None
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise CustomSetError(f"{path}: line {n} is not a json object")
    return rows


def _field(row: dict[str, Any], name: str, path: str, line: int) -> Any:
    if name not in row:
        raise CustomSetError(f"{path}:{line}: missing field {name!r} (fields: {', '.join(row)})")
    return row[name]


def _is_letter(text: str) -> bool:
    t = text.strip()
    return len(t) == 1 and t.isalpha() and t.isupper()
