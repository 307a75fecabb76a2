"""Projector registry: `build_projector`, option validation, and `@register_projector("name")` for a
projector defined outside msr (msr's own name themselves: `class X(Projector, name="x")`).

The registry is the one place that knows which projector classes exist (timm's `_registry.py` idea:
https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/_registry.py).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from msr.projectors.base import PROJECTORS, Projector, register

if TYPE_CHECKING:
    from msr.config import Projector as ProjectorParams

_DIMS = ("vision_dim", "llm_dim", "num_queries")

P = TypeVar("P", bound=type[Projector])


def register_projector(name: str) -> Callable[[P], P]:
    """Class decorator: make `cls` buildable as `build_projector(name, ...)`."""

    def wrap(cls: P) -> P:
        register(cls, name)
        return cls

    return wrap


def projector_class(name: str) -> type[Projector]:
    """The class registered as `name`; ValueError naming the known projectors otherwise."""
    if name not in PROJECTORS:
        raise ValueError(f"unknown projector {name!r}; known: {', '.join(sorted(PROJECTORS))}")
    return PROJECTORS[name]


def output_tokens(name: str, num_queries: int, num_patches: int) -> int:
    """M: how many tokens projector `name` emits for `num_patches` inputs at budget `num_queries`
    (all of them for a design that keeps every patch token, such as LLaVA's MLP)."""
    return num_patches if projector_class(name).keeps_all_tokens else num_queries


def projector_options(name: str) -> dict[str, tuple[Any, Any]]:
    """Keyword options of a projector beyond the three dimensions: {option: (type, default)}."""
    cls = projector_class(name)
    hints = typing.get_type_hints(cls.__init__)
    params = inspect.signature(cls.__init__).parameters
    return {
        key: (hints.get(key, Any), p.default)
        for key, p in params.items()
        if key not in ("self", *_DIMS) and p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def validate_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Type-check `options` against the projector's signature and return them coerced.

    Raises ValueError naming an unknown option (and the known ones) or a value of the wrong type.
    """
    known = projector_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for projector {name!r}; "
            f"known options: {', '.join(sorted(known)) or '(none)'}"
        )
    out: dict[str, Any] = {}
    for key, value in options.items():
        annotation = known[key][0]
        try:
            out[key] = TypeAdapter(annotation).validate_python(value)
        except PydanticValidationError as err:
            raise ValueError(
                f"projector {name!r}: option {key}={value!r} is not a valid {_type_name(annotation)}: "
                f"{err.errors()[0]['msg']}"
            ) from None
    return out


def build_projector(
    name: str, *, vision_dim: int, llm_dim: int, num_queries: int, **options: Any
) -> Projector:
    """Build projector `name`: forward (B, N, vision_dim) -> (B, num_queries, llm_dim)."""
    cls = projector_class(name)
    checked = validate_options(name, options)
    return cls(vision_dim=vision_dim, llm_dim=llm_dim, num_queries=num_queries, **checked)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def active_options(params: ProjectorParams) -> dict[str, Any]:
    """The options `params.projector` gives the selected projector, type-checked."""
    return validate_options(params.name, params.options.get(params.name, {}))


def create_projector(
    params: ProjectorParams, vision_dim: int, llm_dim: int, grid: tuple[int, int]
) -> tuple[Projector, dict[str, Any]]:
    """The projector `params` (the params' `projector` section) describes, for a backbone of width
    `vision_dim` on `grid`, with M = `output_tokens`; and the options it was built with (timm's
    `create_model`)."""
    options = active_options(params)
    m = output_tokens(params.name, params.num_queries, grid[0] * grid[1])
    projector = build_projector(
        params.name, vision_dim=vision_dim, llm_dim=llm_dim, num_queries=m, grid=grid, **options
    )
    return projector, options


def describe_projectors() -> list[tuple[str, str, str]]:
    """(name, the first line of its docstring, its options with defaults) of every projector."""
    rows = []
    for name in sorted(PROJECTORS):
        doc = (PROJECTORS[name].__doc__ or "").strip().splitlines()[0]
        opts = ", ".join(f"{k}={v[1]!r}" for k, v in projector_options(name).items())
        rows.append((name, doc, opts))
    return rows
