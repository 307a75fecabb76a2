"""OCRBench (`ocrbench/OCRBench.json` + `OCRBench_Images/`): a gold answer must appear in the
prediction; the total is the number right out of 1000 (recognition 300, scene VQA 200, doc VQA 200,
KIE 200, HMER 100)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from msr.eval.benchmarks.base import SHORT, Benchmark, ImageRef, Question
from msr.eval.scoring import ocrbench_match

GROUPS = {
    "Regular Text Recognition": "recognition",
    "Irregular Text Recognition": "recognition",
    "Artistic Text Recognition": "recognition",
    "Handwriting Recognition": "recognition",
    "Digit String Recognition": "recognition",
    "Non-Semantic Text Recognition": "recognition",
    "Scene Text-centric VQA": "scene_vqa",
    "Doc-oriented VQA": "doc_vqa",
    "Key Information Extraction": "kie",
    "Handwritten Mathematical Expression Recognition": "hmer",
}


class OCRBench(Benchmark):
    name = "ocrbench"
    files = ("OCRBench.json", "OCRBench_Images")
    main = "total"
    higher = 1000.0

    def load(self) -> list[Question]:
        out = []
        for n, row in enumerate(json.loads((self.root / "OCRBench.json").read_text())):
            out.append(
                Question(
                    f"{n}",
                    n,
                    row["question"] + SHORT,
                    row["question"],
                    ImageRef(self.root / "OCRBench_Images" / row["image_path"]),
                    row["type"],
                    row["answers"],
                    {"dataset": row.get("dataset_name", "")},
                )
            )
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return float(ocrbench_match(prediction, q.gold, q.extra["dataset"]))

    def gold_text(self, q: Question) -> str:
        return q.gold if isinstance(q.gold, str) else q.gold[0]

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        out: dict[str, float] = {g: 0.0 for g in sorted(set(GROUPS.values()))}
        for q in questions:
            out[GROUPS.get(q.category or "", "other")] = out.get(
                GROUPS.get(q.category or "", "other"), 0.0
            ) + self.correct(q, predictions[q.key])
        out["total"] = sum(out.values())
        return out
