"""The frozen vision tower: any HF CLIP or SigLIP vision model by hub id or local path.

Features are `hidden_states[feature_layer]` (−2: the penultimate block, before post-LN, as LLaVA);
`patch` drops CLIP's CLS token, `cls_patch` keeps it. Encoder blocks after the chosen layer are
removed at load, so they cost nothing. The tower takes uint8 images as `prepare` makes them. In
fp32 and bf16 the processor's normalisation is folded into the patch embedding at load, which saves
a float pass over every image: conv((x/255 − μ)/σ) = conv with W/(255σ) plus the bias Σ W·(−μ/σ).
That is exact in real arithmetic; in bf16 it rounds the scaled weights and the bias once more, so
features differ from HF's bf16 path by up to about twice HF's own bf16 error (tested). fp16, where
scaled weights would turn subnormal, normalises the pixels instead, as HF does.
`fingerprint()` identifies what produced a feature.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModel, SiglipVisionModel

from msr.models.preprocess import ImageSpec, normalize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TOWERS: dict[str, type[CLIPVisionModel] | type[SiglipVisionModel]] = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}


class VisionTower(nn.Module):
    """uint8 images (B, 3, S, S) -> features (B, N, d), frozen, no grad."""

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        feature_layer: int = -2,
        select: str = "patch",
        aspect: str = "pad",
        dtype: str = "bf16",
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        config = AutoConfig.from_pretrained(model, revision=revision)
        kind = config.model_type
        if kind not in _TOWERS:
            raise ValueError(
                f"vision model {model!r} has model_type {kind!r}; supported: {', '.join(_TOWERS)}"
            )
        if select not in ("patch", "cls_patch"):
            raise ValueError(f"select={select!r}; accepted: 'patch', 'cls_patch'")
        self.name, self.revision, self.dtype_name = model, revision, dtype
        self.tower = _TOWERS[kind].from_pretrained(
            model, revision=revision or "main", dtype=DTYPES[dtype]
        )
        self.tower.requires_grad_(False).eval().to(device)
        vcfg = self.tower.config
        depth = vcfg.num_hidden_layers
        if not -(depth + 1) <= feature_layer <= depth:
            raise ValueError(
                f"feature_layer={feature_layer} is outside this tower's {depth + 1} hidden states"
            )
        self.feature_layer, self.select, self.aspect = feature_layer, select, aspect
        self.keep = feature_layer % (depth + 1)  # hidden_states index == number of blocks to run
        encoder = getattr(
            self.tower, "vision_model", self.tower
        ).encoder  # transformers 4 vs 5 layout
        encoder.layers = encoder.layers[: self.keep]
        self.has_cls = kind.startswith("clip")
        self.hidden_size: int = vcfg.hidden_size
        self.image_size = int(vcfg.image_size)  # type: ignore[arg-type]
        self.patch_size = int(vcfg.patch_size)  # type: ignore[arg-type]
        processor = AutoImageProcessor.from_pretrained(model, revision=revision)
        self.spec = ImageSpec.from_processor(processor, aspect)
        if self.spec.size != self.image_size:
            raise ValueError(
                f"{model}: processor size {self.spec.size} != tower image_size {self.image_size}"
            )
        self._commit = getattr(config, "_commit_hash", None)
        self._fingerprint: dict[str, Any] | None = None
        self.folded = folds_normalization(dtype)
        if self.folded:
            embeddings = getattr(self.tower, "vision_model", self.tower).embeddings
            fold_normalization(embeddings.patch_embedding, self.spec.mean, self.spec.std)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def device(self) -> torch.device:
        return self.tower.device

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + (
            1 if self.select == "cls_patch" and self.has_cls else 0
        )

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        """uint8 images (B, 3, S, S) -> features (B, N, d), on the tower's device."""
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f"the vision tower takes uint8 images (B, 3, S, S) as msr.models.preprocess.prepare "
                f"makes them (it normalises them itself); got {pixels.dtype} {tuple(pixels.shape)}"
            )
        pixels = pixels.to(self.device)  # 0..255 are exact in bf16 and fp32: folded, a cast will do
        pixels = pixels.to(self.dtype) if self.folded else normalize(pixels, self.spec, self.dtype)
        out = self.tower(pixel_values=pixels, output_hidden_states=True)
        features = out.hidden_states[self.keep]  # (B, 1 + N, d) for CLIP, (B, N, d) for SigLIP
        if self.has_cls and self.select == "patch":
            features = features[:, 1:]
        return features

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the features; `id` is a short hash of the rest. Computed once
        (it hashes the weight files)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(
                self.name,
                self.revision or self._commit,
                self.feature_layer,
                self.select,
                self.aspect,
                self.dtype_name,
                self.image_size,
                self.spec,
            )
        return dict(self._fingerprint)


def encoder_fingerprint(
    model: str,
    revision: str | None,
    layer: int,
    select: str,
    aspect: str,
    dtype: str,
    resolution: int,
    spec: ImageSpec,
) -> dict[str, Any]:
    """The identity of a feature encoder; `id` is a short hash of everything else."""
    fp: dict[str, Any] = {
        "model": model,
        "revision": revision,
        "weights": weights_hash(model),
        "layer": layer,
        "select": select,
        "resolution": resolution,
        "preprocessing": f"{aspect}+clip-normalize mean={list(spec.mean)} std={list(spec.std)}"
        + (" (folded into the patch embedding)" if folds_normalization(dtype) else ""),
        "dtype": dtype,
    }
    fp["id"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return fp


def describe_encoder(
    model: str, *, revision: str | None, feature_layer: int, select: str, aspect: str, dtype: str
) -> tuple[dict[str, Any], int]:
    """(fingerprint, feature width) of a tower from its config and processor alone — no weights loaded."""
    config = AutoConfig.from_pretrained(model, revision=revision)
    vcfg = getattr(config, "vision_config", config)
    processor = AutoImageProcessor.from_pretrained(model, revision=revision)
    spec = ImageSpec.from_processor(processor, aspect)
    commit = revision or getattr(config, "_commit_hash", None)
    fp = encoder_fingerprint(
        model, commit, feature_layer, select, aspect, dtype, int(vcfg.image_size), spec
    )
    return fp, int(vcfg.hidden_size)


def folds_normalization(dtype: str) -> bool:
    """Whether a tower of this dtype folds the normalisation into its patch embedding."""
    return dtype != "fp16"


@torch.no_grad()
def fold_normalization(
    conv: nn.Conv2d, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> None:
    """Make `conv` take 0..255 pixels in place of (x/255 − mean)/std: its weights are scaled by
    1/(255·std) per input channel and it gains the bias Σ W·(−mean/std) (exact with no padding,
    where every output sees the whole kernel). Computed in fp64, stored in the conv's dtype."""
    if conv.padding not in ((0, 0), 0, "valid") or conv.in_channels != 3:
        raise ValueError(
            f"cannot fold normalisation into {conv}: it needs 3 input channels and no padding"
        )
    w = conv.weight.double()  # (d, 3, p, p)
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float64, device=w.device))
    shift = -torch.tensor(mean, dtype=torch.float64, device=w.device) / torch.tensor(
        std, dtype=torch.float64, device=w.device
    )
    bias = (w * shift.view(1, 3, 1, 1)).sum((1, 2, 3))  # (d,)
    if conv.bias is not None:
        bias += conv.bias.double()
    conv.weight.copy_(w * scale.view(1, 3, 1, 1))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def weights_hash(model: str) -> str | None:
    """sha256 over the weight files of a local model directory; None for a hub id."""
    path = Path(model)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
