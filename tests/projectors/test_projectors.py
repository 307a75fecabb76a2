"""Every registered projector × M ∈ {144, 64, 36}: shapes, dtypes, gradients, parameter and MAC counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from msr.profile.flops import counted_macs
from msr.projectors import PROJECTORS, Projector, build_projector, projector_class
from tests.conftest import C, D

GRID = (24, 24)
N = GRID[0] * GRID[1]
BUDGETS = (144, 64, 36)


def _mlp(d: int, c: int, depth: int = 2) -> int:
    return d * c + c + (depth - 1) * (c * c + c)


def _reg_block(c_in: int, c: int) -> int:
    rd = round(c_in * 0.25)
    shortcut = 0 if c_in == c else c_in * c + 2 * c
    return c_in * c + 9 * c + c * c + 3 * 2 * c + (c * rd + rd) + (rd * c + c) + shortcut


# Hand-computed parameter counts: (d, c, M, grid) -> params. Every registered projector needs one.
PARAM_FORMULAS: dict[str, Callable[[int, int, int, tuple[int, int]], int]] = {
    "mlp": lambda d, c, m, g: _mlp(d, c),
    "avgpool": lambda d, c, m, g: _mlp(d, c),
    "resampler": lambda d, c, m, g: m * c + 2 * d * c,
    # E·(M·c + 2·d·c) + channel MLP (h·E + 2h + 1), E = 3, h = 8
    "ms_resampler": lambda d, c, m, g: 3 * (m * c + 2 * d * c) + (8 * 3 + 2 * 8 + 1),
    "pixel_shuffle": lambda d, c, m, g: (w := d * g[0] * g[1] // m) * 2 + w * c + c + c * c + c,
    "ldp_v2": lambda d, c, m, g: _mlp(d, c) + 9 * c + c,
    "c_abstractor": lambda d, c, m, g: 6 * _reg_block(d, d) + _mlp(d, c) + g[0] * g[1] * d,
    # q proj + LN, K and V MLPs + LN, MHA in/out projections, output MLP
    "tokenpacker": lambda d, c, m, g: (
        d * d + 2 * d + 2 * (_mlp(d, d) + 2 * d) + 4 * d * d + 4 * d + _mlp(d, c)
    ),
}


def budget_for(name: str, m: int) -> int:
    """The M a projector is built with: projectors that keep all tokens always output N."""
    return N if projector_class(name).keeps_all_tokens else m


def make(name: str, m: int, **options: object) -> Projector:
    return build_projector(
        name, vision_dim=D, llm_dim=C, num_queries=budget_for(name, m), **options
    )


def test_registry_has_the_design_names() -> None:
    assert set(PROJECTORS) >= {
        "mlp",
        "resampler",
        "ms_resampler",
        "pixel_shuffle",
        "c_abstractor",
        "ldp_v2",
        "tokenpacker",
        "avgpool",
    }


def test_every_projector_has_a_param_formula() -> None:
    assert set(PARAM_FORMULAS) == set(PROJECTORS)


@pytest.mark.parametrize("name", sorted(PROJECTORS))
@pytest.mark.parametrize("m", BUDGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_output_shape_and_dtype(name: str, m: int, dtype: torch.dtype) -> None:
    proj = make(name, m).to(dtype)
    x = torch.randn(3, N, proj.input_dim, dtype=dtype)
    y = proj(x)
    assert y.shape == (3, budget_for(name, m), C)
    assert y.dtype == dtype
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_batch_of_one_matches_batched(name: str) -> None:
    proj = make(name, 36).eval()
    x = torch.randn(3, N, proj.input_dim)
    torch.testing.assert_close(proj(x[1:2]), proj(x)[1:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name", sorted(n for n in PROJECTORS if not PROJECTORS[n].keeps_all_tokens)
)
def test_design_budgets_are_supported(name: str) -> None:
    for m in BUDGETS:
        assert make(name, m, grid=GRID).num_queries == m


def test_mlp_cannot_compress() -> None:
    with pytest.raises(ValueError, match="num_queries must equal N=576"):
        build_projector("mlp", vision_dim=D, llm_dim=C, num_queries=144, grid=GRID)
    proj = build_projector("mlp", vision_dim=D, llm_dim=C, num_queries=144)
    with pytest.raises(ValueError, match="keeps every patch token"):
        proj(torch.randn(1, N, D))


@pytest.mark.parametrize("name", sorted(PROJECTORS))
@pytest.mark.parametrize("m", BUDGETS)
def test_gradients_reach_every_parameter(name: str, m: int) -> None:
    proj = make(name, m)
    x = torch.randn(2, N, proj.input_dim)
    proj(x).square().mean().backward()
    for pname, p in proj.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", sorted(PROJECTORS))
@pytest.mark.parametrize("m", BUDGETS)
def test_param_count_matches_formula(name: str, m: int) -> None:
    proj = make(name, m)
    got = sum(p.numel() for p in proj.parameters())
    assert got == PARAM_FORMULAS[name](D, C, budget_for(name, m), GRID)


@pytest.mark.parametrize("name", sorted(PROJECTORS))
@pytest.mark.parametrize("m", BUDGETS)
def test_counted_macs_equal_analytic(name: str, m: int) -> None:
    """flop_counter on the running code agrees with each projector's closed form."""
    with torch.device("meta"):
        proj = make(name, m)
        x = torch.randn(2, N, proj.input_dim)
        counted = counted_macs(lambda: proj(x))
    assert counted == proj.analytic_macs(2, GRID)


