"""The synthetic dataset: deterministic, disjoint train/eval scenes, every file in its real format."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from msr.config import Params
from msr.data.llava import read_llava_json
from msr.data.synth.questions import CATEGORIES, QA, TYPES, Vocab, ask_type, caption
from msr.data.synth.scene import SceneSpec, render, sample_scene
from stages import synth
from tests.conftest import tiny_params

SHORT = "\nAnswer the question using a single word or phrase."


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b = tiny_params(tmp_path / "a"), tiny_params(tmp_path / "b")
    synth.run(a)
    synth.run(b)
    for rel in (
        "pretrain.json",
        "instruct.json",
        "eval/mmbench/mmbench_dev_20230712.tsv",
        "eval/pope/llava_pope_test.jsonl",
        "pretrain_images/00000/000000003.jpg",
    ):
        assert (Path(a.paths.synth) / rel).read_bytes() == (
            Path(b.paths.synth) / rel
        ).read_bytes(), rel


def test_training_json_passes_the_llava_reader(tiny_workspace: Params) -> None:
    d = tiny_workspace.data
    pre = read_llava_json(d.pretrain_json, d.pretrain_images, strict=True)
    ins = read_llava_json(d.instruct_json, d.instruct_images, strict=True)
    assert len(pre.records) == d.synth.pretrain_images
    assert all(r.image and r.conversations[0][1].endswith("\n<image>") for r in pre.records)
    text_only = [r for r in ins.records if r.image is None]
    assert len(text_only) == d.synth.text_only and all(r.source == "text" for r in text_only)
    first = next(r for r in ins.records if r.image)
    assert first.conversations[0][1].startswith("<image>\n") and first.conversations[0][1].endswith(
        SHORT
    )


def test_instruct_json_keys_like_mix665k(tiny_workspace: Params) -> None:
    rows = json.loads(Path(tiny_workspace.data.instruct_json).read_text())
    text = [r for r in rows if "image" not in r]
    assert text and all(r["model"] == "" for r in text)
    assert all(r["image"].startswith("shapes/") for r in rows if "image" in r)


def test_train_and_eval_scenes_never_overlap(tiny_workspace: Params) -> None:
    root = Path(tiny_workspace.paths.synth)
    train = {p.read_bytes() for p in (root / "shapes").glob("*.jpg")} | {
        p.read_bytes() for p in (root / "pretrain_images").rglob("*.jpg")
    }
    evals = {p.read_bytes() for p in (root / "eval").rglob("*.jpg")}
    assert train and evals and not train & evals


def test_textvqa_format(tiny_workspace: Params) -> None:
    root = Path(tiny_workspace.paths.synth) / "eval" / "textvqa"
    questions = [
        json.loads(line)
        for line in (root / "llava_textvqa_val_v051_ocr.jsonl").read_text().splitlines()
    ]
    ann = json.loads((root / "TextVQA_0.5.1_val.json").read_text())["data"]
    assert questions and len(questions) == len(ann)
    for q, a in zip(questions, ann, strict=True):
        assert set(q) == {"question_id", "image", "text", "category"}
        assert q["question_id"] == a["image_id"] and q["image"] == f"{a['image_id']}.jpg"
        assert "\nReference OCR token: " in q["text"] and q["text"].endswith(SHORT)
        assert q["text"].split("\n")[0] == a["question"] and len(a["answers"]) == 10
        assert (root / "train_images" / q["image"]).exists()


def test_pope_format(tiny_workspace: Params) -> None:
    root = Path(tiny_workspace.paths.synth) / "eval" / "pope"
    questions = [
        json.loads(line) for line in (root / "llava_pope_test.jsonl").read_text().splitlines()
    ]
    ranges = {
        "adversarial": (1, 10_000_000),
        "random": (10_000_001, 20_000_000),
        "popular": (20_000_001, 30_000_000),
    }
    for split, (lo, hi) in ranges.items():
        labels = [
            json.loads(line)
            for line in (root / "coco" / f"coco_pope_{split}.json").read_text().splitlines()
        ]
        mine = [q for q in questions if q["category"] == split]
        assert [q["question_id"] for q in mine] == [
            lab["question_id"] for lab in labels
        ]  # zipped by position
        assert all(
            lo <= lab["question_id"] <= hi and lab["label"] in ("yes", "no") for lab in labels
        )
        assert Counter(lab["label"] for lab in labels)["no"] > 0
        assert all(q["text"] == lab["text"] + SHORT for q, lab in zip(mine, labels, strict=True))


def test_mmbench_tsv_has_circular_copies(tiny_workspace: Params) -> None:
    path = Path(tiny_workspace.paths.synth) / "eval" / "mmbench" / "mmbench_dev_20230712.tsv"
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    assert list(rows[0]) == [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    ]
    groups: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(int(r["index"]) % 1_000_000, []).append(r)
    for copies in groups.values():
        options = [[c[k] for k in "ABCD" if c[k]] for c in copies]
        assert len(copies) == len(options[0])  # one copy per option
        answers = {c[c["answer"]] for c in copies}
        assert len(answers) == 1  # the same answer text, under a rotating letter
        for k, opts in enumerate(options):
            assert opts == options[0][-k:] + options[0][:-k] if k else opts == options[0]


def test_gqa_format(tiny_workspace: Params) -> None:
    root = Path(tiny_workspace.paths.synth) / "eval" / "gqa"
    questions = [
        json.loads(line)
        for line in (root / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()
    ]
    official = json.loads((root / "data" / "testdev_balanced_questions.json").read_text())
    for q in questions:
        assert isinstance(q["question_id"], str)
        entry = official[q["question_id"]]
        assert entry["isBalanced"] and q["image"] == f"{entry['imageId']}.jpg"
        assert entry["answer"] == entry["answer"].lower() and q["text"] == entry["question"] + SHORT
        assert (root / "data" / "images" / q["image"]).exists()


def test_every_category_is_generated(tiny_workspace: Params) -> None:
    summary = json.loads((Path(tiny_workspace.paths.synth) / "summary.json").read_text())
    assert set(summary["instruct"]["questions_by_category"]) <= set(CATEGORIES)
    assert len(summary["instruct"]["questions_by_category"]) >= 5


def test_answers_follow_from_the_scene() -> None:
    rng = random.Random(0)
    spec = SceneSpec(
        ("circle", "square", "triangle", "star"), ("red", "green", "blue", "white"), ("gray", "white"),
        6, 56, 1.0, min_objects=2,
    )  # fmt: skip
    vocab = Vocab(spec.colors, spec.backgrounds)
    seen = Counter[str]()
    for i in range(200):
        scene = sample_scene(rng, spec, f"s{i}")
        for qtype in TYPES:
            for qa in ask_type(rng, scene, qtype, vocab):
                seen[qtype] += 1
                words = qa.question.rstrip("?").split()
                if qtype == "count":
                    kind = words[2].removesuffix("s")
                    assert qa.answer == str(sum(s.kind == kind for s in scene.shapes))
                elif qtype == "attribute":
                    (shape,) = [s for s in scene.shapes if s.kind == words[-1]]
                    assert qa.answer == shape.color
                elif qtype in ("exist", "exist_decoy"):
                    assert qa.answer == ("yes" if words[3] in scene.colors else "no")
                elif qtype == "side":
                    (shape,) = [s for s in scene.shapes if s.kind == words[-2]]
                    assert qa.answer == ("left" if shape.cx < 112 else "right")
                elif qtype == "glyph":
                    assert scene.glyph is not None and qa.answer == scene.glyph.char.lower()
                elif qtype == "background":
                    assert qa.answer == scene.background
                assert qa.answer in qa.choices and TYPES[qa.type] == qa.category
        assert f"on a {scene.background} background" in caption(scene)
        img = render(scene)
        assert img.size == (336, 336) and img.getpixel((0, 0)) is not None
    assert set(seen) == set(TYPES)  # every type occurs


def test_a_category_listed_three_times_is_asked_about_more_often(tmp_path: Path) -> None:
    from msr.data.synth.generate import _instruct_record

    base = tiny_params(tmp_path).data.synth
    spec = SceneSpec(
        tuple(base.kinds), tuple(base.colors), tuple(base.backgrounds), 6, 0, 0.0, min_objects=2
    )
    scenes = [sample_scene(random.Random(i), spec, f"s{i}") for i in range(400)]
    once = ["global", "local_attribute", "existence", "counting"]
    thrice = ["global", "local_attribute", "existence", "existence", "existence", "counting"]
    counts = []
    for categories in (once, thrice):
        cfg = base.model_copy(update={"categories": categories, "turns": (1, 2)})
        rng, tally = random.Random(0), Counter[str]()
        for n, scene in enumerate(scenes):
            _instruct_record(rng, scene, n, cfg, tally)
        counts.append(tally)
    # listed three times, existence is drawn first or second far more often: about twice as many
    # existence turns (no question twice in a record), fewer of every other category
    assert counts[1]["existence"] > 1.3 * counts[0]["existence"]
    assert counts[1]["global"] < counts[0]["global"]


def test_unknown_category_rejected() -> None:
    with pytest.raises(ValueError, match="unknown category 'ocr'"):
        QA("q", "a", "ocr")


def test_unknown_colour_in_params(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown colour"):
        tiny_params(
            tmp_path,
            data={
                "synth": {
                    **tiny_params(tmp_path).data.synth.model_dump(),
                    "colors": ["red", "teal"],
                }
            },
        )


def _synth_with(tmp_path: Path, **overrides: object) -> Params:
    base = tiny_params(tmp_path).data.synth.model_dump()
    return tiny_params(tmp_path, data={"synth": {**base, **overrides}})


@pytest.mark.parametrize("kind", ["mc", "qa"])
def test_text_scene_records_state_their_answer_and_leave_the_rest_as_it_was(
    tmp_path: Path, kind: str
) -> None:
    key = f"text_{kind}"
    plain, with_text = _synth_with(tmp_path / "a"), _synth_with(tmp_path / "b", **{key: 12})
    synth.run(plain)
    synth.run(with_text)
    rows = json.loads(Path(with_text.data.instruct_json).read_text())
    made = [r for r in rows if r["id"].startswith(f"{key}_")]
    assert len(made) == 12 and all("image" not in r and r["model"] == "" for r in made)
    answers = []
    for r in made:
        question, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        scene, *_ = question.split("\n")
        assert scene.startswith("Scene: ")
        if kind == "mc":
            assert question.endswith(
                "\nAnswer with the option's letter from the given choices directly."
            )
            options = dict(line.split(". ", 1) for line in question.split("\n")[2:-1])
            gold = options[answer]
        else:
            assert question.endswith("\nAnswer the question using a single word or phrase.")
            assert answer[:1].isupper() or answer.isdigit()  # said as the image answers are
            gold = answer.lower()
        answers.append(gold)
        said = scene.removeprefix("Scene: ").rstrip(".")  # the caption says it
        if gold in ("yes", "no"):
            colour = question.split("\n")[1].split()[3]  # "Is there a {colour} shape ..."
            assert (f" {colour} " in f" {said.split(' on a ')[0]} ") == (gold == "yes"), r
        elif not gold.isdigit():
            assert gold in said, (said, r["conversations"])
    assert len(set(answers)) > 2  # not one answer
    # the other records, their images and the evaluation sets' scenes are unchanged
    others = {r["id"]: r for r in rows if not r["id"].startswith(f"{key}_")}
    before = {r["id"]: r for r in json.loads(Path(plain.data.instruct_json).read_text())}
    assert others == before
    summary = json.loads((Path(with_text.paths.synth) / "summary.json").read_text())
    assert summary["instruct"][key] == 12
    assert summary["instruct"]["images"] == sum("image" in r for r in rows)


@pytest.mark.parametrize("key", ["text_mc", "text_qa"])
def test_text_scene_records_need_a_category_a_caption_answers(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}=5 asks what a caption answers.*'spatial'"):
        _synth_with(tmp_path, **{key: 5}, categories=["spatial"])


def test_an_instruct_set_of_text_alone(tmp_path: Path) -> None:
    params = _synth_with(tmp_path, instruct_images=0, text_only=0, text_qa=12)
    synth.run(params)
    rows = json.loads(Path(params.data.instruct_json).read_text())
    assert len(rows) == 12 and all("image" not in r for r in rows)
    summary = json.loads((Path(params.paths.synth) / "summary.json").read_text())
    assert summary["instruct"]["images"] == 0 and summary["instruct"]["text_qa"] == 12


def test_an_empty_instruct_set_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the instruct set is empty"):
        _synth_with(tmp_path, instruct_images=0, text_only=0)
