"""ScienceQA-IMG (`scienceqa/`): LLaVA's llava_test_CQM-A.json prompts, eval_science_qa's parsing.

IMG-Acc is the accuracy on questions with an image (prompts that contain `<image>`); `acc` covers
every test question. `prompt` keeps `<image>\\n` and the suffix, as model_vqa_science records it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from msr.eval.benchmarks.base import MC, Benchmark, ImageRef, Question
from msr.eval.scoring import SQA_OPTIONS, sqa_parse


class ScienceQA(Benchmark):
    name = "sqa"
    files = ("llava_test_CQM-A.json", "problems.json", "pid_splits.json", "images/test")
    main = "img_acc"

    def load(self) -> list[Question]:
        problems = json.loads((self.root / "problems.json").read_text())
        test = set(json.loads((self.root / "pid_splits.json").read_text())["test"])
        out = []
        for row in json.loads((self.root / "llava_test_CQM-A.json").read_text()):
            pid = str(row["id"])
            if pid not in test:
                continue
            if pid not in problems:
                raise ValueError(
                    f"sqa: problem {pid} of llava_test_CQM-A.json is not in problems.json"
                )
            text = row["conversations"][0]["value"].replace("<image>", "").strip() + MC
            image = (
                ImageRef(self.root / "images" / "test" / row["image"]) if "image" in row else None
            )
            prompt = ("<image>\n" if image else "") + text
            prob = problems[pid]
            gold = SQA_OPTIONS[prob["answer"]]
            out.append(
                Question(
                    pid,
                    row["id"],
                    text,
                    prompt,
                    image,
                    "image" if image else "text",
                    gold,
                    {"num_choices": len(prob["choices"])},
                )
            )
        return out

    def correct(self, q: Question, prediction: str) -> float:
        return float(sqa_parse(prediction, q.extra["num_choices"]) == q.gold)

    def metrics(
        self, questions: Sequence[Question], predictions: Mapping[str, str]
    ) -> dict[str, float]:
        img = [q for q in questions if q.image is not None]
        out = {
            "acc": 100
            * sum(self.correct(q, predictions[q.key]) for q in questions)
            / max(1, len(questions))
        }
        out["img_acc"] = (
            100 * sum(self.correct(q, predictions[q.key]) for q in img) / max(1, len(img))
        )
        return out
