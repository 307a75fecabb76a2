"""MS-Resampler against a plain loop implementation of Eq. 3–8, and its defining properties."""

from __future__ import annotations

import pytest
import torch

from msr.projectors import build_projector
from msr.projectors.fusion import ChannelMLPFusion
from msr.projectors.ms_resampler import KERNEL_SETS, MSResampler
from msr.projectors.reference import reference_branches, reference_forward
from msr.projectors.scope import scope_bias
from tests.conftest import C, D

N = 576


def ms(**options: object) -> MSResampler:
    options.setdefault("num_queries", 36)
    m = options.pop("num_queries")
    proj = build_projector("ms_resampler", vision_dim=D, llm_dim=C, num_queries=m, **options)
    assert isinstance(proj, MSResampler)
    return proj


def randomize(module: torch.nn.Module) -> None:
    """Give every parameter a random value so zero-initialised biases are exercised too."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


@pytest.mark.parametrize("fusion", ["channel_mlp", "average", "attention", "mlp"])
@pytest.mark.parametrize("order", ["auto", "reassociated", "textbook"])
@pytest.mark.parametrize("heads", [1, 4])
def test_matches_reference(fusion: str, order: str, heads: int) -> None:
    proj = ms(fusion=fusion, order=order, num_heads=heads, value_bias=True, beta=3.0)
    randomize(proj)
    x = torch.randn(3, N, D)
    torch.testing.assert_close(proj(x), reference_forward(proj, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [144, 64, 36])
def test_matches_reference_at_each_budget(m: int) -> None:
    proj = ms(num_queries=m, kernels="text")
    x = torch.randn(2, N, D)
    torch.testing.assert_close(proj(x), reference_forward(proj, x), rtol=1e-5, atol=1e-5)


def test_learnable_bias_matches_reference_and_learns() -> None:
    proj = ms(learnable_bias=True, beta=2.0)
    assert isinstance(proj.scope, torch.nn.Parameter)
    assert torch.equal(proj.scope.detach()[2], scope_bias((24, 24), 36, 14))
    with torch.no_grad():
        proj.scope.add_(0.3 * torch.randn_like(proj.scope))
    x = torch.randn(2, N, D)
    torch.testing.assert_close(proj(x), reference_forward(proj, x), rtol=1e-5, atol=1e-5)
    proj(x).sum().backward()
    assert proj.scope.grad is not None and proj.scope.grad.abs().sum() > 0


def test_learnable_bias_is_sized_for_its_grid() -> None:
    proj = ms(learnable_bias=True, num_queries=64, grid=(16, 16))
    assert proj.scope is not None and proj.scope.shape == (3, 64, 256)
    with pytest.raises(ValueError, match=r"grid=.*holds 256 patches"):
        proj(torch.randn(1, N, D))


def test_bf16_close_to_fp32() -> None:
    proj = ms()
    x = torch.randn(2, N, D)
    y32 = proj(x)
    y16 = proj.to(torch.bfloat16)(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.02)


def test_beta_zero_branches_equal_vanilla_resampler() -> None:
    """β = 0 turns Eq. 3 into Eq. 2: each branch is the vanilla resampler with that branch's weights."""
    proj = ms(beta=0.0, value_bias=True)
    randomize(proj)
    x = torch.randn(2, N, D)
    branches = proj.forward_branches(x)  # (E, B, M, c)
    for e in range(3):
        vanilla = build_projector(
            "resampler", vision_dim=D, llm_dim=C, num_queries=36, value_bias=True
        )
        with torch.no_grad():
            vanilla.attention.query.copy_(proj.attention.query[e : e + 1])
            vanilla.attention.key_weight.copy_(proj.attention.key_weight[e : e + 1])
            vanilla.attention.value_weight.copy_(proj.attention.value_weight[e : e + 1])
            assert (
                vanilla.attention.value_bias is not None and proj.attention.value_bias is not None
            )
            vanilla.attention.value_bias.copy_(proj.attention.value_bias[e : e + 1])
        torch.testing.assert_close(branches[e], vanilla(x), rtol=1e-5, atol=1e-6)


def test_beta_changes_the_output() -> None:
    x = torch.randn(2, N, D)
    a, b = ms(beta=0.0), ms(beta=4.0)
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x), b(x), atol=1e-4)


def test_large_beta_makes_kernel_2_local() -> None:
    """With β large, a token outside query i's 2×2 window barely moves output i; one inside does."""
    proj = ms(num_queries=144, kernels=[2], beta=50.0, fusion="average")
    randomize(proj)
    x = torch.randn(1, N, D)
    y = proj(x)
    query = 13  # region (1, 1) of the 12×12 layout: tokens y, x ∈ {2, 3}
    inside, outside = 2 * 24 + 3, 10 * 24 + 10
    x_in, x_out = x.clone(), x.clone()
    x_in[0, inside] += 5.0
    x_out[0, outside] += 5.0
    moved_in = (proj(x_in) - y)[0, query].abs().max()
    moved_out = (proj(x_out) - y)[0, query].abs().max()
    assert moved_in > 1e-2
    assert moved_out < 1e-12 + 1e-6 * moved_in


