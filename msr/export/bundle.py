"""A projector's source as files for an exported model: its module and every `msr.projectors` module
it imports, with those imports made relative (`from .grid import Grid`), so that transformers' remote
code loader copies them beside `modeling_msr.py`. The projectors need torch and each other only
(`msr.projectors.base`), which this checks: any other import of msr is an error naming it."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from msr.projectors import projector_class

PACKAGE = "msr.projectors"
_IMPORT = re.compile(rf"^(\s*)from {re.escape(PACKAGE)}\.(\w+) import", re.MULTILINE)


def _imports(source: str) -> tuple[set[str], set[str]]:
    """(sibling modules imported as `from msr.projectors.X import …`, any other msr import) at
    module level or in a function; imports inside try/except are optional and not followed."""
    tree = ast.parse(source)
    optional = {
        id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)
    }
    siblings, others = set(), set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            head, _, rest = name.partition(f"{PACKAGE}.")
            if not head and rest and "." not in rest:
                siblings.add(rest)
            elif name == "msr" or name.startswith("msr."):
                others.add(name)
    return siblings, others


def projector_sources(name: str) -> dict[str, str]:
    """{file name: source} of projector `name`'s module and its sibling modules, imports made
    relative, plus `projector_msr.py` with `build_projector(config)` for the exported model."""
    cls = projector_class(name)
    root = Path(sys.modules[cls.__module__].__file__ or "").parent
    todo, out = [cls.__module__.rpartition(".")[2]], {}
    while todo:
        module = todo.pop()
        if f"{module}.py" in out:
            continue
        source = (root / f"{module}.py").read_text()
        siblings, others = _imports(source)
        if others:
            raise ValueError(
                f"projector {name!r} cannot be exported as code: {PACKAGE}.{module} imports "
                f"{', '.join(sorted(others))} (a projector's module may import only torch and "
                f"{PACKAGE} modules)"
            )
        out[f"{module}.py"] = _IMPORT.sub(r"\1from .\2 import", source)
        todo += sorted(siblings)
    main = cls.__module__.rpartition(".")[2]
    out["projector_msr.py"] = (
        f'"""The projector of this model: msr\'s `{name}` ({cls.__name__}), its source beside this '
        'file."""\n\n'
        "from __future__ import annotations\n\n"
        "from typing import Any\n\n"
        f"from .{main} import {cls.__name__}\n\n\n"
        f"def build_projector(config: dict[str, Any]) -> {cls.__name__}:\n"
        '    """The projector of an msr projector json (name, dims, grid, options), initialised."""\n'
        '    grid = tuple(config["grid"]) if config.get("grid") else None\n'
        f"    return {cls.__name__}(\n"
        '        vision_dim=config["vision_dim"],\n'
        '        llm_dim=config["llm_dim"],\n'
        '        num_queries=config["num_queries"],\n'
        "        grid=grid,\n"
        '        **config["options"],\n'
        "    )\n"
    )
    return out
