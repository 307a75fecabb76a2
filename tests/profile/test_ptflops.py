"""The ptflops convention (`msr/profile/ptflops.py`): each counting rule on a small module, what it
does not count, that every hook and patch is undone, every projector on meta, and `msr profile
--convention` with both numbers in the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typer.testing import CliRunner

from msr.presets import load_preset, preset_path
from msr.profile.analytic import analytic_profile
from msr.profile.ptflops import ptflops_counting, ptflops_macs
from msr.projectors import PROJECTORS, build_projector, projector_class
from msr.report.markdown import si
from tests.conftest import C, D

DEVICES = ("cpu", "meta")


class Call(nn.Module):
    """Runs `fn` as the forward; `parts` are registered as children."""

    def __init__(self, fn: Callable[..., Tensor], *parts: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(parts)

    def forward(self, *xs: Any) -> Tensor:
        return self.fn(*xs)


def count(module: nn.Module, *shapes: tuple[int, ...], device: str = "meta") -> int:
    """ptflops MACs per image of `module` on random inputs of `shapes`."""
    module = module.to(device)
    return ptflops_macs(module, *(torch.randn(s, device=device) for s in shapes))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("bias", "expected"), [(True, 7 * (8 * 5 + 5)), (False, 7 * 8 * 5)])
def test_linear_counts_every_token(device: str, bias: bool, expected: int) -> None:
    """(B, T, in) -> (B, T, out): (in·out + out if bias) per token, T tokens per image."""
    assert count(nn.Linear(8, 5, bias=bias), (2, 7, 8), device=device) == expected


@pytest.mark.parametrize("device", DEVICES)
def test_gelu_module_counts_its_output_twice(device: str) -> None:
    """The nn.GELU hook counts the output once and the patched F.gelu it calls counts it again."""
    assert count(nn.GELU(), (2, 3, 4), device=device) == 2 * 12
    assert count(Call(lambda x: F.gelu(x)), (2, 3, 4), device=device) == 12  # the functional: once


def test_a_function_bound_before_counting_is_not_counted() -> None:
    """Like `from torch.nn.functional import gelu` at import time: the patch is never looked up."""
    early = Call(F.gelu)  # holds the unpatched function
    assert count(early, (2, 3, 4)) == 0
    assert count(Call(lambda x: F.gelu(x)), (2, 3, 4)) == 12


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_avg_pool_counts_its_input_twice(device: str) -> None:
    assert count(nn.AdaptiveAvgPool2d(2), (2, 3, 8, 8), device=device) == 2 * 3 * 64


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_with_bias(device: str) -> None:
    """k_h·k_w · C_in · C_out/groups per output position, plus one add per output element."""
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=True)
    assert count(conv, (2, 4, 5, 5), device=device) == 9 * 4 * 3 * 25 + 6 * 25


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        (nn.LayerNorm(6), 5 * 6),  # `elementwise_affine`, not `affine`: once
        (nn.BatchNorm1d(5), 2 * 5 * 6),  # affine: twice
        (nn.GroupNorm(1, 5, affine=False), 5 * 6),
    ],
    ids=["layernorm", "batchnorm", "groupnorm-no-affine"],
)
def test_norms_count_the_input_doubled_only_when_affine(norm: nn.Module, expected: int) -> None:
    assert count(norm, (2, 5, 6)) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({"size": (6, 4)}, 3 * 6 * 4), ({"size": 7}, 3 * 7 * 7), ({"scale_factor": 2}, 3 * 10 * 10)],
)
def test_interpolate_counts_the_output_size(kwargs: dict[str, Any], expected: int) -> None:
    up = Call(lambda x: F.interpolate(x, mode="bilinear", align_corners=False, **kwargs))
    assert count(up, (2, 3, 5, 5)) == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_formula_plus_the_ops_inside(device: str, need_weights: bool) -> None:
    """ptflops' closed form for the module, plus what F.multi_head_attention_forward calls:
    with weights, torch.bmm for QKᵀ and AV and F.softmax; without, SDPA, which is not counted.
    Its out_proj (a subclass of nn.Linear, inside a counted module) adds nothing."""
    L, S, E, h = 3, 5, 8, 2
    module = (
        L * E  # scaling q
        + L * E * E
        + 2 * S * E * E  # in-projections of q, k, v
        + (L + 2 * S) * E  # their biases
        + h * (2 * L * S * (E // h) + L * S)  # QKᵀ, AV, softmax per head
        + L * E * (E + 1)  # output projection
    )
    inner = (2 * L * S * E + h * L * S) if need_weights else 0
    mha = nn.MultiheadAttention(E, h, batch_first=True).to(device)
    q, k, v = (torch.randn(2, n, E, device=device) for n in (L, S, S))
    assert ptflops_macs(mha, q, k, v, None, need_weights) == module + inner


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda x, y: x + y, 0),  # a residual add: the operator is not patched
        (lambda x, y: x * y, 0),
        (lambda x, y: torch.add(x, y), 3 * 4),
        (lambda x, y: x.add(y), 3 * 4),
        (lambda x, y: torch.mul(x, 2.0), 3 * 4),
        (lambda x, y: x @ y.transpose(1, 2), 0),  # Tensor.__matmul__ is not patched
        (lambda x, y: torch.matmul(x, y.transpose(1, 2)), 3 * 4 * 3),
        (lambda x, y: x.bmm(y.transpose(1, 2)), 3 * 4 * 3),
        (lambda x, y: torch.einsum("btc,bsc->bts", x, y), 0),
        (lambda x, y: F.linear(x, y[0]), 0),
        (lambda x, y: torch.softmax(x, -1), 0),  # only F.softmax is patched
        (lambda x, y: F.softmax(x, -1), 3 * 4),
        (lambda x, y: F.scaled_dot_product_attention(x, y, y), 0),
    ],
    ids=[
        "plus",
        "times",
        "torch.add",
        "Tensor.add",
        "torch.mul-scalar",
        "matmul-operator",
        "torch.matmul",
        "Tensor.bmm",
        "einsum",
        "F.linear",
        "torch.softmax",
        "F.softmax",
        "sdpa",
    ],
)
def test_what_is_and_is_not_counted(fn: Callable[[Tensor, Tensor], Tensor], expected: int) -> None:
    assert count(Call(fn), (1, 3, 4), (1, 3, 4)) == expected


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda x, y: x * y + x, 0),
        (lambda x, y: x.add(y), 3 * 4),
        (lambda x, y: torch.matmul(x, y.transpose(1, 2)), 3 * 4 * 3),
    ],
    ids=["operators", "Tensor.add", "torch.matmul"],
)
def test_a_device_context_changes_nothing(
    fn: Callable[[Tensor, Tensor], Tensor], expected: int
) -> None:
    """Under `with torch.device(...)` a torch-function mode re-dispatches every call, looking Tensor
    methods up again by name: that second call must not count (nor turn `*` into Tensor.mul)."""
    with torch.device("meta"):
        assert count(Call(fn), (1, 3, 4), (1, 3, 4)) == expected


def test_elementwise_shapes_align_on_the_left_as_in_ptflops() -> None:
    """Equal ranks give the broadcast shape; (1, 3, 4) with (4,) takes the max per axis from the
    left: 4·3·4, where broadcasting would give 3·4."""
    add = Call(lambda x, y: torch.add(x, y))
    assert count(add, (1, 3, 1), (1, 1, 4)) == 3 * 4
    assert count(add, (1, 3, 4), (4,)) == 4 * 3 * 4


def test_only_exact_types_and_outermost_modules_count() -> None:
    class MyLinear(nn.Linear):
        pass

    assert count(MyLinear(8, 5), (1, 2, 8)) == 0
    assert count(nn.Sequential(nn.Linear(8, 5), nn.Linear(5, 3)), (1, 2, 8)) == 2 * (45 + 18)


def test_addmm_counts_the_bias_as_given_unless_beta_is_zero() -> None:
    bias = torch.randn(3, 5, device="meta")
    w = torch.randn(4, 5, device="meta")
    assert count(Call(lambda x: torch.addmm(bias, x[0], w)), (1, 3, 4)) == 3 * 4 * 5 + 15
    assert count(Call(lambda x: torch.addmm(bias, x[0], w, beta=0)), (1, 3, 4)) == 3 * 4 * 5
    assert count(Call(lambda x: torch.baddbmm(bias, x, w[None])), (1, 3, 4)) == 3 * 4 * 5 + 15


@pytest.mark.parametrize("raises", [False, True])
def test_patches_and_hooks_are_restored(raises: bool) -> None:
    originals = (F.gelu, F.softmax, F.interpolate, torch.matmul, torch.add)
    tensor_attrs = set(vars(torch.Tensor))
    lin = nn.Linear(4, 4)
    seen: dict[str, Any] = {}

    def forward(x: Tensor) -> Tensor:
        seen.update(gelu=F.gelu, training=lin.training, matmul="matmul" in vars(torch.Tensor))
        if raises:
            raise RuntimeError("boom")
        return F.gelu(lin(x))

    module = Call(forward, lin).train()
    if raises:
        with pytest.raises(RuntimeError, match="boom"):
            ptflops_macs(module, torch.randn(1, 2, 4))
    else:
        assert ptflops_macs(module, torch.randn(1, 2, 4)) == 2 * 20 + 8
    assert seen["gelu"] is not originals[0] and seen["matmul"]  # patched during the forward
    assert not seen["training"]  # eval during the count, as ptflops
    assert (F.gelu, F.softmax, F.interpolate, torch.matmul, torch.add) == originals
    assert set(vars(torch.Tensor)) == tensor_attrs  # Tensor methods back on the base class only
    assert not lin._forward_hooks and not module._forward_hooks
    assert module.training and lin.training


def test_counting_is_not_reentrant_and_needs_a_batch() -> None:
    lin, gelu = nn.Linear(2, 2), F.gelu
    with ptflops_counting(lin), pytest.raises(RuntimeError, match="already active"):
        ptflops_macs(lin, torch.randn(1, 2))
    assert F.gelu is gelu
    with pytest.raises(ValueError, match=r"batched tensor .* got shape \(\)"):
        ptflops_macs(lin, torch.tensor(1.0))


@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_every_projector_counts_on_meta_as_on_cpu(name: str) -> None:
    """Positive, and the same on meta as on real tensors (torch's Python meta kernels call torch.mm
    etc. themselves; those calls must not count)."""
    m = 144 if projector_class(name).keeps_all_tokens else 36
    counts = []
    for device in DEVICES:
        with torch.device(device):
            proj = build_projector(name, vision_dim=D, llm_dim=C, num_queries=m, grid=(12, 12))
        counts.append(count(proj, (1, 144, proj.input_dim), device=device))
    assert counts[0] > 0 and counts[0] == counts[1]


def ms_resampler_ptflops(d: int, c: int, m: int, n: int, e: int = 3, hidden: int = 8) -> int:
    """MS-Resampler (reassociated, one head, channel-MLP fusion) per image at batch 1, by hand."""
    p = m * c  # fused columns, one per (token, channel)
    attention = (
        e * m * c * d  # torch.matmul(Q, W_K)
        + e * m * d * n
        + e * m * n  # torch.baddbmm(β·B, a, Xᵀ): the product and the bias as given
        + e * m * n * d  # torch.bmm(P, X)
        + e * m * d * c  # torch.matmul(P X, W_V)
    )
    fusion = hidden * e * p + hidden + hidden * p + hidden * p + 1  # addmm, F.gelu, addmm
    return attention + fusion


def test_ms_resampler_count_by_hand() -> None:
    with torch.device("meta"):
        proj = build_projector("ms_resampler", vision_dim=D, llm_dim=C, num_queries=36)
    assert count(proj, (1, 576, D)) == ms_resampler_ptflops(D, C, 36, 576)


def test_llava7b_ms_resampler_in_both_conventions() -> None:
    """CLIP-L/14-336 (d = 1024, 24×24) → MS-Resampler (M = 144) → Vicuna-7B (c = 4096): the README's
    numbers. The paper's Table 7 says 10.43 G; neither convention gives it."""
    a = analytic_profile(load_preset("llava15-7b"))
    assert a["projector_macs"] == 4_152_360_960
    assert a["projector_macs_ptflops"] == ms_resampler_ptflops(1024, 4096, 144, 576)
    assert a["projector_macs_ptflops"] == 4_157_328_393


