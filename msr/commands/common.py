"""What every command shares: the consoles, the params options, loading params, and msr's own errors
as one line (a traceback only with `msr --debug`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console, err_console = Console(), Console(stderr=True)
DEBUG = {"on": False}
PARAMS = Path("params.yaml")
ParamsOpt = Annotated[Path, typer.Option(help="A params YAML, or a preset's name.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a value: --set projector.num_queries=64")
]


def fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


@contextmanager
def reported() -> Iterator[None]:
    """msr's own errors (bad params, data, artifacts, runs) as one line and exit code 2."""
    from msr.data.skips import TooManySkips
    from msr.train.data import TrainingError

    try:
        yield
    except (ValueError, OSError, TooManySkips, TrainingError) as err:
        if DEBUG["on"]:
            raise
        raise fail(str(err)) from None


def load(params: Path, sets: list[str] | None):  # -> msr.config.Params
    from msr.presets import params_file
    from msr.resolve import load_params

    with reported():
        return load_params(params_file(params), sets or ())


def table(columns: tuple[str, ...], rows: Sequence[Sequence[str]]) -> None:
    out = Table(*columns)
    for row in rows:
        out.add_row(*row)
    console.print(out)


def _flags_without_a_type(self: typer.core.TyperOption, ctx: typer.Context) -> str | None:
    """typer 0.29 prints `<bool>` beside every flag (`--help` too), which reads as a value to
    give; a flag shows none."""
    return None if self.is_flag else _display_type(self, ctx)


_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flags_without_a_type  # type: ignore[method-assign,assignment]
