"""`msr export MODEL_DIR OUT_DIR`: a trained msr model as a Hugging Face directory.

- `llava-hf` (the `mlp` projector): transformers' own `LlavaForConditionalGeneration`.
- `remote-code` (every projector): the model and processor as code in the directory.

Either folder holds safetensors weights, a processor whose chat template renders msr's prompt, a
generation config that decodes as msr does, and a model card; it is what
`huggingface_hub.upload_folder` takes. The vision tower is read from where the model's config says
it was trained (a hub id, or a path relative to the training directory).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from msr.config import Params
from msr.export.card import model_card
from msr.export.llava_hf import write_llava_hf
from msr.export.remote_code import write_remote_code
from msr.export.vision import export_vision
from msr.models.mllm import HF_DTYPES, LLM_DIR, MLLM

FORMATS = ("llava-hf", "remote-code")
WRITERS = {"llava-hf": write_llava_hf, "remote-code": write_remote_code}


def saved_dtype(model_dir: Path) -> str:
    """The dtype the model's LLM weights were saved in (bf16 unless the run saved another)."""
    path = model_dir / LLM_DIR / "config.json"
    if not path.exists():
        return "bf16"  # no model there: from_pretrained names what is missing
    raw = json.loads(path.read_text())
    names = {v: k for k, v in HF_DTYPES.items()}
    return names.get(str(raw.get("dtype") or raw.get("torch_dtype")), "bf16")


def export(
    model_dir: Path,
    out: Path,
    fmt: str,
    *,
    dtype: str | None = None,
    params: Params | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Path:
    """Write the export of `model_dir` to `out` atomically (a temp directory renamed into place).
    ValueError when the model cannot take `fmt` (the message names why and what can)."""
    if fmt not in WRITERS:
        raise ValueError(f"--format {fmt!r}; accepted: {', '.join(FORMATS)}")
    dtype = dtype or saved_dtype(model_dir)
    if dtype not in HF_DTYPES:
        raise ValueError(f"--dtype {dtype!r}; accepted: {', '.join(HF_DTYPES)}")
    model = MLLM.from_pretrained(model_dir, dtype=dtype, vision=False)
    assert model.config is not None
    if (
        evaluation is not None
        and evaluation.get("model", {}).get("fingerprint") != model.fingerprint
    ):
        raise ValueError(
            f"the evaluation was scored on model {evaluation.get('model', {}).get('fingerprint')!r}, "
            f"not on this one ({model.fingerprint}): pass the eval.json of this model's run"
        )
    vision = export_vision(model.config.vision, dtype)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        WRITERS[fmt](model, vision, tmp, dtype)
        card = model_card(model.config, fmt, params=params, evaluation=evaluation)
        (tmp / "README.md").write_text(card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


__all__ = ["FORMATS", "export"]
