"""One training loop for both stages.

Stage 1 (`pretrain`): vision tower and LLM frozen, the projector trained on the pretrain shards with
the `plain` template; saves the projector alone. Stage 2 (`finetune`): the stage-1 projector is
loaded (strictly), projector and LLM trained on the instruct shards; saves the full model.

AdamW, warmup ratio + cosine, gradient accumulation, bf16 autocast with fp32 master weights,
gradient clipping. Global batch = per_device_batch × grad_accum × world size. With a DeepSpeed
config the same loop drives a DeepSpeed engine (ZeRO-2 / ZeRO-3). Periodic checkpoints hold the
trainable weights, optimizer, scheduler, RNG and data position; a resumed run continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from msr.config import Params, Train
from msr.data.loader import ExampleStream, shards_for_rank
from msr.data.shards import read_manifest
from msr.models.llm import load_causal_lm, load_template, load_tokenizer
from msr.models.mllm import MLLM, MLLMConfig
from msr.models.vision import describe_vision
from msr.projectors import Projector, build_projector, projector_class
from msr.train import checkpoint as ckpt
from msr.train.distributed import Topology, all_min, barrier, deepspeed_config, finish, topology
from msr.train.logger import MetricLogger
from msr.utils.io import atomic_write_json

log = logging.getLogger(__name__)
Stage = Literal["pretrain", "finetune"]
Resume = Literal["no", "auto", "yes"]
Progress = Callable[[int, int, dict[str, float]], None]


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass
class TrainResult:
    steps: int
    samples: int
    tokens: int
    first_loss: float
    last_loss: float
    seconds: float
    data_wait_seconds: float  # waiting for batches, all of it
    startup_wait_seconds: (
        float  # of which for the first batch of each epoch (workers and shuffle buffer filling)
    )
    resumed_from: int
    out: str


def stage_config(params: Params, stage: Stage) -> Train:
    return params.pretrain if stage == "pretrain" else params.finetune


def build_projector_for(
    params: Params, vision_dim: int, llm_dim: int, grid: tuple[int, int]
) -> tuple[Projector, dict[str, Any]]:
    """The params' projector for a backbone of width `vision_dim` on `grid`."""
    p = params.projector
    options = p.active_options
    m = grid[0] * grid[1] if projector_class(p.name).keeps_all_tokens else p.num_queries
    projector = build_projector(
        p.name, vision_dim=vision_dim, llm_dim=llm_dim, num_queries=m, grid=grid, **options
    )
    return projector, options


