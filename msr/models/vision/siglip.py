"""SigLIP vision towers: patches only (no CLS token), mean/std 0.5."""

from __future__ import annotations

from transformers import SiglipVisionModel

from msr.models.vision.base import VisionBackbone
from msr.models.vision.registry import register_vision


@register_vision
class SigLIPBackbone(VisionBackbone):
    family = "siglip"
    model_types = ("siglip", "siglip_vision_model")
    model_class = SiglipVisionModel
    blocks_path = "encoder.layers"
    norm_path = "post_layernorm"
    patch_path = "embeddings.patch_embedding"
    has_cls = False
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def prune(self) -> None:
        """The attention-pooling head reads the last block, never the features: not run, not kept."""
        for module in self.model.modules():
            if getattr(module, "use_head", False):
                setattr(module, "use_head", False)  # noqa: B010  (a plain bool attribute)
                del module.head
