"""Benchmark plumbing: timing protocol, MAC counting fix, target computation."""

from __future__ import annotations

import time

import pytest
import torch

from msr.config import Bench, BenchScale
from msr.profile import projector_bench, timing
from msr.profile.flops import counted_macs
from msr.profile.projector_bench import (
    BRANCHES,
    REFERENCE,
    TORCH_FUSION,
    _add_fusion_share,
    bench_projectors,
    flatten,
    ms_resampler_formula_macs,
    nest,
    targets,
)
from msr.profile.timing import time_round_robin
from msr.report.projectors_bench import render

PAPER = BenchScale(batch=4, grid=(24, 24), vision_dim=1024, llm_dim=4096, num_queries=144)


def test_round_robin_medians_order_candidates() -> None:
    timings = time_round_robin(
        {"fast": lambda: None, "slow": lambda: time.sleep(0.01)}, repeats=3, warmup=1
    )
    assert timings["slow"].median_ms > timings["fast"].median_ms
    assert (
        timings["slow"].repeats == 3
        and timings["slow"].min_ms <= timings["slow"].median_ms <= timings["slow"].max_ms
    )


def test_depthwise_conv_backward_is_counted_exactly() -> None:
    """torch's formula ignores groups in the weight gradient; ours counts each product once per gradient."""
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    forward = 2 * 16 * 8 * 8 * 9
    assert counted_macs(lambda: conv(x)) == forward

    def step() -> None:
        conv(x).sum().backward()

    assert counted_macs(step) == 3 * forward  # forward, grad input, grad weight


def test_formula_matches_design() -> None:
    # 3 branches × (4 × (2·144·576·1024 + 144·1024·4096) + 144·4096·1024)
    assert ms_resampler_formula_macs(PAPER, 3) == 3 * (4 * 773_849_088 + 603_979_776)


def _row(name: str, dtype: str, mode: str, ms: float, macs: int = 0) -> dict[str, object]:
    return {
        "projector": name,
        "scale": "paper",
        "dtype": dtype,
        "mode": mode,
        "median_ms": ms,
        "macs_counted": macs,
        "ratio_to_mlp": None,
    }


def test_targets_report_met_and_not_met() -> None:
    bench = Bench(scales={"paper": PAPER}, dtypes=["fp32"])
    formula = ms_resampler_formula_macs(PAPER, 3)
    rows = [
        _row("ms_resampler", "fp32", "forward+backward", 100.0),
        _row(REFERENCE, "fp32", "forward+backward", 250.0),
        {**_row("ms_resampler", "fp32", "forward", 10.0, int(formula * 1.01)), "ratio_to_mlp": 0.4},
    ]
    t = targets(rows, bench, {})
    assert t["speedup_vs_textbook_fwd_bwd"]["fp32"] == {"speedup": 2.5, "target": 3.0, "met": False}
    assert t["forward_vs_mlp"]["fp32"]["met"]
    assert (
        t["macs_vs_formula"]["met"]
        and abs(t["macs_vs_formula"]["relative_difference"] - 0.01) < 1e-6
    )


def test_nest_round_trips() -> None:
    rows = [_row("mlp", "fp32", "forward", 1.0), _row("mlp", "bf16", "forward", 2.0)]
    assert sorted(flatten(nest(rows)), key=lambda r: r["dtype"]) == sorted(
        rows, key=lambda r: r["dtype"]
    )


