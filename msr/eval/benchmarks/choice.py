"""Multiple choice: MMBench dev (circular), SEED-Bench (image), MMStar.

MMBench: the TSV holds every circular copy (index + k·1e6, options rotated); the prompt is
`[hint\\n]question\\nA. …\\nB. …` + the letter suffix (model_vqa_mmbench); a question counts only
if all of its copies are right. SEED: the jsonl prompt as given, exact-text scoring (so "A." is
wrong, as in LLaVA's conversion). MMStar: letter extraction, accuracy per l2_category, then the
mean of those means.
"""

from __future__ import annotations

import base64
import csv
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msr.eval.benchmarks.base import (
    MC,
    Benchmark,
    ImageRef,
    Question,
    questions_digest,
    read_jsonl,
)
from msr.eval.scoring import choice_letter, mmbench_circular, seed_match
from msr.eval.stats import wilson
from msr.utils.io import atomic_write_text

LETTERS = ("A", "B", "C", "D")


def _none(value: str | None) -> bool:
    return value is None or value.strip().lower() in ("", "nan", "none")


def read_tsv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long cells
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


class MMBench(Benchmark):
    name = "mmbench"
    files = ("mmbench_dev_20230712.tsv",)
    main = "circular_acc"

    def load(self) -> list[Question]:
        out = []
        for row in read_tsv(self.root / self.files[0]):
            options = {}
            for letter in LETTERS:  # options stop at the first empty cell (get_options)
                if _none(row.get(letter)):
                    break
                options[letter] = row[letter]
            question = (
                row["question"] if _none(row.get("hint")) else f"{row['hint']}\n{row['question']}"
            )
            for letter, option in options.items():
                question += f"\n{letter}. {option}"
            out.append(
                Question(
                    row["index"],
                    int(row["index"]),
                    question + MC,
                    question,
                    ImageRef(data=base64.b64decode(row["image"])),
                    row.get("category"),
                    row["answer"],
                    {"options": options},
                )
            )
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return float(choice_letter(prediction, q.extra["options"]) == q.gold)

    def gold_text(self, q: Question) -> str:
        return q.extra["options"][q.gold]

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        results = [(int(q.qid), bool(self.correct(q, predictions[q.key]))) for q in questions]
        circular, _ = mmbench_circular(results)
        return {
            "circular_acc": 100 * circular,
            "single_acc": 100 * sum(ok for _, ok in results) / max(1, len(results)),
        }

    def per_category(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, dict[str, float]]:
        groups: dict[str, list[Question]] = defaultdict(list)
        for q in questions:
            groups[q.category or ""].append(q)
        out = {}
        for cat, qs in sorted(groups.items()):
            acc, per_q = mmbench_circular(
                (int(q.qid), bool(self.correct(q, predictions[q.key]))) for q in qs
            )
            answers = Counter(
                self.gold_text(q) for q in qs if int(q.qid) < 1_000_000
            )  # one per question
            majority = answers.most_common(1)[0][1] / len(per_q) if per_q else 0.0
            lo, hi = wilson(sum(per_q.values()), len(per_q))
            out[cat] = {
                "n": len(per_q),
                "acc": 100 * acc,
                "lo": 100 * lo,
                "hi": 100 * hi,
                "majority": 100 * majority,
            }
        return out

    def items(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, Any]:
        """One unit per question and its circular copies: right only if every copy is."""
        groups: dict[int, list[Question]] = defaultdict(list)
        for q in questions:
            groups[int(q.qid) % 1_000_000].append(q)
        keys = sorted(groups)
        return {
            "metric": "circular_acc",
            "digest": questions_digest(questions),
            "keys": [str(k) for k in keys],
            "scores": [
                float(all(self.correct(q, predictions[q.key]) for q in groups[k])) for k in keys
            ],
            "topics": [groups[k][0].category or "" for k in keys],
            "pairs": [None] * len(keys),
        }

    def write_answers(
        self, out: Path, questions: Sequence[Question], records: Sequence[dict[str, Any]]
    ) -> list[Path]:
        """The columns convert_mmbench_for_submission puts in its sheet, as a TSV."""
        lines = ["index\tquestion\tA\tB\tC\tD\tprediction\tanswer"]
        for q, r in zip(questions, records, strict=True):
            opts = [q.extra["options"].get(k, "") for k in LETTERS]
            cells = [str(q.qid), q.prompt.split("\n")[0], *opts, r["text"], q.gold]
            lines.append("\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells))
        path = out / "mmbench_dev_submission.tsv"
        atomic_write_text(path, "\n".join(lines) + "\n")
        return [path]


class SEED(Benchmark):
    name = "seed"
    files = ("llava-seed-bench.jsonl", "SEED-Bench.json")
    main = "image_acc"

    def load(self) -> list[Question]:
        meta = json.loads((self.root / "SEED-Bench.json").read_text())
        types = {v: k for k, v in meta["question_type"].items()}
        gold = {str(q["question_id"]): q for q in meta["questions"]}
        out = []
        for row in read_jsonl(self.root / "llava-seed-bench.jsonl"):
            qid = str(row["question_id"])
            if qid.startswith("v"):
                continue  # video questions: this reproduction evaluates SEED-Bench (image)
            if qid not in gold:
                raise ValueError(f"seed: question {qid} is not in SEED-Bench.json")
            entry = gold[qid]
            out.append(
                Question(
                    qid,
                    row["question_id"],
                    row["text"],
                    row["text"],
                    ImageRef(self.root / row["image"]),
                    types.get(entry["question_type_id"], str(entry["question_type_id"])),
                    entry["answer"],
                )
            )
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return float(seed_match(prediction, q.gold))

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        return {
            "image_acc": 100
            * sum(self.correct(q, predictions[q.key]) for q in questions)
            / max(1, len(questions))
        }


class MMStar(Benchmark):
    name = "mmstar"
    files = ("MMStar.tsv",)
    main = "avg"

    def load(self) -> list[Question]:
        out = []
        for row in read_tsv(self.root / "MMStar.tsv"):
            text = row["question"] + MC.rstrip(".")  # lmms-eval's MMStar prompt has no final period
            out.append(
                Question(
                    row["index"],
                    row["index"],
                    text,
                    row["question"],
                    ImageRef(data=base64.b64decode(row["image"])),
                    row.get("l2_category") or row.get("category"),
                    row["answer"].strip(),
                )
            )
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return float(choice_letter(prediction) == q.gold)

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        cats = self.per_category(questions, predictions)
        out = {f"{c}/acc": v["acc"] for c, v in cats.items()}
        out["avg"] = sum(v["acc"] for v in cats.values()) / max(1, len(cats))
        return out
