"""Stage `features`: cache vision features of the pretrain and instruct data as WebDataset shards."""

from __future__ import annotations

import os
from pathlib import Path

from msr.config import Params
from msr.data.features import FeatureReport, Progress, Source, encode_features
from msr.models.vision import VisionTower


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) from the torch.distributed launcher environment, (0, 1) without one."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run(
    params: Params,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    workers: int | None = None,
    verify: bool = False,
    progress: Progress | None = None,
    on_plan: object = None,
) -> FeatureReport:
    """Encode this rank's shards. Under a launcher (RANK/WORLD_SIZE set) every rank encodes its part,
    waits for the others, and rank 0 writes the manifest; with an explicit --rank, run
    `msr features --merge-only` once all ranks are done."""
    env_rank, env_world = distributed_rank()
    if workers is None:  # on a few cores the encoder needs them all; decoding runs in between
        workers = max(0, min(8, (os.cpu_count() or 1) - 2))
    explicit = rank is not None
    rank = rank if rank is not None else env_rank
    world = world_size if world_size is not None else env_world
    v, d = params.vision, params.data
    tower = VisionTower(
        v.model,
        revision=v.revision,
        feature_layer=v.feature_layer,
        select=v.select,
        aspect=v.aspect,
        dtype=v.dtype,
    )
    if tower.grid != v.grid:
        raise ValueError(
            f"vision tower grid {tower.grid} != params grid {v.grid} (image_size/patch_size)"
        )
    sources = [
        Source("pretrain", Path(d.pretrain_json), Path(d.pretrain_images)),
        Source("instruct", Path(d.instruct_json), Path(d.instruct_images)),
    ]
    launched = world > 1 and not explicit
    report = encode_features(
        sources,
        Path(params.paths.features),
        tower,
        shard_mb=d.shard_mb,
        batch_size=d.encode_batch,
        strict=d.strict,
        rank=rank,
        world_size=world,
        workers=workers,
        verify=verify,
        merge=world == 1,
        progress=progress,
        on_plan=on_plan,  # type: ignore[arg-type]
    )
    if launched:
        _barrier_then_merge(params, tower, sources, rank)
    return report


def _barrier_then_merge(
    params: Params, tower: VisionTower, sources: list[Source], rank: int
) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
    if rank == 0:
        merge_only(params, tower=tower, sources=sources)
    dist.barrier()


def merge_only(
    params: Params, tower: VisionTower | None = None, sources: list[Source] | None = None
) -> FeatureReport:
    """Write manifest.parquet and skips.json from the fragments of every planned shard."""
    v, d = params.vision, params.data
    tower = tower or VisionTower(
        v.model,
        revision=v.revision,
        feature_layer=v.feature_layer,
        select=v.select,
        aspect=v.aspect,
        dtype=v.dtype,
    )
    sources = sources or [
        Source("pretrain", Path(d.pretrain_json), Path(d.pretrain_images)),
        Source("instruct", Path(d.instruct_json), Path(d.instruct_images)),
    ]
    return encode_features(
        sources,
        Path(params.paths.features),
        tower,
        shard_mb=d.shard_mb,
        batch_size=d.encode_batch,
        strict=d.strict,
        rank=0,
        world_size=1,
        workers=0,
        encode=False,
        merge=True,
    )
