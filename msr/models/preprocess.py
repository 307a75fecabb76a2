"""LLaVA-1.5 image preprocessing, as uint8 work per image and one float normalisation per batch.

Per image (`prepare`): RGB → pad to a square filled with int(255·mean) (`image_aspect_ratio=pad`) →
resize the shortest edge to S (bicubic) → centre crop S×S; the result stays uint8. Per batch
(`normalize`): ×1/255, (x − mean)/std. Together they equal the HF CLIP image processor's output
(tested), at a fraction of its cost. msr's `VisionTower` takes the uint8 batch and does the
normalisation inside its patch embedding; `normalize`/`preprocess` give HF's float input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageSpec:
    """What the vision tower expects: square size, normalisation, and how to make images square."""

    size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    aspect: str = "pad"  # pad | crop

    @property
    def pad_color(self) -> tuple[int, int, int]:
        r, g, b = (int(255 * m) for m in self.mean)
        return r, g, b

    @classmethod
    def from_processor(cls, processor: object, aspect: str) -> ImageSpec:
        """Read size, mean and std from a HF image processor (CLIP or SigLIP)."""
        crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None)
        if isinstance(crop, dict):
            size = crop.get("height") or crop.get("shortest_edge")
        else:
            size = getattr(crop, "height", None) or getattr(crop, "shortest_edge", None)
        mean = tuple(processor.image_mean)  # type: ignore[attr-defined]
        std = tuple(processor.image_std)  # type: ignore[attr-defined]
        if size is None or len(mean) != 3 or len(std) != 3:
            raise ValueError(
                f"cannot read size/mean/std from image processor {type(processor).__name__}"
            )
        return cls(int(size), mean, std, aspect)


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Paste the image centred on a max(W, H) square of `fill` (LLaVA's expand2square)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def prepare(img: Image.Image, spec: ImageSpec) -> Tensor:
    """One image -> uint8 (3, S, S)."""
    return torch.from_numpy(np.array(square(img, spec), dtype=np.uint8)).permute(2, 0, 1)


def prepare_hwc(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """One image -> uint8 (S, S, 3), read-only (PIL's bytes, not copied again): `stack_hwc` it."""
    return np.asarray(square(img, spec))


def stack_hwc(images: Sequence[np.ndarray]) -> Tensor:
    """(S, S, 3) uint8 arrays -> uint8 (B, 3, S, S), with one transposing copy per image."""
    s = images[0].shape[0]
    out = np.empty((len(images), 3, s, s), dtype=np.uint8)
    for j, a in enumerate(images):
        out[j] = a.transpose(2, 0, 1)
    return torch.from_numpy(out)


def square(img: Image.Image, spec: ImageSpec) -> Image.Image:
    """RGB, made square (`spec.aspect`) and S×S, as the HF processor does before it normalises."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if spec.aspect == "pad":
        img = expand_to_square(img, spec.pad_color)
    elif spec.aspect != "crop":
        raise ValueError(f"aspect={spec.aspect!r}; accepted: 'pad', 'crop'")
    w, h = img.size
    s = spec.size
    if min(w, h) != s:  # shortest edge to S, the long edge scaled and floored as HF does
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        w, h = nw, nh
    top, left = (h - s) // 2, (w - s) // 2
    if (w, h) != (s, s):
        img = img.crop((left, top, left + s, top + s))
    return img


def normalize(batch: Tensor, spec: ImageSpec, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (B, 3, S, S) -> normalised (B, 3, S, S) = (x/255 − mean)/std, computed as x·a + b in
    place, in `dtype` when it is fp32 or bf16 (fp16 is computed in fp32: it is slow on CPUs)."""
    compute = dtype if dtype in (torch.float32, torch.bfloat16) else torch.float32
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    scale = (1.0 / (255.0 * std)).to(device=batch.device, dtype=compute)
    shift = (-mean / std).to(device=batch.device, dtype=compute)
    return batch.to(compute).mul_(scale).add_(shift).to(dtype)


def preprocess(
    images: Sequence[Image.Image], spec: ImageSpec, dtype: torch.dtype = torch.float32
) -> Tensor:
    """PIL images -> normalised (B, 3, S, S)."""
    return normalize(torch.stack([prepare(im, spec) for im in images]), spec, dtype)
