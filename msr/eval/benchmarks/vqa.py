"""TextVQA (val, with the OCR-token line) and VQAv2 (local val scoring; test-dev submission file).

Both use the VQA soft accuracy over ten human answers with EvalAI's answer normalisation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msr.eval.benchmarks.base import Benchmark, ImageRef, Question, read_jsonl
from msr.eval.scoring import normalize_answer, vqa_accuracy
from msr.utils.io import atomic_write_json


class TextVQA(Benchmark):
    """LLaVA's `textvqa/`: question_id is the image id (not unique); the gold answers are found by
    (image id, first prompt line lowercased) in TextVQA_0.5.1_val.json, as eval_textvqa.py does."""

    name = "textvqa"
    files = ("llava_textvqa_val_v051_ocr.jsonl", "TextVQA_0.5.1_val.json", "train_images")
    main = "acc"

    def load(self) -> list[Question]:
        data = json.loads((self.root / "TextVQA_0.5.1_val.json").read_text())["data"]
        gold = {(a["image_id"], a["question"].lower()): a["answers"] for a in data}
        out = []
        for n, row in enumerate(read_jsonl(self.root / "llava_textvqa_val_v051_ocr.jsonl")):
            question = row["text"].split("\n")[0].lower()
            key = (row["question_id"], question)
            if key not in gold:
                raise ValueError(
                    f"textvqa: no answers in TextVQA_0.5.1_val.json for image {key[0]!r}, question {question!r}"
                )
            out.append(
                Question(
                    f"{n}",
                    row["question_id"],
                    row["text"],
                    row["text"],
                    ImageRef(self.root / "train_images" / row["image"]),
                    row.get("category"),
                    gold[key],
                )
            )
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return vqa_accuracy(prediction, q.gold)

    def gold_text(self, q: Question) -> str:
        return max(set(q.gold), key=q.gold.count)


class VQAv2(Benchmark):
    """`vqav2/`: test-dev questions (predictions + an EvalAI submission file) and, when present, a
    local val set: `val/questions.jsonl` (LLaVA jsonl) with the official
    `val/v2_mscoco_val2014_annotations.json` and images in `val2014/`, scored locally."""

    name = "vqav2"
    files = ("llava_vqav2_mscoco_test-dev2015.jsonl", "test2015")
    main = "val_acc"

    def load(self) -> list[Question]:
        out = [
            Question(
                f"test-dev/{row['question_id']}",
                row["question_id"],
                row["text"],
                row["text"],
                ImageRef(self.root / "test2015" / row["image"]),
                "test-dev",
            )
            for row in read_jsonl(self.root / "llava_vqav2_mscoco_test-dev2015.jsonl")
        ]
        val = self.root / "val" / "questions.jsonl"
        if val.exists():
            ann = json.loads(
                (self.root / "val" / "v2_mscoco_val2014_annotations.json").read_text()
            )["annotations"]
            answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in ann}
            out += [
                Question(
                    f"val/{row['question_id']}",
                    row["question_id"],
                    row["text"],
                    row["text"],
                    ImageRef(self.root / "val2014" / row["image"]),
                    "val",
                    answers[row["question_id"]],
                )
                for row in read_jsonl(val)
            ]
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return vqa_accuracy(prediction, q.gold) if q.gold is not None else 0.0

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        val = [q for q in questions if q.category == "val"]
        out: dict[str, float] = {
            "test_dev_answered": float(sum(q.category == "test-dev" for q in questions))
        }
        if val:
            out["val_acc"] = 100 * sum(self.correct(q, predictions[q.key]) for q in val) / len(val)
        return out

    def per_category(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, dict[str, float]]:
        return {}

    def items(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, Any]:
        """The val questions only: test-dev has no answers here (the server grades it)."""
        units = super().items([q for q in questions if q.category == "val"], predictions)
        return {**units, "metric": "val_acc"}

    def write_answers(
        self, out: Path, questions: Sequence[Question], records: Sequence[dict[str, Any]]
    ) -> list[Path]:
        """convert_vqav2_for_submission: every test2015 question (empty if unanswered), EvalAI-normalised."""
        answered = {
            r["question_id"]: r["text"]
            for r, q in zip(records, questions, strict=True)
            if q.category == "test-dev"
        }
        full = self.root / "llava_vqav2_mscoco_test2015.jsonl"
        ids = [row["question_id"] for row in read_jsonl(full)] if full.exists() else list(answered)
        upload = [
            {"question_id": qid, "answer": normalize_answer(answered.get(qid, ""))} for qid in ids
        ]
        path = out / "answers_upload" / "test-dev.json"
        atomic_write_json(path, upload)
        return [path]
