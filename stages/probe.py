"""Stage `probe`: probe scenes → their cached features → each projector of the grid at each budget
and seed, trained with a small readout → held-out accuracy per question type (reports/probe.*).

Under `paths.probe`: scenes/{train,test}.json and their images (LLaVA-Pretrain records, so the
feature cache is the same code and format as `msr features`), scenes/{train,test}.scenes.json
(the scene records the questions come from), features/ (shards + manifest; a rerun with another
grid reuses them)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import webdataset as wds

from msr.config import Params
from msr.data.features import Source, encode_features
from msr.data.shards import read_manifest
from msr.data.synth.generate import save_jpeg
from msr.data.synth.questions import caption
from msr.data.synth.scene import Scene, SceneSpec, render, sample_scene
from msr.models.vision import vision_for
from msr.probe.grids import grid_specs
from msr.probe.questions import Vocabulary, ask_all
from msr.probe.run import ProbeSet, Settings, train_and_score
from msr.projectors import output_tokens
from msr.report.probe import plot, render_markdown, summarize
from msr.utils.io import atomic_write_json, write_report

log = logging.getLogger(__name__)
SPLITS = ("train", "test")


def scenes_of(params: Params) -> dict[str, list[Scene]]:
    """The probe's training and held-out scenes (their own random streams)."""
    p, s = params.probe, params.data.synth
    spec = SceneSpec(
        kinds=tuple(s.kinds),
        colors=tuple(s.colors),
        backgrounds=tuple(s.backgrounds),
        max_objects=p.objects[1],
        glyph_size=0,
        glyph_prob=0.0,
        image_size=params.vision.image_size,
        min_objects=p.objects[0],
    )
    out: dict[str, list[Scene]] = {}
    for split, n in (("train", p.scenes), ("test", p.eval_scenes)):
        rng, scenes = random.Random(f"probe{p.seed}/{split}"), list[Scene]()
        while len(scenes) < n:
            scene = sample_scene(rng, spec, f"{split}-{len(scenes):09d}")
            if len(scene.shapes) >= p.objects[0]:
                scenes.append(scene)
        out[split] = scenes
    return out


def write_scenes(root: Path, scenes: dict[str, list[Scene]]) -> list[Source]:
    """Images and LLaVA-Pretrain records of each split (images only written when missing)."""
    sources = []
    for split, items in scenes.items():
        rows = []
        for scene in items:
            rel = f"{split}/{scene.id}.jpg"
            if not (root / rel).exists():
                save_jpeg(render(scene), root / rel)
            rows.append({"id": scene.id, "image": rel, "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": caption(scene)}]})  # fmt: skip
        atomic_write_json(root / f"{split}.json", rows)
        sources.append(Source(split, root / f"{split}.json", root))
    return sources


def load_features(out: Path) -> dict[str, torch.Tensor]:
    """Record id → (N, d) fp16 features, from the shards of a manifest."""
    table, _ = read_manifest(out)
    shards = sorted({str(out / s) for s in table["shard"].to_pylist()})
    feats: dict[str, torch.Tensor] = {}
    for sample in wds.DataPipeline(
        wds.SimpleShardList(shards), wds.tarfile_to_samples(), wds.decode()
    ):
        meta, x = sample["json"], sample.get("npy")
        if x is not None:
            for rec in meta["records"]:
                feats[rec["id"]] = torch.from_numpy(x).to(torch.float16)
    return feats


def probe_set(scenes: list[Scene], feats: dict[str, torch.Tensor], vocab: Vocabulary) -> ProbeSet:
    missing = [s.id for s in scenes if s.id not in feats]
    if missing:
        raise ValueError(
            f"{len(missing)} probe scenes have no features (first: {missing[:3]}); "
            "see skips.json under the probe's features folder"
        )
    qid = {q: i for i, q in enumerate(vocab.questions)}
    aid = {a: i for i, a in enumerate(vocab.answers)}
    questions = [
        torch.tensor([[qid[(t, w)], aid[a]] for t, w, a in ask_all(s, vocab)], dtype=torch.long)
        for s in scenes
    ]
    return ProbeSet(torch.stack([feats[s.id] for s in scenes]), questions)


def run(params: Params, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    p = params.probe
    root = Path(params.paths.probe)
    scenes = scenes_of(params)
    sources = write_scenes(root / "scenes", scenes)
    tower = vision_for(params.vision)
    encode_features(sources, root / "features", tower, shard_mb=params.data.shard_mb,
                    batch_size=params.data.encode_batch, strict=True)  # fmt: skip
    del tower
    feats = load_features(root / "features")
    s = params.data.synth
    vocab = Vocabulary(tuple(s.kinds), tuple(s.colors))
    train, test = (probe_set(scenes[k], feats, vocab) for k in SPLITS)
    del feats
    settings = Settings(p.steps, p.batch, p.questions_per_image, p.lr, p.width, p.dtype, p.ablation)
    active = params.projector.options.get(params.projector.name, {})
    runs: list[dict[str, Any]] = []
    for spec in grid_specs(p.grid, params.projector.name, active):
        n = train.features.shape[1]  # the budgets a design can take: all N, or each of probe's
        for budget in dict.fromkeys(output_tokens(spec.projector, m, n) for m in p.budgets):
            for seed in p.seeds:
                row: dict[str, Any] = {"label": spec.label, "projector": spec.projector,
                                       "budget": budget, "seed": seed}  # fmt: skip
                try:
                    row |= train_and_score(spec, budget, seed, train, test, vocab, settings)
                except ValueError as err:  # e.g. a budget that does not tile the grid
                    row["error"] = str(err)
                log.info("probe %s M=%s seed %s: %s", spec.label, budget, seed,
                         {t: v["right"] / max(1, v["n"]) for t, v in row.get("types", {}).items()})  # fmt: skip
                if progress is not None:
                    progress(f"{spec.label} M={budget} seed {seed}")
                runs.append(row)
    summary = summarize(runs, params)
    reports = Path(params.paths.reports)
    write_report(reports / "probe", summary, render_markdown(summary))
    plot(summary, reports / "plots" / "probe.png")
    return summary
