"""`msr synth`: generate the synthetic dataset — training json in LLaVA-Pretrain and LLaVA-1.5
mix665k formats, evaluation sets in TextVQA / POPE / MMBench / GQA formats — from one seed.

Layout under the output directory:
    pretrain.json, pretrain_images/<id[:5]>/<id>.jpg         (blip_laion_cc_sbu_558k.json style)
    instruct.json, shapes/<12 digits>.jpg                    (llava_v1_5_mix665k.json style)
    eval/{textvqa,pope,mmbench,gqa}/...                      (LLaVA-1.5 eval file layouts)
    summary.json                                             (counts per file and category)
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from msr.config import Synth
from msr.data.synth import eval_sets
from msr.data.synth.questions import (
    CAPTION_CATEGORIES,
    QA,
    LetterBalancer,
    Vocab,
    ask_category,
    caption,
    display,
    mc_options,
)
from msr.data.synth.scene import Scene, SceneSpec, render, sample_scene
from msr.utils.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

CAPTION_PROMPTS = (
    "Give a short caption for this image.",
    "Describe the image briefly.",
    "Write a brief description of the picture.",
    "Summarize the visual content of the image.",
    "What does this image show?",
)
TEXT_TASKS = ("add", "count_letters", "reverse", "mix")


def save_jpeg(img: Image.Image, path: Path) -> None:
    """JPEG at quality 95 without chroma subsampling (flat colours stay exact enough to name)."""
    atomic_write(path, lambda f: img.save(f, format="JPEG", quality=95, subsampling=0))


def _signature(scene: Scene) -> tuple[Any, ...]:
    shapes = tuple((s.kind, s.color, s.size, round(s.cx), round(s.cy)) for s in scene.shapes)
    glyph = (
        None
        if scene.glyph is None
        else (scene.glyph.char, round(scene.glyph.cx), round(scene.glyph.cy))
    )
    return scene.background, shapes, glyph


def _pool(stream: str, n: int, spec: SceneSpec, exclude: set[tuple[Any, ...]]) -> list[Scene]:
    """n scenes of min_objects or more shapes from a named random stream; any scene identical to
    one in `exclude` is redrawn."""
    rng = random.Random(stream)
    name = stream.rsplit("/", 1)[-1]
    out: list[Scene] = []
    while len(out) < n:
        scene = sample_scene(rng, spec, f"{name}-{len(out):09d}")
        if _signature(scene) in exclude or len(scene.shapes) < max(1, spec.min_objects):
            continue
        out.append(scene)
    return out


class _Phraser:
    """How the training mix phrases a question: short answer, or multiple choice (letter answer,
    the gold's letter balanced, a hint as often as the evaluation has one), or for glyphs with a
    `Reference OCR token:` line — the prompt shapes the evaluation sets use."""

    def __init__(self, cfg: Synth, rng: random.Random) -> None:
        self.cfg, self.rng = cfg, rng
        self.letters = LetterBalancer(random.Random(f"{cfg.seed}/letters"))

    def __call__(self, scene: Scene, qa: QA) -> tuple[str, str]:
        rng, cfg = self.rng, self.cfg
        if len(qa.choices) >= 2 and rng.random() < cfg.mc_prob:
            options, letter = mc_options(qa, self.letters.order(qa))
            hint = f"{eval_sets.HINT}\n" if rng.random() < cfg.hint_prob else ""
            return f"{hint}{qa.question}{options}{eval_sets.MC}", letter
        question = qa.question
        if qa.category == "glyph" and scene.glyph is not None and rng.random() < cfg.ocr_prob:
            question += f"\nReference OCR token: {eval_sets.ocr_tokens(rng, scene.glyph.char)}"
        return f"{question}{eval_sets.SHORT}", display(qa.answer)


def _instruct_record(
    rng: random.Random,
    scene: Scene,
    idx: int,
    cfg: Synth,
    counts: Counter[str],
    phrase: _Phraser | None = None,
) -> dict[str, Any] | None:
    """A multi-turn record about one scene; `counts` tallies the categories asked. Categories are
    drawn in turn; each adds the questions of one of its types the scene supports — both halves
    of a minimal pair, so the record shows that the answer follows the question's word."""
    phrase = phrase or _Phraser(cfg, rng)
    vocab = Vocab(tuple(cfg.colors), tuple(cfg.backgrounds))
    turns: list[dict[str, str]] = []
    seen: set[str] = set()
    wanted = rng.randint(cfg.turns[0], cfg.turns[1])
    for category in rng.sample(list(cfg.categories), len(cfg.categories)):
        if len(turns) // 2 >= wanted:
            break
        for qa in ask_category(rng, scene, category, vocab):
            if qa.question in seen:
                continue
            seen.add(qa.question)
            counts[qa.category] += 1
            prefix = "<image>\n" if not turns else ""
            question, answer = phrase(scene, qa)
            turns.append({"from": "human", "value": prefix + question})
            turns.append({"from": "gpt", "value": answer})
    if not turns:
        return None
    name = f"{idx:012d}"
    return {"id": name, "image": f"shapes/{name}.jpg", "conversations": turns}


def _text_scene_record(
    rng: random.Random, scene: Scene, idx: int, cfg: Synth, kind: str
) -> dict[str, Any] | None:
    """A text-only record about a scene in words: one question that the words answer, as a
    multiple-choice question answered with the option's letter (`kind` "mc") or as a short-answer
    question answered in a word as the image questions are ("qa"). A small LLM neither reads an
    answer off the options nor checks a scene for a colour by itself
    (the letters and text-QA probes of docs/research/small-real.md); here it can learn to without
    the image."""
    categories = [c for c in CAPTION_CATEGORIES if c in cfg.categories]
    vocab = Vocab(tuple(cfg.colors), tuple(cfg.backgrounds))
    for category in rng.sample(categories, len(categories)):
        qas = ask_category(rng, scene, category, vocab)
        qa = rng.choice(qas) if qas else None
        if qa is None or (kind == "mc" and len(qa.choices) < 2):
            continue
        if kind == "mc":  # the gold at a uniformly random letter
            options, answer = mc_options(qa, LetterBalancer(rng).order(qa))
            question = f"{qa.question}{options}{eval_sets.MC}"
        else:
            question, answer = f"{qa.question}{eval_sets.SHORT}", display(qa.answer)
        return {
            "id": f"text_{kind}_{idx:08d}",
            "model": "",
            "conversations": [
                {"from": "human", "value": f"Scene: {caption(scene)}.\n{question}"},
                {"from": "gpt", "value": answer},
            ],
        }
    return None


def _text_record(rng: random.Random, idx: int) -> dict[str, Any]:
    """A text-only sample (ShareGPT-style in mix665k: no `image` key, `model` empty)."""
    task = rng.choice(TEXT_TASKS)
    if task == "add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        q, answer = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    elif task == "count_letters":
        word = rng.choice(["circle", "square", "star", "triangle", "shape", "color"])
        q, answer = (
            f"How many letters are in the word {word}?",
            f"The word {word} has {len(word)} letters.",
        )
    elif task == "reverse":
        word = rng.choice(["red", "blue", "green", "star", "pink", "gray"])
        q, answer = f"Spell the word {word} backwards.", f"{word[::-1]}"
    else:
        pair = rng.choice(
            [
                ("red", "blue", "purple"),
                ("blue", "yellow", "green"),
                ("red", "yellow", "orange"),
                ("black", "white", "gray"),
                ("red", "white", "pink"),
            ]
        )
        q, answer = (
            f"What color do you get when you mix {pair[0]} and {pair[1]}?",
            f"Mixing them gives {pair[2]}.",
        )
    return {
        "id": f"text_{idx:08d}",
        "model": "",
        "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": answer}],
    }


