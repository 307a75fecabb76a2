"""Variants of the small-real recipe, each trained and evaluated side by side on the same data and
seeds; writes reports/small-real/variants.{json,md} (per-category accuracy against the majority
baseline, and the stage times).

    python benchmarks/small_real_variants.py baseline resampler avgpool ...   # names from VARIANTS
    python benchmarks/small_real_variants.py --until pretrain v1_pre_lr3e-3   # stage 1 only

In one epoch stage 1 sees each caption once, so its last training loss is a held-out caption
loss: a cheap first measure of how much of the scene the projector passes to the frozen LLM
(`--until pretrain`).
A sharper one is recorded beside it: the teacher-forced accuracy of the caption's words (size,
object colour, shape kind, background) on fresh scenes, with each scene's own image and with another
one's (benchmarks/small_real_probe.py). `--words NAMES` records it for stage-1 projectors already
trained.

Each variant is a list of `--set` overrides of the small-real preset (v4: 2–4 question turns per
instruct image, eager attention while training); the earlier recipes (v1; v2, one stage-1 epoch;
v3, one or two turns per image and sdpa) and the stage-1 search that led to v2 are variants too,
their overrides restated against v4. A variant's checkpoints and answers go to
data/small-real/variants/<name>/. It shares the preset's feature cache and, if it changes nothing
before stage 2, the preset's stage-1 projector; a variant that changes only the instruct questions
(STAGE2_DATA: the images and captions stay the same) starts from the stage 1 of the first variant
without that change. Other images or features get folders named after the overrides that make
them, shared by the variants that make them the same way (each run encodes the splits its stages
need). A variant whose stage 2 starts from another variant's LLM (an `llm.model=` override into
that variant's folder) runs that one through stage 2 first. Every variant answers the preset's
evaluation sets, whatever synth it trains on. Run
`make small-real` first (or, for stage-1 variants, `msr synth` and `msr models` with the preset).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from small_real_probe import stage1_words

from msr.presets import FP32, preset_path
from msr.resolve import load_params
from msr.train.loop import TrainResult, train
from msr.utils.io import atomic_write_json, write_report
from stages import eval as eval_stage
from stages import features, synth

log = logging.getLogger("small_real_variants")
OUT = Path("reports/small-real")
EVAL_SETS = "[synth_gqa, synth_mmbench]"  # the sets with per-category questions
VARIANT_DIR = "data/small-real/variants"
# The third recipe (v3): one or two question turns per instruct image, sdpa attention while
# training (the kernel every run before v4 used).
SDPA = ["pretrain.attention=sdpa", "finetune.attention=sdpa"]
V3 = ["data.synth.turns=[1, 2]", *SDPA]
# The second recipe (v2): v3 with stage 1 for one epoch of the captions.
V2 = [*V3, "pretrain.epochs=1.0"]
# The first recipe (v1): v2 with features before DINOv2's final LayerNorm and stage 1 at lr 1e-3.
V1 = ["vision.final_norm=false", "pretrain.lr=1.0e-3", *V2]
VARIANTS: dict[str, list[str]] = {
    # the preset (v4): MS-Resampler M = 36, default options, layer −2 through the final LayerNorm,
    # stage 1 at lr 1e-2 for three epochs, 2–4 question turns per instruct image
    "baseline": [],
    # the preset with another stage-2 seed (data order): spatial cleared +15 in two of three runs
    # of the 2–4-turn recipe
    "baseline_seed1": ["finetune.seed=1"],
    "resampler": ["projector.name=resampler"],
    "avgpool": ["projector.name=avgpool"],
    # the two baselines with the preset's second stage-2 seed, on their own stage 1: the
    # comparison with two seeds a side
    "resampler_seed1": ["projector.name=resampler", "finetune.seed=1"],
    "avgpool_seed1": ["projector.name=avgpool", "finetune.seed=1"],
    "m144": ["projector.num_queries=144"],
    "projector_lr": ["finetune.projector_lr=1.0e-3"],  # LLaVA's mm_projector_lr in stage 2
    "pre_x4": ["data.synth.pretrain_images=8000"],  # 4× the stage-1 captions
    "v3": V3,
    # the v3 stage 1 with the best stage-2 data measured on v2's: 2–4 question turns per image
    # (v4's data, trained in sdpa)
    "pre_e3_turns24": SDPA,
    # measured: spatial +20, local attribute +29.5 (one seed); the same with another stage-2 seed
    "pre_e3_turns24_seed1": [*SDPA, "finetune.seed=1"],
    # v2 and its variants (one stage-1 epoch)
    "v2": V2,
    "v2_avgpool": [*V2, "projector.name=avgpool"],
    # scopes that stay local: at β = 4 the k = 2 branch puts only ~28 % of its attention inside its
    # window (README, Pictures); at β = 16 an outside patch weighs e⁻¹⁶ of an inside one
    "beta16": [*V2, "projector.options.ms_resampler.beta=16.0"],
    "ft_lr3e-4": [*V2, "finetune.lr=3.0e-4"],  # stage 2 learns faster: 196 steps are few
    # more questions per image: 2–4 turns (the tiny preset's) instead of 1–2
    "turns24": [*SDPA, "pretrain.epochs=1.0"],
    # v1 and how v2 was found: stage 1 was underfit (caption loss still falling at 3.9 after 125
    # steps); the stage-1 loss (held out: each caption is seen once) of each change
    "v1": V1,
    "v1_resampler": [*V1, "projector.name=resampler"],
    "v1_avgpool": [*V1, "projector.name=avgpool"],
    "v1_pre_lr3e-3": ["vision.final_norm=false", "pretrain.lr=3.0e-3", *V2],
    "v1_pre_lr1e-2": ["vision.final_norm=false", "pretrain.lr=1.0e-2", *V2],
    "v1_pre_lr3e-2": ["vision.final_norm=false", "pretrain.lr=3.0e-2", *V2],
    "v1_final_norm_pre_lr3e-3": ["vision.final_norm=true", "pretrain.lr=3.0e-3", *V2],
    # on a CPU without native bf16 (where bf16 is emulated, 5-30x slower): v2 in fp32, and stage 1
    # for three epochs of the captions instead of one (its loss still falls at step 125)
    "fp32": [*FP32, *V2],
    "fp32_pre_e3": [*FP32, *V3, "pretrain.epochs=3.0"],
    "fp32_pre_e3_resampler": [*FP32, *V3, "pretrain.epochs=3.0", "projector.name=resampler"],
    "fp32_pre_e3_avgpool": [*FP32, *V3, "pretrain.epochs=3.0", "projector.name=avgpool"],
    # the resampler with MS-Resampler's second stage-2 seed: the comparison with two seeds a side
    "fp32_pre_e3_resampler_seed1": [
        *FP32,
        *V3,
        "pretrain.epochs=3.0",
        "projector.name=resampler",
        "finetune.seed=1",
    ],
    # binding a colour to its shape among several: one attention head per query mixes every patch
    # it attends into one value vector; eight heads (72 channels each) can attend to each separately
    "fp32_pre_e3_heads8": [
        *FP32,
        *V3,
        "pretrain.epochs=3.0",
        "projector.options.ms_resampler.num_heads=8",
    ],
    "fp32_pre_e3_m144": [*FP32, *V3, "pretrain.epochs=3.0", "projector.num_queries=144"],
    # the model answers "B" to every MMBench question: it has not learnt to read an answer off the
    # options (1,074 of 4,686 training turns are multiple choice); half the turns as multiple choice
    "fp32_pre_e3_mc50": [*FP32, *V3, "pretrain.epochs=3.0", "data.synth.mc_prob=0.5"],
    # the best recipe again with another stage-2 seed (data order): how far one run is from the next
    "fp32_pre_e3_seed1": [*FP32, *V3, "pretrain.epochs=3.0", "finetune.seed=1"],
    # LLaVA's mm_projector_lr: the projector learns 10x faster than the LLM in stage 2
    "fp32_pre_e3_projector_lr": [*FP32, *V3, "pretrain.epochs=3.0", "finetune.projector_lr=1.0e-3"],
    # the LLM alone learns to read an answer off the options from ~1,000 text prompts that state it
    # (benchmarks/small_real_letters.py): 1,500 text-only multiple-choice records about scenes in
    # words, beside the image questions
    "fp32_pre_e3_text_mc": [*FP32, *V3, "pretrain.epochs=3.0", "data.synth.text_mc=1500"],
    # told a scene in words, the stage-2 LLM answers the background and a shape's colour but not
    # whether a colour is in it ("no" to all) nor how many shapes (benchmarks/small_real_text_qa.py):
    # 1,500 text-only short-answer records about scenes in words, beside the image questions
    "fp32_pre_e3_text_qa": [*FP32, *V3, "pretrain.epochs=3.0", "data.synth.text_qa=1500"],
    # skills taught on words do not carry to the image (text_mc, text_qa probe): checking the image
    # for a colour has to be learned from image turns; two epochs of them instead of one
    "fp32_pre_e3_ft_e2": [*FP32, *V3, "pretrain.epochs=3.0", "finetune.epochs=2.0"],
    # the same at the same cost: existence and spatial listed three times, so a record draws them
    # more often (measured: existence 1,701 turns instead of 962, spatial 818 instead of 500, the
    # others 28–41 % fewer), in the same 196 steps
    "fp32_pre_e3_readout3x": [
        *FP32,
        *V3,
        "pretrain.epochs=3.0",
        "data.synth.categories=[global, local_attribute, existence, existence, existence, counting,"
        " spatial, spatial, spatial, glyph]",
    ],
    # two stage-2 epochs (`fp32_pre_e3_ft_e2`) measured the best synth GQA (global +70, local
    # attribute +45.5; existence and spatial still at a prior): the same with another stage-2
    # seed, before it becomes the recipe
    "fp32_pre_e3_ft_e2_seed1": [
        *FP32,
        *V3,
        "pretrain.epochs=3.0",
        "finetune.epochs=2.0",
        "finetune.seed=1",
    ],
    # the LLM alone, in words first: 1,600 text-only short-answer records about scenes in words
    # (whether a colour is in the scene, how many shapes, a shape's colour, the background), one
    # epoch of 100 steps at stage 2's lr, the preset's stage-1 projector idle. After stage 2, 100
    # such steps taught the LLM to check a scene for a colour in words (benchmarks/
    # small_real_text_qa.py) but unlearned the image answers; here the skill comes first. Trained
    # through stage 2 only (`text_first` runs it).
    "text_warmup": [
        "data.synth.instruct_images=0",
        "data.synth.text_only=0",
        "data.synth.text_qa=1600",
    ],
    # the preset's stage 2, starting from text_warmup's LLM: does a readout learned in words carry
    # into the image turns? Its ablation is `baseline` (the same stage 1, data and seed)
    "text_first": [f"llm.model={VARIANT_DIR}/text_warmup/finetune/llm", "llm.gguf_file=null"],
}

# synth params that change only the instruct conversations (and the eval questions drawn after
# them): scenes come from their own named streams and the pretrain captions are drawn before any
# question, so a variant that changes only these has the same pretrain data and shares a stage 1
STAGE2_DATA = (
    "data.synth.turns=",
    "data.synth.mc_prob=",
    "data.synth.ocr_prob=",
    "data.synth.text_only=",
    "data.synth.categories=",
    "data.synth.text_mc=",
    "data.synth.text_qa=",
)
# what leaves stage 1 alone: the above, and how many instruct images there are (the captions are
# drawn before any instruct scene; only the evaluation scenes, kept apart from the training ones,
# may differ, and every variant answers the preset's)
NOT_STAGE1 = (*STAGE2_DATA, "data.synth.instruct_images=")


def _slug(overrides: list[str]) -> str:
    """A folder name: "data.synth.turns=[2, 4]" -> "turns-2-4"."""
    keys = (o.partition("=") for o in overrides)
    return "_".join(
        re.sub(r"[^\w.]+", "-", f"{k.split('.')[-1]}={v}").strip("-") for k, _, v in keys
    )


def _stage1(overrides: list[str]) -> list[str]:
    """The overrides that shape stage 1: its data, encoder, projector and schedule."""
    return [
        o
        for o in overrides
        if o.startswith(("pretrain.", "projector.", "vision.", "data."))
        and not o.startswith(NOT_STAGE1)
    ]


def stage1_owner(name: str) -> str | None:
    """The variant whose stage-1 projector `name` starts from: the first one with the same stage-1
    overrides (itself if none comes before it), or None for the preset's own stage 1."""
    mine = _stage1(VARIANTS[name])
    if not mine:
        return None
    return next(v for v, o in VARIANTS.items() if _stage1(o) == mine)


