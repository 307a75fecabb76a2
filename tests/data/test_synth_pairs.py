"""synth v5 measures what it claims: answers need the question (minimal pairs), binding-hard
scenes, hard negatives named as such, balanced option letters, hints alike in training and eval,
and evaluation questions that do not move with the training data."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from msr.data.synth import eval_sets
from msr.data.synth.generate import _instruct_record, _Phraser
from msr.data.synth.questions import PAIRED, TYPES, Vocab, decoy_colors
from msr.data.synth.scene import Scene, SceneSpec, sample_scene
from stages import synth
from tests.conftest import tiny_params

KINDS = ("circle", "square", "triangle", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "white")
BACKGROUNDS = ("gray", "black", "white", "cyan")
SPEC = SceneSpec(KINDS, COLORS, BACKGROUNDS, 6, 64, 0.5, min_objects=2)
VOCAB = Vocab(COLORS, BACKGROUNDS)


@pytest.fixture(scope="module")
def gqa() -> list[eval_sets.GQAItem]:
    return eval_sets.draw_gqa("test/gqa", SPEC, VOCAB, per_type=150)


def test_every_type_reaches_its_size_with_two_different_golds_per_pair(gqa) -> None:
    units = Counter[str]()
    for _, asked in gqa:
        by_type = defaultdict(list)
        for qa, paired in asked:
            by_type[qa.type].append((qa, paired))
        for qtype, qas in by_type.items():
            units[qtype] += 1
            if qtype in PAIRED:
                assert len(qas) == 2 and all(p for _, p in qas)
                assert qas[0][0].answer != qas[1][0].answer  # a minimal pair: two golds
                assert qas[0][0].question != qas[1][0].question
            else:
                assert len(qas) == 1 and not qas[0][1]
    assert all(units[t] >= 150 for t in eval_sets.GQA_TYPES), units


def test_a_question_blind_policy_gets_no_pair_and_at_most_half(gqa) -> None:
    """The best policy that sees the image and the question type but not the question's words:
    per image and type, the single answer right most often."""
    for qtype in PAIRED:
        right = total = pairs_right = 0
        for _, asked in gqa:
            golds = [qa.answer for qa, _ in asked if qa.type == qtype]
            if not golds:
                continue
            best = Counter(golds).most_common(1)[0][1]
            right, total = right + best, total + len(golds)
            pairs_right += best == len(golds)  # one answer right for both halves
        assert total >= 300 and pairs_right == 0 and right <= total / 2, qtype


def test_local_attribute_and_counting_are_binding_hard(gqa) -> None:
    for scene, asked in gqa:
        for qa, _ in asked:
            if qa.type == "attribute":
                kind = qa.question.rstrip("?").split()[-1]
                others = {s.color for s in scene.shapes if s.kind != kind}
                assert others - {qa.answer}, qa  # another shape has another colour
            if qa.type == "count":
                counts = Counter(s.kind for s in scene.shapes)
                assert len(set(counts.values())) > 1  # another kind has another count
    shapes = Counter(len(scene.shapes) for scene, _ in gqa)
    assert min(shapes) >= 2 and max(shapes) == 6


def _no_colors(asked, qtype: str) -> list[str]:
    return [qa.question.split()[3] for qa in asked if qa.type == qtype and qa.answer == "no"]


def test_a_glyph_or_background_colour_is_a_named_hard_negative_never_an_accident(gqa) -> None:
    decoys = 0
    for scene, asked in gqa:
        qas = [qa for qa, _ in asked]
        taken = {scene.background} | ({scene.glyph.color} if scene.glyph else set())
        assert not set(_no_colors(qas, "exist")) & taken
        for color in _no_colors(qas, "exist_decoy"):
            assert color in decoy_colors(scene, VOCAB) and color not in scene.colors
            decoys += 1
    assert decoys >= 150
    # training turns: every "no" to an existence question names a colour nothing has, unless it is
    # the exist_decoy type
    cfg = tiny_params(Path("unused")).data.synth.model_copy(
        update={"kinds": list(KINDS), "min_objects": 2, "max_objects": 6, "mc_prob": 0.0}
    )
    rng, scenes = random.Random(1), _scenes(1500)
    phrase = _Phraser(cfg, rng)
    checked = 0
    for n, scene in enumerate(scenes):
        record = _instruct_record(rng, scene, n, cfg, Counter(), phrase)
        turns = record["conversations"] if record else []
        for q, a in zip(turns[::2], turns[1::2], strict=True):
            words = q["value"].removeprefix("<image>\n").split()
            if words[:2] == ["Is", "there"] and a["value"] == "No":
                checked += 1
                if words[3] not in decoy_colors(scene, VOCAB):
                    assert words[3] not in {scene.background} | (
                        {scene.glyph.color} if scene.glyph else set()
                    )
    assert checked > 100


def test_pope_negatives_are_nowhere_in_the_image(tmp_path: Path) -> None:
    scenes = _scenes(300)
    eval_sets.write_pope(tmp_path, scenes, random.Random(0), COLORS, lambda img, p: None)
    for split in eval_sets.POPE_SPLITS:
        rows = [json.loads(line) for line in (tmp_path / "coco" / f"coco_pope_{split}.json").open()]
        for row in rows:
            scene = scenes[int(row["image"].split("_")[-1].split(".")[0])]
            color = row["text"].split()[3]
            if row["label"] == "no":
                assert color not in scene.colors and color != scene.background
                assert scene.glyph is None or color != scene.glyph.color


def _scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    out: list[Scene] = []
    while len(out) < n:
        scene = sample_scene(rng, SPEC, f"s{len(out)}")
        if len(scene.shapes) >= 2:
            out.append(scene)
    return out


def _letters(rows: list[tuple[int, str]]) -> dict[int, Counter[str]]:
    out: dict[int, Counter[str]] = defaultdict(Counter)
    for n, letter in rows:
        out[n][letter] += 1
    return out


def test_every_option_letter_is_gold_equally_often_in_training_and_eval(tmp_path: Path) -> None:
    cfg = tiny_params(Path("unused")).data.synth.model_copy(
        update={"kinds": list(KINDS), "min_objects": 2, "max_objects": 6, "mc_prob": 1.0}
    )
    rng = random.Random(0)
    phrase = _Phraser(cfg, rng)
    train: list[tuple[int, str]] = []
    hints = mc = 0
    for n, scene in enumerate(_scenes(1500)):
        record = _instruct_record(rng, scene, n, cfg, Counter(), phrase)
        for q, a in zip(record["conversations"][::2], record["conversations"][1::2], strict=True):
            options = [line for line in q["value"].split("\n") if line[1:3] == ". "]
            if options:
                mc += 1
                hints += eval_sets.HINT in q["value"]
                train.append((len(options), a["value"]))
                gold = dict(line.split(". ", 1) for line in options)[a["value"]]
                if q["value"].endswith(
                    "background?" + "".join(f"\n{o}" for o in options) + eval_sets.MC
                ):
                    assert all(o.split(". ", 1)[1] in BACKGROUNDS for o in options)
                assert gold
    scenes = _scenes(1600, seed=1)
    eval_sets.write_mmbench(tmp_path, scenes, random.Random(0), VOCAB, hint_prob=0.2)
    rows = list(csv.DictReader((tmp_path / "mmbench_dev_20230712.tsv").open(), delimiter="\t"))
    first = [r for r in rows if int(r["index"]) < 1_000_000]
    evals = [(sum(1 for k in "ABCD" if r[k]), r["answer"]) for r in first]
    for name, found in (("training", train), ("MMBench", evals)):
        for n, letters in _letters(found).items():
            total = sum(letters.values())
            assert total >= 100, (name, n, total)
            for letter in "ABCD"[:n]:
                share = letters[letter] / total
                assert abs(share - 1 / n) <= 0.03, (name, n, letter, share)
    # the hint precedes a question as often in training as in the evaluation
    eval_hints = sum(bool(r["hint"]) for r in first) / len(first)
    assert abs(hints / mc - 0.2) < 0.03 and abs(eval_hints - 0.2) < 0.04
    for r in first:  # distractors from the answer's own vocabulary
        options = [r[k] for k in "ABCD" if r[k]]
        if r["category"] == "global":
            assert set(options) <= set(BACKGROUNDS)
        if r["category"] == "local_attribute":
            assert set(options) <= set(COLORS)


def test_evaluation_questions_do_not_move_with_the_training_data(tmp_path: Path) -> None:
    a = tiny_params(tmp_path / "a")
    b = tiny_params(
        tmp_path / "b",
        data={
            **a.data.model_dump(),
            "synth": {
                **a.data.synth.model_dump(),
                "turns": (1, 2),
                "instruct_images": 9,
                "mc_prob": 0.6,
                "seed": 3,
            },
        },
    )
    synth.run(a)
    synth.run(b)
    ra, rb = Path(a.paths.synth), Path(b.paths.synth)
    assert (ra / "instruct.json").read_bytes() != (rb / "instruct.json").read_bytes()
    for rel in (
        "eval/gqa/llava_gqa_testdev_balanced.jsonl",
        "eval/gqa/data/testdev_balanced_questions.json",
        "eval/mmbench/mmbench_dev_20230712.tsv",
        "eval/pope/llava_pope_test.jsonl",
        "eval/textvqa/llava_textvqa_val_v051_ocr.jsonl",
    ):
        assert (ra / rel).read_bytes() == (rb / rel).read_bytes(), rel


def test_every_type_is_in_the_written_gqa_set(tiny_workspace) -> None:
    root = Path(tiny_workspace.paths.synth) / "eval" / "gqa"
    official = json.loads((root / "data" / "testdev_balanced_questions.json").read_text())
    types = Counter(e["types"]["detailed"] for e in official.values())
    assert set(types) == set(eval_sets.GQA_TYPES) and set(types) <= set(TYPES)
    pairs = Counter(e["pair"] for e in official.values() if e["pair"])
    assert pairs and set(pairs.values()) == {2}