def generate(out: Path, cfg: Synth, image_size: int = 336) -> dict[str, Any]:
    """Write the whole synthetic dataset under `out`; returns the summary (also summary.json)."""
    spec = SceneSpec(
        kinds=tuple(cfg.kinds),
        colors=tuple(cfg.colors),
        backgrounds=tuple(cfg.backgrounds),
        max_objects=cfg.max_objects,
        glyph_size=cfg.glyph_size,
        glyph_prob=cfg.glyph_prob,
        image_size=image_size,
        min_objects=cfg.min_objects,
    )
    lo, hi = cfg.eval_objects or (cfg.min_objects, cfg.max_objects)
    eval_spec = SceneSpec(**{**spec.__dict__, "min_objects": lo, "max_objects": hi})
    glyph_spec = SceneSpec(
        **{**eval_spec.__dict__, "glyph_size": max(cfg.glyph_size, 1), "glyph_prob": 1.0}
    )
    vocab = Vocab(tuple(cfg.colors), tuple(cfg.backgrounds))
    # the evaluation sets first, from their own streams (eval_seed): they depend on the scene
    # content and their own sizes only, and training scenes are drawn apart from them
    key = f"eval{cfg.eval_seed}"
    evals = {
        "textvqa": _pool(
            f"{key}/textvqa", cfg.eval_images, glyph_spec if cfg.glyph_size else eval_spec, set()
        ),
        "pope": _pool(f"{key}/pope", cfg.eval_images, eval_spec, set()),
        "mmbench": _pool(f"{key}/mmbench", cfg.eval_images, eval_spec, set()),
    }
    gqa = eval_sets.draw_gqa(f"{key}/gqa", eval_spec, vocab, cfg.gqa_pairs)
    eval_sigs = {
        _signature(s) for s in (*[s for v in evals.values() for s in v], *[s for s, _ in gqa])
    }
    pretrain = _pool(f"{cfg.seed}/pretrain", cfg.pretrain_images, spec, eval_sigs)
    instruct = _pool(f"{cfg.seed}/instruct", cfg.instruct_images, spec, eval_sigs)
    rng = random.Random(f"{cfg.seed}/text")

    pretrain_rows = []
    for n, scene in enumerate(pretrain):
        name = f"{n:09d}"
        save_jpeg(render(scene), out / "pretrain_images" / name[:5] / f"{name}.jpg")
        prompt = rng.choice(CAPTION_PROMPTS)
        pretrain_rows.append(
            {
                "id": name,
                "image": f"{name[:5]}/{name}.jpg",
                "conversations": [
                    {"from": "human", "value": f"{prompt}\n<image>"},
                    {"from": "gpt", "value": caption(scene)},
                ],
            }
        )
    atomic_write_json(out / "pretrain.json", pretrain_rows)

    instruct_rows: list[dict[str, Any]] = []
    categories: Counter[str] = Counter()
    phrase = _Phraser(cfg, rng)
    for n, scene in enumerate(instruct):
        record = _instruct_record(rng, scene, n, cfg, categories, phrase)
        if record is None:
            continue
        save_jpeg(render(scene), out / record["image"])
        instruct_rows.append(record)
    instruct_rows += [_text_record(rng, n) for n in range(cfg.text_only)]
    # their scenes and questions from their own streams: the other records stay as they were
    for kind, wanted in (("mc", cfg.text_mc), ("qa", cfg.text_qa)):
        text_rng, made = random.Random(f"{cfg.seed}/text-{kind}"), 0
        while made < wanted:  # the config guarantees a category the caption answers
            scene = sample_scene(text_rng, spec, f"text-{kind}-{made:09d}")
            record = _text_scene_record(text_rng, scene, made, cfg, kind) if scene.shapes else None
            if record is not None:
                instruct_rows.append(record)
                made += 1
    rng.shuffle(instruct_rows)
    atomic_write_json(out / "instruct.json", instruct_rows)

    ev = out / "eval"

    def own(name: str) -> random.Random:
        return random.Random(f"{key}/{name}/questions")

    written = {
        "textvqa": eval_sets.write_textvqa(
            ev / "textvqa", evals["textvqa"], own("textvqa"), save_jpeg
        ),
        "pope": eval_sets.write_pope(
            ev / "pope", evals["pope"], own("pope"), cfg.colors, save_jpeg
        ),
        "mmbench": eval_sets.write_mmbench(
            ev / "mmbench", evals["mmbench"], own("mmbench"), vocab, cfg.hint_prob
        ),
    }
    gqa_summary = eval_sets.write_gqa(ev / "gqa", gqa, save_jpeg)
    written["gqa"] = gqa_summary["questions"]
    summary = {
        "pretrain": {"images": len(pretrain_rows), "records": len(pretrain_rows)},
        "instruct": {
            "images": sum("image" in r for r in instruct_rows),
            "records": len(instruct_rows),
            "text_only": cfg.text_only,
            **({"text_mc": cfg.text_mc} if cfg.text_mc else {}),
            **({"text_qa": cfg.text_qa} if cfg.text_qa else {}),
            "questions_by_category": dict(sorted(categories.items())),
        },
        "eval_questions": written,
        "gqa": gqa_summary,
    }
    atomic_write_json(out / "summary.json", summary)
    log.info("synth: %s", summary)
    return summary
