"""The bf16 speed check: a CPU without native bf16 gets one warning that names the params and the fix."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from msr.utils.precision import SLOW, bf16_slowdown, check_bf16_speed

CPU = torch.device("cpu")


def test_slowdown_is_a_measured_ratio() -> None:
    ratio = bf16_slowdown(tokens=64, width=32, repeats=2)
    assert math.isfinite(ratio) and ratio > 0


def test_slow_bf16_warns_with_the_fields_and_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="msr.utils.precision"):
        assert check_bf16_speed(["vision.dtype=bf16"], CPU, slowdown=40.0) == 40.0
    (record,) = caplog.records
    assert "vision.dtype=bf16: bf16 on this CPU runs 40× slower than fp32" in record.message
    assert "--fp32" in record.message and "FP32=1" in record.message


@pytest.mark.parametrize(
    ("fields", "device", "slowdown", "returned"),
    [
        (["eval.dtype=bf16"], CPU, SLOW, SLOW),  # fast enough: measured, no warning
        ([], CPU, 40.0, None),  # nothing asks for bf16
        (["eval.dtype=bf16"], torch.device("cuda"), 40.0, None),  # not a CPU
    ],
)
def test_no_warning_otherwise(
    caplog: pytest.LogCaptureFixture,
    fields: list[str],
    device: torch.device,
    slowdown: float,
    returned: float | None,
) -> None:
    with caplog.at_level(logging.WARNING, logger="msr.utils.precision"):
        assert check_bf16_speed(fields, device, slowdown=slowdown) == returned
    assert not caplog.records
