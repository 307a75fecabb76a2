"""Load a trained MLLM (the stage-2 output) for inference, and identify it by a fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from msr.models.mllm import MLLM
from msr.models.vision import DTYPES, VisionTower
from msr.train.checkpoint import load_projector


@dataclass
class LoadedModel:
    model: MLLM
    tokenizer: Any
    template: str
    max_length: int
    fingerprint: str
    manifest: dict[str, Any]


def model_fingerprint(directory: Path, vision: VisionTower) -> str:
    """sha256 over the saved weights and configs of the model and the vision tower's identity."""
    h = hashlib.sha256()
    files = sorted(
        [
            *directory.glob("*.safetensors"),
            *directory.glob("*.json"),
            *(directory / "llm").glob("*.safetensors"),
            *(directory / "llm").glob("*.json"),
        ]
    )
    for f in files:
        if f.name == "train.json":
            continue  # timings differ between identical runs
        h.update(f.relative_to(directory).as_posix().encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(vision.fingerprint()["id"].encode())
    return h.hexdigest()[:16]


def load_mllm(
    directory: str | Path, *, dtype: str = "fp32", device: str | torch.device = "cpu"
) -> LoadedModel:
    """The model saved by `msr finetune` in `directory`, with its live vision tower."""
    directory = Path(directory)
    manifest_path = directory / "mllm.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"no trained model in {directory} (mllm.json missing): run `msr finetune` first"
        )
    manifest = json.loads(manifest_path.read_text())
    v = manifest["vision"]
    vision = VisionTower(
        v["model"],
        revision=v["revision"],
        feature_layer=v["feature_layer"],
        select=v["select"],
        aspect=v["aspect"],
        dtype=v["dtype"],
    )
    llm = AutoModelForCausalLM.from_pretrained(directory / manifest["llm"], dtype=DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(directory / manifest["llm"])
    projector = load_projector(directory).to(DTYPES[dtype])
    model = MLLM(llm, projector, vision).to(device).eval()
    return LoadedModel(
        model,
        tokenizer,
        manifest["template"],
        manifest["max_length"],
        model_fingerprint(directory, vision),
        manifest,
    )
