"""Checkpoints: the projector alone (stage 1), the full MLLM (stage 2), and resumable training state.

Projector checkpoint: `projector.safetensors` + `projector.json` naming the projector, its dims and
options. Loading into another projector type or shape is an error that lists every difference —
never a partial load. Training state (`checkpoints/last/`): trainable weights, optimizer, scheduler,
RNG states (json + safetensors, never pickled) and data position, written to a temp directory and renamed into place.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from msr.projectors import Projector, build_projector, projector_options, validate_options
from msr.utils.io import atomic_write, atomic_write_json

PROJECTOR_WEIGHTS, PROJECTOR_CONFIG = "projector.safetensors", "projector.json"


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


RESUME_FIX = "start over with `--resume no` (or delete the checkpoint directory)"


def projector_config(projector: Projector, options: dict[str, Any]) -> dict[str, Any]:
    """What identifies a projector's parameters: name, dims, budget, grid and every option
    (defaults filled in, so spelling a default out changes nothing)."""
    defaults = {k: d for k, (_, d) in projector_options(projector.name).items()}
    options = {k: v for k, v in {**defaults, **options}.items() if k != "grid"}
    options = json.loads(json.dumps(options))  # the json form, as it is stored
    return {
        "name": projector.name,
        "vision_dim": projector.vision_dim,
        "llm_dim": projector.llm_dim,
        "num_queries": projector.num_queries,
        "grid": list(projector.grid) if projector.grid else None,
        "options": dict(sorted(options.items())),
        "params": sum(p.numel() for p in projector.parameters()),
    }


def save_projector(out: Path, projector: Projector, options: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in projector.state_dict().items()}
    data = safetensors_bytes(state)

    def write(f: BinaryIO) -> None:
        f.write(data)

    atomic_write(out / PROJECTOR_WEIGHTS, write)
    atomic_write_json(out / PROJECTOR_CONFIG, projector_config(projector, options))


def build_from_config(cfg: dict[str, Any]) -> Projector:
    """A freshly initialised projector of a `projector_config`."""
    options = validate_options(cfg["name"], cfg["options"])
    grid = tuple(cfg["grid"]) if cfg["grid"] else None
    options.pop("grid", None)
    return build_projector(
        cfg["name"],
        vision_dim=cfg["vision_dim"],
        llm_dim=cfg["llm_dim"],
        num_queries=cfg["num_queries"],
        grid=grid,
        **options,
    )


def load_projector(
    directory: Path,
    expected: dict[str, Any] | None = None,
    fix: str = "rerun the stage that wrote it",
) -> Projector:
    """Build the projector a checkpoint describes and load its weights (strict).

    `expected` is the config the caller needs (from `projector_config` of a freshly built projector):
    any difference is a CheckpointError listing each field, checkpoint vs expected. A damaged file
    is a CheckpointError naming it and `fix`.
    """
    cfg_path = directory / PROJECTOR_CONFIG
    if not cfg_path.exists():
        raise CheckpointError(
            f"no projector checkpoint in {directory} ({PROJECTOR_CONFIG} missing); {fix}"
        )
    cfg = read_json(cfg_path, fix)
    fields = ("name", "vision_dim", "llm_dim", "num_queries", "grid", "options")
    if not isinstance(cfg, dict) or any(k not in cfg for k in fields):
        raise CheckpointError(f"{cfg_path} is damaged (it needs the fields {list(fields)}); {fix}")
    if expected is not None:
        diffs = [
            f"{key}: checkpoint has {cfg.get(key)!r}, params ask for {expected.get(key)!r}"
            for key in ("name", "vision_dim", "llm_dim", "num_queries", "grid", "options", "params")
            if cfg.get(key) != expected.get(key)
        ]
        if diffs:
            raise CheckpointError(
                f"{directory} holds a different projector than the params describe: "
                + "; ".join(diffs)
            )
    try:
        projector = build_from_config(cfg)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{cfg_path} describes no projector msr can build: {err}") from None
    state = read_tensors(directory / PROJECTOR_WEIGHTS, fix)
    missing, unexpected = projector.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not fit a {cfg['name']} projector: missing {missing}, unexpected {unexpected}"
        )
    return projector


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
