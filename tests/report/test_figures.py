"""Pictures: the attention they draw is the module's own, and each file is written."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from msr.projectors import build_projector
from msr.projectors.scope import scope_bias
from msr.report import figures


def test_branch_attention_is_the_modules_and_stays_in_scope() -> None:
    """Probabilities per branch sum to 1; with a strong β nearly all mass is in the k×k window;
    weighting the features with them and projecting equals the module's branch outputs."""
    torch.manual_seed(0)
    proj = build_projector("ms_resampler", vision_dim=32, llm_dim=48, num_queries=36, beta=30.0)
    x = torch.randn(1, 576, 32)
    probs = figures.branch_attention(proj, x)  # (E, M, N)
    assert probs.shape == (3, 36, 576)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 36))
    for e, k in enumerate(proj.kernels):
        outside = scope_bias((24, 24), 36, k) < 0
        assert float((probs[e] * outside).sum(-1).max()) < 1e-6
    att = proj.attention
    expected = proj.forward_branches(x)[:, 0]  # (E, M, c)
    got = torch.einsum("emn,nd,edc->emc", probs, x[0], att.value_weight)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_pictures_are_written(tmp_path: Path) -> None:
    figures.scope_windows(tmp_path / "scope.png")
    proj = build_projector("ms_resampler", vision_dim=32, llm_dim=48, num_queries=36)
    probs = figures.branch_attention(proj, torch.randn(1, 576, 32))
    queries = figures.example_queries((24, 24), 36)
    assert len(queries) == 4 and queries[0] == 0
    image = Image.new("RGB", (400, 300), (120, 40, 200))
    figures.attention_overlay(
        tmp_path / "att.png", image, probs, (24, 24), (2, 6, 14), queries, "t"
    )
    figures.training_curves(tmp_path / "curves.png", tmp_path / "no-reports")
    for name in ("scope.png", "att.png", "curves.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 300 and img.size[1] > 200
