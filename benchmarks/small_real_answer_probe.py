"""Does a trained small-real model hold the answer it does not give? Every small-real model answers
one word to every existence question ("yes" to 45 of 50 with one stage-2 seed, "no" to all 50 with
another) and "right" to every which-side question (docs/small-real.md). A model that always gives
one answer may still rank the questions right and lose them to a bias, or may not compute the
answer at all. For fresh scenes (their own seed stream: not the training's nor the evaluation's),
one two-answer question each, asked exactly as evaluation asks it (image, question, short-answer
suffix, the model's template), read at the position where the answer begins:

  - answered: the model's greedy first token is the gold answer's (what evaluation scores, up to
    the words after the first token);
  - ranked: the AUC of the margin logit(first choice) − logit(second choice) over the test scenes;
    and its accuracy with the threshold fitted on the train scenes (the model's own ranking, its
    bias refitted);
  - held: a logistic probe on the LLM's hidden state at that position, per layer (h0: the input
    embedding), fitted on the train scenes, scored on the test scenes; and the same with each
    question asked of another scene's image (what the question alone tells: the spatial set mixes
    yes/no and left/right questions, whose answers lean differently);
  - passed (existence): whether each palette colour is on a shape, from the mean and the max of
    the projector's M tokens (one logistic probe per colour; what the LLM is given).

    python benchmarks/small_real_answer_probe.py DIR [--category existence|spatial]
        [--train 400] [--test 200] [--name NAME]

DIR is a trained model (msr finetune's output). Writes reports/small-real/answer_probe.{json,md},
one row per (model, category).
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from small_real_letters import add_row
from small_real_probe import probe, scene_spec
from torch import Tensor

from msr.config import Params
from msr.data.synth.eval_sets import SHORT
from msr.data.synth.questions import QA, ask, display
from msr.data.synth.scene import Scene, render, sample_scene
from msr.eval.benchmarks.base import ImageRef, Question
from msr.eval.generate import GenerationArgs, Generator
from msr.models.mllm import MLLM
from msr.presets import preset_path
from msr.resolve import load_params

log = logging.getLogger("small_real_answer_probe")
OUT = Path("reports/small-real")
CATEGORIES = ("existence", "spatial")  # two answers each: yes/no, left/right
BATCH = 16


def questions(p: Params, category: str, n: int, split: str) -> list[tuple[Scene, QA]]:
    """`n` fresh scenes with one `category` question each (scenes that support none are
    skipped: they are not questions evaluation could ask either)."""
    rng, spec = random.Random(f"answer-probe/{split}"), scene_spec(p)
    out: list[tuple[Scene, QA]] = []
    while len(out) < n:
        scene = sample_scene(rng, spec, f"answer-probe-{split}-{len(out)}")
        qa = ask(rng, scene, category, p.data.synth.colors)
        if qa is not None:  # the two answers in a fixed order ("yes", "no"; "left", "right")
            out.append(
                (
                    scene,
                    replace(
                        qa,
                        choices=tuple(sorted(qa.choices[:2], reverse=qa.answer in ("yes", "no"))),
                    ),
                )
            )
    return out


def as_question(i: int, scene: Scene, qa: QA) -> Question:
    """As the synth eval sets ask it: the image as a quality-95 JPEG, the short-answer suffix."""
    buf = io.BytesIO()
    render(scene).save(buf, format="JPEG", quality=95, subsampling=0)
    image = ImageRef(data=buf.getvalue())
    return Question(str(i), i, qa.question + SHORT, qa.question, image, qa.category, qa.answer)


@torch.no_grad()
def read(model: MLLM, rows: list[tuple[Scene, QA]]) -> dict[str, Tensor]:
    """At the answer's position, for each question: "hidden" (n, L+1, c) every layer's state,
    "hidden_other" the same with the next question's image, "margin" (n,) logit(first choice) − logit(second), "first" (n,) whether the greedy token is
    the first choice's, "second" likewise; "pooled" (n, 2c) mean and max of the projected tokens."""
    generator = Generator(model, GenerationArgs(max_new_tokens=1))
    tok = model.tokenizer

    def first_token(answer: str) -> int:
        return int(tok(display(answer), add_special_tokens=False).input_ids[0])

    out: dict[str, list[Tensor]] = {
        k: [] for k in ("hidden", "hidden_other", "margin", "first", "second", "pooled")
    }
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        qs = [as_question(start + i, s, qa) for i, (s, qa) in enumerate(chunk)]
        ids, attention, image, features = generator.inputs(qs)
        assert features is not None
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding, as generate() counts
        o, other = (  # the question asked of its own image, and of the next question's
            model.llm(
                inputs_embeds=model.embed(ids, image, f),  # (B, T, c)
                attention_mask=attention,
                position_ids=positions,
                output_hidden_states=True,
                use_cache=False,
            )
            for f in (features, features.roll(1, 0))
        )
        logits = o.logits[:, -1].float()  # (B, V)
        a = torch.tensor([first_token(qa.choices[0]) for _, qa in chunk])
        b = torch.tensor([first_token(qa.choices[1]) for _, qa in chunk])
        rows_b = torch.arange(len(chunk))
        greedy = logits.argmax(-1)
        out["hidden"].append(torch.stack(o.hidden_states, 1)[:, :, -1].float())  # (B, L+1, c)
        out["hidden_other"].append(torch.stack(other.hidden_states, 1)[:, :, -1].float())
        out["margin"].append(logits[rows_b, a] - logits[rows_b, b])
        out["first"].append(greedy == a)
        out["second"].append(greedy == b)
        tokens = model.image_tokens(features).float()  # (B, M, c)
        out["pooled"].append(torch.cat([tokens.mean(1), tokens.amax(1)], -1))
        log.info("read %d of %d", start + len(chunk), len(rows))
    return {k: torch.cat(v) for k, v in out.items()}


