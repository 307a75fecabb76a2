"""Stage `eval`: generate answers for every configured benchmark, score them, write the reports."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from msr.config import Params
from msr.eval.answers import answer_records, read_answers, write_answers
from msr.eval.benchmarks import make_benchmark
from msr.eval.generate import GenerationArgs, Generator, ResponseCache
from msr.models.mllm import MLLM
from msr.report.eval import render, summarize
from msr.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def _ticker(
    progress: Callable[[str, int, int], None] | None, name: str, total: int
) -> Callable[[int], None]:
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(name, done, total)

    return tick


def run(params: Params, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    e = params.eval
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = MLLM.from_pretrained(params.paths.finetune, dtype=e.dtype, device=device)
    out = Path(params.paths.eval)
    generator = Generator(
        loaded,
        GenerationArgs(max_new_tokens=e.max_new_tokens),
        ResponseCache(out / "cache" / "responses.jsonl"),
    )
    results: dict[str, Any] = {}
    for name in [*e.benchmarks, *e.synth]:
        bench = make_benchmark(name, e.root, params.paths.synth)
        questions = bench.questions(limit=e.limit)
        predictions = generator.answer(
            questions, e.batch_size, _ticker(progress, name, len(questions))
        )
        records = answer_records(questions, predictions, loaded.fingerprint)
        write_answers(out / name / "answers.jsonl", records)
        bench.write_answers(out / name, questions, records)
        scored = read_answers(out / name / "answers.jsonl", questions, loaded.fingerprint)
        results[name] = {
            "n": len(questions),
            "main": bench.main,
            "metrics": bench.metrics(questions, scored),
            "categories": bench.per_category(questions, scored),
        }
        log.info("%s: %s", name, {k: round(v, 2) for k, v in results[name]["metrics"].items()})
    summary = summarize(results, params, loaded.fingerprint)
    reports = Path(params.paths.reports)
    atomic_write_json(reports / "eval.json", summary)
    atomic_write_text(reports / "eval.md", render(summary))
    return summary
