"""`msr export`: a trained model as a Hugging Face folder (msr.export), with its model card."""

from __future__ import annotations

import json
from pathlib import Path

from msr.config import Params
from msr.export import export
from msr.report.summary import check_same_run
from msr.utils import reading


def run(
    model: Path,
    out: Path,
    fmt: str,
    *,
    dtype: str | None = None,
    params: Params | None = None,
    evaluation: Path | None = None,
    push: str | None = None,
) -> Path:
    """The export folder. `params` (those that trained the model) add the recipe to the card,
    `evaluation` (that model's eval.json) the scores with their intervals; `push` uploads the
    folder to the Hub repository `push` (huggingface_hub.upload_folder; needs a token)."""
    if params is not None:
        check_same_run(params, reading.read_json(model / "mllm.json", "rerun stage 2"))
    scores = reading.read_json(evaluation, "rerun `msr eval`") if evaluation else None
    folder = export(model, out, fmt, dtype=dtype, params=params, evaluation=scores)
    if push:
        from huggingface_hub import upload_folder

        upload_folder(repo_id=push, folder_path=str(folder), commit_message="msr export")
    return folder


def describe(folder: Path) -> str:
    """One line: what was written."""
    config = json.loads((folder / "config.json").read_text())
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    return f"{folder}: {config['architectures'][0]}, {size:.1f} MiB of safetensors, README.md card"
