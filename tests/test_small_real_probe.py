"""The stage-1 caption-word probe's bookkeeping: where each word is, and what a perfect reader scores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from msr.config import Params
from msr.data.synth.questions import caption
from msr.data.synth.scene import Scene, Shape

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from small_real_probe import caption_words, ceiling

SCENE = Scene(
    "s",
    "gray",
    (
        Shape("circle", "red", "small", 50, 50, 20),
        Shape("square", "red", "small", 200, 200, 20),
        Shape("triangle", "blue", "large", 100, 250, 60),
    ),
)


def test_caption_words_are_found_in_order() -> None:
    text = "<image>" + caption(SCENE) + "\n"
    spans = caption_words(SCENE, text, text.index(caption(SCENE)))
    words = [(kind, text[a:b]) for kind, a, b in spans]
    assert words == [
        ("size", "small"), ("object colour", "red"), ("shape kind", "circle"),
        ("size", "small"), ("object colour", "red"), ("shape kind", "square"),
        ("size", "large"), ("object colour", "blue"), ("shape kind", "triangle"),
        ("background", "gray"),
    ]  # fmt: skip


def test_ceiling_counts_what_the_order_of_shapes_leaves_open() -> None:
    c = ceiling(SCENE)
    # first shape: 3 candidates, sizes {small: 2, large: 1} -> 2/3; then two small red ones: colour
    # sure, kind 1/2. Second: 2 left {small, large} -> 1/2, then sure. Third: sure.
    assert c["size"] == pytest.approx(2 / 3 + 1 / 2 + 1)
    assert c["object colour"] == pytest.approx(3.0)
    assert c["shape kind"] == pytest.approx(1 / 2 + 1 + 1)
    assert c["background"] == 1.0


def test_stage1_words_adds_up_on_tiny_models(tiny_workspace: Params, tmp_path: Path) -> None:
    from small_real_probe import stage1_words
    from transformers import AutoConfig

    from msr.projectors import create_projector
    from msr.projectors.files import save_projector
    from stages.features import tower_of

    p = tiny_workspace
    tower = tower_of(p)
    llm_dim = AutoConfig.from_pretrained(p.llm.model).hidden_size
    projector, options = create_projector(p.projector, tower.embed_dim, llm_dim, tower.grid)
    save_projector(tmp_path / "stage1", projector, options)
    r = stage1_words(p, tmp_path / "stage1", n=24, batch=8)
    kinds = {"size", "object colour", "shape kind", "background"}
    assert set(r["words"]) == kinds and r["words"]["background"] == 24
    one, several = r["by_shapes"]["one"], r["by_shapes"]["several"]
    assert one["scenes"] + several["scenes"] == 24 and one["scenes"] and several["scenes"]
    for kind in kinds:  # the two groups split the words and the hits of the whole
        assert one["words"][kind] + several["words"][kind] == r["words"][kind]
        for key in ("own", "other"):
            hits = sum(g[key][kind] * g["words"][kind] for g in (one, several))
            assert hits / r["words"][kind] == pytest.approx(r[key][kind], abs=0.1)
        assert 0 <= r["own"][kind] <= 100
    assert one["ceiling"]["object colour"] == 100.0  # one shape: its colour is never ambiguous
