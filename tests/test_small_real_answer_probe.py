"""The answer probe asks true two-answer questions, as evaluation asks them, and its margin readings
separate a wrong ranking from a bias."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from small_real_answer_probe import as_question, auc, questions, refit

from msr.config import Params
from msr.data.synth.eval_sets import SHORT
from msr.presets import preset_path
from msr.resolve import load_params


def test_existence_questions_are_true_of_their_scene_and_the_splits_differ() -> None:
    p = load_params(preset_path("small-real"))
    train = questions(p, "existence", 40, "train")
    test = questions(p, "existence", 40, "test")
    assert questions(p, "existence", 40, "train") == train  # the same scenes every run
    assert [(s.background, s.shapes) for s, _ in train] != [
        (s.background, s.shapes) for s, _ in test
    ]
    for scene, qa in train + test:
        colour = re.match(r"Is there an? (\w+) shape in the image\?$", qa.question)
        assert colour and qa.choices == ("yes", "no")
        assert qa.answer == ("yes" if colour[1] in scene.colors else "no")
    golds = [qa.answer for _, qa in train + test]
    assert 0.3 < golds.count("yes") / len(golds) < 0.7


def test_spatial_questions_have_two_answers() -> None:
    p = load_params(preset_path("small-real"))
    for _, qa in questions(p, "spatial", 40, "test"):
        assert qa.category == "spatial" and len(qa.choices) == 2 and qa.answer in qa.choices


def test_a_question_is_asked_as_evaluation_asks_it() -> None:
    p = load_params(preset_path("small-real"))
    scene, qa = questions(p, "existence", 1, "test")[0]
    q = as_question(7, scene, qa)
    assert q.text == qa.question + SHORT and q.text.endswith(SHORT) and q.gold == qa.answer
    assert q.image is not None and q.image.open().size == (scene.image_size, scene.image_size)


def test_auc_reads_the_ranking_and_refit_removes_a_bias() -> None:
    y = torch.tensor([True, False] * 50)
    score = torch.where(y, 6.0, 4.0) + torch.linspace(0, 1, 100)  # every margin > 0: all "first"
    assert auc(score, y) == 100.0 and auc(-score, y) == 0.0
    assert auc(torch.zeros(100), y) == 50.0
    assert ((score > 0) == y).float().mean() == 0.5  # the model's own answer: one for all
    assert refit(score, y, score, y) == 100.0  # the ranking was right; the bias was not
    noise = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert refit(noise, y, noise.flip(0), y) < 75.0
    assert math.isnan(auc(score, torch.ones(100, dtype=torch.bool)))  # one class: undefined


def test_measure_reads_every_layer_on_tiny_models(tiny_workspace: Params) -> None:
    from small_real_answer_probe import measure, render_md
    from transformers import AutoConfig

    from msr.models.llm import load_causal_lm, load_template, load_tokenizer
    from msr.models.mllm import MLLM
    from msr.projectors import create_projector
    from stages.features import tower_of

    p, m = tiny_workspace, tiny_workspace.llm
    tower = tower_of(p)
    tokenizer = load_tokenizer(m.model)
    llm = load_causal_lm(m.model, dtype="fp32")
    layers = AutoConfig.from_pretrained(m.model).num_hidden_layers
    projector, _ = create_projector(
        p.projector, tower.embed_dim, llm.config.hidden_size, tower.grid
    )
    template = load_template(m.template, tokenizer, m.model, m.system)
    model = MLLM(llm, projector, tower, tokenizer=tokenizer, template=template).eval()
    r = measure(model, p, "existence", 24, 16)
    assert (
        list(r["layers"]) == list(r["layers_other_image"]) == [f"h{i}" for i in range(layers + 1)]
    )
    assert sum(r["gold"].values()) == sum(r["answers"].values()) == 16
    assert 50 <= r["majority"] <= 100 and 0 <= r["auc"] <= 100 and 0 <= r["refit"] <= 100
    assert r["answered"] <= 100 * (16 - r["answers"].get("other", 0)) / 16  # a choice, or wrong
    assert 0 <= r["passed"]["probe"] <= 100 and 50 <= r["passed"]["chance"] <= 100
    assert "| tiny | existence | 24 / 16 |" in render_md({"tiny": {"model": "tiny", **r}})
