"""Can the LLM answer the short questions when it is told the scene in words? Every small-real
model answers one word to every existence question ("yes" to 45 of 50 with one seed, "no" to all
50 with another; docs/small-real.md). This separates the image from the LLM: text only, no image,
fresh scenes, each question of a category a caption answers exactly as evaluation asks it, after a
line that describes the whole scene as the stage-1 captions do:

    Scene: a small red circle and a large blue square on a gray background.
    Is there a green shape in the image?
    Answer the question using a single word or phrase.

and, to show the prior, the same question without the scene line. An LLM that reads the scene
answers near 100 %; one that falls back on a prior stays at the majority answer's share either way.

    python benchmarks/small_real_text_qa.py base              # the preset's LLM as shipped
    python benchmarks/small_real_text_qa.py DIR               # a trained model (msr finetune's out)
    python benchmarks/small_real_text_qa.py DIR --train 100   # after 100 steps of such text

`--train N` (a trained model only): does what the LLM learns from words carry to the image? First
the model's synth GQA (with images, as evaluation asks it), then N steps of 16 such text questions
with their short answers about fresh scenes (their own seed stream; the LLM alone, stage 2's lr),
then the text probe and synth GQA again.

Greedy decoding, scored as synth GQA is (`gqa_match`). Writes reports/small-real/text_qa.{json,md},
one row per model.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from small_real_letters import add_row, load_llm, probe_parser, row_name, train
from small_real_probe import scene_spec

from msr.config import Params
from msr.data.synth.eval_sets import SHORT
from msr.data.synth.questions import ask, caption, display
from msr.data.synth.scene import sample_scene
from msr.data.templates import Template
from msr.eval.benchmarks import make_benchmark
from msr.eval.generate import GenerationArgs, Generator, stop_ids
from msr.eval.scoring import gqa_match
from msr.models.mllm import MLLM
from msr.presets import preset_path
from msr.resolve import load_params

log = logging.getLogger("small_real_text_qa")
OUT = Path("reports/small-real")
CATEGORIES = ("global", "local_attribute", "existence", "counting")  # what a caption answers
PER_CATEGORY = 100
BATCH = 16
MAX_NEW_TOKENS = 6


def questions(p: Params, n: int) -> dict[str, list[tuple[str, str, str]]]:
    """Per category, `n` (scene in words, question with its suffix, gold answer) about fresh scenes
    (their own seed stream: not the training's nor the evaluation's)."""
    rng, spec = random.Random("text-qa"), scene_spec(p)
    out: dict[str, list[tuple[str, str, str]]] = {c: [] for c in CATEGORIES}
    i = 0
    while any(len(v) < n for v in out.values()):
        scene = sample_scene(rng, spec, f"text-qa-{i}")
        i += 1
        for category in CATEGORIES:
            qa = ask(rng, scene, category, p.data.synth.colors) if scene.shapes else None
            if qa is not None and len(out[category]) < n:
                out[category].append(
                    (f"Scene: {caption(scene)}.\n", qa.question + SHORT, qa.answer)
                )
    return out


def prompts(p: Params, rng: random.Random, n: int) -> list[tuple[str, str]]:
    """`n` training (scene in words + question, answer as the training conversations say it)."""
    spec, out = scene_spec(p), []
    while len(out) < n:
        scene = sample_scene(rng, spec, f"text-qa-train-{len(out)}")
        qa = ask(rng, scene, rng.choice(CATEGORIES), p.data.synth.colors) if scene.shapes else None
        if qa is not None:
            out.append((f"Scene: {caption(scene)}.\n{qa.question}{SHORT}", display(qa.answer)))
    return out


def image_gqa(model: MLLM, p: Params) -> dict[str, Any]:
    """Synth GQA with its images, as evaluation asks and scores it: accuracy, majority and the
    answers given, per category."""
    bench = make_benchmark("synth_gqa", None, p.paths.synth)
    qs = bench.questions(limit=None)
    generator = Generator(model, GenerationArgs(max_new_tokens=p.eval.max_new_tokens))
    preds = dict(zip((q.key for q in qs), generator.answer(qs, p.eval.batch_size), strict=True))
    out = bench.per_category(qs, preds)
    for category, row in out.items():
        given = (preds[q.key].rstrip(".").lower() for q in qs if q.category == category)
        row["answers"] = dict(Counter(given).most_common(3))
    return {c: {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}
            for c, r in out.items()}  # fmt: skip


@torch.no_grad()
def generate(llm: Any, tokenizer: Any, template: Template, texts: list[str]) -> list[str]:
    """Greedy answers to text-only user turns, in batches, left-padded."""
    stops = stop_ids(tokenizer, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    answers: list[str] = []
    for start in range(0, len(texts), BATCH):
        rows = [
            tokenizer(template.prompt(t, has_image=False), add_special_tokens=False).input_ids
            for t in texts[start : start + BATCH]
        ]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # (B, T)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        new = llm.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad,
        )[:, width:]  # (B, new)
        for row in new.tolist():
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            answers.append(str(tokenizer.decode(row[:cut], skip_special_tokens=True)).strip())
    return answers


def score(
    llm: Any, tokenizer: Any, template: Template, qs: dict[str, list[tuple[str, str, str]]]
) -> dict[str, Any]:
    """Per category: accuracy with the scene in words and without it, the majority answer's share,
    and the answers given (the five most common)."""
    llm.eval()
    out: dict[str, Any] = {}
    for category, rows in qs.items():
        golds = [g for _, _, g in rows]
        with_scene = generate(llm, tokenizer, template, [s + q for s, q, _ in rows])
        alone = generate(llm, tokenizer, template, [q for _, q, _ in rows])
        acc = [
            100 * sum(map(gqa_match, preds, golds)) / len(golds) for preds in (with_scene, alone)
        ]
        majority = Counter(golds).most_common(1)[0][1]
        spread = Counter(a.rstrip(".").lower() for a in with_scene).most_common(5)
        out[category] = {
            "questions": len(rows),
            "scene": round(acc[0], 1),
            "alone": round(acc[1], 1),
            "majority": round(100 * majority / len(golds), 1),
            "answers": dict(spread),
        }
    return out


def render(results: dict[str, Any]) -> str:
    rows = {name: r["text"] for name, r in results.items()}
    lines = [
        "# small-real: can the LLM answer from the scene in words?",
        "",
        "Text only, fresh scenes: each question as evaluation asks it, after a line that describes",
        'the whole scene ("Scene: a small red circle ... on a gray background."), and the same',
        "question alone (the prior). Greedy decoding, scored as synth GQA. Per cell: accuracy with",
        f"the scene / without it; {PER_CATEGORY} questions per category; majority: the most common",
        "gold answer's share. The LLM as shipped does not answer in a word (below): 0 by exact match.",
        "",
        "| LLM | " + " | ".join(CATEGORIES) + " |",
        "| :--- |" + " ---: |" * len(CATEGORIES),
        *(
            "| *majority* | " + " | ".join(f"{r[c]['majority']:.0f}" for c in CATEGORIES) + " |"
            for r in list(rows.values())[:1]
        ),
        *(
            f"| {name} | "
            + " | ".join(f"{r[c]['scene']:.0f} / {r[c]['alone']:.0f}" for c in CATEGORIES)
            + " |"
            for name, r in rows.items()
        ),
        "",
        "Answers given with the scene (the five most common per category):",
        "",
        *(
            f"- {name}: "
            + "; ".join(
                f"{c}: " + ", ".join(f'"{a}" {n}' for a, n in r[c]["answers"].items())
                for c in CATEGORIES
            )
            for name, r in rows.items()
        ),
    ]
    trained = {name: r for name, r in results.items() if r.get("train_steps")}
    if trained:
        first = next(iter(trained.values()))["image_before"]
        cats = sorted(first)
        lines += [
            "",
            "## Does it carry to the image?",
            "",
            "Synth GQA with its images (as evaluation asks and scores it), accuracy before → after the",
            "text steps; the last row: the majority baseline.",
            "",
            "| model | " + " | ".join(cats) + " | loss at the last text step |",
            "| :--- |" + " ---: |" * (len(cats) + 1),
        ]
        for name, r in trained.items():
            b, a = r["image_before"], r["image_after"]
            cells = [f"{b[c]['acc']:.1f} → {a[c]['acc']:.1f}" for c in cats]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['train_loss']} |")
        lines.append(
            "| *majority* | " + " | ".join(f"{first[c]['majority']:.1f}" for c in cats) + " | |"
        )
        lines += ["", "Answers given with the image, after (the three most common):", ""]
        lines += [
            f"- {name}: "
            + "; ".join(
                f"{c}: "
                + ", ".join(f'"{k}" {n}' for k, n in r["image_after"][c]["answers"].items())
                for c in cats
            )
            for name, r in trained.items()
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = probe_parser(__doc__)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(0)
    p = load_params(preset_path("small-real"))
    name = row_name(args)
    entry: dict[str, Any] = {"source": args.source, "train_steps": args.train}
    if args.train:
        if args.source == "base":
            parser.error("--train needs a trained model's directory: the image is asked after")
        model = MLLM.from_pretrained(args.source, dtype="fp32")
        llm, tokenizer, template = model.llm, model.tokenizer, model.template
        entry["image_before"] = image_gqa(model, p)
        log.info("synth GQA before: %s", entry["image_before"])
        start = time.perf_counter()
        entry["train_loss"] = train(
            p, llm, tokenizer, template, args.train, prompts, "text-qa/train"
        )
        log.info("trained in %.0f s", time.perf_counter() - start)
        model.eval()
        entry["image_after"] = image_gqa(model, p)
        log.info("synth GQA after: %s", entry["image_after"])
    else:
        llm, tokenizer, template = load_llm(p, args.source)
    entry["text"] = score(llm, tokenizer, template, questions(p, PER_CATEGORY))
    log.info("%s: %s", name, entry)
    add_row(OUT / "text_qa", name, entry, render)


if __name__ == "__main__":
    main()
