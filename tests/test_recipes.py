"""Recipes as files (`experiments/*.yaml`): every experiment is a valid set of overrides of the
preset it names, and a sequential recipe runs named experiments in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from msr.presets import preset_path
from msr.recipes import EXPERIMENTS, all_recipes, commands, file_recipe
from msr.resolve import resolve_params

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / EXPERIMENTS).glob("*.yaml"))


def test_the_experiment_files_are_recipes() -> None:
    assert {p.stem for p in FILES} >= {"small-real-v4", "existence"}
    assert set(all_recipes(ROOT / EXPERIMENTS)) >= {"table1", "claim", "small-real-v4", "existence"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_experiment_is_a_valid_override_of_the_small_real_preset(path: Path) -> None:
    r = file_recipe(path)
    assert r.names and len(r.names) == len(r.calls) == r.size
    for name, overrides in zip(r.names, r.calls, strict=True):
        raw = yaml.safe_load(preset_path("small-real").read_text())
        resolve_params(raw, overrides, source=f"{path.name}: {name}")  # a bad key fails here


def test_a_sequential_recipe_runs_named_experiments_in_order() -> None:
    cmds = commands("existence", ("finetune.max_steps=2",), folder=ROOT / EXPERIMENTS)
    assert [c[:5] for c in cmds] == [
        ["dvc", "exp", "run", "-n", n] for n in ("text_warmup", "exist_warm", "exist_base")
    ]
    assert all(c[-2:] == ["-S", "finetune.max_steps=2"] for c in cmds)
    only = commands("existence", only=("exist_warm",), folder=ROOT / EXPERIMENTS)
    assert len(only) == 1 and "llm.model=data/small-real/text-warmup/llm" in only[0]
    with pytest.raises(ValueError, match=r"has no experiment\(s\) \['nope'\]; it has: text_warmup"):
        commands("existence", only=("nope",), folder=ROOT / EXPERIMENTS)
    assert commands("claim")[0][:4] == ["dvc", "exp", "run", "--queue"]  # built-in: queued


def test_a_file_that_is_not_a_recipe_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: x\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not a recipe"):
        file_recipe(bad)
