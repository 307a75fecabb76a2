"""The identity of a feature encoder: everything that determines the features it writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from msr.models.preprocess import ImageSpec
from msr.models.vision.fold import folds_normalization


def encoder_fingerprint(
    model: str,
    revision: str | None,
    family: str,
    layer: int,
    select: str,
    dtype: str,
    spec: ImageSpec,
    final_norm: bool = False,
) -> dict[str, Any]:
    """The fields that determine a feature; `id` is a short hash of all of them. `final_norm` is
    recorded only when set, so fingerprints of features without it keep their id."""
    fp: dict[str, Any] = {
        "model": model,
        "revision": revision,
        "family": family,
        "weights": weights_hash(model),
        "layer": layer,
        "select": select,
        "resolution": spec.size,
        "preprocessing": f"{spec.aspect}+normalize mean={list(spec.mean)} std={list(spec.std)}"
        + (" (folded into the patch embedding)" if folds_normalization(dtype) else ""),
        "dtype": dtype,
    }
    if final_norm:
        fp["final_norm"] = True
    fp["id"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return fp


def weights_hash(model: str) -> str | None:
    """sha256 over the weight files of a local model directory; None for a hub id."""
    path = Path(model)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