def llm_owner(name: str) -> str | None:
    """The variant whose stage-2 LLM `name` starts from (an `llm.model=` override into that
    variant's folder), or None."""
    model = next((o.partition("=")[2] for o in VARIANTS[name] if o.startswith("llm.model=")), "")
    parts = Path(model).parts
    base = Path(VARIANT_DIR).parts
    if parts[: len(base)] == base and len(parts) > len(base) and parts[len(base)] in VARIANTS:
        return parts[len(base)]
    return None


def variant_params(name: str, eval_synth: str | None = None) -> Any:
    """The params of variant `name`; `eval_synth` (default: its own synth) is the folder whose
    evaluation sets it answers."""
    overrides = VARIANTS[name]
    base = Path(f"{VARIANT_DIR}/{name}")
    owner = stage1_owner(name)
    pretrain = (
        Path(f"{VARIANT_DIR}/{owner}/pretrain") if owner else Path("data/small-real/pretrain")
    )
    sets = [
        f"paths.pretrain={pretrain}",
        f"paths.finetune={base}/finetune",
        f"paths.eval={base}/eval",
        f"paths.reports={base}/reports",
        f"eval.synth={EVAL_SETS}",
    ]
    # what changes the images or their features gets its own folders, shared by the variants that
    # change them the same way (named after those overrides)
    data = sorted(o for o in overrides if o.startswith("data.synth."))
    if data:
        synth = Path(f"{VARIANT_DIR}/synth-" + _slug(data))
        sets += [
            f"paths.synth={synth}",
            f"data.pretrain_json={synth}/pretrain.json",
            f"data.pretrain_images={synth}/pretrain_images",
            f"data.instruct_json={synth}/instruct.json",
            f"data.instruct_images={synth}",
        ]
    encoder = sorted(o for o in overrides if o.startswith(("vision.", "data.synth.")))
    if encoder:
        sets.append(f"paths.features={VARIANT_DIR}/features-{_slug(encoder)}")
    if eval_synth is not None:
        sets.append(f"paths.synth={eval_synth}")
    return load_params(preset_path("small-real"), [*sets, *overrides])