# Paper scale (d = 1024, c = 4096, 24×24): the numbers in BASELINES.md, read off the original code.
PAPER = [
    ("mlp", 576, {}, 20_979_712, 12_079_595_520),
    ("ldp_v2", 144, {}, 21_020_672, 12_084_903_936),
    ("c_abstractor", 144, {}, 37_398_016, 7_572_799_488),
    ("c_abstractor", 64, {}, 37_398_016, 5_389_549_568),
    ("tokenpacker", 144, {"levels": 4}, 36_722_688, 10_721_820_672),
    ("pixel_shuffle", 144, {}, 33_570_816, 4_831_838_208),
    ("pixel_shuffle", 64, {}, 54_552_576, 3_489_660_928),
    ("pixel_shuffle", 144, {"head": "nanovlm"}, 16_777_216, 2_415_919_104),
    ("resampler", 144, {}, 8_978_432, 773_849_088 + 603_979_776),
]


@pytest.mark.parametrize(("name", "m", "options", "params", "macs"), PAPER)
def test_paper_scale_counts_match_the_original_code(
    name: str, m: int, options: dict[str, object], params: int, macs: int
) -> None:
    with torch.device("meta"):
        proj = build_projector(name, vision_dim=1024, llm_dim=4096, num_queries=m, **options)
        x = torch.randn(1, N, proj.input_dim)
        counted = counted_macs(lambda: proj(x))
    assert sum(p.numel() for p in proj.parameters()) == params
    assert proj.analytic_macs(1, GRID) == macs == counted


@pytest.mark.parametrize(
    "name", sorted(n for n in PROJECTORS if not PROJECTORS[n].keeps_all_tokens)
)
def test_other_grid_16x16_with_64_queries(name: str) -> None:
    proj = build_projector(name, vision_dim=D, llm_dim=C, num_queries=64, grid=(16, 16))
    y = proj(torch.randn(2, 256, proj.input_dim))
    assert y.shape == (2, 64, C)


@pytest.mark.parametrize("name", ["ms_resampler", "resampler", "avgpool", "ldp_v2", "tokenpacker"])
def test_grid_inferred_from_square_n(name: str) -> None:
    proj = build_projector(name, vision_dim=D, llm_dim=C, num_queries=16)
    assert proj(torch.randn(1, 256, proj.input_dim)).shape == (1, 16, C)


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_wrong_feature_width(name: str) -> None:
    proj = make(name, 36)
    with pytest.raises(
        ValueError, match=rf"feature width d={proj.input_dim}, got {proj.input_dim + 1}"
    ):
        proj(torch.randn(1, N, proj.input_dim + 1))


@pytest.mark.parametrize(
    "name", ["ms_resampler", "resampler", "avgpool", "ldp_v2", "tokenpacker", "mlp"]
)
def test_non_square_n_without_grid(name: str) -> None:
    proj = build_projector(name, vision_dim=D, llm_dim=C, num_queries=300 if name == "mlp" else 36)
    with pytest.raises(ValueError, match="N=300 patches is not a square grid"):
        proj(torch.randn(1, 300, proj.input_dim))


def test_non_square_n_with_grid_works() -> None:
    proj = build_projector("ms_resampler", vision_dim=D, llm_dim=C, num_queries=18, grid=(12, 24))
    assert proj(torch.randn(1, 288, D)).shape == (1, 18, C)


@pytest.mark.parametrize(
    "name", ["ms_resampler", "avgpool", "ldp_v2", "tokenpacker", "pixel_shuffle"]
)
def test_queries_that_do_not_tile(name: str) -> None:
    with pytest.raises(ValueError, match="num_queries=50 does not tile the 24×24 grid"):
        build_projector(name, vision_dim=D, llm_dim=C, num_queries=50, grid=GRID)


