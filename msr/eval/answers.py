"""LLaVA-format answer files: write them, and read them back for scoring with two guarantees —
answers of another model are never mixed in, and missing question ids are reported by count and id.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from msr.eval.benchmarks.base import Question
from msr.utils.io import atomic_write_text


class AnswersError(ValueError):
    """An answer file that cannot be scored against these questions and this model."""


def answer_records(
    questions: Sequence[Question], predictions: Sequence[str], model_id: str
) -> list[dict[str, Any]]:
    """One LLaVA answer line per question, in question order (POPE and MME depend on it)."""
    return [
        {
            "question_id": q.qid,
            "prompt": q.prompt,
            "text": text,
            "answer_id": hashlib.sha1(f"{model_id}/{q.key}".encode()).hexdigest()[:22],
            "model_id": model_id,
            "metadata": {"key": q.key},
        }
        for q, text in zip(questions, predictions, strict=True)
    ]


def write_answers(path: Path, records: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_answers(path: Path, questions: Sequence[Question], model_id: str) -> dict[str, str]:
    """predictions by question key, checked against the questions and the model."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    others = sorted({r.get("model_id") for r in rows} - {model_id})
    if others:
        raise AnswersError(
            f"{path} holds answers of another model ({', '.join(map(str, others))}; this model is {model_id}): "
            "they are never mixed in — regenerate or remove the file"
        )
    by_key = {r["metadata"]["key"]: r["text"] for r in rows if "key" in r.get("metadata", {})}
    missing = [q for q in questions if q.key not in by_key]
    if missing:
        ids = ", ".join(str(q.qid) for q in missing[:10]) + (" …" if len(missing) > 10 else "")
        raise AnswersError(
            f"{path} answers {len(questions) - len(missing)} of {len(questions)} questions; "
            f"{len(missing)} missing: question ids {ids}"
        )
    return {q.key: by_key[q.key] for q in questions}


def answer_spread(predictions: Iterable[str], golds: Iterable[object] = ()) -> dict[str, Any]:
    """The most common answer (stripped, case-folded), its share in percent and the number of
    distinct answers, next to the same for the gold answers where every gold is one string: a model
    that collapsed onto one answer ("B" to every multiple-choice question) shows up here before it
    is read from the scores."""
    out = _spread(Counter(p.strip().casefold() for p in predictions))
    golds = list(golds)
    strings = [g for g in golds if isinstance(g, str)]
    if golds and len(strings) == len(golds):
        gold = _spread(Counter(g.strip().casefold() for g in strings))
        out |= {"gold_top": gold["top"], "gold_top_share": gold["top_share"]}
    return out


def _spread(counts: Counter[str]) -> dict[str, Any]:
    if not counts:
        return {"top": None, "top_share": 0.0, "distinct": 0}
    top, n = counts.most_common(1)[0]
    return {"top": top, "top_share": 100 * n / counts.total(), "distinct": len(counts)}
