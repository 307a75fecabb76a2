"""GQA testdev-balanced: short answers, exact match after LLaVA's normalisation (`rstrip('.').lower()`).

An entry of the official json may name its minimal `pair` (msr's synth GQA does); such questions
are also scored by pair."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msr.eval.benchmarks.base import Benchmark, ImageRef, Question, read_jsonl
from msr.eval.scoring import gqa_match
from msr.utils.io import atomic_write_json


class GQA(Benchmark):
    name = "gqa"
    files = (
        "llava_gqa_testdev_balanced.jsonl",
        "data/testdev_balanced_questions.json",
        "data/images",
    )
    main = "acc"

    def load(self) -> list[Question]:
        official = json.loads((self.root / "data" / "testdev_balanced_questions.json").read_text())
        out = []
        for row in read_jsonl(self.root / "llava_gqa_testdev_balanced.jsonl"):
            qid = str(row["question_id"])
            if qid not in official:
                raise ValueError(
                    f"gqa: question {qid} is not in data/testdev_balanced_questions.json"
                )
            entry = official[qid]
            if not entry.get("isBalanced", True):
                continue  # the official score counts balanced questions only
            out.append(
                Question(
                    qid,
                    row["question_id"],
                    row["text"],
                    row["text"],
                    ImageRef(self.root / "data" / "images" / row["image"]),
                    row.get("category"),
                    entry["answer"],
                    {"pair": entry["pair"]} if entry.get("pair") else {},
                )
            )
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return float(gqa_match(prediction, q.gold))

    def write_answers(
        self, out: Path, questions: Sequence[Question], records: Sequence[dict[str, Any]]
    ) -> list[Path]:
        """convert_gqa_for_eval: [{questionId, prediction}] for the official eval.py."""
        preds = [
            {"questionId": r["question_id"], "prediction": r["text"].rstrip(".").lower()}
            for r in records
        ]
        path = out / "testdev_balanced_predictions.json"
        atomic_write_json(path, preds)
        return [path]