def check_features(
    params: Params, split: str
) -> tuple[list[str], dict[str, int], int, tuple[int, int]]:
    """The shards of `split`, examples per shard, the feature width and grid — or an error before
    training."""
    v = params.vision
    root = Path(params.paths.features)
    try:
        table, fingerprint = read_manifest(root)
    except FileNotFoundError as err:
        raise TrainingError(str(err)) from None
    expected, width, grid = describe_vision(
        v.model,
        revision=v.revision,
        feature_layer=v.feature_layer,
        select=v.select,
        image_size=v.image_size,
        aspect=v.aspect,
        dtype=v.dtype,
        final_norm=v.final_norm,
    )
    if fingerprint.get("id") != expected["id"]:
        diffs = [
            f"{k}: {fingerprint.get(k)!r} vs {expected[k]!r}"
            for k in expected
            if fingerprint.get(k) != expected[k]
        ]
        raise TrainingError(
            f"the features in {root} come from another encoder than the params describe "
            f"(manifest vs params: {'; '.join(d for d in diffs if not d.startswith('id:'))}); rerun `msr features`"
        )
    counts: dict[str, int] = {}
    for shard, split_, status, records in zip(
        table["shard"].to_pylist(),
        table["split"].to_pylist(),
        table["status"].to_pylist(),
        table["record_ids"].to_pylist(),
        strict=True,
    ):
        if split_ == split and status == "ok":
            counts[shard] = counts.get(shard, 0) + len(records)
    if not counts:
        raise TrainingError(
            f"no {split} shards in {root}: the manifest lists none (run `msr features`)"
        )
    shards = [str(root / s) for s in sorted(counts)]
    return shards, {str(root / s): n for s, n in counts.items()}, width, grid


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ceil(ratio·total) steps, then cosine to 0 (LLaVA's schedule)."""
    warmup = math.ceil(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices; not biases, norms or other vectors."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


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
    cfg = stage_config(params, stage)
    topo = topology()
    try:
        return _train(params, stage, cfg, topo, resume, progress, log_dir, trace_dir)
    finally:
        finish(topo)


def _train(
    params: Params,
    stage: Stage,
    cfg: Train,
    topo: Topology,
    resume: Resume,
    progress: Progress | None,
    log_dir: Path | None,
    trace_dir: Path | None,
) -> TrainResult:
    split = "pretrain" if stage == "pretrain" else "instruct"
    out = Path(params.paths.pretrain if stage == "pretrain" else params.paths.finetune)
    shards, counts, vision_dim, grid = check_features(params, split)
    mine = shards_for_rank(shards, topo.rank, topo.world_size)
    _seed(cfg.seed + topo.rank)

    m = params.llm
    tokenizer = load_tokenizer(m.model, revision=m.revision, gguf_file=m.gguf_file)
    template = load_template(cfg.template or m.template, tokenizer, m.model, m.system)
    llm = load_causal_lm(
        m.model,
        revision=m.revision,
        gguf_file=m.gguf_file,
        dtype="fp32" if cfg.train_llm else m.dtype,
    )
    llm.requires_grad_(cfg.train_llm)
    if cfg.gradient_checkpointing and cfg.train_llm:
        llm.gradient_checkpointing_enable()
    projector, options = build_projector_for(params, vision_dim, llm.config.hidden_size, grid)
    if stage == "finetune":
        expected = ckpt.projector_config(projector, options)
        stage1 = ckpt.load_projector(Path(params.paths.pretrain), expected)
        projector.load_state_dict(stage1.state_dict())
    model = MLLM(
        llm, projector, tokenizer=tokenizer, config=mllm_config(params, projector, options)
    ).to(topo.device)

    micro_per_epoch = all_min(sum(counts[s] for s in mine) // cfg.per_device_batch, topo)
    steps_per_epoch = micro_per_epoch // cfg.grad_accum
    if steps_per_epoch < 1:
        raise TrainingError(
            f"{split}: {micro_per_epoch} micro-batches per rank cannot make one optimizer step of "
            f"grad_accum={cfg.grad_accum}; lower per_device_batch or grad_accum, or add data"
        )
    total = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999)
    )
    scheduler = cosine_with_warmup(optimizer, total, cfg.warmup_ratio)
    engine = None
    if cfg.deepspeed:
        import deepspeed

        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, topo),
        )

    identity = _identity(params, stage, cfg, topo, projector, options)
    ckdir = out / "checkpoints"
    position = {"step": 0, "epoch": 0, "micro": 0, "samples": 0, "tokens": 0}
    resumed_from = 0
    found = _find_checkpoint(ckdir, identity, resume, topo)
    if found:
        position = _load(ckdir, model, optimizer, scheduler, engine, topo)
        resumed_from = position["step"]
        log.info(
            "%s: resuming at step %d (epoch %d, micro-batch %d)",
            stage,
            position["step"],
            position["epoch"],
            position["micro"],
        )
    barrier(topo)

    logger = MetricLogger(log_dir, enabled=topo.main, resumed_step=resumed_from)
    autocast = torch.autocast(topo.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    step, first_loss, last_loss = position["step"], math.nan, math.nan
    start, data_wait, startup_wait, window = time.perf_counter(), 0.0, 0.0, _Window()
    seen: list[str] = []
    model.train()
    while step < total:
        stream = ExampleStream(
            mine,
            tokenizer=tokenizer,
            template=template,
            num_image_tokens=model.num_image_tokens,
            max_length=params.llm.max_length,
            batch_size=cfg.per_device_batch,
            seed=cfg.seed,
            epoch=position["epoch"],
            shuffle_buffer=cfg.shuffle_buffer,
            group_by_modality_length=cfg.group_by_modality_length,
            strict=params.data.strict,
        )
        loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=cfg.loader_workers
        )
        batches, fresh = iter(loader), True
        for _ in range(
            position["micro"]
        ):  # resume: the stream is deterministic, skip what was seen
            next(batches)
        while position["micro"] < steps_per_epoch * cfg.grad_accum and step < total:
            t0 = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - t0
            data_wait += waited
            startup_wait += waited if fresh else 0.0  # a new iterator starts its workers first
            fresh = False
            if all_min(int(batch is not None), topo) == 0:
                break  # some rank ran out (samples skipped as bad): end the epoch everywhere
            assert batch is not None
            seen += batch.keys
            batch = batch.to(topo.device)
            with autocast:
                runner = engine if engine is not None else model
                loss = runner(
                    batch.input_ids,
                    batch.attention_mask,
                    batch.image_mask,
                    batch.features,
                    batch.labels,
                ).loss
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{stage}: loss is {loss.item()} at step {step} (epoch {position['epoch']}, micro-batch "
                    f"{position['micro']}); samples: {', '.join(batch.keys)}"
                )
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / cfg.grad_accum).backward()
            position["micro"] += 1
            position["samples"] += len(batch.keys) * topo.world_size
            position["tokens"] += batch.tokens * topo.world_size
            window.add(
                loss.item(), len(batch.keys) * topo.world_size, batch.tokens * topo.world_size
            )
            if position["micro"] % cfg.grad_accum:
                continue
            if engine is None:
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            position["step"] = step
            last_loss = window.loss
            if math.isnan(first_loss):
                first_loss = last_loss
            if step % cfg.log_every == 0 or step == total:
                metrics = window.flush(
                    float(scheduler.get_last_lr()[0]), time.perf_counter() - start, data_wait
                )
                logger.log(step, metrics)
                if progress is not None and topo.main:
                    progress(step, total, metrics)
            if step % cfg.save_every == 0 and step < total:
                _save(
                    ckdir,
                    model,
                    optimizer,
                    scheduler,
                    engine,
                    topo,
                    {**position, "identity": identity},
                )
        if step < total:
            position.update(epoch=position["epoch"] + 1, micro=0)

    states = _save_final(params, stage, out, model, options, engine, topo)
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        (trace_dir / f"samples-rank{topo.rank}.txt").write_text("".join(k + "\n" for k in seen))
        atomic_write_json(
            trace_dir / f"params-rank{topo.rank}.json",
            {k: state_digest(v) for k, v in states.items()},
        )
    seconds = time.perf_counter() - start
    result = TrainResult(
        step,
        position["samples"],
        position["tokens"],
        first_loss,
        last_loss,
        seconds,
        data_wait,
        startup_wait,
        resumed_from,
        str(out),
    )
    if topo.main:
        atomic_write_json(out / "train.json", asdict(result))
        shutil.rmtree(ckdir, ignore_errors=True)  # finished: a later run must not resume from it
    logger.close(asdict(result))
    return result


