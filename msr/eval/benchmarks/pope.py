"""POPE (random / popular / adversarial): yes/no object existence, LLaVA's eval_pope parsing.

Labels live in `coco/coco_pope_{split}.json` (JSONL) and are zipped with the answers of that split
by position, as eval_pope.py does — so the answer order must be the question file's order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from msr.eval.benchmarks.base import Benchmark, ImageRef, Question, read_jsonl
from msr.eval.scoring import pope_metrics, pope_yes

SPLITS = ("adversarial", "popular", "random")


class POPE(Benchmark):
    name = "pope"
    files = ("llava_pope_test.jsonl", *(f"coco/coco_pope_{s}.json" for s in SPLITS), "val2014")
    main = "f1"

    def load(self) -> list[Question]:
        rows = read_jsonl(self.root / "llava_pope_test.jsonl")
        labels = {
            s: [
                json.loads(line)["label"]
                for line in (self.root / "coco" / f"coco_pope_{s}.json").read_text().splitlines()
                if line.strip()
            ]
            for s in SPLITS
        }
        seen = {s: 0 for s in SPLITS}
        out = []
        for row in rows:
            split = row["category"]
            if split not in labels:
                raise ValueError(
                    f"pope: question {row['question_id']} has category {split!r}; expected one of {SPLITS}"
                )
            if seen[split] >= len(labels[split]):
                raise ValueError(
                    f"pope: more {split} questions than labels in coco_pope_{split}.json ({len(labels[split])})"
                )
            label = labels[split][seen[split]]
            seen[split] += 1
            out.append(
                Question(
                    str(row["question_id"]),
                    row["question_id"],
                    row["text"],
                    row["text"],
                    ImageRef(self.root / "val2014" / row["image"]),
                    split,
                    label,
                )
            )
        short = [s for s in SPLITS if seen[s] and seen[s] != len(labels[s])]
        if short:
            raise ValueError(
                f"pope: answers and labels differ in count for {short}: they are zipped by position"
            )
        return out

    def topic(self, q: Question) -> str | None:
        return "existence"  # every POPE question asks whether an object exists; splits are in metrics()

    def correct(self, q: Question, prediction: str) -> float:
        return float(pope_yes(prediction) == (q.gold == "yes"))

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        for split in SPLITS:
            qs = [q for q in questions if q.category == split]
            if qs:
                m = pope_metrics([predictions[q.key] for q in qs], [q.gold for q in qs])
                out.update(
                    {f"{split}/{k}": 100 * v if k != "yes_ratio" else v for k, v in m.items()}
                )
        present = [s for s in SPLITS if f"{s}/f1" in out]
        out["f1"] = sum(out[f"{s}/f1"] for s in present) / len(present)
        out["acc"] = sum(out[f"{s}/acc"] for s in present) / len(present)
        return out
