"""Can the LLM read an answer off the options? Every small-real model answers one letter to every
MMBench question (0 % circular; docs/small-real.md). This separates the image from the LLM: text
only, no image, each synth MMBench prompt exactly as evaluation builds it (hint, question, options,
letter suffix) with a first line that states the answer:

    Fact: the answer is gray.
    What color is the background?
    A. green
    B. gray
    ...
    Answer with the option's letter from the given choices directly.

An LLM that can match a stated answer to its option scores near 100 %; one that cannot stays at
chance (single) and 0 % circular, whatever the projector passes it.

    python benchmarks/small_real_letters.py base                # the preset's LLM as shipped
    python benchmarks/small_real_letters.py DIR                 # a trained model (msr finetune's out)
    python benchmarks/small_real_letters.py base --train 150    # after 150 steps on text prompts

`--train N`: first fine-tune the LLM alone for N steps of 16 prompts of the same kind about fresh
scenes (their own seed stream, not the evaluation's), AdamW at stage 2's lr: is the mapping
learnable from text at all, and how fast? The answer is the next token's argmax (the letters are
single tokens; evaluation's greedy decoding starts with the same token). Writes
reports/small-real/letters.{json,md}, one row per run.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from small_real_probe import scene_spec

from msr.config import Params
from msr.data.synth.eval_sets import MC, MMBENCH_CATEGORIES
from msr.data.synth.questions import LetterBalancer, ask, mc_options
from msr.data.synth.scene import sample_scene
from msr.data.templates import Template
from msr.data.tokenize import IGNORE_INDEX, encode
from msr.eval.benchmarks import make_benchmark
from msr.eval.benchmarks.base import Benchmark, Question
from msr.models.llm import load_causal_lm, load_template, load_tokenizer
from msr.models.mllm import MLLM
from msr.presets import preset_path
from msr.resolve import load_params
from msr.utils.io import atomic_write_json, write_report

log = logging.getLogger("small_real_letters")
OUT = Path("reports/small-real")
BATCH = 16


def fact(answer: str) -> str:
    return f"Fact: the answer is {answer}.\n"


def load_llm(p: Params, source: str) -> tuple[Any, Any, Template]:
    """(LLM, tokenizer, template) of the preset as shipped (`base`) or of a trained model dir."""
    if source == "base":
        m = p.llm
        tokenizer = load_tokenizer(m.model, revision=m.revision, gguf_file=m.gguf_file)
        llm = load_causal_lm(m.model, revision=m.revision, gguf_file=m.gguf_file, dtype="fp32")
        return llm, tokenizer, load_template(m.template, tokenizer, m.model, m.system)
    model = MLLM.from_pretrained(source, dtype="fp32", vision=False)
    return model.llm, model.tokenizer, model.template


@torch.no_grad()
def answer(llm: Any, tokenizer: Any, template: Template, text: str) -> str:
    """The greedy first token of the answer to a text-only question."""
    ids = tokenizer(template.prompt(text, has_image=False), add_special_tokens=False).input_ids
    logits = llm(torch.tensor([ids])).logits[0, -1]  # (vocab,)
    return str(tokenizer.decode([int(logits.argmax())])).strip()


def score(llm: Any, tokenizer: Any, template: Template, bench: Benchmark) -> dict[str, Any]:
    """Single and circular accuracy over the synth MMBench prompts, each with its fact line; the
    letters answered."""
    llm.eval()
    questions: list[Question] = bench.load()
    preds = {q.key: answer(llm, tokenizer, template, fact(bench.gold_text(q)) + q.text)
             for q in questions}  # fmt: skip
    metrics = bench.metrics(questions, preds)
    # a uniform guess per prompt: right with 1/n (n options), all n rotations right with (1/n)^n
    firsts = [q for q in questions if int(q.qid) < 1_000_000]
    n = [len(q.extra["options"]) for q in firsts]
    single = 100 * sum(1 / len(q.extra["options"]) for q in questions) / len(questions)
    circular = 100 * sum(k**-k for k in n) / len(n)
    return {
        "single": round(metrics["single_acc"], 1),
        "circular": round(metrics["circular_acc"], 1),
        "letters": dict(sorted(Counter(preds.values()).items())),
        "questions": len(firsts),
        "chance": {"single": round(single, 1), "circular": round(circular, 1)},
    }


def prompts(p: Params, rng: random.Random, n: int) -> list[tuple[str, str]]:
    """`n` (question with its fact line, gold letter) about fresh scenes, in evaluation's format."""
    spec, out, letters = scene_spec(p), [], LetterBalancer(rng)
    while len(out) < n:
        scene = sample_scene(rng, spec, f"letters-{len(out)}")
        qa = ask(rng, scene, rng.choice(MMBENCH_CATEGORIES), p.data.synth.colors)
        if qa is None or len(qa.choices) < 2:
            continue
        options, letter = mc_options(qa, letters.order(qa))
        out.append((fact(qa.answer) + qa.question + options + MC, letter))
    return out


