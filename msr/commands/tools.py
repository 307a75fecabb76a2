"""The tool groups: `msr preset`, `msr projectors`, `msr recipe`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from msr.commands.common import PARAMS, ParamsOpt, SetOpt, console, fail, load, reported, table

preset_app = typer.Typer(help="List, show and activate presets.", no_args_is_help=True)
projectors_app = typer.Typer(help="The projector zoo: list and benchmark.", no_args_is_help=True)
recipe_app = typer.Typer(help="The paper's comparisons as queued DVC sweeps.", no_args_is_help=True)


@preset_app.command("list")
def preset_list() -> None:
    """The shipped presets. Example: `msr preset list`"""
    from msr.presets import describe_presets

    table(("preset", "description"), describe_presets())


@preset_app.command("show")
def preset_show(name: str) -> None:
    """A preset's complete params YAML. Example: `msr preset show llava15-7b`"""
    from msr.presets import preset_text

    with reported():
        sys.stdout.write(preset_text(name))


@preset_app.command("use")
def preset_use(
    name: str,
    out: Annotated[Path, typer.Option(help="Where to write it.")] = PARAMS,
    set_: SetOpt = None,
    fp32: Annotated[bool, typer.Option(help="fp32 everywhere: CPUs without native bf16.")] = False,
) -> None:
    """Make a preset the active params, checked as a run would load them. Example: `msr preset
    use small-real --fp32`"""
    from msr.presets import FP32, preset_text
    from msr.utils.io import atomic_write_text

    overrides = [*(FP32 if fp32 else ()), *(set_ or [])]
    with reported():
        atomic_write_text(out, preset_text(name, overrides))
    with_ = f" with {', '.join(overrides)}" if overrides else ""
    console.print(f"{out} now holds preset [bold]{name}[/bold]{with_}")


@projectors_app.command("list")
def projectors_list() -> None:
    """Every projector with its options and defaults. Example: `msr projectors list`"""
    from msr.projectors import describe_projectors

    table(("name", "what it is", "options (default)"), describe_projectors())


@projectors_app.command("bench")
def projectors_bench(
    params: ParamsOpt = PARAMS,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Directory (default: paths.reports).")] = None,
) -> None:
    """Time every projector side by side (fwd, fwd+bwd; fp32, bf16). Example: `msr projectors
    bench --set bench.repeats=3`"""
    from stages import projectors_bench

    for key, value in projectors_bench.run(load(params, set_), out)["targets"].items():
        console.print(f"{key}: {value}")


@recipe_app.command("list")
def recipe_list() -> None:
    """The recipes: the paper's tables, the claim, β, and those in experiments/. Example: `msr
    recipe list`"""
    from msr.recipes import all_recipes

    with reported():
        rows = [(n, r.title, str(r.size), r.baseline) for n, r in all_recipes().items()]
    table(("recipe", "what", "experiments", "Avg. baseline"), rows)


@recipe_app.command("queue")
def recipe_queue(
    name: str,
    set_: SetOpt = None,
    only: Annotated[list[str] | None, typer.Option(help="Only these experiments.")] = None,
    dry: Annotated[bool, typer.Option("--dry", help="Print the dvc commands only.")] = False,
) -> None:
    """Queue a recipe's experiments (a sequential one runs them in order); then `dvc queue start
    -j N` and `msr compare`. Example: `msr recipe queue table4 --set finetune.max_steps=10`"""
    import shlex
    import subprocess

    from msr.recipes import RecipeFailed, commands, recipe, run

    with reported():
        cmds = commands(name, tuple(set_ or ()), tuple(only or ()))
        sequential = recipe(name).sequential

    def call(cmd: list[str]) -> int:
        console.print(shlex.join(cmd), highlight=False)
        return 0 if dry else subprocess.call(cmd)

    try:  # a dry run prints each command and leaves params.yaml alone
        run(cmds, sequential and not dry, call=call)
    except RecipeFailed as err:
        raise fail(str(err)) from None
