"""Vision backbone families by HF `model_type`; `load_vision` picks the family of a checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from transformers import AutoConfig, PretrainedConfig

if TYPE_CHECKING:
    import torch

    from msr.config import Vision as VisionParams
    from msr.models.vision.base import VisionBackbone

VISION_BACKBONES: dict[str, type[VisionBackbone]] = {}  # model_type -> family class
B = TypeVar("B", bound="type[VisionBackbone]")


def register_vision(cls: B) -> B:
    for model_type in cls.model_types:
        VISION_BACKBONES[model_type] = cls
    return cls


def vision_class(config: PretrainedConfig, model: str = "") -> type[VisionBackbone]:
    """The family class of a config; an unknown `model_type` is an error naming the known ones."""
    kind = config.model_type
    if kind not in VISION_BACKBONES:
        raise ValueError(
            f"vision model {model or kind!r} has model_type {kind!r}; supported: "
            f"{', '.join(sorted(VISION_BACKBONES))}"
        )
    return VISION_BACKBONES[kind]


def load_vision(model: str, *, revision: str | None = None, **options: Any) -> VisionBackbone:
    """The backbone of a hub id or local directory, its family read from its config.
    Options: feature_layer, select, image_size, aspect, dtype, device."""
    config = AutoConfig.from_pretrained(model, revision=revision)
    return vision_class(config, model).from_pretrained(model, revision=revision, **options)


def describe_vision(
    model: str,
    *,
    revision: str | None = None,
    feature_layer: int = -2,
    select: str = "patch",
    image_size: int | None = None,
    aspect: str = "pad",
    dtype: str = "bf16",
    final_norm: bool = False,
) -> tuple[dict[str, Any], int, tuple[int, int]]:
    """(fingerprint, width d, grid) of a backbone from its config and image processor alone — no
    weights loaded. Equal to what the loaded backbone reports (tested)."""
    from msr.models.vision.fingerprint import encoder_fingerprint

    config = AutoConfig.from_pretrained(model, revision=revision)
    cls = vision_class(config, model)
    vcfg = cls.vision_config(config)
    spec = cls.image_spec(model, revision, config, image_size, aspect)
    commit = revision or getattr(config, "_commit_hash", None)
    fp = encoder_fingerprint(
        model, commit, cls.family, feature_layer, select, dtype, spec, final_norm
    )
    side = spec.size // int(vcfg.patch_size)
    return fp, int(vcfg.hidden_size), (side, side)


def vision_for(vision: VisionParams, device: torch.device | str = "cpu") -> VisionBackbone:
    """The frozen backbone the params' `vision` section describes, at its resolution."""
    return load_vision(vision.model, device=device, **vision.backbone_options)
