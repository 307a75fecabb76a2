"""A frozen vision backbone: uint8 images -> the features a projector reads, for any family.

The backbone, not params, knows its width d, patch size, native resolution and image transform
(prismatic's `base_vision.py` is the model: https://github.com/TRI-ML/prismatic-vlms). It keeps the
blocks up to `feature_layer` (HF `hidden_states` index; −2: the penultimate block, before any final
norm, as LLaVA; `final_norm` applies the family's last LayerNorm to it), drops the prefix tokens (CLS, registers) or keeps CLS + patches, and folds the
image normalisation into its patch embedding in bf16 (fold.py). A family is a subclass
that names where its blocks and patch conv live and how many prefix tokens it has.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig, PreTrainedModel

from msr.models.preprocess import ImageSpec, normalize
from msr.models.vision.fingerprint import encoder_fingerprint
from msr.models.vision.fold import fold_normalization, folds_normalization

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Select = Literal["patch", "cls_patch"]
SELECTS = ("patch", "cls_patch")


class VisionBackbone(nn.Module):
    """uint8 images (B, 3, S, S) -> features (B, N, d), frozen, no grad."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # HF `model_type`s this family loads
    model_class: ClassVar[type[PreTrainedModel]]
    blocks_path: ClassVar[str]  # the nn.ModuleList of transformer blocks
    patch_path: ClassVar[str]  # the patch-embedding conv
    norm_path: ClassVar[str]  # the final LayerNorm (after the last block)
    has_cls: ClassVar[bool] = True
    mean: ClassVar[tuple[float, float, float]]  # the family's normalisation, when no processor
    std: ClassVar[tuple[float, float, float]]  # is saved beside the weights

    def __init__(
        self,
        model: PreTrainedModel,
        spec: ImageSpec,
        *,
        name: str = "",
        revision: str | None = None,
        feature_layer: int = -2,
        select: str = "patch",
        dtype: str = "fp32",
        fold: bool = True,
        final_norm: bool = False,
    ) -> None:
        super().__init__()
        if select not in SELECTS:
            raise ValueError(f"select={select!r}; accepted: {', '.join(map(repr, SELECTS))}")
        if select == "cls_patch" and not self.has_cls:
            raise ValueError(f"select='cls_patch': a {self.family} backbone has no CLS token")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; accepted: {', '.join(DTYPES)}")
        self.model, self.spec, self.name, self.revision = model, spec, name, revision
        self.feature_layer, self.select, self.dtype_name = feature_layer, select, dtype
        self.final_norm = final_norm
        # the family's final LayerNorm applied to the chosen layer (DINOv2's high-norm tokens tamed)
        self.out_norm = model.get_submodule(self.norm_path) if final_norm else nn.Identity()
        vcfg = model.config
        depth = vcfg.num_hidden_layers
        if not -(depth + 1) <= feature_layer <= depth:
            raise ValueError(
                f"feature_layer={feature_layer} is outside this {self.family} backbone's "
                f"{depth + 1} hidden states (−{depth + 1}..{depth})"
            )
        if spec.size % self.patch_size:
            raise ValueError(
                f"image_size={spec.size} is not a multiple of the {self.family} patch size "
                f"{self.patch_size}; try {spec.size // self.patch_size * self.patch_size}"
            )
        self.keep = feature_layer % (depth + 1)  # hidden_states index == number of blocks to run
        parent, _, attr = self.blocks_path.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attr, getattr(owner, attr)[: self.keep])
        self.prune()
        self.model.requires_grad_(False).eval()
        self.folded = fold and folds_normalization(dtype)
        if self.folded:
            fold_normalization(self.patch_embedding, spec.mean, spec.std)  # type: ignore[arg-type]
        self._fingerprint: dict[str, Any] | None = None

    def prune(self) -> None:
        """Drop modules the features never pass through (a family's pooling head)."""

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        revision: str | None = None,
        feature_layer: int = -2,
        select: str = "patch",
        image_size: int | None = None,
        aspect: str = "pad",
        dtype: str = "bf16",
        final_norm: bool = False,
        device: str | torch.device = "cpu",
        fold: bool = True,
    ) -> VisionBackbone:
        """Load the weights of a hub id or local directory (revision pinned); `fold=False` keeps
        the patch embedding's weights as saved (msr.export writes them)."""
        config = AutoConfig.from_pretrained(model, revision=revision)
        spec = cls.image_spec(model, revision, config, image_size, aspect)
        hf = cls.model_class.from_pretrained(
            model, revision=revision or "main", dtype=DTYPES[dtype]
        )
        backbone = cls(
            hf,
            spec,
            name=model,
            revision=revision or getattr(config, "_commit_hash", None),
            feature_layer=feature_layer,
            select=select,
            dtype=dtype,
            fold=fold,
            final_norm=final_norm,
        )
        return backbone.to(device)

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig,
        *,
        feature_layer: int = -2,
        select: str = "patch",
        image_size: int | None = None,
        final_norm: bool = False,
    ) -> VisionBackbone:
        """Randomly initialised, fp32, no normalisation fold: build it under `torch.device("meta")`
        to count its cost without weights."""
        vcfg = cls.vision_config(config)
        spec = ImageSpec(image_size or int(vcfg.image_size), cls.mean, cls.std)
        hf = cls.model_class(vcfg)
        return cls(
            hf,
            spec,
            feature_layer=feature_layer,
            select=select,
            dtype="fp32",
            fold=False,
            final_norm=final_norm,
        )

    @classmethod
    def vision_config(cls, config: PretrainedConfig) -> PretrainedConfig:
        """The vision part of a (possibly two-tower) config."""
        return getattr(config, "vision_config", config)

    @classmethod
    def image_spec(
        cls,
        model: str,
        revision: str | None,
        config: PretrainedConfig,
        image_size: int | None,
        aspect: str,
    ) -> ImageSpec:
        """Size and normalisation from the saved image processor (the family's defaults where there
        is none); `image_size` overrides the size (position embeddings are interpolated)."""
        try:
            spec = ImageSpec.from_processor(
                AutoImageProcessor.from_pretrained(model, revision=revision), aspect
            )
        except OSError:  # no preprocessor_config.json: the family's normalisation, native size
            spec = ImageSpec(int(cls.vision_config(config).image_size), cls.mean, cls.std, aspect)
        return dataclasses.replace(spec, size=image_size) if image_size else spec

    # -- what it produces ------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def native_resolution(self) -> int:
        """The resolution the position embeddings were trained at."""
        return int(self.model.config.image_size)

    @property
    def image_size(self) -> int:
        return self.spec.size

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches in the hidden states (CLS, registers)."""
        return int(self.has_cls) + int(getattr(self.model.config, "num_register_tokens", 0) or 0)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + int(self.select == "cls_patch")

    @property
    def patch_embedding(self) -> nn.Module:
        return self.model.get_submodule(self.patch_path)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- running ---------------------------------------------------------------------------

    def hidden_states(self, pixels: Tensor) -> tuple[Tensor, ...]:
        """The HF model's hidden states of normalised pixels; families adapt the call."""
        interpolate = self.image_size != self.native_resolution
        out = self.model(
            pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=interpolate
        )
        return out.hidden_states

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        """uint8 images (B, 3, S, S) -> features (B, N, d), on the backbone's device."""
        s = self.image_size
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise ValueError(
                f"the vision backbone takes uint8 images (B, 3, {s}, {s}) as "
                f"msr.models.preprocess.prepare makes them (it normalises them itself); "
                f"got {pixels.dtype} {tuple(pixels.shape)}"
            )
        pixels = pixels.to(self.device)  # 0..255 are exact in bf16 and fp32: folded, a cast will do
        pixels = pixels.to(self.dtype) if self.folded else normalize(pixels, self.spec, self.dtype)
        h = self.out_norm(self.hidden_states(pixels)[self.keep])  # (B, prefix + H·W, d)
        patches = h[:, self.num_prefix_tokens :]
        if self.select == "cls_patch":
            return torch.cat([h[:, :1], patches], dim=1)  # (B, 1 + H·W, d)
        return patches  # (B, H·W, d)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the features; `id` is a short hash of the rest. Computed once
        (it hashes the weight files)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(
                self.name,
                self.revision,
                self.family,
                self.feature_layer,
                self.select,
                self.dtype_name,
                self.spec,
                self.final_norm,
            )
        return dict(self._fingerprint)
