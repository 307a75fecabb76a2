"""Reading an artifact with an error that helps: the file, what is wrong with it, and what rebuilds
it. Checkpoints, projector files and saved models are read through here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class CheckpointError(ValueError):
    """A checkpoint that does not fit what the params ask for (the message lists the differences),
    or one that is damaged (the message names the file and how to rebuild it)."""


def read_json(path: Path, fix: str) -> Any:
    """A json file of a checkpoint, or a CheckpointError naming it and `fix` (how to rebuild it)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is damaged (not valid json: {err}); {fix}") from None


def read_tensors(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint, or a CheckpointError naming it and `fix`."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; {fix}") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is damaged (safetensors: {err}); {fix}") from None
