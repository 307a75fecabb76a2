"""The projector benchmark: every registered projector (and the textbook MS-Resampler) at each scale,
forward and forward+backward, fp32 and bf16, timed round-robin; MACs analytic and counted.

MS-Resampler gets two more rows, timed in the same round robin: its E branches alone
(`forward_branches`, everything but the fusion) and the model with the PyTorch implementation of
the channel-wise fusion instead of the native kernel. fusion share = 1 − branches / model.

Forward runs under no_grad (inference). Forward+backward treats the features as frozen (no grad to
X), as in training with a frozen vision tower, and drops parameter grads between repeats.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from msr.config import Bench, BenchScale
from msr.profile.environment import environment
from msr.profile.flops import counted_macs
from msr.profile.timing import matmul_peak_gflops, time_round_robin
from msr.projectors import PROJECTORS, Projector, build_projector, output_tokens
from msr.projectors.fusion import ChannelMLPFusion
from msr.projectors.ms_resampler import MSResampler
from msr.projectors.reference import reference_forward, reference_macs
from msr.utils.precision import SLOW, bf16_slowdown

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ("forward", "forward+backward")
REFERENCE = "ms_resampler (textbook)"
BRANCHES = "ms_resampler (branches)"
TORCH_FUSION = "ms_resampler (torch fusion)"
VARIANTS = (REFERENCE, BRANCHES, TORCH_FUSION)  # rows that time an MS-Resampler another way
SPEEDUP_TARGET = 3.0
FUSION_SHARE_TARGET = 0.15
MACS_TOLERANCE = 0.05


def build_for_scale(name: str, scale: BenchScale, options: Mapping[str, Any]) -> Projector:
    """Projector `name` at this scale; projectors that keep all tokens get M = N."""
    n = scale.grid[0] * scale.grid[1]
    m = output_tokens(name, scale.num_queries, n)
    return build_projector(
        name,
        vision_dim=scale.vision_dim,
        llm_dim=scale.llm_dim,
        num_queries=m,
        grid=tuple(scale.grid),
        **options,
    )


def _runner(fn: Callable[[], torch.Tensor], module: Projector, mode: str) -> Callable[[], object]:
    """A zero-argument call that runs one timed step of `mode`."""
    if mode == "forward":

        def step() -> object:
            with torch.no_grad():
                return fn()

        return step
    grad_out: list[torch.Tensor] = []

    def step_bwd() -> object:
        module.zero_grad(set_to_none=True)
        y = fn()
        if not grad_out:
            grad_out.append(torch.randn_like(y))
        y.backward(grad_out[0])
        return None

    return step_bwd


def _candidates(
    names: list[str],
    scale: BenchScale,
    dtype: torch.dtype,
    options: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, tuple[Projector, Callable[[], torch.Tensor]]], dict[str, str]]:
    """label -> (module, forward call) for every projector that supports this scale, and the skips."""
    out: dict[str, tuple[Projector, Callable[[], torch.Tensor]]] = {}
    skipped: dict[str, str] = {}
    n = scale.grid[0] * scale.grid[1]
    for name in names:
        torch.manual_seed(0)
        try:
            module = build_for_scale(name, scale, options.get(name, {})).to(dtype)
        except ValueError as err:
            skipped[name] = str(err)
            continue
        x = torch.randn(scale.batch, n, module.input_dim, dtype=dtype)
        out[name] = (module, functools.partial(module, x))
        if isinstance(module, MSResampler):
            out[REFERENCE] = (module, functools.partial(reference_forward, module, x))
            out[BRANCHES] = (module, functools.partial(module.forward_branches, x))
            if isinstance(module.fusion, ChannelMLPFusion):
                twin = copy.deepcopy(module)
                assert isinstance(twin.fusion, ChannelMLPFusion)
                twin.fusion.impl = "torch"
                out[TORCH_FUSION] = (twin, functools.partial(twin, x))
    return out, skipped


def _count(label: str, scale: BenchScale, options: Mapping[str, Any], mode: str) -> int:
    """Counted MACs of one call of `mode`, on meta tensors (no compute, no memory)."""
    name = "ms_resampler" if label in VARIANTS else label
    n = scale.grid[0] * scale.grid[1]
    with torch.device("meta"):
        twin = build_for_scale(name, scale, options)
        x = torch.randn(scale.batch, n, twin.input_dim)

        def call() -> object:
            if label == REFERENCE:
                y = reference_forward(twin, x)  # type: ignore[arg-type]
            elif label == BRANCHES:
                y = twin.forward_branches(x)  # type: ignore[operator]
            else:
                y = twin(x)
            if mode == "forward+backward":
                y.backward(torch.ones_like(y))
            return y

        return counted_macs(call)


def _analytic(label: str, module: Projector, scale: BenchScale) -> int:
    grid = (scale.grid[0], scale.grid[1])
    if label == REFERENCE:
        return reference_macs(module, scale.batch, grid)  # type: ignore[arg-type]
    if label == BRANCHES:
        return module.attention.macs(scale.batch, grid[0] * grid[1])  # type: ignore[union-attr, operator]
    return module.analytic_macs(scale.batch, grid)


def bench_projectors(bench: Bench, options: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Run the benchmark described by `bench`; returns a json-able result."""
    if bench.threads:
        torch.set_num_threads(bench.threads)
    names = bench.projectors or sorted(PROJECTORS)
    dtypes, skipped_dtypes = list(bench.dtypes), {}
    if "bf16" in dtypes and (slowdown := bf16_slowdown()) > SLOW:
        # the CPU emulates bf16: its times would say nothing about a projector, and at the paper
        # scale they take an hour where fp32 takes minutes
        dtypes.remove("bf16")
        skipped_dtypes["bf16"] = (
            f"not run: this CPU has no native bf16 (a linear layer takes {slowdown:.0f}× fp32's time)"
        )
    peak = {dt: matmul_peak_gflops(DTYPES[dt]) for dt in dtypes}
    result: dict[str, Any] = {
        "environment": environment(),
        "peak_gflops": peak,
        "protocol": {"repeats": bench.repeats, "warmup": bench.warmup, "statistic": "median"},
        "scales": {k: v.model_dump(mode="json") for k, v in bench.scales.items()},
        "rows": [],
        "skipped": dict(skipped_dtypes),
    }
    for scale_name, scale in bench.scales.items():
        for dt in dtypes:
            cands, skipped = _candidates(names, scale, DTYPES[dt], options)
            result["skipped"].update({f"{k} @ {scale_name}": v for k, v in skipped.items()})
            for mode in MODES:
                log.info("bench %s %s %s: %d candidates", scale_name, dt, mode, len(cands))
                runners = {label: _runner(fn, mod, mode) for label, (mod, fn) in cands.items()}
                timings = time_round_robin(runners, bench.repeats, bench.warmup)
                for label, (module, _) in cands.items():
                    name = "ms_resampler" if label in VARIANTS else label
                    macs = _count(label, scale, options.get(name, {}), mode)
                    t = timings[label]
                    result["rows"].append(
                        {
                            "projector": label,
                            "scale": scale_name,
                            "dtype": dt,
                            "mode": mode,
                            "tokens": module.num_queries,
                            "params": sum(p.numel() for p in module.parameters()),
                            "macs_analytic": _analytic(label, module, scale),
                            "macs_counted": macs,
                            "median_ms": t.median_ms,
                            "min_ms": t.min_ms,
                            "max_ms": t.max_ms,
                            "gflops": 2 * macs / (t.median_ms * 1e-3) / 1e9,
                            "peak_fraction": 2 * macs / (t.median_ms * 1e-3) / 1e9 / peak[dt],
                        }
                    )
    rows = result.pop("rows")
    _add_ratios(rows)
    _add_fusion_share(rows)
    result["targets"] = targets(rows, bench, options.get("ms_resampler", {}))
    result["results"] = nest(rows)
    return result


