"""Parallel streams keep job order, hand their errors on, and run with their share of threads."""

from __future__ import annotations

import time

import pytest
import torch

from msr.data.streams import ordered_map


def test_results_come_in_job_order() -> None:
    def slow_first(i: int) -> int:
        time.sleep(0.02 if i % 3 == 0 else 0.0)  # later jobs finish first
        return i * i

    assert list(ordered_map(slow_first, range(20), 3)) == [i * i for i in range(20)]
    assert list(ordered_map(slow_first, range(5), 1)) == [i * i for i in range(5)]


def test_an_error_in_a_stream_reaches_the_caller() -> None:
    def fail_at_4(i: int) -> int:
        if i == 4:
            raise ValueError(f"job {i} failed")
        return i

    out = []
    with pytest.raises(ValueError, match="job 4 failed"):
        for x in ordered_map(fail_at_4, range(10), 2):
            out.append(x)
    assert out == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="streams=0"):
        list(ordered_map(fail_at_4, range(3), 0))


def test_each_stream_gets_its_share_of_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        seen = list(ordered_map(lambda _: torch.get_num_threads(), range(4), 2))
        assert seen == [2, 2, 2, 2]
        assert torch.get_num_threads() == 4  # the caller's count is left as it was
    finally:
        torch.set_num_threads(before)


def test_batches_cover_every_item_once_and_the_tail_is_finer() -> None:
    from msr.data.features import _spans

    for n, batch, streams in [(512, 32, 2), (100, 32, 3), (5, 32, 2), (0, 32, 2), (70, 32, 1)]:
        spans = _spans(n, batch, streams)
        assert [i for s in spans for i in s] == list(range(n))
        assert all(0 < len(s) <= batch for s in spans)
    spans = _spans(512, 32, 2)
    assert [len(s) for s in spans] == [32] * 14 + [8] * 8
    assert [len(s) for s in _spans(70, 32, 1)] == [32, 32, 6]


def test_encode_device_choices() -> None:
    from msr.runtime import device_for as encode_device

    assert encode_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert encode_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            encode_device("cuda")
    with pytest.raises(ValueError, match="device='tpu'; accepted"):
        encode_device("tpu")