def test_average_fusion_is_the_branch_mean() -> None:
    proj = ms(fusion="average")
    x = torch.randn(2, N, D)
    torch.testing.assert_close(proj(x), proj.forward_branches(x).mean(dim=0))
    assert sum(p.numel() for p in proj.fusion.parameters()) == 0


def test_reference_branches_match_fast_branches() -> None:
    proj = ms(num_heads=2)
    x = torch.randn(2, N, D)
    fast = proj.forward_branches(x)
    for e, ref in enumerate(reference_branches(proj, x)):
        torch.testing.assert_close(fast[e], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("branches", "hidden"), [(3, 8), (2, 4), (5, 16)])
def test_channel_mlp_parameter_count(branches: int, hidden: int) -> None:
    fusion = ChannelMLPFusion(branches, hidden)
    assert sum(p.numel() for p in fusion.parameters()) == hidden * branches + 2 * hidden + 1


def test_channel_mlp_never_mixes_positions_or_channels() -> None:
    fusion = ChannelMLPFusion(3, 8)
    o = torch.randn(3, 2, 10, C)
    y = fusion(o)
    o2 = o.clone()
    o2[1, 1, 4, 7] += 3.0  # branch 1, image 1, token 4, channel 7
    changed = (fusion(o2) - y).abs() > 0
    assert changed.sum() == 1 and changed[1, 4, 7]


def test_channel_mlp_gradients_match_autograd() -> None:
    """The chunked custom backward equals plain autograd of w₂ᵀ GELU(W₁ z + b₁) + b₂."""
    fusion = ChannelMLPFusion(3, 8).double()
    o = torch.randn(3, 2, 5, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(fusion, (o,))


def test_channel_mlp_blocks_cover_large_inputs() -> None:
    """More columns than one cache block: the blockwise forward and backward still equal the plain formula."""
    fusion = ChannelMLPFusion(3, 8)
    o = torch.randn(3, 4, 36, 1024, requires_grad=True)  # 147k columns > one block
    y = fusion(o)
    z = o.reshape(3, -1).T  # (P, E)
    plain = fusion.fc2(torch.nn.functional.gelu(fusion.fc1(z))).view(4, 36, 1024)
    torch.testing.assert_close(y, plain, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    (grad_fast,) = torch.autograd.grad(y, o, g)
    (grad_plain,) = torch.autograd.grad(plain, o, g)
    torch.testing.assert_close(grad_fast, grad_plain, rtol=1e-4, atol=1e-5)


def test_order_auto_follows_the_cost_model() -> None:
    one_head = ms()
    assert one_head.attention.reassociates(batch=4, num_patches=N)
    many_heads = ms(num_heads=C)  # c_h = 1: the reassociated logits would cost h·M·N·d
    assert not many_heads.attention.reassociates(batch=4, num_patches=N)
    x = torch.randn(2, N, D)
    torch.testing.assert_close(
        many_heads(x), reference_forward(many_heads, x), rtol=1e-5, atol=1e-5
    )


def test_macs_follow_the_taken_order() -> None:
    proj = ms(num_queries=144)
    E, M, d, c, B = 3, 144, D, C, 2
    attention = E * (B * (2 * M * N * d + M * d * c) + M * c * d)
    fusion = B * M * c * (8 * 3 + 8)
    assert proj.analytic_macs(B, (24, 24)) == attention + fusion


def test_named_kernel_sets() -> None:
    assert ms(kernels="tables").kernels == KERNEL_SETS["tables"] == (2, 6, 14)
    assert ms(kernels="text").kernels == (2, 6, 24)
    with pytest.raises(ValueError, match="unknown kernel set 'paper'"):
        ms(kernels="paper")
    with pytest.raises(ValueError, match="positive ints"):
        ms(kernels=[2, 0])


def test_fixed_bias_is_not_a_parameter_or_state() -> None:
    proj = ms()
    assert proj.scope is None
    assert not any("scope" in k for k in proj.state_dict())


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="num_heads=5 must divide llm_dim=48"):
        ms(num_heads=5)


def test_autocast_bf16_forward_backward() -> None:
    """Under bf16 autocast (how training runs) the fusion computes in bf16 and grads reach fp32 weights."""
    proj = ms()
    x = torch.randn(2, N, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = proj(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in proj.parameters())
    torch.testing.assert_close(y.float(), proj(x), rtol=0.05, atol=0.02)
