"""Stage `synth`: generate the synthetic dataset under paths.synth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msr.config import Params
from msr.data.synth.generate import generate


def run(params: Params, out_dir: Path | None = None) -> dict[str, Any]:
    out = Path(out_dir) if out_dir is not None else Path(params.paths.synth)
    return generate(out, params.data.synth, image_size=params.vision.image_size)