def nest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """rows -> {scale: {dtype: {mode: {projector: measures}}}} (stable keys for `dvc metrics diff`)."""
    out: dict[str, Any] = {}
    for r in rows:
        keys = (r["scale"], r["dtype"], r["mode"], r["projector"])
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = {
            k: v for k, v in r.items() if k not in ("scale", "dtype", "mode", "projector")
        }
    return out


def flatten(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Inverse of `nest`."""
    return [
        {"scale": s, "dtype": dt, "mode": mode, "projector": name, **row}
        for s, by_dt in results.items()
        for dt, by_mode in by_dt.items()
        for mode, by_name in by_mode.items()
        for name, row in by_name.items()
    ]


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """ratio_to_mlp = median time / mlp's median time in the same (scale, dtype, mode)."""
    mlp = {
        (r["scale"], r["dtype"], r["mode"]): r["median_ms"] for r in rows if r["projector"] == "mlp"
    }
    for r in rows:
        base = mlp.get((r["scale"], r["dtype"], r["mode"]))
        r["ratio_to_mlp"] = r["median_ms"] / base if base else None


def _add_fusion_share(rows: list[dict[str, Any]]) -> None:
    """fusion_share = 1 − (branches alone) / (whole model), for MS-Resampler with either fusion."""
    branches = {
        (r["scale"], r["dtype"], r["mode"]): r["median_ms"]
        for r in rows
        if r["projector"] == BRANCHES
    }
    for r in rows:
        base = branches.get((r["scale"], r["dtype"], r["mode"]))
        whole = r["projector"] in ("ms_resampler", TORCH_FUSION)
        r["fusion_share"] = 1.0 - base / r["median_ms"] if whole and base else None


def ms_resampler_formula_macs(scale: BenchScale, branches: int) -> int:
    """The design formula: per image and branch 2·M·N·d + M·d·c, plus M·c·d per batch and branch."""
    n, d, c, m = scale.grid[0] * scale.grid[1], scale.vision_dim, scale.llm_dim, scale.num_queries
    return branches * (scale.batch * (2 * m * n * d + m * d * c) + m * c * d)


def targets(
    rows: list[dict[str, Any]], bench: Bench, ms_options: Mapping[str, Any]
) -> dict[str, Any]:
    """The issue's acceptance ratios, computed at the `paper` scale when it was run."""
    if "paper" not in bench.scales:
        return {}
    get = {(r["projector"], r["scale"], r["dtype"], r["mode"]): r for r in rows}
    out: dict[str, Any] = {
        "speedup_vs_textbook_fwd_bwd": {},
        "forward_vs_mlp": {},
        "fusion_share_fwd_bwd": {},
    }
    for dt in bench.dtypes:
        fast = get.get(("ms_resampler", "paper", dt, "forward+backward"))
        ref = get.get((REFERENCE, "paper", dt, "forward+backward"))
        if fast and ref:
            speedup = ref["median_ms"] / fast["median_ms"]
            out["speedup_vs_textbook_fwd_bwd"][dt] = {
                "speedup": speedup,
                "target": SPEEDUP_TARGET,
                "met": speedup >= SPEEDUP_TARGET,
            }
        if fast and fast.get("fusion_share") is not None:
            torch_fusion = get.get((TORCH_FUSION, "paper", dt, "forward+backward"))
            out["fusion_share_fwd_bwd"][dt] = {
                "share": fast["fusion_share"],
                "torch_fusion_share": torch_fusion["fusion_share"] if torch_fusion else None,
                "target": FUSION_SHARE_TARGET,
                "met": fast["fusion_share"] <= FUSION_SHARE_TARGET,
            }
        fwd = get.get(("ms_resampler", "paper", dt, "forward"))
        if fwd and fwd["ratio_to_mlp"] is not None:
            out["forward_vs_mlp"][dt] = {
                "ratio": fwd["ratio_to_mlp"],
                "met": fwd["ratio_to_mlp"] < 1.0,
            }
    fwd = next(
        (
            r
            for r in rows
            if r["projector"] == "ms_resampler" and r["scale"] == "paper" and r["mode"] == "forward"
        ),
        None,
    )
    if fwd is not None:
        from msr.projectors.ms_resampler import resolve_kernels

        branches = len(resolve_kernels(ms_options.get("kernels", "tables")))
        formula = ms_resampler_formula_macs(bench.scales["paper"], branches)
        rel = fwd["macs_counted"] / formula - 1.0
        out["macs_vs_formula"] = {
            "counted": fwd["macs_counted"],
            "formula": formula,
            "relative_difference": rel,
            "met": abs(rel) <= MACS_TOLERANCE,
        }
    return out
