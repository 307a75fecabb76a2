"""Params from a file, a preset or a mapping, checked in two steps: the schema (`msr.config`, which
knows no other module of msr), then what only the domains can say — is the projector registered and
are its options its own, do the colours, benchmarks and probe grid exist, does the projector tile
the backbone's grid. Every command loads its params here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from msr.config import Params, ParamsError, apply_override, parse_params


def load_params(path: str | Path, overrides: Iterable[str] = ()) -> Params:
    """The typed, checked params of a YAML file with `key.path=value` overrides applied (a
    preset's file: `msr.presets.params_file`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"params file {path} does not exist") from None
    except IsADirectoryError:
        raise ParamsError(f"params file {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text (byte offset {err.start})") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return resolve_params(raw, overrides, source=str(path))


def resolve_params(
    raw: dict[str, Any], overrides: Iterable[str] = (), source: str = "params"
) -> Params:
    """Overrides applied, the schema checked, then the domains (`check`): the whole of what
    `load_params` accepts."""
    for item in overrides:
        apply_override(raw, item)
    params = parse_params(raw, source=source)
    check(params, source)
    return params


def check(params: Params, source: str = "params") -> None:
    """ParamsError naming the key, the value and what is accepted, for what the schema cannot
    know. Imports torch and transformers (the registries and backbone configs)."""
    for key, problem in _problems(params):
        raise ParamsError(f"{source}: {key}: {problem}")


def _problems(params: Params) -> Iterable[tuple[str, str]]:
    from msr.data.synth.questions import CAPTION_CATEGORIES
    from msr.data.synth.scene import COLORS
    from msr.eval.benchmarks import REAL, SYNTH
    from msr.models.configs import check_projector_fits
    from msr.probe.grids import GRIDS
    from msr.projectors import PROJECTORS, validate_options

    synth = params.data.synth
    unknown = sorted(set(synth.colors + synth.backgrounds) - set(COLORS))
    if unknown:
        yield "data.synth", f"unknown colour(s) {unknown}; known: {', '.join(COLORS)}"
    for key in ("text_mc", "text_qa"):
        n = getattr(synth, key)
        if n and not set(synth.categories) & set(CAPTION_CATEGORIES):
            yield (
                f"data.synth.{key}",
                f"{key}={n} asks what a caption answers, one of {', '.join(CAPTION_CATEGORIES)}; "
                f"categories={synth.categories} has none",
            )
    known = ", ".join(sorted(PROJECTORS))
    p = params.projector
    if p.name not in PROJECTORS:
        yield "projector.name", f"unknown projector {p.name!r}; known: {known}"
    for name, opts in p.options.items():
        if name not in PROJECTORS:
            yield f"projector.options.{name}", f"no projector {name!r}; known: {known}"
            continue
        try:
            validate_options(name, opts)
        except ValueError as err:
            yield f"projector.options.{name}", str(err)
    for field, registry in (("benchmarks", REAL), ("synth", SYNTH)):
        names = [n for n in getattr(params.eval, field) if n not in registry]
        if names:
            yield f"eval.{field}", f"unknown benchmark(s) {names}; known: {', '.join(registry)}"
    if params.probe.grid not in ("active", *GRIDS):
        yield "probe.grid", f"{params.probe.grid!r}; known: active, {', '.join(GRIDS)}"
    benched = [n for n in params.bench.projectors if n not in PROJECTORS]
    if benched:
        yield "bench.projectors", f"unknown projector(s) {benched}; known: {known}"
    if p.name in PROJECTORS:
        try:
            check_projector_fits(params)
        except ValueError as err:
            yield "projector", str(err)
