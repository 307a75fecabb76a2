"""DINOv2 (transformers `Dinov2Model`, and `Dinov2WithRegistersModel`): CLS, optional register
tokens, then patches; position embeddings are always interpolated to the input resolution."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from transformers import Dinov2Model, Dinov2WithRegistersModel, PreTrainedModel

from msr.models.vision.base import VisionBackbone
from msr.models.vision.registry import register_vision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register_vision
class DINOv2Backbone(VisionBackbone):
    family = "dinov2"
    model_types = ("dinov2",)
    model_class: ClassVar[type[PreTrainedModel]] = Dinov2Model
    blocks_path = "encoder.layer"
    norm_path = "layernorm"
    patch_path = "embeddings.patch_embeddings.projection"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def hidden_states(self, pixels: Tensor) -> tuple[Tensor, ...]:
        return self.model(pixel_values=pixels, output_hidden_states=True).hidden_states


@register_vision
class DINOv2RegistersBackbone(DINOv2Backbone):
    family = "dinov2_with_registers"
    model_types = ("dinov2_with_registers",)
    model_class = Dinov2WithRegistersModel
