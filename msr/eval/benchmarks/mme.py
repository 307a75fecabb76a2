"""MME (`MME/`): yes/no questions, two per image; score = 100·acc + 100·acc+ per subtask, summed
over the 10 perception and 4 cognition subtasks (calculation.py).

LLaVA's llava_mme.jsonl replaces " Please answer yes or no." by its short-answer suffix; the gold
answers are read from the official `MME_Benchmark_release_version/<task>/` text files
(`question\\tYes`), by image and the original question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msr.eval.benchmarks.base import SHORT, Benchmark, ImageRef, Question, read_jsonl
from msr.eval.scoring import mme_label, mme_score
from msr.utils.io import atomic_write_text

RELEASE = "MME_Benchmark_release_version"
YN = " Please answer yes or no."


class MME(Benchmark):
    name = "mme"
    files = ("llava_mme.jsonl", RELEASE)
    main = "perception"
    higher = 2000.0

    def _gold(self, task: str, image: str) -> dict[str, str]:
        stem = Path(image).stem
        for folder in (
            self.root / RELEASE / task / "questions_answers_YN",
            self.root / RELEASE / task,
        ):
            f = folder / f"{stem}.txt"
            if f.exists():
                pairs = [line.split("\t") for line in f.read_text().splitlines() if line.strip()]
                return {q.strip(): a.strip() for q, a in pairs}
        raise ValueError(
            f"mme: no ground-truth file {stem}.txt for {task} under {self.root / RELEASE / task}"
        )

    def load(self) -> list[Question]:
        out = []
        for n, row in enumerate(read_jsonl(self.root / "llava_mme.jsonl")):
            task, image = row["category"], row["image"]
            original = row["text"].replace(SHORT, YN)
            gold = self._gold(task, image)
            if original not in gold:
                raise ValueError(
                    f"mme: question {original!r} of {image} is not in its ground-truth file"
                )
            out.append(
                Question(
                    f"{n}",
                    row["question_id"],
                    row["text"],
                    row["text"],
                    ImageRef(self.root / RELEASE / image),
                    task,
                    gold[original].lower(),
                    {"image": image, "question": original},
                )
            )
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return float(mme_label(prediction) == q.gold)

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        return mme_score(
            (q.category or "", q.extra["image"], q.gold, predictions[q.key]) for q in questions
        )

    def write_answers(
        self, out: Path, questions: Sequence[Question], records: Sequence[dict[str, Any]]
    ) -> list[Path]:
        """convert_answer_to_mme: eval_tool/answers/<task>.txt with `image\\tquestion\\tGT\\tpred` lines."""
        by_task: dict[str, list[str]] = {}
        for q, r in zip(questions, records, strict=True):
            line = f"{Path(q.extra['image']).stem}.txt\t{q.extra['question']}\t{q.gold.capitalize()}\t{r['text']}"
            by_task.setdefault(q.category or "", []).append(line)
        paths = []
        for task, lines in by_task.items():
            path = out / "eval_tool" / "answers" / f"{task}.txt"
            atomic_write_text(path, "\n".join(lines) + "\n")
            paths.append(path)
        return paths
