"""The training loader: deterministic order, rank split, modality grouping, bad samples."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from msr.config import Params, parse_params
from msr.data.loader import Batch, ExampleStream, shards_for_rank
from msr.data.templates import make_template
from msr.data.tokenize import IGNORE_INDEX, BadSample
from stages import features


@pytest.fixture(scope="module")
def shards(tiny_workspace: Params, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    raw = tiny_workspace.model_dump(mode="json")
    raw["paths"]["features"] = str(tmp_path_factory.mktemp("features"))
    features.run(parse_params(raw), workers=0)
    return sorted(str(p) for p in Path(raw["paths"]["features"]).glob("instruct-*.tar"))


@pytest.fixture(scope="module")
def tokenizer(tiny_workspace: Params):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_workspace.llm.model)


def stream(shards: list[str], tokenizer, **kw) -> ExampleStream:  # type: ignore[no-untyped-def]
    args = dict(
        tokenizer=tokenizer,
        template=make_template("vicuna_v1", tokenizer),
        num_image_tokens=36,
        max_length=256,
        batch_size=4,
        shuffle_buffer=8,
    )
    return ExampleStream(shards, **{**args, **kw})


def keys(ds: ExampleStream) -> list[str]:
    return [k for b in ds for k in b.keys]


def skipped(batches: Iterable[Batch]) -> list[tuple[str, str]]:
    return [s for b in batches for s in b.skipped]


def test_same_seed_same_order(shards: list[str], tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert keys(stream(shards, tokenizer, seed=1)) == keys(stream(shards, tokenizer, seed=1))
    assert keys(stream(shards, tokenizer, seed=1)) != keys(
        stream(shards, tokenizer, seed=1, epoch=1)
    )


def test_one_example_per_record(shards: list[str], tokenizer, tiny_workspace: Params) -> None:  # type: ignore[no-untyped-def]
    got = keys(stream(shards, tokenizer, drop_last=False))
    d = tiny_workspace.data.synth
    assert len(got) == len(set(got)) == d.instruct_images + d.text_only


def test_batch_layout(shards: list[str], tokenizer) -> None:  # type: ignore[no-untyped-def]
    batch = next(iter(stream(shards, tokenizer)))
    B, T = batch.input_ids.shape
    assert batch.labels.shape == batch.attention_mask.shape == batch.image_mask.shape == (B, T)
    with_image = batch.image_mask.any(dim=1)
    assert batch.features.shape == (int(with_image.sum()), 576, 64)
    assert (batch.image_mask.sum(dim=1)[with_image] == 36).all()
    assert (batch.labels[batch.image_mask] == IGNORE_INDEX).all()
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()
    assert ((batch.labels != IGNORE_INDEX).sum(dim=1) > 0).all()


def test_grouping_by_modality(shards: list[str], tokenizer) -> None:  # type: ignore[no-untyped-def]
    ds = stream(shards, tokenizer, group_by_modality_length=True, batch_size=2, drop_last=False)
    batches = list(ds)
    for b in batches:
        has = b.image_mask.any(dim=1)
        assert bool(has.all()) or not bool(has.any())  # one modality per batch
    assert sum(len(b.keys) for b in batches) == len(
        keys(stream(shards, tokenizer, drop_last=False))
    )


def test_ranks_get_disjoint_shards() -> None:
    shards = [f"s{i}" for i in range(5)]
    parts = [shards_for_rank(shards, r, 2) for r in range(2)]
    assert parts == [["s0", "s2", "s4"], ["s1", "s3"]]
    with pytest.raises(ValueError, match="rank 3 of 4 gets no shard"):
        shards_for_rank(shards[:3], 3, 4)


def test_bad_samples_strict_or_counted(shards: list[str], tokenizer) -> None:  # type: ignore[no-untyped-def]
    # max_length 60 cuts every image sample inside the supervised answers -> nothing to learn
    with pytest.raises(BadSample, match=r"every label is masked|cuts into the image"):
        list(stream(shards, tokenizer, max_length=60, strict=True))
    batches = list(stream(shards, tokenizer, max_length=60, drop_last=False))
    survivors = [k for b in batches for k in b.keys]
    skips = skipped(batches)
    assert skips and all(r.startswith("template: ") for _, r in skips)
    assert all(k.startswith("text_") for k in survivors)  # only short text-only samples fit
    every = keys(stream(shards, tokenizer, drop_last=False))
    assert sorted(survivors + [k for k, _ in skips]) == sorted(every)  # nothing lost silently


def test_skips_reach_the_main_process_from_workers(shards: list[str], tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Skips met inside DataLoader workers travel on the batches (and a last empty one)."""
    ds = stream(shards, tokenizer, max_length=60, batch_size=2)
    in_process = list(ds)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    in_workers = list(loader)

    def bad(batches: list[Batch]) -> list[tuple[str, str]]:
        return sorted(s for s in skipped(batches) if s[1].startswith("template: "))

    assert bad(in_workers) == bad(in_process) and bad(in_process)
    assert "loader: incomplete last batch (drop_last)" in {r for _, r in skipped(in_process)}
    trained = [k for b in in_workers for k in b.keys]
    every = keys(stream(shards, tokenizer, drop_last=False))
    assert sorted(trained + [k for k, _ in skipped(in_workers)]) == sorted(every)


def test_no_shards() -> None:
    with pytest.raises(ValueError, match="no feature shards"):
        ExampleStream(
            [],
            tokenizer=None,
            template=make_template("plain"),
            num_image_tokens=36,
            max_length=8,
            batch_size=1,
        )


def test_dataloader_workers_see_every_example(shards: list[str], tokenizer) -> None:  # type: ignore[no-untyped-def]
    ds = stream(shards, tokenizer, drop_last=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(k for b in loader for k in b.keys) == sorted(keys(ds))
