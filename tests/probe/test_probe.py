"""`msr probe`: it learns what the tokens carry, it fails when they carry nothing, and the stage
writes its report from cached features."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from msr.config import Params
from msr.data.synth.scene import Scene, SceneSpec, render, sample_scene
from msr.probe.grids import GRIDS, ProbeSpec, grid_specs
from msr.probe.questions import TYPES, Vocabulary, ask_all
from msr.probe.run import ProbeSet, Settings, train_and_score
from msr.projectors import PROJECTORS

KINDS = ("circle", "square", "triangle", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "white")
VOCAB = Vocabulary(KINDS, COLORS)
SPEC = SceneSpec(KINDS, COLORS, ("gray", "black"), 6, 0, 0.0, 112, min_objects=2)


def _patch_features(scene: Scene) -> torch.Tensor:
    """A stand-in encoder: each 14-px patch of a 112-px render as its mean colour and its
    position — an 8×8 grid of 5-wide features, enough to carry every property asked."""
    img = np.asarray(render(scene), dtype=np.float32) / 255  # (112, 112, 3)
    patches = img.reshape(8, 14, 8, 14, 3).mean(axis=(1, 3))  # (8, 8, 3)
    ys, xs = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8), indexing="ij")
    feats = np.concatenate([patches, ys[..., None], xs[..., None]], axis=-1)
    return torch.from_numpy(feats.reshape(64, 5)).to(torch.float16)


def _set(n: int, seed: int) -> ProbeSet:
    rng, scenes = random.Random(seed), []
    while len(scenes) < n:
        s = sample_scene(rng, SPEC, f"s{len(scenes)}")
        if len(s.shapes) >= 2:
            scenes.append(s)
    qid = {q: i for i, q in enumerate(VOCAB.questions)}
    aid = {a: i for i, a in enumerate(VOCAB.answers)}
    questions = [
        torch.tensor([[qid[(t, w)], aid[a]] for t, w, a in ask_all(s, VOCAB)]) for s in scenes
    ]
    return ProbeSet(torch.stack([_patch_features(s) for s in scenes]), questions)


@pytest.fixture(scope="module")
def data() -> tuple[ProbeSet, ProbeSet]:
    return _set(300, 0), _set(150, 1)


def _run(data, ablation: str) -> dict:
    torch.set_num_threads(1)
    settings = Settings(steps=600, batch=32, questions_per_image=8, lr=1e-2, width=64,
                        dtype="fp32", ablation=ablation)  # fmt: skip
    spec = ProbeSpec("resampler", "resampler")
    return train_and_score(spec, 16, 0, *data, VOCAB, settings)["types"]


def test_every_question_is_answerable_from_its_scene() -> None:
    rng = random.Random(0)
    for i in range(100):
        scene = sample_scene(rng, SPEC, f"s{i}")
        for qtype, word, answer in ask_all(scene, VOCAB):
            assert answer in VOCAB.allowed(qtype)
            if qtype == "count":
                assert answer == str(sum(s.kind == word for s in scene.shapes))
            if qtype == "exist":
                assert answer == ("yes" if word in scene.colors else "no")


def test_the_probe_reads_the_tokens(data) -> None:
    types = _run(data, "none")
    v = types["exist"]  # well above what the question alone gives (~80 % against ~54 %)
    assert v["right"] / v["n"] > v["majority"] / v["n"] + 0.15, v


@pytest.mark.parametrize("ablation", ["noise", "no_tokens"])
def test_the_probe_fails_without_the_image(data, ablation: str) -> None:
    """Tokens replaced by noise, or no tokens: every type at the question-only baseline."""
    for t, v in _run(data, ablation).items():
        assert v["right"] <= v["majority"] + 0.03 * v["n"] + 2, (t, v)


def test_grids_name_registered_projectors() -> None:
    for specs in GRIDS.values():
        assert all(s.projector in PROJECTORS for s in specs)
    assert grid_specs("active", "avgpool", {}) == (ProbeSpec("avgpool", "avgpool"),)
    with pytest.raises(ValueError, match="unknown probe grid 'nope'; known: active, claim"):
        grid_specs("nope", "avgpool", {})


def test_the_probe_stage_writes_its_report(tiny_workspace: Params, tmp_path: Path) -> None:
    from msr.config import parse_params
    from stages import probe as stage

    raw = tiny_workspace.model_dump(mode="json")
    raw["paths"]["probe"] = str(tmp_path / "probe")
    raw["paths"]["reports"] = str(tmp_path / "reports")
    raw["probe"] |= {"scenes": 12, "eval_scenes": 6, "steps": 3, "batch": 4, "width": 16,
                     "budgets": [36, 7], "grid": "baselines"}  # fmt: skip
    params = parse_params(raw)
    summary = stage.run(params)
    reports = tmp_path / "reports"
    assert json.loads((reports / "probe.json").read_text())["rows"] == summary["rows"]
    assert (reports / "plots" / "probe.png").stat().st_size > 0
    md = (reports / "probe.md").read_text()
    rows = {(r["label"], r["M"]): r for r in summary["rows"]}
    assert set(rows) == {(label, m) for label in ("ms_resampler {2,6,14}", "resampler", "avgpool")
                         for m in (36, 7)}  # fmt: skip
    assert "error" in rows[("avgpool", 7)] and "`avgpool` at M = 7" in md  # 7 does not tile
    assert set(rows[("resampler", 7)]["types"]) == set(TYPES)  # the resampler takes any M
    assert len(rows[("ms_resampler {2,6,14}", 36)]["scope_share"]) == 3
    shards = sorted((tmp_path / "probe" / "features").glob("*.tar"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    raw["probe"]["grid"] = "active"
    stage.run(parse_params(raw))  # another grid: the cached features are reused, not re-encoded
    assert [p.stat().st_mtime_ns for p in shards] == stamps