def test_cpu_flash_attention_is_counted() -> None:
    """SDPA on real CPU tensors dispatches to a kernel torch's counter misses; ours counts it."""
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    expected = 2 * 4 * 16 * 16 * 8 * 2  # QKᵀ and attention·V, per batch and head
    assert (
        counted_macs(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == expected
    )
    with torch.device("meta"):
        qm, km, vm = (torch.randn(2, 4, 16, 8) for _ in range(3))
        assert (
            counted_macs(lambda: torch.nn.functional.scaled_dot_product_attention(qm, km, vm))
            == expected
        )


def test_fusion_share_is_one_minus_branches_over_model() -> None:
    bench = Bench(scales={"paper": PAPER}, dtypes=["bf16"])
    rows = [
        _row("ms_resampler", "bf16", "forward+backward", 100.0),
        _row(BRANCHES, "bf16", "forward+backward", 90.0),
        _row(TORCH_FUSION, "bf16", "forward+backward", 300.0),
        _row("mlp", "bf16", "forward+backward", 50.0),
    ]
    _add_fusion_share(rows)
    share = {r["projector"]: r["fusion_share"] for r in rows}
    assert abs(share["ms_resampler"] - 0.10) < 1e-12
    assert abs(share[TORCH_FUSION] - 0.70) < 1e-12
    assert share["mlp"] is None and share[BRANCHES] is None
    t = targets(rows, bench, {})["fusion_share_fwd_bwd"]["bf16"]
    assert t["met"] and t["target"] == 0.15 and abs(t["torch_fusion_share"] - 0.70) < 1e-12
    rows[0]["median_ms"] = 120.0
    _add_fusion_share(rows)
    assert not targets(rows, bench, {})["fusion_share_fwd_bwd"]["bf16"]["met"]


TINY = BenchScale(batch=2, grid=(6, 6), vision_dim=16, llm_dim=32, num_queries=9)


def test_bench_times_the_branches_and_both_fusions_side_by_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(projector_bench, "bf16_slowdown", lambda: 1.0)  # bf16 runs on any CPU
    bench = Bench(scales={"tiny": TINY}, projectors=["ms_resampler"], repeats=1, warmup=0)
    result = bench_projectors(bench, {"ms_resampler": {"kernels": [2, 6]}})
    rows = {(r["projector"], r["dtype"], r["mode"]): r for r in flatten(result["results"])}
    for dt in ("fp32", "bf16"):
        for mode in ("forward", "forward+backward"):
            model, branches = rows[("ms_resampler", dt, mode)], rows[(BRANCHES, dt, mode)]
            assert rows[(TORCH_FUSION, dt, mode)]["macs_counted"] == model["macs_counted"]
            assert branches["macs_counted"] < model["macs_counted"]  # the fusion's matmuls
            assert model["fusion_share"] == 1 - branches["median_ms"] / model["median_ms"]


def test_bf16_is_not_benched_where_the_cpu_emulates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projector_bench, "bf16_slowdown", lambda: 40.0)
    bench = Bench(scales={"tiny": TINY}, projectors=["mlp"], repeats=1, warmup=0)
    result = bench_projectors(bench, {})
    assert {r["dtype"] for r in flatten(result["results"])} == {"fp32"}
    assert set(result["peak_gflops"]) == {"fp32"}
    assert "no native bf16 (a linear layer takes 40× fp32's time)" in result["skipped"]["bf16"]
    assert "- bf16: not run: this CPU has no native bf16" in render(result)


@pytest.mark.parametrize(("ms_at_256", "measured"), [(0.5, 2048), (80.0, 256)])
def test_matmul_peak_stops_growing_where_the_next_size_would_take_too_long(
    monkeypatch: pytest.MonkeyPatch, ms_at_256: float, measured: int
) -> None:
    """A fast dtype is measured at the full size; one this machine emulates slowly at a small one
    (a product's time grows with side³; the next would take over the 0.5 s budget)."""
    sides: list[int] = []

    def fake(candidates, repeats, warmup):  # type: ignore[no-untyped-def]
        side = candidates["mm"].args[0].shape[0]
        sides.append(side)
        ms = ms_at_256 * (side / 256) ** 3
        return {"mm": timing.Timing(ms, ms, ms, repeats)}

    monkeypatch.setattr(timing, "time_round_robin", fake)
    gflops = timing.matmul_peak_gflops(torch.float32, size=2048, budget_s=0.5)
    assert sides == [256 * 2**i for i in range(len(sides))] and sides[-1] == measured
    assert gflops == pytest.approx(2 * 256**3 / (ms_at_256 * 1e-3) / 1e9)
