"""Stage `features`: cache vision features of the pretrain and instruct data as WebDataset shards."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from msr.config import Params
from msr.data.features import FeatureReport, Progress, Source, encode_features
from msr.data.streams import default_streams
from msr.models.vision import VisionBackbone, vision_for
from msr.runtime import device_for, ranks
from msr.utils.memory import retain_freed_memory
from msr.utils.precision import check_bf16_speed

SPLITS = ("pretrain", "instruct")


def sources_of(params: Params, splits: Sequence[str] = SPLITS) -> list[Source]:
    """The data sources of `splits` (default: both)."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"splits {unknown}; accepted: {list(SPLITS)}")
    d = params.data
    every = {
        "pretrain": Source("pretrain", Path(d.pretrain_json), Path(d.pretrain_images)),
        "instruct": Source("instruct", Path(d.instruct_json), Path(d.instruct_images)),
    }
    return [every[s] for s in SPLITS if s in splits]


def run(
    params: Params,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    workers: int | None = None,
    streams: int | None = None,
    device: str = "auto",
    verify: bool = False,
    progress: Progress | None = None,
    on_plan: Callable[[int], None] | None = None,
    splits: Sequence[str] = SPLITS,
) -> FeatureReport:
    """Encode this rank's shards of `splits` (default: both; a later run with more splits encodes
    only the shards still missing, and its manifest lists them all). Under a launcher
    (RANK/WORLD_SIZE set) every rank encodes its part, waits for the others, and rank 0 writes the
    manifest; with an explicit --rank, run `msr features --merge-only` once all ranks are done.

    Defaults: on a GPU one stream fed by min(8, cores − 2) decoding processes; on a CPU one
    stream per core, each decoding its own batches (no decoding processes)."""
    env_rank, env_world = ranks()
    retain_freed_memory()  # per-image and per-batch buffers are reused, not faulted in anew
    dev = device_for(device)  # not in the encoder's fingerprint: GPU and CPU differ by rounding
    check_bf16_speed(["vision.dtype=bf16"] if params.vision.dtype == "bf16" else [], dev)
    if workers is None:
        workers = max(0, min(8, (os.cpu_count() or 1) - 2)) if dev.type == "cuda" else 0
    if streams is None:
        streams = default_streams(dev)
    explicit = rank is not None
    rank = rank if rank is not None else env_rank
    world = world_size if world_size is not None else env_world
    tower, sources = vision_for(params.vision, dev), sources_of(params, splits)
    report = _encode(
        params,
        tower,
        sources,
        rank=rank,
        world_size=world,
        workers=workers,
        streams=streams,
        verify=verify,
        merge=world == 1,
        progress=progress,
        on_plan=on_plan,
    )
    if world > 1 and not explicit:  # launched: wait for every rank, then rank 0 merges
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        merged = _encode(params, tower, sources, encode=False) if rank == 0 else None
        dist.barrier()
        dist.destroy_process_group()
        if merged is not None:
            report.ledgers, report.offered = merged.ledgers, merged.offered
    report.check_share(params.data.max_skip_share)  # once merged: the outputs are complete
    return report


def launch_options(
    device: str, workers: int | None, streams: int | None, verify: bool
) -> list[str]:
    """The options of `msr features` each launched process gets again."""
    out = [f"--device={device}"]
    out += [f"--workers={workers}"] if workers is not None else []
    out += [f"--streams={streams}"] if streams is not None else []
    return out + (["--verify"] if verify else [])


def merge_only(params: Params) -> FeatureReport:
    """Write manifest.parquet and skips.json from the fragments of every planned shard."""
    report = _encode(params, vision_for(params.vision), sources_of(params), encode=False)
    report.check_share(params.data.max_skip_share)
    return report


def _encode(
    params: Params, tower: VisionBackbone, sources: list[Source], **options: Any
) -> FeatureReport:
    """`encode_features` with the params' output folder, shard size, batch and strictness."""
    d = params.data
    return encode_features(
        sources,
        Path(params.paths.features),
        tower,
        shard_mb=d.shard_mb,
        batch_size=d.encode_batch,
        strict=d.strict,
        limits=d.image_limits,
        outside_root=d.images_outside_root,
        **options,
    )
