"""Pictures: MS-Resampler's scope windows (in the spirit of the paper's Fig. 3), its per-branch
attention over a real image, and the training curves. Each function writes one PNG atomically.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from msr.projectors.grid import region_layout
from msr.projectors.ms_resampler import MSResampler
from msr.projectors.scope import scope_bias
from msr.utils.io import atomic_save_figure

COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd")


def _save(fig: Any, path: Path) -> Path:
    return atomic_save_figure(fig, path, dpi=130)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def example_queries(grid: tuple[int, int], num_queries: int) -> list[int]:
    """A corner, an edge and two inner queries (row-major region indices)."""
    mh, mw = region_layout(grid, num_queries)
    picks = [0, mw // 2, (mh // 2) * mw + mw // 2, (mh - 1) * mw + mw - 2]
    return list(dict.fromkeys(min(p, mh * mw - 1) for p in picks))


def scope_windows(
    path: Path,
    grid: tuple[int, int] = (24, 24),
    num_queries: int = 36,
    kernels: tuple[int, ...] = (2, 6, 14),
) -> Path:
    """One panel per branch: the 24×24 patch grid, the query regions, and the k×k window (Eq. 5:
    bias 0 inside, −1 outside) of a few queries, each in its own colour, its anchor marked."""
    plt = _plt()
    h, w = grid
    mh, mw = region_layout(grid, num_queries)
    queries = example_queries(grid, num_queries)
    fig, axes = plt.subplots(1, len(kernels), figsize=(3.3 * len(kernels), 3.6))
    for ax, k in zip(np.atleast_1d(axes), kernels, strict=True):
        bias = scope_bias(grid, num_queries, k)  # (M, N)
        canvas = np.ones((h, w, 3))
        for i, q in enumerate(queries):
            inside = (bias[q] == 0).reshape(h, w).numpy()
            rgb = np.array(_rgb(COLORS[i % len(COLORS)]))
            canvas[inside] = 0.45 * canvas[inside] + 0.55 * rgb
        ax.imshow(canvas, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
        for r in range(1, mh):  # region boundaries: where each query's region ends
            ax.axhline(r * h / mh - 0.5, color="0.6", lw=0.6)
        for c in range(1, mw):
            ax.axvline(c * w / mw - 0.5, color="0.6", lw=0.6)
        for i, q in enumerate(queries):
            r, c = divmod(q, mw)
            y, x = (r + 0.5) * h / mh - 0.5, (c + 0.5) * w / mw - 0.5
            ax.plot(x, y, marker="x", color=COLORS[i % len(COLORS)], ms=7, mew=2)
        ax.set_title(f"kernel k = {k}")
        ax.set_xticks([0, w - 1])
        ax.set_yticks([0, h - 1])
    fig.suptitle(
        f"MS-Resampler scope windows: M = {num_queries} queries ({mh}×{mw} regions, grey) on the "
        f"{h}×{w} patch grid; ×: a query's anchor, colour: its window",
        fontsize=9,
    )
    return _save(fig, path)


def _rgb(hex_color: str) -> tuple[float, float, float]:
    v = hex_color.lstrip("#")
    return (int(v[0:2], 16) / 255, int(v[2:4], 16) / 255, int(v[4:6], 16) / 255)


def branch_attention(projector: MSResampler, features: torch.Tensor) -> torch.Tensor:
    """(1, N, d) features -> (E, M, N) attention probabilities of each branch (the projector's own;
    heads averaged)."""
    return projector.branch_attention(features)[:, 0]


def attention_overlay(
    path: Path,
    image: Image.Image,
    probs: torch.Tensor,
    grid: tuple[int, int],
    kernels: tuple[int, ...],
    queries: list[int],
    title: str,
) -> Path:
    """Rows: queries; columns: branches. Each panel: the image (as the encoder saw it, square) with
    the query's attention over the patch grid laid over it (colour and opacity: weight relative to
    the query's largest)."""
    plt = _plt()
    side = 336
    base = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)) / 255
    h, w = grid
    fig, axes = plt.subplots(
        len(queries), len(kernels), figsize=(2.4 * len(kernels), 2.4 * len(queries))
    )
    axes = np.atleast_2d(axes)
    for row, q in enumerate(queries):
        for col, k in enumerate(kernels):
            ax = axes[row, col]
            heat = probs[col, q].reshape(h, w).numpy()
            heat = heat / max(float(heat.max()), 1e-12)  # (H, W) in [0, 1]
            rgba = plt.get_cmap("inferno")(heat)  # (H, W, 4)
            rgba[..., 3] = 0.85 * np.sqrt(heat)  # where the query does not look, the photo shows
            ax.imshow(base)
            ax.imshow(rgba, extent=(0, side, side, 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"branch k = {k}", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"query {q}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def training_curves(path: Path, reports: Path) -> Path:
    """Loss (and learning rate) per step of both stages, from the dvclive TSVs."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, stage in zip(axes, ("pretrain", "finetune"), strict=True):
        tsv = reports / stage / "plots" / "metrics" / "train" / "loss.tsv"
        if not tsv.exists():
            ax.set_title(f"{stage}: no metrics")
            continue
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        steps = [int(r["step"]) for r in rows]
        ax.plot(steps, [float(r["loss"]) for r in rows], color="#1f77b4", lw=1.2)
        ax.set_title(f"stage {1 if stage == 'pretrain' else 2} ({stage})")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        lr = reports / stage / "plots" / "metrics" / "train" / "lr.tsv"
        if lr.exists():
            lrs = list(csv.DictReader(lr.open(), delimiter="\t"))
            twin = ax.twinx()
            twin.plot([int(r["step"]) for r in lrs], [float(r["lr"]) for r in lrs],
                      color="0.6", lw=0.8, ls="--")  # fmt: skip
            twin.set_ylabel("learning rate", color="0.5")
    fig.tight_layout()
    return _save(fig, path)
