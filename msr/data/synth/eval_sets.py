"""Writers of the synthetic evaluation sets, each in the file layout of the real benchmark it mimics
(see the LLaVA-1.5 evaluation files): TextVQA, POPE, MMBench (TSV, circular) and GQA.

synth GQA is the measuring set: every type with a content word is asked as a minimal pair on the
same image (`msr.data.synth.questions`), each pair named in the official json (`pair`), so a score
can be read per question, per pair, and against what a question-blind policy reaches."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from msr.data.synth.questions import (
    QA,
    LetterBalancer,
    Vocab,
    ask_category,
    ask_type,
)
from msr.data.synth.scene import GLYPHS, Scene, SceneSpec, render, sample_scene
from msr.utils.io import atomic_write_json, atomic_write_text

SHORT = "\nAnswer the question using a single word or phrase."
MC = "\nAnswer with the option's letter from the given choices directly."
POPE_SPLITS = {"adversarial": 1, "random": 10_000_001, "popular": 20_000_001}  # first question id
MMBENCH_CATEGORIES = ("global", "local_attribute", "counting", "spatial")
GQA_TYPES = ("background", "attribute", "count", "side", "relation", "exist", "exist_decoy")
HINT = "The image shows simple shapes on a plain background."
SaveImage = Callable[[Image.Image, Path], None]


def _jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _hex_id(scene: Scene) -> str:
    return hashlib.sha1(scene.id.encode()).hexdigest()[:16]


def write_textvqa(root: Path, scenes: Sequence[Scene], rng: random.Random, save: SaveImage) -> int:
    """Glyph reading. question_id is the image id (hex), as in LLaVA's TextVQA file; the prompt
    carries a `Reference OCR token:` line; answers live in TextVQA_0.5.1_val.json (10 per question)."""
    questions, annotations = [], []
    for n, scene in enumerate(s for s in scenes if s.glyph is not None):
        assert scene.glyph is not None
        image_id = _hex_id(scene)
        save(render(scene), root / "train_images" / f"{image_id}.jpg")
        q = "What letter or digit is written in the image?"
        text = f"{q}\nReference OCR token: {ocr_tokens(rng, scene.glyph.char)}{SHORT}"
        questions.append(
            {"question_id": image_id, "image": f"{image_id}.jpg", "text": text, "category": "glyph"}
        )
        annotations.append(
            {
                "question": q,
                "image_id": image_id,
                "question_id": n,
                "answers": [scene.glyph.char.lower()] * 10,
            }
        )
    atomic_write_text(root / "llava_textvqa_val_v051_ocr.jsonl", _jsonl(questions))
    atomic_write_json(
        root / "TextVQA_0.5.1_val.json",
        {"dataset_type": "val", "dataset_name": "textvqa", "data": annotations},
    )
    return len(questions)


def ocr_tokens(rng: random.Random, char: str) -> str:
    """An OCR-token line: the glyph and two distractors, shuffled (a noisy OCR system's output)."""
    distractors = rng.sample([c for c in GLYPHS if c != char], 2)
    return ", ".join(rng.sample([char, *distractors], 3))


def write_pope(
    root: Path, scenes: Sequence[Scene], rng: random.Random, palette: Sequence[str], save: SaveImage
) -> int:
    """Colour existence, yes/no, three splits that differ in how the "no" colour is chosen:
    random (any absent colour), popular (the most frequent colours), adversarial (the colours that
    co-occur most with the present ones). Labels are JSONL files read by position, like POPE's."""
    freq = Counter(c for s in scenes for c in s.colors)
    pairs = Counter((a, b) for s in scenes for a in s.colors for b in s.colors if a != b)
    popular = [c for c, _ in freq.most_common()]

    def adversarial(scene: Scene) -> list[str]:
        score = Counter({c: sum(pairs[(p, c)] for p in scene.colors) for c in palette})
        return [c for c, _ in score.most_common()]

    negatives: dict[str, Callable[[Scene], Sequence[str]]] = {
        "random": lambda s: rng.sample(list(palette), len(palette)),
        "popular": lambda s: popular,
        "adversarial": adversarial,
    }
    questions: list[dict[str, Any]] = []
    count = 0
    for split, first_id in POPE_SPLITS.items():
        labels: list[dict[str, Any]] = []
        for n, scene in enumerate(scenes):
            name = f"COCO_val2014_{n:012d}.jpg"
            if split == "adversarial":
                save(render(scene), root / "val2014" / name)
            # a "no" colour is nowhere in the image: a colour only the glyph or the background
            # has is synth GQA's own type (exist_decoy), never an accident here
            taken = (
                scene.colors | {scene.background} | ({scene.glyph.color} if scene.glyph else set())
            )
            ordered = [c for c in negatives[split](scene) if c not in taken]
            qas: list[QA] = []
            if scene.colors:  # one present colour, one absent colour per image and split
                qas.append(
                    QA(
                        f"Is there a {rng.choice(sorted(scene.colors))} shape in the image?",
                        "yes",
                        "existence",
                    )
                )
            if ordered:
                qas.append(QA(f"Is there a {ordered[0]} shape in the image?", "no", "existence"))
            for qa in qas:
                qid = first_id + len(labels)
                labels.append(
                    {"question_id": qid, "image": name, "text": qa.question, "label": qa.answer}
                )
                questions.append(
                    {
                        "question_id": qid,
                        "image": name,
                        "text": qa.question + SHORT,
                        "category": split,
                    }
                )
        atomic_write_text(root / "coco" / f"coco_pope_{split}.json", _jsonl(labels))
        count += len(labels)
    atomic_write_text(root / "llava_pope_test.jsonl", _jsonl(questions))
    return count


def write_mmbench(
    root: Path,
    scenes: Sequence[Scene],
    rng: random.Random,
    vocab: Vocab,
    hint_prob: float,
) -> int:
    """Multiple choice in MMBench's dev TSV layout, with circular copies: copy k of question i has
    index i + k·1e6 and its options rotated right by k; the image is base64 in the row. Options
    come from the answer's own vocabulary, the gold's first position is balanced over the letters,
    and a hint precedes a question as often as in training (`hint_prob`)."""
    header = [
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
    rows = []
    balancer = LetterBalancer(rng)
    for i, scene in enumerate(scenes):
        qas = ask_category(rng, scene, MMBENCH_CATEGORIES[i % len(MMBENCH_CATEGORIES)], vocab)
        qa = rng.choice(qas) if qas else None
        if qa is None or len(qa.choices) < 2:
            continue
        image = _b64_jpeg(render(scene))
        hint = HINT if rng.random() < hint_prob else ""
        options = list(balancer.order(qa))
        for k in range(len(options)):
            rotated = options[-k:] + options[:-k] if k else options
            letters = "ABCD"[: len(rotated)]
            answer = letters[rotated.index(qa.answer)]
            cells = [*rotated, *[""] * (4 - len(rotated))]
            rows.append(
                [
                    str(i + k * 1_000_000),
                    qa.question,
                    hint,
                    *cells,
                    answer,
                    qa.category,
                    image,
                    "synth",
                    "perception",
                    "",
                    "dev",
                ]
            )
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(root / "mmbench_dev_20230712.tsv", buf.getvalue())
    return len(rows)


GQAItem = tuple[Scene, list[tuple[QA, bool]]]  # a scene and its questions (paired or not)


def draw_gqa(
    stream: str, spec: SceneSpec, vocab: Vocab, per_type: int, max_scenes: int | None = None
) -> list[GQAItem]:
    """Scenes and their questions until every type of GQA_TYPES has `per_type` units (a minimal
    pair, or one question for an unpaired type). Scenes come from `stream` and each scene's
    questions from a stream of its own, so the set depends on nothing but its arguments. Each
    scene is asked every type it supports that still needs units."""
    max_scenes = max_scenes or 100 * per_type
    scene_rng = random.Random(stream)
    units = dict.fromkeys(GQA_TYPES, 0)
    items: list[GQAItem] = []
    for n in range(max_scenes):
        if all(v >= per_type for v in units.values()):
            return items
        scene = sample_scene(scene_rng, spec, f"gqa-{n:09d}")
        if len(scene.shapes) < spec.min_objects:
            continue
        rng = random.Random(f"{stream}/questions/{n}")
        asked: list[tuple[QA, bool]] = []
        for qtype in GQA_TYPES:
            if units[qtype] >= per_type:
                continue
            qas = ask_type(rng, scene, qtype, vocab)
            if qas:
                units[qtype] += 1
                asked += [(qa, len(qas) == 2) for qa in qas]
        if asked:
            items.append((scene, asked))
    short = {t: f"{v}/{per_type}" for t, v in units.items() if v < per_type}
    raise ValueError(
        f"synth GQA: {max_scenes} scenes gave too few questions of {short}; these scenes "
        f"({spec.min_objects}–{spec.max_objects} shapes of {', '.join(spec.kinds)}) rarely support "
        "them: allow more shapes or kinds (eval_objects, kinds) or lower gqa_pairs"
    )


def write_gqa(root: Path, items: Sequence[GQAItem], save: SaveImage) -> dict[str, Any]:
    """Short answers scored by exact match: LLaVA's question jsonl (question_id a string; category
    the question type) and, under data/ as in LLaVA's layout, the official
    testdev_balanced_questions.json (qid -> question, answer, imageId, isBalanced, types) with
    msr's `pair` (the minimal pair a question belongs to, or null) and the images."""
    questions: list[dict[str, Any]] = []
    official: dict[str, dict[str, Any]] = {}
    for i, (scene, asked) in enumerate(items):
        image_id = f"n{100000 + i}"
        save(render(scene), root / "data" / "images" / f"{image_id}.jpg")
        for qa, paired in asked:
            qid = str(20_000_000 + len(questions))
            questions.append(
                {
                    "question_id": qid,
                    "image": f"{image_id}.jpg",
                    "text": qa.question + SHORT,
                    "category": qa.type,
                }
            )
            official[qid] = {
                "question": qa.question,
                "answer": qa.answer,
                "fullAnswer": qa.answer,
                "imageId": image_id,
                "isBalanced": True,
                "types": {"structural": "query", "semantic": qa.category, "detailed": qa.type},
                "semantic": [],
                "groups": {"global": None, "local": None},
                "pair": f"{image_id}/{qa.type}" if paired else None,
            }
    atomic_write_text(root / "llava_gqa_testdev_balanced.jsonl", _jsonl(questions))
    atomic_write_json(root / "data" / "testdev_balanced_questions.json", official)
    by_type = Counter(q["category"] for q in questions)
    pairs = Counter(e["types"]["detailed"] for e in official.values() if e["pair"])
    return {
        "questions": len(questions),
        "images": len(items),
        "by_type": {t: {"questions": by_type[t], "pairs": pairs[t] // 2} for t in GQA_TYPES},
    }


def _b64_jpeg(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0)
    return base64.b64encode(buf.getvalue()).decode("ascii")
