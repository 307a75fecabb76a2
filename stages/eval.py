"""Stage `eval`: generate answers for every configured benchmark, score them, write the reports."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from msr.config import Params
from msr.eval.answers import answer_records, answer_spread, read_answers, write_answers
from msr.eval.benchmarks import make_benchmark
from msr.eval.benchmarks.custom import Custom
from msr.eval.generate import GenerationArgs, Generator, ResponseCache
from msr.eval.stats import interval
from msr.models.mllm import MLLM
from msr.report.eval import render, summarize
from msr.runtime import finish, topology
from msr.utils.io import atomic_write_json, write_report
from msr.utils.precision import check_bf16_speed

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


def run(
    params: Params, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any] | None:
    """Answer, score and report. Under a launcher (WORLD_SIZE > 1) each rank answers its share of
    every benchmark's batches and rank 0 merges them in question order, scores and writes the
    reports (its return value; the other ranks return None). The split follows the 1-process
    batches, so each batch is the same and so are the answers."""
    topo = topology()
    try:
        return _run(params, progress, topo.rank, topo.world_size, topo.device)
    finally:
        finish(topo)


def _run(
    params: Params,
    progress: Callable[[str, int, int], None] | None,
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, Any] | None:
    e = params.eval
    check_bf16_speed(["eval.dtype=bf16"] if e.dtype == "bf16" else [], device)
    loaded = MLLM.from_pretrained(params.paths.finetune, dtype=e.dtype, device=device)
    out = Path(params.paths.eval)
    # beside the DVC out, not in it: the cache holds every model's responses so far, so inside
    # the out it would make identical answers hash differently depending on the history
    cache = Path(params.paths.data) / "cache" / "eval"
    generator = Generator(
        loaded,
        GenerationArgs(max_new_tokens=e.max_new_tokens),
        ResponseCache(
            cache / ("responses.jsonl" if world == 1 else f"responses-rank{rank}.jsonl"),
            also=sorted(cache.glob("responses*.jsonl")),
        ),
    )
    results: dict[str, Any] = {}
    benches = [make_benchmark(n, e.root, params.paths.synth) for n in [*e.benchmarks, *e.synth]]
    benches += [Custom(spec) for spec in e.custom]
    for bench in benches:
        name = bench.label
        questions = bench.questions(limit=e.limit)
        mine = share(len(questions), e.batch_size, rank, world)
        tick = _ticker(progress if rank == 0 else None, name, len(mine))
        answered = generator.answer([questions[i] for i in mine], e.batch_size, tick)
        predictions = gather_answers(mine, answered, len(questions), world)
        if rank != 0:
            continue
        records = answer_records(questions, predictions, loaded.fingerprint)
        write_answers(out / name / "answers.jsonl", records)
        bench.write_answers(out / name, questions, records)
        scored = read_answers(out / name / "answers.jsonl", questions, loaded.fingerprint)
        units = bench.items(questions, scored)
        results[name] = {
            "n": len(questions),
            "main": bench.main,
            "metrics": bench.metrics(questions, scored),
            **({"interval": unit_interval(units)} if units["scores"] else {}),
            "categories": bench.per_category(questions, scored),
            "answers": answer_spread(scored.values(), (q.gold for q in questions)),
            "items": units,
        }
        log.info("%s: %s", name, {k: round(v, 2) for k, v in results[name]["metrics"].items()})
    memo = generator.memo
    log.info("eval: %d distinct images encoded for %d image questions (rank %d)", memo.misses,
             memo.hits + memo.misses, rank)  # fmt: skip
    if rank != 0:
        return None
    items = {n: r.pop("items") for n, r in results.items()}
    summary = summarize(results, params, loaded.fingerprint, items)
    reports = Path(params.paths.reports)
    write_report(reports / "eval", summary, render(summary))
    # every scored unit, for paired tests between runs (`msr compare`): a file of its own, not a
    # metric, so `dvc exp show` does not list a column per question
    atomic_write_json(reports / "eval_items.json", {"fingerprint": loaded.fingerprint, **items})
    return summary


def unit_interval(units: dict[str, Any]) -> dict[str, Any]:
    """The mean of a benchmark's scored units in percent with its 95 % interval."""
    scores = units["scores"]
    lo, hi = interval(scores)
    value = 100 * sum(scores) / len(scores) if scores else 0.0
    return {"metric": units["metric"], "n": len(scores), "value": value,
            "lo": 100 * lo, "hi": 100 * hi}  # fmt: skip


def share(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Question indices of `rank`: batches rank, rank + world, ... of the 1-process batching."""
    starts = range(rank * batch_size, n, world * batch_size)
    return [i for s in starts for i in range(s, min(s + batch_size, n))]


def gather_answers(mine: list[int], answered: list[str], n: int, world: int) -> list[str]:
    """Every rank's answers, back in question order (collective when world > 1)."""
    if world == 1:
        return answered
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (mine, answered))
    out = [""] * n
    for idx, texts in parts:
        for i, t in zip(idx, texts, strict=True):
            out[i] = t
    return out
