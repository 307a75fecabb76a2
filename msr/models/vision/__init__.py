"""Vision backbones: one class per family (CLIP, SigLIP, DINOv2) behind a registry keyed by HF
`model_type`. `load_vision(model, ...)` loads any supported checkpoint; `describe_vision` gives its
fingerprint, width and grid without loading weights."""

from msr.models.vision import clip, dinov2, siglip  # noqa: F401  (each registers its family)
from msr.models.vision.base import DTYPES, SELECTS, VisionBackbone
from msr.models.vision.fingerprint import encoder_fingerprint, weights_hash
from msr.models.vision.fold import fold_normalization, folds_normalization
from msr.models.vision.registry import (
    VISION_BACKBONES,
    describe_vision,
    load_vision,
    register_vision,
    vision_class,
    vision_for,
)

__all__ = [
    "DTYPES",
    "SELECTS",
    "VISION_BACKBONES",
    "VisionBackbone",
    "describe_vision",
    "encoder_fingerprint",
    "fold_normalization",
    "folds_normalization",
    "load_vision",
    "register_vision",
    "vision_class",
    "vision_for",
    "weights_hash",
]
