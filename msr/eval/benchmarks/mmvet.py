"""MM-Vet (`mm-vet/`): open-ended answers graded by a judge model (GPT-4 in the official tool).

msr writes the answer file the official grader reads (`results/mmvet.json`, {"v1_N": answer}) and
reports no number: without a judge there is no score to give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msr.eval.benchmarks.base import Benchmark, ImageRef, Question, read_jsonl
from msr.utils.io import atomic_write_json

NOT_SCORED = "needs a judge model (GPT-4 in the official MM-Vet grader); answers written to results/mmvet.json"


class MMVet(Benchmark):
    name = "mmvet"
    files = ("llava-mm-vet.jsonl", "images")
    main = ""

    def load(self) -> list[Question]:
        return [
            Question(
                str(row["question_id"]),
                row["question_id"],
                row["text"],
                row["text"],
                ImageRef(self.root / "images" / row["image"]),
                row.get("category"),
            )
            for row in read_jsonl(self.root / "llava-mm-vet.jsonl")
        ]

    def correct(self, q: Question, prediction: str) -> float:
        raise NotImplementedError(NOT_SCORED)

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        return {}

    def per_category(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, dict[str, float]]:
        return {}

    def items(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, Any]:
        """No scored units: a judge model grades MM-Vet."""
        return {"metric": "", "digest": "", "keys": [], "scores": [], "topics": [], "pairs": []}

    def write_answers(
        self, out: Path, questions: Sequence[Question], records: Sequence[dict[str, Any]]
    ) -> list[Path]:
        path = out / "results" / "mmvet.json"
        atomic_write_json(path, {f"v1_{r['question_id']}": r["text"] for r in records})
        return [path]