def test_ms_resampler_checks_tiling_at_forward_without_grid() -> None:
    proj = build_projector("ms_resampler", vision_dim=D, llm_dim=C, num_queries=50)
    with pytest.raises(ValueError, match="num_queries=50 does not tile"):
        proj(torch.randn(1, N, D))


def test_c_abstractor_needs_square_budget() -> None:
    with pytest.raises(ValueError, match="square"):
        build_projector("c_abstractor", vision_dim=D, llm_dim=C, num_queries=72)


def test_unknown_projector() -> None:
    with pytest.raises(ValueError, match=r"unknown projector 'qformer'; known: .*ms_resampler"):
        build_projector("qformer", vision_dim=D, llm_dim=C, num_queries=64)


def test_unknown_option_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'kernel'.*known options: .*kernels"):
        build_projector("ms_resampler", vision_dim=D, llm_dim=C, num_queries=64, kernel=[2])


def test_unknown_fusion() -> None:
    with pytest.raises(ValueError, match=r"fusion=.*'sum'.*channel_mlp"):
        build_projector("ms_resampler", vision_dim=D, llm_dim=C, num_queries=64, fusion="sum")


def test_option_of_wrong_type() -> None:
    with pytest.raises(ValueError, match=r"option beta='high'"):
        build_projector("ms_resampler", vision_dim=D, llm_dim=C, num_queries=64, beta="high")


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_dimensions(bad: int) -> None:
    with pytest.raises(ValueError, match=f"vision_dim must be a positive integer, got {bad}"):
        build_projector("resampler", vision_dim=bad, llm_dim=C, num_queries=64)


def test_wrong_rank_input() -> None:
    proj = make("resampler", 64)
    with pytest.raises(ValueError, match=r"expected features \(B, N, d\)"):
        proj(torch.randn(N, D))


def test_pixel_shuffle_channel_order() -> None:
    """Space-to-depth: token (y', x') holds channel (dy·s + dx)·d + ch of patch (s·y' + dy, s·x' + dx)."""
    from msr.projectors.layers import space_to_depth

    x = torch.arange(16 * 2, dtype=torch.float32).view(1, 16, 2)  # 4×4 grid, d = 2
    y = space_to_depth(x, (4, 4), (2, 2))  # s = 2 -> 4 tokens of 8 channels
    y_prime, x_prime, dy, dx, ch = 1, 0, 1, 1, 1
    patch = (2 * y_prime + dy) * 4 + (2 * x_prime + dx)
    assert y[0, y_prime * 2 + x_prime, (dy * 2 + dx) * 2 + ch] == x[0, patch, ch]


@pytest.mark.parametrize("m", [144, 64, 36])
def test_tokenpacker_query_points(m: int) -> None:
    """The original's bilinear downsampling: a 2×2 mean (s = 2), the centre token (s = 3), the
    central 2×2 mean (s = 4) of each region."""
    from msr.projectors.grid import region_layout
    from msr.projectors.tokenpacker import TokenPacker

    x = torch.randn(2, N, D)
    layout = region_layout(GRID, m)
    pts = TokenPacker.points(x, GRID, layout).view(2, *layout, D)
    grid = x.view(2, 24, 24, D)
    s = 24 // layout[0]
    r, q = 2, 1  # an arbitrary region
    block = grid[:, r * s : (r + 1) * s, q * s : (q + 1) * s]  # (2, s, s, D)
    ref = {2: block.mean(dim=(1, 2)), 3: block[:, 1, 1], 4: block[:, 1:3, 1:3].mean(dim=(1, 2))}[s]
    torch.testing.assert_close(pts[:, r, q], ref)


def test_tokenpacker_attention_is_region_local() -> None:
    """Changing a token outside a query's region leaves that output unchanged."""
    proj = make("tokenpacker", 144).eval()
    x = torch.randn(1, N, D)
    y = proj(x)
    x2 = x.clone()
    x2[0, 5 * 24 + 7] += 10.0  # token (5, 7): region (2, 3) of the 12×12 layout
    y2 = proj(x2)
    changed = (y2 - y).abs().amax(dim=-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [2 * 12 + 3]


def test_c_abstractor_does_not_modify_its_input() -> None:
    proj = make("c_abstractor", 36)
    x = torch.randn(1, N, D)
    before = x.clone()
    proj(x)
    assert torch.equal(x, before)