def test_cli_convention_selects_the_summary_and_is_recorded(tmp_path: Path) -> None:
    from cli import app

    tiny = str(preset_path("tiny"))
    runner = CliRunner()
    for convention in ("pure", "ptflops"):
        out = tmp_path / f"{convention}.json"
        args = ["profile", "--params", tiny, "--analytic", "--out", str(out)]
        result = runner.invoke(app, [*args, "--convention", convention])
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        assert data["convention"] == convention
        assert data["projector_macs_ptflops"] > 0 and data["projector_macs"] > 0
        assert ("projector_macs_ptflops" in result.output) == (convention == "ptflops")
    bad = runner.invoke(app, ["profile", "--params", tiny, "--analytic", "--convention", "flops"])
    assert bad.exit_code == 2
    assert "'flops'" in bad.output and "accepted: pure, ptflops" in bad.output


def test_report_shows_both_columns() -> None:
    from msr.profile.analytic import CONVENTIONS
    from msr.report.profile import PTFLOPS, PURE, render

    a = analytic_profile(load_preset("tiny"))
    md = render({"conventions": CONVENTIONS, "active": a, "comparison": [a], "measured": {}})
    assert md.count(f"| {PURE} | {PTFLOPS} |") == 2  # the Table 7 layout and the comparison
    assert f"| {si(a['projector_macs'])} | {si(a['projector_macs_ptflops'])} |" in md
    assert "ptflops" in PTFLOPS and "FLOPs column" in PTFLOPS
