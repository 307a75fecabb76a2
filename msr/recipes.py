"""The paper's comparisons as queued DVC sweeps: `msr recipe queue table1`, then
`dvc queue start -j N`, then `msr compare`. Each recipe is one or more `dvc exp run --queue` calls,
each with `-S key=v1,v2` sweeps (DVC expands the product of the sweeps of one call). They run on
any preset: the params file decides the backbones and the data.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from msr.utils.io import atomic_write_bytes

PROJECTORS_AT_BUDGET = (
    "ms_resampler,resampler,pixel_shuffle,c_abstractor,ldp_v2,tokenpacker,avgpool"
)
KERNELS = "projector.options.ms_resampler.kernels"


@dataclass(frozen=True)
class Recipe:
    title: str
    calls: tuple[tuple[str, ...], ...]  # the -S sweeps of each `dvc exp run --queue` call
    size: int  # experiments queued
    baseline: str  # what `msr compare --baseline` should name (described, not an experiment name)
    names: tuple[str, ...] = ()  # an experiment name per call (`-n`), for named experiments
    # run one after another in the workspace (`dvc exp run`, not queued): a later experiment reads
    # what an earlier one left there
    sequential: bool = False


RECIPES: dict[str, Recipe] = {
    "table1": Recipe(
        "Table 1: every projector at M = 144 / 64 / 36, LLaVA-1.5's MLP at 576 (llm.max_length must "
        "hold 576 + the text: on the tiny preset add --set llm.max_length=1024)",
        (
            (f"projector.name={PROJECTORS_AT_BUDGET}", "projector.num_queries=144,64,36"),
            ("projector.name=mlp",),
        ),
        22,
        "the mlp experiment",
    ),
    "table4": Recipe(
        "Table 4: one scope (E = 1, k ∈ {2, 6, 8, 12, 24}) against three (E = 3, {2, 6, 14})",
        ((f"{KERNELS}=[2],[6],[8],[12],[24],[2,6,14]",),),
        6,
        "the [2, 6, 14] experiment",
    ),
    "table5": Recipe(
        "Table 5: kernel sets {2, 3, 5}, {6, 8, 12}, {15, 18, 24}, {2, 6, 14}",
        ((f"{KERNELS}=[2,3,5],[6,8,12],[15,18,24],[2,6,14]",),),
        4,
        "the [2, 6, 14] experiment",
    ),
    "table6": Recipe(
        "Table 6: fusions — average, attention, MLP, channel-wise MLP",
        (("projector.options.ms_resampler.fusion=average,attention,mlp,channel_mlp",),),
        4,
        "the channel_mlp experiment",
    ),
    "claim": Recipe(
        "The multi-scope claim end to end at this preset's scale: MS-Resampler, the resampler and "
        "average pooling at M = 36, two stage-2 seeds each (docs/measurement.md)",
        (("projector.name=ms_resampler,resampler,avgpool", "finetune.seed=0,1"),),
        6,
        "the ms_resampler experiment with finetune.seed=0",
    ),
    "probe-claim": Recipe(
        "The multi-scope claim without an LLM: `msr probe` over its `claim` grid (multi-scope, "
        "each scope alone, resampler, pooling, pixel-shuffle, MLP) at M = 144 / 64 / 36, three "
        "seeds; only the probe stage reruns",
        (("probe.grid=claim", "probe.budgets=[144,64,36]", "probe.seeds=[0,1,2]"),),
        1,
        "none: read reports/probe.md",
    ),
    "beta": Recipe(
        "β sweep: scope-bias strength 0 (plain attention per branch), 1, 2, 4, 8",
        (("projector.options.ms_resampler.beta=0.0,1.0,2.0,4.0,8.0",),),
        5,
        "the beta 0.0 experiment",
    ),
}


EXPERIMENTS = Path("experiments")  # recipes as files: `<name>.yaml`, beside the built-in ones


def file_recipe(path: Path) -> Recipe:
    """A recipe from `experiments/<name>.yaml`: a title, a baseline, `sequential`, and named
    experiments, each a list of `set` overrides (and a `why`)."""
    try:
        raw = yaml.safe_load(path.read_text())
        exps = raw["experiments"]
        names = tuple(str(n) for n in exps)
        calls = tuple(tuple(str(s) for s in (exps[n] or {}).get("set") or ()) for n in names)
        return Recipe(str(raw["title"]), calls, len(names), str(raw.get("baseline", "")), names,
                      bool(raw.get("sequential", False)))  # fmt: skip
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path} is not a recipe (title, baseline, experiments: {{name: {{set: [...]}}}}): {err}"
        ) from None


def all_recipes(folder: Path = EXPERIMENTS) -> dict[str, Recipe]:
    """The built-in recipes and those of `folder`."""
    files = (
        {p.stem: file_recipe(p) for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}
    )
    return {**RECIPES, **files}


def recipe(name: str, folder: Path = EXPERIMENTS) -> Recipe:
    known = all_recipes(folder)
    if name not in known:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(known)}")
    return known[name]


def commands(
    name: str, extra: tuple[str, ...] = (), only: tuple[str, ...] = (), folder: Path = EXPERIMENTS
) -> list[list[str]]:
    """The `dvc exp run` command lines of a recipe (`extra`: more `-S` overrides, e.g. to pin
    steps for a quick pass; `only`: these named experiments), queued unless it is sequential."""
    r = recipe(name, folder)
    unknown = sorted(set(only) - set(r.names))
    if unknown:
        raise ValueError(
            f"recipe {name!r} has no experiment(s) {unknown}; it has: {', '.join(r.names)}"
        )
    out = []
    for i, sweeps in enumerate(r.calls):
        named = r.names[i] if r.names else None
        if only and named not in only:
            continue
        cmd = ["dvc", "exp", "run", *([] if r.sequential else ["--queue"])]
        cmd += ["-n", named] if named else []
        for s in (*sweeps, *extra):
            cmd += ["-S", s]
        out.append(cmd)
    return out


class RecipeFailed(Exception):
    """A `dvc exp run` of a recipe exited non-zero."""


def run(
    cmds: Sequence[list[str]],
    sequential: bool,
    params: Path = Path("params.yaml"),
    call: Callable[[list[str]], int] = subprocess.call,
) -> None:
    """Run a recipe's command lines in order. A workspace `dvc exp run` leaves its `-S` overrides in
    the params file, so before each experiment of a sequential recipe after the first the file is
    put back as the recipe found it: each experiment is its own overrides of the same params."""
    base = params.read_bytes() if sequential and params.exists() else None
    for i, cmd in enumerate(cmds):
        if i and base is not None:
            atomic_write_bytes(params, base)
        if call(cmd) != 0:
            done = f"the {i} before it are done, " if i else ""
            raise RecipeFailed(
                f"{' '.join(cmd)} failed; {done}the {len(cmds) - i - 1} after it did not run"
            )