def auc(score: Tensor, positive: Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half (percent)."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    return float(greater.mean()) * 100


def refit(train: Tensor, ytrain: Tensor, test: Tensor, ytest: Tensor) -> float:
    """Test accuracy (percent) of `margin > t`, with t the train scenes' most accurate cut."""
    cuts = torch.cat([train.sort().values, train.max()[None] + 1])
    accuracy = torch.stack([((train > t) == ytrain).float().mean() for t in cuts])
    t = cuts[int(accuracy.argmax())]
    return float(((test > t) == ytest).float().mean()) * 100


def colours_passed(
    p: Params, train: list[tuple[Scene, QA]], test: list[tuple[Scene, QA]], xtr: Tensor, xte: Tensor
) -> dict[str, float]:
    """Mean over the palette of a per-colour presence probe's test accuracy, and of its chance."""
    accs, chance = [], []
    for colour in p.data.synth.colors:
        ytr = [str(colour in s.colors) for s, _ in train]
        yte = [str(colour in s.colors) for s, _ in test]
        accs.append(probe(xtr, ytr, xte, yte))
        chance.append(100 * Counter(yte).most_common(1)[0][1] / len(yte))
    return {"probe": round(sum(accs) / len(accs), 1), "chance": round(sum(chance) / len(chance), 1)}


def measure(model: MLLM, p: Params, category: str, n_train: int, n_test: int) -> dict[str, Any]:
    train = questions(p, category, n_train, "train")
    test = questions(p, category, n_test, "test")
    r = {"train": read(model, train), "test": read(model, test)}
    gold = {k: torch.tensor([qa.answer == qa.choices[0] for _, qa in rows])
            for k, rows in (("train", train), ("test", test))}  # fmt: skip
    t = r["test"]
    answered = torch.where(gold["test"], t["first"], t["second"]).float().mean()
    golds = [qa.answer for _, qa in test]
    given = Counter(
        qa.choices[0] if f else qa.choices[1] if s else "other"
        for (_, qa), f, s in zip(test, t["first"].tolist(), t["second"].tolist(), strict=True)
    )
    label = {k: [str(bool(g)) for g in v.tolist()] for k, v in gold.items()}

    def held(key: str) -> dict[str, float]:
        x, xt = r["train"][key], t[key]  # (n, L+1, c)
        return {
            f"h{i}": round(probe(x[:, i], label["train"], xt[:, i], label["test"]), 1)
            for i in range(xt.shape[1])
        }

    entry: dict[str, Any] = {
        "category": category,
        "train": n_train,
        "test": n_test,
        "majority": round(100 * Counter(label["test"]).most_common(1)[0][1] / len(golds), 1),
        "gold": dict(Counter(golds)),
        "answered": round(float(answered) * 100, 1),
        "answers": dict(given),
        "auc": round(auc(t["margin"], gold["test"]), 1),
        "refit": round(refit(r["train"]["margin"], gold["train"], t["margin"], gold["test"]), 1),
        "layers": held("hidden"),
        "layers_other_image": held("hidden_other"),
    }
    if category == "existence":
        entry["passed"] = colours_passed(p, train, test, r["train"]["pooled"], t["pooled"])
    return entry


def render_md(results: dict[str, Any]) -> str:
    lines = [
        "# small-real: does the model hold the answer it does not give?",
        "",
        "Fresh scenes, one two-answer question each, asked as evaluation asks it; read at the",
        "position where the answer begins. *majority*: the commoner of the two answers (first",
        "choice: yes/left, second: no/right). *answered*: the greedy first token is the gold's.",
        "*AUC*: of the margin logit(first choice) − logit(second) on the test scenes. *refit*: that",
        "margin's accuracy with its threshold fitted on the train scenes. *held*: a logistic probe",
        "on the LLM's hidden state there, fitted on the train scenes (best layer; last layer);",
        "*another image*: the same with each question asked of another scene's image (what the",
        "question alone tells). *passed*: per-colour presence from the mean and max of the",
        "projector's tokens (mean over the palette; its chance in brackets). Accuracies in percent",
        "on the test scenes.",
        "",
        "| model | category | train / test | majority | answered (answers) | AUC | refit "
        "| held: best layer | held: last layer | another image: best layer | passed |",
        "| :--- | :--- | ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def best(layers: dict[str, float]) -> str:
        top = max(layers, key=lambda k: layers[k])
        return f"{layers[top]:.1f} ({top})"

    for r in results.values():
        layers, other = r["layers"], r["layers_other_image"]
        spread = ", ".join(f'"{a}" {n}' for a, n in r["answers"].items())
        passed = r.get("passed")
        cell = f"{passed['probe']:.1f} ({passed['chance']:.1f})" if passed else "—"
        lines.append(
            f"| {r['model']} | {r['category']} | {r['train']} / {r['test']} | {r['majority']:.1f} "
            f"| {r['answered']:.1f} ({spread}) | {r['auc']:.1f} | {r['refit']:.1f} "
            f"| {best(layers)} | {list(layers.values())[-1]:.1f} | {best(other)} | {cell} |"
        )
    lines += ["", "The probe on the hidden state, every layer (own image / another image):", ""]
    for name, r in results.items():
        own, other = r["layers"], r["layers_other_image"]
        lines.append(f"- {name}: " + ", ".join(f"{k} {own[k]:.0f}/{other[k]:.0f}" for k in own))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="a trained model's directory (msr finetune's output)")
    ap.add_argument("--category", choices=CATEGORIES, default="existence")
    ap.add_argument("--train", type=int, default=400, help="train scenes (default 400)")
    ap.add_argument("--test", type=int, default=200, help="test scenes (default 200)")
    ap.add_argument("--name", help="the model's name (default: its directory's parent)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(0)
    p = load_params(preset_path("small-real"))
    model = MLLM.from_pretrained(args.source, dtype="fp32")
    name = args.name or Path(args.source).parent.name
    start = time.perf_counter()
    entry = {"model": name, "source": args.source}
    entry |= measure(model, p, args.category, args.train, args.test)
    log.info("%s, %s: %s (%.0f s)", name, args.category, entry, time.perf_counter() - start)
    add_row(OUT / "answer_probe", f"{name} / {args.category}", entry, render_md)


if __name__ == "__main__":
    main()
