"""Variants of the small-real recipe, each trained and evaluated side by side on the same data and
seeds; writes reports/small-real/variants.{json,md} (per-category accuracy against the majority
baseline, and the stage times).

    python benchmarks/small_real_variants.py baseline final_norm m144 ...   # names from VARIANTS

Each variant is a list of `--set` overrides of the small-real preset. Its artifacts go to
data/small-real/variants/<name>/; the feature cache of the preset (data/small-real/features) is
shared unless the variant changes the vision backbone's features. Run `make small-real` first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from msr.config import load_params
from msr.presets import preset_path
from msr.train.loop import train
from msr.utils.io import atomic_write_json, atomic_write_text
from stages import eval as eval_stage
from stages import features

OUT = Path("reports/small-real")
EVAL_SETS = "[synth_gqa, synth_mmbench]"  # the sets with per-category questions
VARIANTS: dict[str, list[str]] = {
    "baseline": [],  # the preset: MS-Resampler M = 36, default options, layer −2 before the final LN
    "final_norm": ["vision.final_norm=true"],  # DINOv2's final LayerNorm on the features
    "m144": ["projector.num_queries=144"],
    "proj_lr": ["finetune.lr=2.0e-4"],
    "resampler": ["projector.name=resampler"],
    "avgpool": ["projector.name=avgpool"],
    "final_norm_resampler": ["vision.final_norm=true", "projector.name=resampler"],
    "final_norm_avgpool": ["vision.final_norm=true", "projector.name=avgpool"],
}


def variant_params(name: str, overrides: list[str]) -> Any:
    base = Path(f"data/small-real/variants/{name}")
    sets = [
        f"paths.pretrain={base}/pretrain",
        f"paths.finetune={base}/finetune",
        f"paths.eval={base}/eval",
        f"paths.reports={base}/reports",
        f"eval.synth={EVAL_SETS}",
    ]
    if any(o.startswith("vision.") for o in overrides):  # other features: their own cache
        sets.append(f"paths.features={base}/features")
    return load_params(preset_path("small-real"), [*sets, *overrides])


def run(name: str) -> dict[str, Any]:
    if not VARIANTS[name]:  # the preset itself: the model `make small-real` trained and evaluated
        preset = load_params(preset_path("small-real"))
        summary = json.loads((Path(preset.paths.reports) / "eval.json").read_text())
        sets = EVAL_SETS.strip("[]").split(", ")
        return {
            "overrides": [],
            "seconds": {"from": "dvc repro"},
            "categories": {k: v for k, v in summary["categories"].items() if k in sets},
        }
    params = variant_params(name, VARIANTS[name])
    times: dict[str, Any] = {}
    for stage, call in (
        ("features", lambda: features.run(params)),
        ("pretrain", lambda: train(params, "pretrain", resume="auto")),
        ("finetune", lambda: train(params, "finetune", resume="auto")),
        ("eval", lambda: eval_stage.run(params)),
    ):
        start = time.perf_counter()
        result = call()
        times[stage] = round(time.perf_counter() - start, 1)
    assert isinstance(result, dict)
    return {"overrides": VARIANTS[name], "seconds": times, "categories": result["categories"]}


def render(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, r in results.items():
        for bench, cats in r["categories"].items():
            for cat, c in cats.items():
                delta = c["acc"] - c["majority"]
                rows.append(
                    f"| {name} | {bench} | {cat} | {c['n']} | {c['acc']:.1f} | {c['majority']:.1f} "
                    f"| {delta:+.1f} |"
                )
    head = [
        "# small-real: recipe variants",
        "",
        "Same data, same seeds; each variant changes only the listed params of the `small-real`",
        "preset. Accuracy per question category against the majority-answer baseline.",
        "",
        "| variant | overrides | seconds (features / pretrain / finetune / eval) |",
        "| :--- | :--- | :--- |",
        *(
            f"| {n} | {', '.join(r['overrides']) or '(preset)'} | "
            + " / ".join(
                f"{s:.0f}" if isinstance(s, float) else str(s) for s in r["seconds"].values()
            )
            + " |"
            for n, r in results.items()
        ),
        "",
        "| variant | set | category | questions | accuracy | majority | Δ |",
        "| :--- | :--- | :--- | ---: | ---: | ---: | ---: |",
    ]
    return "\n".join(head + rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(VARIANTS))
    args = parser.parse_args()
    path = OUT / "variants.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.names:
        results[name] = run(name)
        atomic_write_json(path, results)
        atomic_write_text(OUT / "variants.md", render(results))


if __name__ == "__main__":
    main()
