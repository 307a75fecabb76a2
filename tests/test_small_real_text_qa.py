"""The text question probe asks as evaluation does, and its scene line holds the answer: an
existence answer is "yes" exactly when the colour is named, a count is the number of shapes named."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from small_real_text_qa import CATEGORIES, prompts, questions, render

from msr.data.synth.eval_sets import SHORT
from msr.data.synth.scene import SIZES
from msr.presets import preset_path
from msr.resolve import load_params


def test_the_scene_line_answers_each_question() -> None:
    p = load_params(preset_path("small-real"))
    qs = questions(p, 30)
    assert list(qs) == list(CATEGORIES) and all(len(v) == 30 for v in qs.values())
    sizes = "|".join(SIZES)
    for scene, question, gold in qs["existence"]:
        colour = re.match(r"Is there an? (\w+) shape", question)
        assert colour and question.endswith(SHORT)
        named = re.search(rf"\b({sizes}) {colour[1]} \w+", scene) is not None
        assert gold == ("yes" if named else "no")
    for scene, question, gold in qs["counting"]:
        kind = re.match(r"How many (\w+)s are there", question)
        assert kind and int(gold) == len(re.findall(rf"\b({sizes}) \w+ {kind[1]}\b", scene))
    for scene, _, gold in qs["global"]:
        assert f"on a {gold} background" in scene
    assert {g for _, _, g in qs["existence"]} == {"yes", "no"}


def test_training_prompts_answer_as_the_conversations_do() -> None:
    p = load_params(preset_path("small-real"))
    rows = prompts(p, random.Random(0), 40)
    for text, answer in rows:
        assert text.startswith("Scene: ") and text.endswith(SHORT)
        assert answer[:1].isupper() or answer[:1].isdigit()  # capitalised, as training says it
    asked = {q.split("\n")[1] for q, _ in rows}
    assert any(q.startswith("Is there") for q in asked)
    assert any(q.startswith("How many") for q in asked)


def _row(acc: float) -> dict:
    cell = {"questions": 2, "scene": acc, "alone": 50.0, "majority": 52.0, "answers": {"no": 2}}
    return {"source": "x", "train_steps": 0, "text": {c: cell for c in CATEGORIES}}


def test_the_report_puts_the_majority_first_and_shows_the_transfer() -> None:
    gqa = {"existence": {"n": 50, "acc": 44.0, "majority": 56.0, "answers": {"yes": 49}}}
    after = {"existence": {"n": 50, "acc": 70.0, "majority": 56.0, "answers": {"no": 25}}}
    trained = {**_row(99.0), "train_steps": 100, "train_loss": 0.02,
               "image_before": gqa, "image_after": after}  # fmt: skip
    md = render({"m": _row(49.0), "m + 100 text steps": trained})
    assert md.index("| *majority* | 52") < md.index("| m | 49 / 50")
    assert "| m + 100 text steps | 44.0 → 70.0 | 0.02 |" in md
    assert "| *majority* | 56.0 | |" in md
