"""Benchmark adapters by name. `synth_*` are the synthetic sets, read by the same adapters from the
synthetic dataset's `eval/` folder."""

from __future__ import annotations

from pathlib import Path

from msr.eval.benchmarks.base import Benchmark, BenchmarkMissing, ImageRef, Question
from msr.eval.benchmarks.choice import SEED, MMBench, MMStar
from msr.eval.benchmarks.gqa import GQA
from msr.eval.benchmarks.mme import MME
from msr.eval.benchmarks.mmvet import MMVet
from msr.eval.benchmarks.ocrbench import OCRBench
from msr.eval.benchmarks.pope import POPE
from msr.eval.benchmarks.sqa import ScienceQA
from msr.eval.benchmarks.vqa import TextVQA, VQAv2

# name -> (adapter, folder under eval.root as in LLaVA's playground/data/eval)
REAL: dict[str, tuple[type[Benchmark], str]] = {
    "vqav2": (VQAv2, "vqav2"),
    "gqa": (GQA, "gqa"),
    "sqa": (ScienceQA, "scienceqa"),
    "textvqa": (TextVQA, "textvqa"),
    "pope": (POPE, "pope"),
    "mme": (MME, "MME"),
    "mmbench": (MMBench, "mmbench"),
    "seed": (SEED, "seed_bench"),
    "mmstar": (MMStar, "mmstar"),
    "ocrbench": (OCRBench, "ocrbench"),
    "mmvet": (MMVet, "mm-vet"),
}
SYNTH: dict[str, tuple[type[Benchmark], str]] = {
    "synth_textvqa": (TextVQA, "textvqa"),
    "synth_pope": (POPE, "pope"),
    "synth_mmbench": (MMBench, "mmbench"),
    "synth_gqa": (GQA, "gqa"),
}
BENCHMARKS = (*REAL, *SYNTH)


def make_benchmark(name: str, eval_root: str | Path | None, synth_root: str | Path) -> Benchmark:
    """The adapter for `name`, pointed at its directory."""
    if name in SYNTH:
        cls, folder = SYNTH[name]
        return cls(Path(synth_root) / "eval" / folder, label=name)
    if name not in REAL:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    if eval_root is None:
        raise BenchmarkMissing(
            f"benchmark {name!r} needs eval.root (LLaVA's playground/data/eval) in the params"
        )
    cls, folder = REAL[name]
    return cls(Path(eval_root) / folder, label=name)


__all__ = [
    "BENCHMARKS",
    "REAL",
    "SYNTH",
    "Benchmark",
    "BenchmarkMissing",
    "ImageRef",
    "Question",
    "make_benchmark",
]
