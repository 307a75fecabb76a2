"""`msr predict`: one question about one image, answered by a trained model."""

from __future__ import annotations

from pathlib import Path

from msr.config import Params
from msr.data.images import ImageLimits, ImageSkip, open_image
from msr.eval.benchmarks import ImageRef, Question
from msr.eval.generate import GenerationArgs, Generator
from msr.models.mllm import MLLM


def run(params: Params, image: Path, question: str, model: Path | None = None) -> str:
    """The model's answer; ValueError naming a bad image (read, bounded, before the model loads)
    or a damaged model."""
    d = params.data
    try:
        open_image(image, ImageLimits(d.max_image_pixels, d.max_image_aspect)).close()
    except ImageSkip as err:
        raise ValueError(f"--image: {err}") from None
    loaded = MLLM.from_pretrained(model or Path(params.paths.finetune), dtype=params.eval.dtype)
    generator = Generator(loaded, GenerationArgs(max_new_tokens=params.eval.max_new_tokens))
    return generator.answer([Question("cli", "cli", question, question, ImageRef(image))], 1)[0]
