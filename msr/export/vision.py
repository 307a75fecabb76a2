"""The vision tower of an exported model: the HF tower msr reads features from, with the weights
as saved (no normalisation folded in), cut after msr's feature layer, at msr's resolution, and an
HF image processor that prepares images as msr does (LLaVA's pad to square, bicubic resize, centre
crop, the tower's mean and std)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlavaImageProcessorPil, PretrainedConfig

from msr.models.mllm import VisionRef
from msr.models.preprocess import ImageSpec
from msr.models.vision import DTYPES, load_vision


@dataclass(frozen=True)
class ExportedVision:
    config: PretrainedConfig  # the tower's own config: `num_hidden_layers` blocks, at `image_size`
    state: dict[str, Tensor]
    spec: ImageSpec
    family: str
    prefix_tokens: int  # tokens before the patches in the hidden states (CLS, registers)
    select: str  # "patch" | "cls_patch"
    final_norm: str | None  # the module path of the final LayerNorm msr applies, or None
    patch_size: int

    @property
    def num_tokens(self) -> int:
        side = self.spec.size // self.patch_size
        return side * side + int(self.select == "cls_patch")

    def image_processor(self) -> LlavaImageProcessorPil:
        s = self.spec.size
        return LlavaImageProcessorPil(
            do_pad=self.spec.aspect == "pad",
            size={"shortest_edge": s},
            crop_size={"height": s, "width": s},
            image_mean=list(self.spec.mean),
            image_std=list(self.spec.std),
        )


def export_vision(ref: VisionRef, dtype: str) -> ExportedVision:
    """The tower of `ref` (its path as the model recorded it: a hub id, or a directory relative to
    where the model was trained)."""
    try:
        backbone = load_vision(**{**asdict(ref), "dtype": "fp32", "fold": False})
    except OSError as err:
        raise FileNotFoundError(
            f"the model's vision backbone {ref.model!r} cannot be loaded ({str(err).splitlines()[0]}): "
            "run the export where the model was trained, or with the hub id in reach"
        ) from None
    hf = backbone.model
    raw = hf.config.to_dict()
    raw["num_hidden_layers"] = backbone.keep  # the blocks after the feature layer were dropped
    for key in ("out_features", "out_indices", "stage_names"):  # DINOv2's backbone API: per block
        raw.pop(key, None)
    if backbone.image_size != backbone.native_resolution and backbone.family in ("clip", "siglip"):
        _bake_position_embeddings(hf.embeddings, backbone.image_size, int(backbone.has_cls))
        raw["image_size"] = backbone.image_size
    if "vision_use_head" in raw:
        raw["vision_use_head"] = False  # SigLIP's pooling head reads no feature (msr prunes it)
    config = type(hf.config).from_dict(raw)
    cast = DTYPES[dtype]
    state = {k: v.to(cast) if v.is_floating_point() else v for k, v in hf.state_dict().items()}
    return ExportedVision(
        config=config,
        state=state,
        spec=backbone.spec,
        family=backbone.family,
        prefix_tokens=backbone.num_prefix_tokens,
        select=backbone.select,
        final_norm=backbone.norm_path if backbone.final_norm else None,
        patch_size=backbone.patch_size,
    )


def _bake_position_embeddings(embeddings: Any, size: int, cls_tokens: int) -> None:
    """CLIP and SigLIP interpolate their position table per call when the image is not at the
    native size; the table at `size` is computed once here (the same bicubic interpolation, so the
    same numbers) and stored as the tower's own, so that the exported config says `image_size`."""
    patch = int(embeddings.patch_size)
    n = (size // patch) ** 2 + cls_tokens
    dim = embeddings.position_embedding.weight.shape[1]
    with torch.no_grad():
        table = embeddings.interpolate_pos_encoding(torch.zeros(1, n, dim), size, size)[0]
    embeddings.position_embedding = nn.Embedding.from_pretrained(table.clone(), freeze=True)
    embeddings.num_patches, embeddings.num_positions, embeddings.image_size = (
        n - cls_tokens,
        n,
        size,
    )
    embeddings.register_buffer("position_ids", torch.arange(n).expand((1, -1)), persistent=False)
