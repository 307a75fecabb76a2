"""`msr figures`: the pictures of a run in <paths.reports>/figures/ — MS-Resampler's scope windows,
its per-branch attention over a real photograph (the trained projector of the run, on the
params' vision backbone), and the training curves."""

from __future__ import annotations

from pathlib import Path

from msr.config import Params
from msr.models.configs import vision_grid
from msr.projectors import active_options
from msr.projectors import files as pfiles
from msr.projectors.ms_resampler import MSResampler
from msr.report import figures


def sample_photograph() -> Path:
    """A real photograph that matplotlib ships (Grace Hopper, public domain)."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def run(params: Params, out: Path | None = None, image: Path | None = None) -> list[Path]:
    out = out or Path(params.paths.reports) / "figures"
    p = params.projector
    grid = vision_grid(params.vision)
    options = active_options(p) if p.name == "ms_resampler" else {}
    kernels = tuple(options.get("kernels", (2, 6, 14)))
    M = p.num_queries if p.name == "ms_resampler" else 36
    written = [figures.scope_windows(out / "scope_windows.png", grid, M, kernels)]
    written.append(figures.training_curves(out / "training_curves.png", Path(params.paths.reports)))
    trained = next(
        (Path(d) for d in (params.paths.finetune, params.paths.pretrain)
         if (Path(d) / pfiles.PROJECTOR_CONFIG).exists()),
        None,
    )  # fmt: skip
    if trained is not None:
        projector = pfiles.load_projector(trained)
        if isinstance(projector, MSResampler):
            written.append(
                _attention(params, projector, trained, out, image or sample_photograph())
            )
    return written


def _attention(
    params: Params, projector: MSResampler, trained: Path, out: Path, image: Path
) -> Path:
    from PIL import Image

    from msr.models.preprocess import prepare, square
    from msr.models.vision import vision_for

    tower = vision_for(params.vision)
    with Image.open(image) as img:
        photo = square(img.convert("RGB"), tower.spec)  # as the encoder sees it: padded, S×S
    feats = tower(prepare(photo, tower.spec)[None])  # (1, 3, S, S) uint8 -> (1, N, d)
    probs = figures.branch_attention(projector.float().eval(), feats)  # (E, M, N)
    grid = projector.input_grid(feats)
    title = (
        f"Per-branch attention of the trained MS-Resampler ({trained}, M = {projector.num_queries}, "
        f"β = {projector.beta}) over a photograph, {params.vision.model} features"
    )
    return figures.attention_overlay(
        out / "attention.png",
        photo,
        probs,
        grid,
        tuple(projector.kernels),
        figures.example_queries(grid, projector.num_queries),
        title,
    )
