"""The channel-wise fusion's two implementations compute one function (Eq. 7–8), values and gradients."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from msr.projectors import build_projector, kernels
from msr.projectors.channel_mlp import _library, channel_mlp, native_unavailable
from msr.projectors.fusion import FUSIONS, ChannelMLPFusion
from msr.projectors.reference import reference_forward
from tests.conftest import C, D

needs_kernel = pytest.mark.skipif(
    _library() is None, reason="the native kernel could not be built here (no C compiler?)"
)
TOL = {torch.float32: {"rtol": 2e-5, "atol": 2e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}


def params(branches: int, hidden: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, branches, generator=g) * 0.7
    b1 = torch.randn(hidden, generator=g) * 0.3
    w2 = torch.randn(1, hidden, generator=g) * 0.5
    b2 = torch.randn(1, generator=g) * 0.1
    return w1, b1, w2, b2


def run(
    impl: str, z: torch.Tensor, ps: tuple[torch.Tensor, ...], g: torch.Tensor
) -> list[torch.Tensor]:
    """Output and the gradients of z and every parameter, as fp64."""
    z = z.detach().requires_grad_()
    leaves = [p.detach().clone().requires_grad_() for p in ps]
    y = channel_mlp(z, *leaves, impl=impl)  # type: ignore[arg-type]
    y.backward(g)
    return [t.double() for t in (y.detach(), z.grad, *(p.grad for p in leaves))]  # type: ignore[misc]


def exact(z: torch.Tensor, ps: tuple[torch.Tensor, ...], g: torch.Tensor) -> list[torch.Tensor]:
    """The formula in fp64 autograd: w₂ᵀ GELU(W₁ z + b₁) + b₂."""
    zd = z.detach().double().requires_grad_()
    leaves = [p.detach().double().requires_grad_() for p in ps]
    w1, b1, w2, b2 = leaves
    y = (w2 @ F.gelu(w1 @ zd + b1[:, None]))[0] + b2
    y.backward(g.double())
    return [y.detach(), zd.grad, *(p.grad for p in leaves)]  # type: ignore[list-item]


def assert_close_all(
    got: list[torch.Tensor], want: list[torch.Tensor], outputs: dict, sums: dict
) -> None:
    """out and grad z within `outputs`, the parameter gradients (sums over columns) within `sums`."""
    names = ("out", "grad z", "grad W1", "grad b1", "grad w2", "grad b2")
    for i, (name, a, b) in enumerate(zip(names, got, want, strict=True)):
        scale = b.abs().max().clamp_min(1.0)
        tol = outputs if i < 2 else sums
        torch.testing.assert_close(a / scale, b / scale, **tol, msg=lambda m, n=name: f"{n}: {m}")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("branches", "hidden", "columns"),
    [(3, 8, 4 * 144 * 64), (1, 8, 1000), (5, 16, 8193), (2, 1, 63), (16, 64, 4097)],
)
def test_native_and_torch_equal_the_formula(
    dtype: torch.dtype, branches: int, hidden: int, columns: int
) -> None:
    torch.manual_seed(0)
    z = (torch.randn(branches, columns) * 2).to(dtype)
    g = torch.randn(columns).to(dtype)
    ps = params(branches, hidden)
    want = exact(z, ps, g)
    native, torch_ = run("native", z, ps, g), run("torch", z, ps, g)
    # fp32 arithmetic: outputs carry one rounding to the dtype, parameter gradients none
    eps = max(2 * torch.finfo(dtype).eps, 2e-5)
    one_rounding = {"rtol": eps, "atol": eps}
    assert_close_all(native, want, one_rounding, TOL[torch.float32])
    assert_close_all(torch_, want, TOL[dtype], TOL[dtype])
    assert_close_all(native, torch_, TOL[dtype], TOL[dtype])


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_ms_resampler_equals_its_reference_for_every_fusion(
    fusion: str, dtype: torch.dtype
) -> None:
    """The whole model, native kernel or not, against the textbook Eq. 3–8, values and gradients."""
    torch.manual_seed(0)
    proj = build_projector("ms_resampler", vision_dim=D, llm_dim=C, num_queries=36, fusion=fusion)
    with torch.no_grad():
        for p in proj.parameters():
            p.normal_(0, 0.2)
    proj = proj.to(dtype)
    x = torch.randn(2, 576, D, dtype=dtype)
    y = proj(x)
    y_ref = reference_forward(proj, x)
    tol = TOL[dtype] if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(y.float(), y_ref.float(), **tol)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(proj.parameters()), g)
    grads_ref = torch.autograd.grad(y_ref, list(proj.parameters()), g)
    largest = max(r.float().abs().max() for r in grads_ref)
    for (name, _), a, b in zip(proj.named_parameters(), grads, grads_ref, strict=True):
        if name == "fusion.score.bias":
            # softmax over branches is shift invariant: this gradient is exactly 0, both are
            # rounding noise (bf16: up to 1% of the largest gradient over seeds 0-5), so both
            # must be small against the largest gradient
            bound = {torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype] * largest
            for noise in (a, b):
                assert noise.float().abs().max() <= bound, (name, noise)
            continue
        # per tensor, but at least 1% of the largest
        scale = b.float().abs().max().clamp_min(0.01 * largest)
        torch.testing.assert_close(a.float() / scale, b.float() / scale, **tol, msg=name)


@needs_kernel
def test_native_does_not_depend_on_the_thread_count() -> None:
    z, g = torch.randn(3, 3 * 4096 + 77), torch.randn(3 * 4096 + 77)
    ps = params(3, 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("native", z, ps, g)
        torch.set_num_threads(3)
        three = run("native", z, ps, g)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_propagates_nan_and_inf(dtype: torch.dtype) -> None:
    """The kernel is built with -ffinite-math-only; a NaN or inf must still reach the output."""
    z = torch.randn(3, 200).to(dtype)
    z[1, 5] = float("nan")
    z[0, 150] = float("inf")
    ps = params(3, 8)
    out, gz, gw1, *_ = run("native", z, ps, torch.ones(200, dtype=dtype))
    assert out[5].isnan() and not out[150].isfinite()
    assert gz[:, 5].isnan().all() and gw1.isnan().any()
    finite = [i for i in range(200) if i not in (5, 150)]
    assert out[finite].isfinite().all() and gz[:, finite].isfinite().all()


def test_fallback_where_the_kernel_does_not_apply() -> None:
    z = torch.randn(3, 50, dtype=torch.float64)
    ps = tuple(p.double() for p in params(3, 8))
    assert "float64" in str(native_unavailable(z, ps[0]))
    with pytest.raises(RuntimeError, match="native channel-MLP kernel cannot run here: dtype"):
        channel_mlp(z, *ps, impl="native")
    y = channel_mlp(z, *ps)  # auto: the PyTorch path
    torch.testing.assert_close(y, exact(z, ps, torch.ones(50))[0])
    with torch.device("meta"):
        assert "meta" in str(native_unavailable(torch.empty(3, 5), torch.empty(8, 3)))
    with pytest.raises(ValueError, match="impl='fast'; accepted: auto, native, torch"):
        channel_mlp(z, *ps, impl="fast")  # type: ignore[arg-type]


def test_a_failed_build_falls_back_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MSR_KERNEL_CACHE", str(tmp_path))
    kernels.load.cache_clear()
    try:
        monkeypatch.setenv("CC", "no-such-compiler")
        with caplog.at_level(logging.WARNING):
            assert kernels.load("channel_mlp") is None
        assert "no C compiler (no-such-compiler)" in caplog.text
        kernels.load.cache_clear()
        monkeypatch.setenv("CC", "false")  # a compiler that fails
        assert kernels.load("channel_mlp") is None
        kernels.load.cache_clear()
        monkeypatch.setenv("CC", "cc")
        monkeypatch.setenv("MSR_KERNELS", "0")
        assert kernels.load("channel_mlp") is None
        assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    finally:
        kernels.load.cache_clear()


@pytest.mark.slow  # compiles the kernel into an empty cache (~45 s)
@needs_kernel
def test_build_is_cached_per_source(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MSR_KERNEL_CACHE", str(tmp_path))
    kernels.load.cache_clear()
    try:
        assert kernels.load("channel_mlp") is not None
        (built,) = tmp_path.glob("channel_mlp-*.so")
        kernels.load.cache_clear()
        assert kernels.load("channel_mlp") is not None
        assert list(tmp_path.glob("channel_mlp-*.so")) == [built]  # reused, not rebuilt
    finally:
        kernels.load.cache_clear()


@needs_kernel
def test_checkpoints_load_under_either_implementation() -> None:
    """The implementation is not state: a fusion trained with one loads and runs with the other."""
    torch.manual_seed(0)
    a, b = ChannelMLPFusion(3, 8, impl="torch"), ChannelMLPFusion(3, 8, impl="native")
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    o = torch.randn(3, 2, 36, C)
    torch.testing.assert_close(a(o), b(o), rtol=1e-5, atol=1e-5)


def test_op_counters_see_the_fusion_on_cpu() -> None:
    """A FLOP counter (a dispatch mode) cannot see the kernel: under one, `auto` runs torch ops."""
    from msr.profile.flops import counted_macs

    fusion = ChannelMLPFusion(3, 8)
    counts = []
    for device in ("cpu", "meta"):
        with torch.device(device):
            f = ChannelMLPFusion(3, 8)
            o = torch.randn(3, 2, 36, C)
        counts.append(counted_macs(lambda f=f, o=o: f(o)))
    assert counts[0] == counts[1] == 2 * 36 * C * (8 * 3 + 8)
    assert native_unavailable(torch.randn(3, 5), fusion.fc1.weight) in (None, _NO_KERNEL)


_NO_KERNEL = "the kernel could not be built (see the log) or MSR_KERNELS=0"