class _Window:
    """Loss and throughput accumulated between two log lines."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.samples = self.tokens = 0
        self.t = time.perf_counter()
        self.last_loss = math.nan

    def add(self, loss: float, samples: int, tokens: int) -> None:
        self.losses.append(loss)
        self.samples += samples
        self.tokens += tokens

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else self.last_loss

    def flush(self, lr: float, elapsed: float, data_wait: float) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t, 1e-9)
        out = {
            "loss": self.loss,
            "lr": lr,
            "samples_per_s": self.samples / dt,
            "tokens_per_s": self.tokens / dt,
            "data_wait_share": data_wait / max(elapsed, 1e-9),
        }
        self.last_loss, self.losses, self.samples, self.tokens, self.t = (
            self.loss,
            [],
            0,
            0,
            time.perf_counter(),
        )
        return out


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _identity(
    params: Params,
    stage: Stage,
    cfg: Train,
    topo: Topology,
    projector: Projector,
    options: dict[str, Any],
) -> str:
    """What a resumable checkpoint must match: stage params, model, data, world size."""
    blob = {
        "stage": stage,
        "train": cfg.model_dump(mode="json"),
        "llm": params.llm.model_dump(mode="json"),
        "vision": params.vision.model_dump(mode="json"),
        "projector": ckpt.projector_config(projector, options),
        "features": params.paths.features,
        "world": topo.world_size,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _find_checkpoint(ckdir: Path, identity: str, resume: Resume, topo: Topology) -> bool:
    state = ckdir / "last" / "state.json"
    if not state.exists():
        if resume == "yes":
            raise TrainingError(f"--resume yes: no checkpoint in {ckdir}")
        return False
    saved = json.loads(state.read_text()).get("identity")
    if saved == identity and resume in ("auto", "yes"):
        return True
    if resume == "yes":
        raise TrainingError(
            f"--resume yes: the checkpoint in {ckdir} was made with other params or world size"
        )
    if topo.main:
        why = "other params" if saved != identity else "--resume no"
        log.warning("not resuming from %s (%s); starting over", ckdir, why)
    return False


def _save(
    ckdir: Path,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    engine: Any,
    topo: Topology,
    position: dict[str, Any],
) -> None:
    if engine is not None:
        engine.save_checkpoint(str(ckdir / "ds"), tag="last", client_state={"position": position})
        torch.save(ckpt.rng_state(), ckdir / "ds" / f"rng_rank{topo.rank}.pt")
        barrier(topo)
        if topo.main:
            atomic_write_json(ckdir / "last" / "state.json", position)
        return
    ckpt.save_training_state(ckdir / "last", model, optimizer, scheduler, position)


def _load(
    ckdir: Path, model: nn.Module, optimizer: Any, scheduler: Any, engine: Any, topo: Topology
) -> dict[str, Any]:
    if engine is not None:
        _, client = engine.load_checkpoint(str(ckdir / "ds"), tag="last")
        ckpt.set_rng_state(torch.load(ckdir / "ds" / f"rng_rank{topo.rank}.pt", weights_only=False))
        return dict(client["position"])
    return ckpt.load_training_state(ckdir / "last", model, optimizer, scheduler)


def _full_state(module: nn.Module, engine: Any) -> dict[str, torch.Tensor]:
    """The module's full state dict on CPU; under ZeRO-3 each parameter is gathered on its own."""
    zero3 = engine is not None and engine.zero_optimization_partition_weights()
    state = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if zero3 and hasattr(tensor, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                state[name] = tensor.detach().cpu().clone()
        else:
            state[name] = tensor.detach().cpu().clone()
    return state


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes and values of a state dict."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _save_final(
    params: Params,
    stage: Stage,
    out: Path,
    model: MLLM,
    options: dict[str, Any],
    engine: Any,
    topo: Topology,
) -> dict[str, dict[str, torch.Tensor]]:
    """Write the stage's artifacts from rank 0 — the projector alone (stage 1) or the whole model
    (stage 2) — and return the full (gathered) states every rank holds."""
    proj_state = _full_state(model.projector, engine)
    llm_state = _full_state(model.llm, engine) if stage == "finetune" else None
    if topo.main:
        if llm_state is None:
            assert model.config is not None
            projector = ckpt.build_from_config(model.config.projector)
            projector.load_state_dict(proj_state)
            ckpt.save_projector(out, projector, options)
        else:
            model.save_pretrained(
                out, dtype=params.llm.dtype, llm_state=llm_state, projector_state=proj_state
            )
    barrier(topo)
    return {"projector": proj_state, **({"llm": llm_state} if llm_state is not None else {})}


def mllm_config(params: Params, projector: Projector, options: dict[str, Any]) -> MLLMConfig:
    """How the trained model is put back together: vision backbone, base LLM, template, projector."""
    v, m = params.vision, params.llm
    return MLLMConfig(
        vision={
            "model": v.model,
            "revision": v.revision,
            "feature_layer": v.feature_layer,
            "select": v.select,
            "image_size": v.image_size,
            "aspect": v.aspect,
            "dtype": v.dtype,
            "final_norm": v.final_norm,
        },
        llm={"model": m.model, "revision": m.revision, "gguf_file": m.gguf_file},
        template=params.finetune.template or m.template,
        system=m.system,
        max_length=m.max_length,
        projector=ckpt.projector_config(projector, options),
    )
