"""Resumable training state (`checkpoints/last/`): trainable weights, optimizer, scheduler, RNG
states (json + safetensors, never pickled) and data position, written to a temp directory and
renamed into place. A projector's own files are `msr.projectors.files`; a saved model's,
`msr.models.mllm`.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from msr.utils.reading import CheckpointError, read_json, read_tensors

RESUME_FIX = "start over with `--resume no` (or delete the checkpoint directory)"


# ---- resumable training state (plain torch path) ------------------------------------------------


def save_rng_state(directory: Path, name: str = "rng") -> None:
    """Python, NumPy, torch (and CUDA) generator states as `<name>.json` + `<name>.safetensors`:
    plain data, so loading them can never run code (no pickle)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [version, list(words), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(meta))


def load_rng_state(directory: Path, name: str = "rng") -> None:
    meta = read_json(directory / f"{name}.json", RESUME_FIX)
    tensors = read_tensors(directory / f"{name}.safetensors", RESUME_FIX)
    version, words, gauss = meta["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def safe_torch_load(path: Path, allowed: tuple[Any, ...] = ()) -> Any:
    """`torch.load(weights_only=True)`: tensors, containers and plain values only (plus the
    `allowed` classes) — a checkpoint that would run code when unpickled is refused."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds more than tensors and plain values, so it is not loaded (it could run "
            f"code when unpickled): {_unpickler_reason(str(err))}; {RESUME_FIX}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:  # truncated or not a torch file
        raise CheckpointError(
            f"{path} is damaged ({type(err).__name__}: {err}); {RESUME_FIX}"
        ) from None


def _unpickler_reason(message: str) -> str:
    """The line of torch's refusal that says what was refused, without its advice to load the file
    anyway (`weights_only=False`)."""
    for line in message.splitlines():
        if "WeightsUnpickler error" in line or "Unsupported global" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")
    return "an object that is not a tensor or a plain value"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def save_training_state(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: dict[str, Any],
) -> None:
    """Write `directory` atomically: trainable weights, optimizer, scheduler, RNG, position."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    save_rng_state(tmp)
    (tmp / "state.json").write_text(json.dumps(position, indent=2))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def load_training_state(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore what `save_training_state` wrote; returns the position."""
    weights = read_tensors(directory / "trainable.safetensors", RESUME_FIX)
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - {n for n, p in params.items() if p.requires_grad})
    if unknown:
        raise CheckpointError(
            f"{directory}: checkpoint has parameters this model does not train: {unknown[:5]}"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(safe_torch_load(directory / "optimizer.pt"))
    scheduler.load_state_dict(safe_torch_load(directory / "scheduler.pt"))
    load_rng_state(directory)
    position = read_json(directory / "state.json", RESUME_FIX)
    if not isinstance(position, dict):
        raise CheckpointError(
            f"{directory / 'state.json'} is damaged (not an object); {RESUME_FIX}"
        )
    return position
