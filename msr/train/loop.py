"""One training loop for both stages.

Stage 1 (`pretrain`): vision tower and LLM frozen, the projector trained on the pretrain shards with
the `plain` template; saves the projector alone. Stage 2 (`finetune`): the stage-1 projector is
loaded (strictly), projector and LLM trained on the instruct shards; saves the full model.

AdamW, warmup ratio + cosine, gradient accumulation, gradient clipping; global batch =
per_device_batch × grad_accum × world size. The engine (msr.train.engine) is plain torch or
DeepSpeed (ZeRO-2 / ZeRO-3, bf16); the loop does not know which. Periodic checkpoints hold the
trainable weights, optimizer, scheduler, RNG, data position and skip ledger; a resumed run
continues exactly. Every sample not trained on is counted and named (msr.data.skips).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from msr.config import Params, Train
from msr.data.loader import Batch, ExampleStream, shards_for_rank
from msr.data.skips import SkipLedger, check_share
from msr.models.mllm import MLLM
from msr.runtime import Topology, barrier, finish, topology
from msr.train.data import FeatureSplit, TrainingError, batches_of, feature_split
from msr.train.distributed import all_min, all_sum, gather_skips, zero3_loading
from msr.train.engine import Engine, deepspeed_bf16, make_engine
from msr.train.export import save_stage, state_digest
from msr.train.logger import MetricLogger
from msr.train.resume import Resume, identity, should_resume
from msr.utils.io import atomic_write_json
from msr.utils.precision import check_bf16_speed

__all__ = ["TrainResult", "TrainingError", "stage_config", "state_digest", "train"]

log = logging.getLogger(__name__)
Stage = Literal["pretrain", "finetune"]
Progress = Callable[[int, int, dict[str, float]], None]
NOT_REACHED = "loader: not reached at the end of the epoch (ranks stop together, whole steps only)"
CHECK_EVERY = 1000  # samples between checks of the skipped share (and at each epoch's end)


@dataclass
class TrainResult:
    steps: int
    samples: int
    tokens: int
    first_loss: float
    last_loss: float
    skipped: int  # bad samples (reader + template), every epoch counted
    unused: int  # read but not trained on (incomplete last batch, rank balance)
    seconds: float
    data_wait_seconds: float  # waiting for batches, all of it
    startup_wait_seconds: float  # of which for the first batch of each epoch
    resumed_from: int
    out: str

    def summary(self, stage: str) -> str:
        return (
            f"{stage}: {self.steps} steps, {self.samples} samples, loss {self.first_loss:.4f} -> "
            f"{self.last_loss:.4f}, {self.seconds:.0f} s (data wait {self.data_wait_seconds:.1f} "
            f"s); skipped {self.skipped} unusable, {self.unused} read but not trained on"
        )


def stage_config(params: Params, stage: Stage) -> Train:
    return params.pretrain if stage == "pretrain" else params.finetune


def train(
    params: Params,
    stage: Stage,
    *,
    resume: Resume = "no",
    progress: Progress | None = None,
    log_dir: Path | None = None,
    trace_dir: Path | None = None,
) -> TrainResult:
    """Run one stage; returns what it did. Every rank calls this under a launcher.

    `trace_dir`: each rank writes the sample keys it trained on (`samples-rank{r}.txt`) and a sha256
    of its final parameters (`params-rank{r}.json`), to check data splits and rank agreement.
    """
    topo = topology()
    try:
        return _train(params, stage, topo, resume, progress, log_dir, trace_dir)
    finally:
        finish(topo)


def build_model(
    params: Params, stage: Stage, cfg: Train, topo: Topology, data: FeatureSplit
) -> tuple[MLLM, dict[str, Any]]:
    """The LLM (under ZeRO-3's zero.Init when the config partitions weights: no rank holds the
    full model in host memory), the projector (stage 2: from stage 1), wrapped in an MLLM."""
    dtype = "bf16" if deepspeed_bf16(cfg) else "fp32" if cfg.train_llm else params.llm.dtype
    stage1 = Path(params.paths.pretrain) if stage == "finetune" else None
    model, options = MLLM.from_params(
        params,
        vision_width=data.width,
        grid=data.grid,
        dtype=dtype,
        attention=cfg.attention,
        template=cfg.template,
        stage1=stage1,
        loading=zero3_loading(cfg, topo) if cfg.deepspeed else None,
    )
    model.llm.requires_grad_(cfg.train_llm)
    if cfg.gradient_checkpointing:  # stage 1 too: the projector's gradient flows through the LLM
        model.llm.config.use_cache = False
        model.llm.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    if dtype == "bf16" and cfg.deepspeed:  # one dtype for ZeRO's flat buffers; masters stay fp32
        model.projector.to(torch.bfloat16)
    return model.to(topo.device), options


@dataclass
class _Run:
    """What a stage works with, set up before its first step."""

    stage: Stage
    cfg: Train
    topo: Topology
    out: Path
    data: FeatureSplit
    shards: list[str]  # this rank's
    model: MLLM
    options: dict[str, Any]
    engine: Engine
    steps_per_epoch: int
    total: int
    identity: str

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"


def _prepare(params: Params, stage: Stage, topo: Topology) -> _Run:
    """Data checked (and the reader's skips held against max_skip_share), model, engine, schedule."""
    cfg = stage_config(params, stage)
    split = "pretrain" if stage == "pretrain" else "instruct"
    out = Path(params.paths.pretrain if stage == "pretrain" else params.paths.finetune)
    data = feature_split(params, split)
    offered = data.skipped.bad + sum(data.records.values())
    check_share(data.skipped.bad, offered, params.data.max_skip_share,
                f"{stage} ({split} features)", data.skipped)  # fmt: skip
    mine = shards_for_rank(data.shards, topo.rank, topo.world_size)
    _seed(cfg.seed + topo.rank)
    model, options = build_model(params, stage, cfg, topo, data)
    micro_per_epoch = all_min(sum(data.records[s] for s in mine) // cfg.per_device_batch, topo)
    steps_per_epoch = micro_per_epoch // cfg.grad_accum
    if steps_per_epoch < 1:
        raise TrainingError(
            f"{split}: {micro_per_epoch} micro-batches per rank cannot make one optimizer step of "
            f"grad_accum={cfg.grad_accum}; lower per_device_batch or grad_accum, or add data"
        )
    total = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    engine = make_engine(model, cfg, topo, total)
    ident = identity(params, stage, cfg, topo.world_size, model.projector, options)
    return _Run(stage, cfg, topo, out, data, mine, model, options, engine, steps_per_epoch, total,
                ident)  # fmt: skip


def _train(
    params: Params,
    stage: Stage,
    topo: Topology,
    resume: Resume,
    progress: Progress | None,
    log_dir: Path | None,
    trace_dir: Path | None,
) -> TrainResult:
    run = _prepare(params, stage, topo)
    cfg, engine, limit = run.cfg, run.engine, params.data.max_skip_share
    if topo.main:
        bf16 = [f"{stage}.bf16=true"] if cfg.bf16 else []
        bf16 += ["llm.dtype=bf16"] if params.llm.dtype == "bf16" and not cfg.train_llm else []
        check_bf16_speed(bf16, topo.device)
    position: dict[str, Any] = {"step": 0, "epoch": 0, "micro": 0, "samples": 0, "tokens": 0}
    if should_resume(run.checkpoints, run.identity, resume, topo.main):
        position = engine.load(run.checkpoints)
        log.info("%s: resuming at step %d (epoch %d, micro-batch %d)", stage, position["step"],
                 position["epoch"], position["micro"])  # fmt: skip
    resumed_from = step = position["step"]
    skipped = SkipLedger.from_state(position.get("skips"))  # this rank's, since the start
    barrier(topo)

    logger = MetricLogger(log_dir, enabled=topo.main, resumed_step=resumed_from)
    clock, window, seen = _Clock(), _Window(), []
    next_check = position["samples"] + CHECK_EVERY
    epoch_end = run.steps_per_epoch * cfg.grad_accum  # micro-batches
    run.model.train()
    while step < run.total:
        loader = _loader(params, cfg, run.model, run.shards, position["epoch"])
        batches = batches_of(clock.timed(loader), skipped)
        for _ in range(position["micro"]):  # resume: the order is deterministic, skip what was seen
            next(batches)
        skipped.keys = SkipLedger.from_state(position.get("skips")).keys  # replayed ones counted
        batch = None
        while position["micro"] < epoch_end and step < run.total:
            batch = next(batches, None)
            if all_min(int(batch is not None), topo) == 0:
                break  # a rank ran out (its samples skipped as bad): end the epoch everywhere
            assert batch is not None
            seen += batch.keys
            loss = engine.loss(batch.to(topo.device))
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{stage}: loss is {loss.item()} at step {step} (epoch {position['epoch']}, "
                    f"micro-batch {position['micro']}); samples: {', '.join(batch.keys)}"
                )
            engine.backward(loss)
            stepped = engine.step()
            n, tokens = len(batch.keys) * topo.world_size, batch.tokens * topo.world_size
            position.update(micro=position["micro"] + 1, samples=position["samples"] + n,
                            tokens=position["tokens"] + tokens)  # fmt: skip
            window.add(loss.item(), n, tokens)
            batch = None
            if not stepped:
                continue
            step = position["step"] = step + 1
            window.first_loss = window.loss if math.isnan(window.first_loss) else window.first_loss
            if step % cfg.log_every == 0 or step == run.total:
                metrics = window.flush(engine.lr, clock, topo)
                logger.log(step, metrics)
                if progress is not None and topo.main:
                    progress(step, run.total, metrics)
            if position["samples"] >= next_check:
                next_check = position["samples"] + CHECK_EVERY
                _check_skips(skipped, position["samples"], limit, stage, topo)
            if step % cfg.save_every == 0 and step < run.total:
                engine.save(run.checkpoints, {**position, "skips": skipped.state(),
                                              "identity": run.identity})  # fmt: skip
        if step < run.total or position["micro"] >= epoch_end or batch is not None:
            _drain(batches, batch, skipped)  # the epoch ended: name what was read but not used
            _check_skips(skipped, position["samples"], limit, stage, topo)
        if step < run.total:
            position.update(epoch=position["epoch"] + 1, micro=0, skips=skipped.state())

    _check_skips(skipped, position["samples"], limit, stage, topo)
    result = _finish(params, run, position, skipped, window, clock, resumed_from, seen, trace_dir)
    logger.close(asdict(result))
    return result


def _finish(
    params: Params,
    run: _Run,
    position: dict[str, Any],
    skipped: SkipLedger,
    window: _Window,
    clock: _Clock,
    resumed_from: int,
    seen: list[str],
    trace_dir: Path | None,
) -> TrainResult:
    """Save the stage's artifacts and skip report (rank 0), traces (every rank); what it did."""
    topo = run.topo
    states = save_stage(params, run.stage, run.out, run.model, run.options, run.engine, topo)
    everyone = gather_skips(skipped, topo)
    everyone.merge(run.data.skipped)
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        (trace_dir / f"samples-rank{topo.rank}.txt").write_text("".join(k + "\n" for k in seen))
        atomic_write_json(
            trace_dir / f"params-rank{topo.rank}.json",
            {k: state_digest(v) for k, v in states.items()},
        )
    if topo.main:
        # deterministic: the same run writes the same bytes (no timings, no paths)
        atomic_write_json(run.out / "skips.json", everyone.report(position["samples"]))
        shutil.rmtree(run.checkpoints, ignore_errors=True)  # finished: never resumed from
        if everyone.counts:
            log.warning("%s: %d skipped as unusable, %d read but not trained on; %s", run.stage,
                        everyone.bad, everyone.unused, everyone.describe())  # fmt: skip
    return TrainResult(
        position["step"],
        position["samples"],
        position["tokens"],
        window.first_loss,
        window.loss,
        everyone.bad,
        everyone.unused,
        clock.elapsed,
        clock.data_wait,
        clock.startup_wait,
        resumed_from,
        str(run.out),
    )


def _loader(
    params: Params, cfg: Train, model: MLLM, shards: list[str], epoch: int
) -> torch.utils.data.DataLoader[Batch]:
    stream = ExampleStream(
        shards,
        tokenizer=model.tokenizer,
        template=model.template,  # type: ignore[arg-type]
        num_image_tokens=model.num_image_tokens,
        max_length=params.llm.max_length,
        batch_size=cfg.per_device_batch,
        seed=cfg.seed,
        epoch=epoch,
        shuffle_buffer=cfg.shuffle_buffer,
        group_by_modality_length=cfg.group_by_modality_length,
        strict=params.data.strict,
    )
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.loader_workers)


def _drain(batches: Iterator[Batch], pending: Batch | None, skipped: SkipLedger) -> None:
    """Name the samples of this epoch that were read but not trained on."""
    for batch in [pending] if pending is not None else []:
        skipped.extend((k, NOT_REACHED) for k in batch.keys)
    for batch in batches:
        skipped.extend((k, NOT_REACHED) for k in batch.keys)


def _check_skips(
    skipped: SkipLedger, samples: int, limit: float, stage: str, topo: Topology
) -> None:
    """Stop (on every rank at once) when the samples training met and could not use exceed
    `data.max_skip_share` of those met so far. Each share keeps one population on both sides: the
    reader's skips were held against the records offered when the stage started (`_prepare`);
    here the template's and the loader's against the samples met."""
    bad = all_sum(skipped.bad, topo)
    if bad / max(1, samples + bad) <= limit:
        return
    check_share(bad, samples + bad, limit, f"{stage} (samples met)", gather_skips(skipped, topo))


class _Clock:
    """Wall time of the run and the time spent waiting for batches."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.data_wait = self.startup_wait = 0.0  # startup: the first batch of each epoch

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def timed(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        fresh, it = True, iter(batches)
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            waited = time.perf_counter() - t0
            self.data_wait += waited
            self.startup_wait += waited if fresh else 0.0  # a new iterator starts its workers
            fresh = False
            if batch is None:
                return
            yield batch


class _Window:
    """Loss and throughput accumulated between two log lines."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.samples = self.tokens = 0
        self.t = time.perf_counter()
        self.last_loss = self.first_loss = math.nan

    def add(self, loss: float, samples: int, tokens: int) -> None:
        self.losses.append(loss)
        self.samples += samples
        self.tokens += tokens

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else self.last_loss

    def flush(self, lr: float, clock: _Clock, topo: Topology) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t, 1e-9)
        out = {
            "loss": self.loss,
            "lr": lr,
            "samples_per_s": self.samples / dt,
            "tokens_per_s": self.tokens / dt,
            "data_wait_share": clock.data_wait / max(clock.elapsed, 1e-9),
        }
        if topo.device.type == "cuda":
            out["max_memory_gb"] = torch.cuda.max_memory_allocated(topo.device) / 1e9
        self.last_loss, self.losses, self.samples, self.tokens = self.loss, [], 0, 0
        self.t = time.perf_counter()
        return out


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
