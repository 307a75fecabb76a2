"""Recipes as files (`experiments/*.yaml`): every experiment is a valid set of overrides of the
preset it names, and a sequential recipe runs named experiments in order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from msr.presets import preset_path
from msr.recipes import EXPERIMENTS, RecipeFailed, all_recipes, commands, file_recipe, run
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
        ["dvc", "exp", "run", "-n", n] for n in ("exist_base", "text_warmup", "exist_warm")
    ]
    assert all(c[-2:] == ["-S", "finetune.max_steps=2"] for c in cmds)
    only = commands("existence", only=("exist_warm",), folder=ROOT / EXPERIMENTS)
    assert len(only) == 1 and "llm.model=data/small-real/text-warmup/llm" in only[0]
    with pytest.raises(ValueError, match=r"has no experiment\(s\) \['nope'\]; it has: exist_base"):
        commands("existence", only=("nope",), folder=ROOT / EXPERIMENTS)
    assert commands("claim")[0][:4] == ["dvc", "exp", "run", "--queue"]  # built-in: queued


def test_a_file_that_is_not_a_recipe_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: x\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not a recipe"):
        file_recipe(bad)


def _dvc_exp_run(params: Path, seen: list[str]) -> Callable[[list[str]], int]:
    """A stand-in for a workspace `dvc exp run`: records the params it starts from, then leaves
    its `-S` overrides in the file as DVC does."""

    def call(cmd: list[str]) -> int:
        seen.append(params.read_text())
        raw = yaml.safe_load(params.read_text())
        for key, value in (s.split("=", 1) for s in cmd[cmd.index("-S") + 1 :: 2]):
            raw[key] = value
        params.write_text(yaml.safe_dump(raw))
        return 1 if "fail" in cmd else 0

    return call


def test_each_experiment_of_a_sequential_recipe_starts_from_the_same_params(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("a: base\n")
    cmds = [["dvc", "exp", "run", "-n", n, "-S", f"{n}=1"] for n in ("x", "y", "z")]
    seen: list[str] = []
    run(cmds, sequential=True, params=params, call=_dvc_exp_run(params, seen))
    assert seen == ["a: base\n"] * 3  # y does not inherit x=1, z neither x=1 nor y=1
    assert yaml.safe_load(params.read_text()) == {"a": "base", "z": "1"}  # the last one's, as DVC
    seen.clear()
    params.write_text("a: base\n")
    run(cmds, sequential=False, params=params, call=_dvc_exp_run(params, seen))
    assert seen[-1] == "a: base\nx: '1'\ny: '1'\n"  # queued: nothing is put back


def test_a_failed_experiment_stops_the_recipe_and_says_what_ran(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("a: base\n")
    cmds = [["dvc", "exp", "run", "-n", n, "-S", f"{n}=1"] for n in ("x", "fail", "z")]
    seen: list[str] = []
    with pytest.raises(
        RecipeFailed, match=r"-n fail .* failed; the 1 before it are done, the 1 after"
    ):
        run(cmds, sequential=True, params=params, call=_dvc_exp_run(params, seen))
    assert len(seen) == 2