Prompts = Callable[[Params, random.Random, int], list[tuple[str, str]]]


def train(
    p: Params,
    llm: Any,
    tokenizer: Any,
    template: Template,
    steps: int,
    make: Prompts = prompts,
    stream: str = "letters/train",
) -> float:
    """`steps` AdamW steps of BATCH text prompts from `make` (its own seed `stream`), the answer
    and end of turn supervised; the last step's loss."""
    rng = random.Random(stream)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(llm.parameters(), lr=p.finetune.lr, weight_decay=0.0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    llm.train()
    loss = torch.tensor(float("nan"))
    for step in range(1, steps + 1):
        turns = [[("human", q), ("gpt", a)] for q, a in make(p, rng, BATCH)]
        batch = [encode(f"letters-{step}-{i}", t, tokenizer, template, 0, 512, has_image=False)
                 for i, t in enumerate(turns)]  # fmt: skip
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in batch])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids))
                             for e in batch])  # fmt: skip
        loss = llm(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0:
            log.info("step %d/%d: loss %.3f", step, steps, loss.item())
    return round(loss.item(), 3)


def render(results: dict[str, Any]) -> str:
    lines = [
        "# small-real: can the LLM read an answer off the options?",
        "",
        "Text only: each synth MMBench prompt (hint, question, options, letter suffix) with a",
        'first line stating the answer ("Fact: the answer is gray."). Single: every rotation',
        "counted alone; circular: a question counts when all its rotations are right. Chance: a",
        "uniform guess among each prompt's options. `+ N text steps`: the LLM alone first",
        f"fine-tuned for N steps of {BATCH} such prompts about fresh scenes.",
        "",
        "| LLM | single | circular | letters answered |",
        "| :--- | ---: | ---: | :--- |",
        *(
            f"| *chance* | {r['chance']['single']:.1f} | {r['chance']['circular']:.1f} | |"
            for r in list(results.values())[:1]
        ),
        *(
            f"| {name} | {r['single']:.1f} | {r['circular']:.1f} | "
            + ", ".join(f"{k or '(none)'} {v}" for k, v in r["letters"].items())
            + " |"
            for name, r in results.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def probe_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of the text probes: a model, text-only steps first, a row name."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("source", help="`base` (the preset's LLM) or a trained model's directory")
    parser.add_argument("--train", type=int, default=0, help="text-only steps first (default 0)")
    parser.add_argument("--name", help="the row's name (default: from source and --train)")
    return parser


def row_name(args: argparse.Namespace) -> str:
    """`base`, or the trained model's variant (its directory's parent), + the text steps."""
    name = args.name or (args.source if args.source == "base" else Path(args.source).parent.name)
    return name + (f" + {args.train} text steps" if args.train else "")


def add_row(
    stem: Path, name: str, entry: dict[str, Any], render: Callable[[dict[str, Any]], str]
) -> None:
    """Add (or replace) row `name` of the report `stem`.{json,md}: the json first, so a run is not
    lost to a report that fails to render."""
    path = stem.with_name(f"{stem.name}.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = entry
    atomic_write_json(path, results)
    write_report(stem, results, render(results))


def main() -> None:
    args = probe_parser(__doc__).parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = load_params(preset_path("small-real"))
    bench = make_benchmark("synth_mmbench", None, p.paths.synth)
    llm, tokenizer, template = load_llm(p, args.source)
    name = row_name(args)
    entry: dict[str, Any] = {"source": args.source, "train_steps": args.train}
    if args.train:
        start = time.perf_counter()
        entry["train_loss"] = train(p, llm, tokenizer, template, args.train)
        log.info("trained in %.0f s", time.perf_counter() - start)
    entry.update(score(llm, tokenizer, template, bench))
    log.info("%s: %s", name, entry)
    add_row(OUT / "letters", name, entry, render)


if __name__ == "__main__":
    main()