def preset_synth() -> str:
    return str(load_params(preset_path("small-real")).paths.synth)


def _trained_stage1(name: str, params: Any, before: dict[str, Any]) -> bool:
    """True when an earlier run of variant `name` (`before`: its entry), with the same overrides,
    finished its stage 1."""
    done = Path(params.paths.pretrain) / "projector.safetensors"
    return (
        done.exists()
        and before.get("overrides") == VARIANTS[name]
        and "pretrain" in before.get("loss", {})
    )


def run(name: str, until: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run variant `name` through stage `until`; `results`: every variant's entry so far."""
    if not VARIANTS[name]:  # the preset itself: the model `make small-real` trained and evaluated
        reports = Path(load_params(preset_path("small-real")).paths.reports)
        summary = json.loads((reports / "eval.json").read_text())
        sets = EVAL_SETS.strip("[]").split(", ")
        loss = {
            stage: round(json.loads((reports / stage / "metrics.json").read_text())["last_loss"], 3)
            for stage in ("pretrain", "finetune")
        }
        return {
            "overrides": [],
            "seconds": {"from": "dvc repro"},
            "loss": loss,
            "categories": {k: v for k, v in summary["categories"].items() if k in sets},
        }
    params = variant_params(name)
    # every variant answers the preset's evaluation sets: the scenes of a variant's own synth are
    # the same, its questions are not (they are drawn after the instruct conversations)
    scored = variant_params(name, eval_synth=preset_synth())
    times: dict[str, Any] = {}
    losses: dict[str, float] = {}
    skip = set()
    if params.paths.synth == preset_synth():
        skip.add("synth")  # the preset's images, made by `make small-real`
    owner = stage1_owner(name)
    if owner is None:
        skip.add("pretrain")  # the preset's stage 1 (variant_params points there)
    elif _trained_stage1(owner, params, results.get(owner, {})):
        # a finished stage 1 keeps no checkpoint to resume from: carry its projector and numbers
        log.info("%s: reusing the stage-1 projector in %s", name, params.paths.pretrain)
        skip.add("pretrain")
        times["pretrain"] = results[owner]["seconds"]["pretrain"]
        losses["pretrain"] = results[owner]["loss"]["pretrain"]
    elif owner != name:
        raise SystemExit(
            f"{name} starts from the stage-1 projector of {owner}, which has not finished: run "
            f"`python benchmarks/small_real_variants.py --until pretrain {owner}` first"
        )
    llm_from = llm_owner(name)
    if llm_from is not None and not (Path(params.llm.model) / "config.json").exists():
        raise SystemExit(
            f"{name} starts from the LLM of {llm_from}, which has not finished stage 2: run "
            f"`python benchmarks/small_real_variants.py --until finetune {llm_from}` first"
        )
    # encode only the splits the stages to run need (shards of the others stay in the cache)
    needed = {"pretrain"} if until == "pretrain" else {"instruct"}
    if "pretrain" not in skip:
        needed.add("pretrain")
    splits = [s for s in features.SPLITS if s in needed]
    stages = (
        ("synth", lambda: synth.run(params)),
        ("features", lambda: features.run(params, splits=splits)),
        ("pretrain", lambda: train(params, "pretrain", resume="auto")),
        ("finetune", lambda: train(params, "finetune", resume="auto")),
        ("eval", lambda: eval_stage.run(scored)),
    )
    result: Any = None
    for stage, call in stages:
        if stage in skip:
            continue
        start = time.perf_counter()
        result = call()
        times[stage] = round(time.perf_counter() - start, 1)
        if isinstance(result, TrainResult):
            losses[stage] = round(result.last_loss, 3)
        if stage == until:
            break
    out = {"overrides": VARIANTS[name], "seconds": times, "loss": losses, "categories": {}}
    if "pretrain" in times and owner == name:  # another owner's stage 1 has its own words row
        words = results.get(name, {}).get("stage1_words") if "pretrain" in skip else None
        out["stage1_words"] = words or stage1_words(params, Path(params.paths.pretrain))
    if until == "eval":
        out["categories"] = result["categories"]
        out["eval_synth"] = scored.paths.synth
    return out


def merge(old: dict[str, Any] | None, entry: dict[str, Any], name: str) -> dict[str, Any]:
    """A variant's row after a run. A full run replaces the row. A run that stopped before
    evaluation (`--until pretrain`, e.g. stage 1 retrained on a fresh machine to share it with
    another variant) only adds what the row lacks: a finished row's loss, times and answers come
    from one run, and a rerun's feature cache hit (0 s) or slower stage 1 would misstate them."""
    base = {"overrides": VARIANTS[name], "seconds": {}, "loss": {}, "categories": {}}
    row = {**base, **(old or {})}
    if entry.get("categories") or not row["categories"]:
        return {**row, **entry}
    for key, value in entry.items():
        if isinstance(value, dict) and key != "categories":
            row[key] = {**value, **row.get(key, {})}
        else:
            row.setdefault(key, value)
    return row


def _loss(result: dict[str, Any], stage: str) -> str:
    loss = result.get("loss", {}).get(stage)
    return "–" if loss is None else f"{loss:.3f}"


SHORT = {"synth_gqa": "GQA", "synth_mmbench": "MMB", "local_attribute": "local"}


def render(results: dict[str, dict[str, Any]]) -> str:
    # one column per (set, category), in the order they first appear; the majority baselines are
    # the same for every variant scored on the same evaluation sets, so they form one row per sets
    preset = preset_synth()
    columns: dict[tuple[str, str], None] = {}
    majority: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for r in results.values():
        for bench, cats in r["categories"].items():
            for cat, c in cats.items():
                columns.setdefault((bench, cat), None)
                majority.setdefault(r.get("eval_synth", preset), {}).setdefault((bench, cat), c)
    title = [f"{SHORT.get(b, b)} {SHORT.get(c, c)}" for b, c in columns]
    sets = sorted(majority, key=lambda s: s != preset)  # the preset's first
    marks = {
        s: "" if s == preset else "†" * n for n, s in enumerate(sets, start=int(preset not in sets))
    }
    scored = [
        f"| {name}{marks[r.get('eval_synth', preset)]} | "
        + " | ".join(
            f"{c['acc']:.0f} ({c['acc'] - c['majority']:+.0f})"
            if (c := r["categories"].get(b, {}).get(cat))
            else ""
            for b, cat in columns
        )
        + " |"
        for name, r in results.items()
        if r["categories"]
    ]
    baselines: list[str] = []
    for folder in sets:
        cells = [majority[folder].get(k) for k in columns]
        baselines += [
            f"| *majority baseline*{marks[folder]} | "
            + " | ".join(f"{c['majority']:.0f}" if c else "" for c in cells)
            + " |",
            f"| *questions*{marks[folder]} | "
            + " | ".join(str(c["n"]) if c else "" for c in cells)
            + " |",
        ]
    notes = [
        f"{mark} scored on the evaluation sets of {s}: the same scenes, other questions (they are "
        "drawn after the instruct conversations, and that synth's differ), so compare differences "
        "from the majority across marks, not accuracies."
        for s, mark in marks.items()
        if mark
    ]
    lines = [
        "# small-real: recipe variants",
        "",
        "Same data, same seeds; each variant changes only the listed params of the `small-real`",
        "preset.",
        "",
        "Loss: the last logged training loss of each stage. With `pretrain.epochs=1.0` stage 1",
        "sees each caption once, so its loss is a held-out caption loss (lower: the projector passes",
        "more of the scene); in three epochs it is the loss of captions seen twice before. Seconds",
        "compare only between variants that ran alone on the same machine; `fp32` variants ran in",
        "fp32 on a CPU without native bf16, the others in the preset's bf16 on a CPU with it.",
        "",
        "| variant | overrides | seconds per stage | stage-1 loss | stage-2 loss |",
        "| :--- | :--- | :--- | ---: | ---: |",
        *(
            f"| {n} | {', '.join(r['overrides']) or '(preset)'} | "
            + ", ".join(
                f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in r["seconds"].items()
            )
            + f" | {_loss(r, 'pretrain')} | {_loss(r, 'finetune')} |"
            for n, r in results.items()
        ),
        "",
        "Accuracy per question category (percent), and in brackets its difference from the",
        "majority-answer baseline (always giving the category's most common gold answer) in points.",
        "MMB is circular: a question counts only if every rotation of its options is answered right.",
        "",
        "| variant | " + " | ".join(title) + " |",
        "| :--- |" + " ---: |" * len(columns),
        *baselines,
        *scored,
        *(["", *notes] if notes else []),
        *render_words(results),
    ]
    return "\n".join(lines) + "\n"


def render_words(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = {n: r["stage1_words"] for n, r in results.items() if "stage1_words" in r}
    if not rows:
        return []
    first = next(iter(rows.values()))
    kinds = list(first["words"])
    return [
        "",
        "Stage-1 caption words on fresh scenes, teacher-forced (percent): with each scene's own",
        "image, and in brackets with another scene's image (the language prior). The ceiling is a",
        "reader that sees the scene perfectly; the order of the shapes in a caption is not in the",
        f"image. {first['scenes']} scenes, words per kind: "
        + ", ".join(f"{k} {first['words'][k]}" for k in kinds)
        + ".",
        "",
        "| variant | " + " | ".join(kinds) + " |",
        "| :--- |" + " ---: |" * len(kinds),
        "| *ceiling* | " + " | ".join(f"{first['ceiling'][k]:.0f}" for k in kinds) + " |",
        *(
            f"| {n} | "
            + " | ".join(f"{w['own'][k]:.0f} ({w['other'][k]:.0f})" for k in kinds)
            + " |"
            for n, w in rows.items()
        ),
        *render_by_shapes({n: w["by_shapes"] for n, w in rows.items() if "by_shapes" in w}),
    ]


def render_by_shapes(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The object words of the caption probe in scenes with one shape and with several."""
    if not rows:
        return []
    first = next(iter(rows.values()))
    kinds = ["size", "object colour", "shape kind"]
    cells = [(b, k) for b in ("one", "several") for k in kinds]
    return [
        "",
        "The same object words in scenes with one shape and with several (own image; in brackets",
        "another scene's). A word missed where there is one shape is not passed at all; one",
        "missed only among several is passed but not bound to its shape. Scenes: "
        + ", ".join(f"{b} shape{'s' if b != 'one' else ''} {first[b]['scenes']}" for b in first)
        + ".",
        "",
        "| variant | " + " | ".join(f"{k}, {b}" for b, k in cells) + " |",
        "| :--- |" + " ---: |" * len(cells),
        "| *ceiling* | " + " | ".join(f"{first[b]['ceiling'][k]:.0f}" for b, k in cells) + " |",
        *(
            f"| {n} | "
            + " | ".join(f"{r[b]['own'][k]:.0f} ({r[b]['other'][k]:.0f})" for b, k in cells)
            + " |"
            for n, r in rows.items()
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument(
        "--until",
        choices=["pretrain", "finetune", "eval"],
        default="eval",
        help="the last stage to run",
    )
    parser.add_argument(
        "--words", action="store_true", help="only the caption words of existing stage-1 projectors"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = OUT / "variants.json"
    names = list(args.names)
    for name in args.names:  # a variant that starts from another's LLM: that one's stage 2 first
        owner = llm_owner(name)
        llm = Path(variant_params(name).llm.model) / "config.json"
        if owner is not None and owner not in names and not llm.exists() and not args.words:
            log.info("%s starts from the LLM of %s: running its stage 2 first", name, owner)
            names.insert(names.index(name), owner)
    if len(names) > 1:
        # one process per variant: a process keeps the peak heap of every stage it ran (stage 2:
        # ~12 GB), and a data worker forked from it may copy that again; four stages in one
        # process ran 24 GB out of memory
        for name in names:
            until = (
                "finetune" if args.until == "eval" and name in map(llm_owner, names) else args.until
            )
            flags = ["--words"] if args.words else ["--until", until]
            subprocess.run([sys.executable, __file__, *flags, name], check=True)
        return
    (name,) = names
    if args.words:
        params = variant_params(name)
        entry = {"stage1_words": stage1_words(params, Path(params.paths.pretrain))}
    else:
        so_far = json.loads(path.read_text()) if path.exists() else {}
        entry = run(name, args.until, so_far)
    # read again just before writing: variants run side by side add their own rows
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = merge(results.get(name), entry, name)
    # the entry first: a run is not lost to a report that fails to render
    atomic_write_json(OUT / "variants.json", results)
    write_report(OUT / "variants", results, render(results))


if __name__ == "__main__":
    main()
