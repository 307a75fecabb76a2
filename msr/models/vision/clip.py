"""CLIP vision towers (OpenAI CLIP, LLaVA-1.5's CLIP-ViT-L/14-336): CLS + patches, pre-LN."""

from __future__ import annotations

from transformers import CLIPVisionModel

from msr.models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from msr.models.vision.base import VisionBackbone
from msr.models.vision.registry import register_vision


@register_vision
class CLIPBackbone(VisionBackbone):
    family = "clip"
    model_types = ("clip", "clip_vision_model")
    model_class = CLIPVisionModel
    blocks_path = "encoder.layers"
    norm_path = "post_layernorm"
    patch_path = "embeddings.patch_embedding"
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
