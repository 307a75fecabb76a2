"""What differs between a plain torch run and a DeepSpeed run, behind one small interface.

The loop only calls `loss(batch)`, `backward(loss)`, `step()` (once per micro-batch; the engine
knows the accumulation boundary), `lr`, `save(dir, position)`, `load(dir)` and `full_state(module)`.

- `PlainEngine`: AdamW (fused where the device has the kernel) + warmup/cosine, gradient
  accumulation, clipping, bf16 autocast over fp32 weights. Checkpoints: trainable weights
  (safetensors), optimizer and scheduler (`torch.load(weights_only=True)`), RNG (json + safetensors).
- `DeepSpeedEngine`: ZeRO-2 / ZeRO-3 as LLaVA-1.5 runs them: with `bf16` the engine holds the model
  in bf16 and keeps fp32 master weights in the optimizer (no autocast); the final weights are the
  fp32 masters. Checkpoints are DeepSpeed's own; before DeepSpeed unpickles them, every file is
  read once with `weights_only=True` (plus DeepSpeed's own enum types), so a file that would run
  code is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from msr.config import Train
from msr.data.loader import Batch
from msr.runtime import Topology, barrier
from msr.train import checkpoint as ckpt
from msr.train.distributed import deepspeed_config
from msr.utils.io import atomic_write_json


class Engine(Protocol):
    def loss(self, batch: Batch) -> Tensor: ...
    def backward(self, loss: Tensor) -> None: ...
    def step(self) -> bool: ...  # True when this micro-batch ended an optimizer step
    @property
    def lr(self) -> float: ...
    def save(self, directory: Path, position: dict[str, Any]) -> None: ...
    def load(self, directory: Path) -> dict[str, Any]: ...
    def full_state(self, module: nn.Module) -> dict[str, Tensor]: ...


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ceil(ratio·total) steps, then cosine to 0 (LLaVA's schedule)."""
    warmup = math.ceil(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: nn.Module, cfg: Train) -> list[dict[str, Any]]:
    """Decay matrices, not biases, norms or other vectors; the projector at `projector_lr` when set
    (LLaVA's `mm_projector_lr`), everything else at `lr`. Empty groups are left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (name.startswith("projector."), p.ndim >= 2)
            groups.setdefault(key, []).append(p)
    out = []
    for (projector, decay), params in sorted(groups.items()):
        group: dict[str, Any] = {
            "params": params,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        if projector and cfg.projector_lr is not None:
            group["lr"] = cfg.projector_lr
        out.append(group)
    return out


# devices on which torch has a fused AdamW kernel (torch ≥ 2.4 for the CPU)
FUSED_ADAMW_DEVICES = frozenset({"cpu", "cuda"})


def adamw(groups: list[dict[str, Any]], lr: float, fused: bool | None = None) -> torch.optim.AdamW:
    """torch's AdamW (β = 0.9, 0.999), its whole step one fused kernel where every parameter lives
    on a device that has it (`fused=None`), instead of the loop of small ops per tensor that is its
    default off CUDA. Same update, less time: clip + step over SmolLM2-135M's weights take 0.15 s
    instead of 0.27–0.44 s on a 2-core CPU (benchmarks/step_kernels.py)."""
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = bool(params) and all(
            p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params
        )
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused)


def _forward(module: nn.Module, batch: Batch) -> Tensor:
    out = module(
        batch.input_ids, batch.attention_mask, batch.image_mask, batch.features, batch.labels
    )
    return out.loss


class PlainEngine:
    """torch alone: one process, or ranks under DistributedDataParallel."""

    def __init__(self, model: nn.Module, cfg: Train, topo: Topology, total: int) -> None:
        self.model, self.cfg = model, cfg
        self.runner: nn.Module = model
        if topo.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.runner = DistributedDataParallel(model)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = adamw(param_groups(model, cfg), cfg.lr)
        self.scheduler = cosine_with_warmup(self.optimizer, total, cfg.warmup_ratio)
        self.autocast = torch.autocast(topo.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        self.micro = 0

    def loss(self, batch: Batch) -> Tensor:
        with self.autocast:
            return _forward(self.runner, batch)

    def backward(self, loss: Tensor) -> None:
        (loss / self.cfg.grad_accum).backward()

    def step(self) -> bool:
        self.micro += 1
        if self.micro % self.cfg.grad_accum:
            return False
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path, position: dict[str, Any]) -> None:
        ckpt.save_training_state(
            directory / "last", self.model, self.optimizer, self.scheduler, position
        )

    def load(self, directory: Path) -> dict[str, Any]:
        return ckpt.load_training_state(
            directory / "last", self.model, self.optimizer, self.scheduler
        )

    def full_state(self, module: nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class DeepSpeedEngine:
    """A DeepSpeed engine over the same model, optimizer and schedule."""

    def __init__(self, model: nn.Module, cfg: Train, topo: Topology, total: int) -> None:
        import deepspeed

        self.cfg, self.topo = cfg, topo
        optimizer = adamw(param_groups(model, cfg), cfg.lr)
        scheduler = cosine_with_warmup(optimizer, total, cfg.warmup_ratio)
        config = deepspeed_config(cfg, topo)
        self.bf16 = bool(config.get("bf16", {}).get("enabled"))
        # bf16 weights in the engine, fp32 masters in the optimizer; autocast only without them
        self.autocast = torch.autocast(
            topo.device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and not self.bf16
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )

    def loss(self, batch: Batch) -> Tensor:
        with self.autocast:
            return _forward(self.engine, batch)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = bool(self.engine.is_gradient_accumulation_boundary())
        self.engine.step()
        return boundary

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path, position: dict[str, Any]) -> None:
        ds = directory / "ds"
        self.engine.save_checkpoint(str(ds), tag="last", client_state={"position": position})
        ckpt.save_rng_state(ds, f"rng_rank{self.topo.rank}")
        barrier(self.topo)
        if self.topo.main:
            atomic_write_json(directory / "last" / "state.json", position)

    def load(self, directory: Path) -> dict[str, Any]:
        ds = directory / "ds"
        verify_deepspeed_checkpoint(ds / "last")
        _, client = self.engine.load_checkpoint(str(ds), tag="last")
        ckpt.load_rng_state(ds, f"rng_rank{self.topo.rank}")
        return dict(client["position"])

    def full_state(self, module: nn.Module) -> dict[str, Tensor]:
        """The module's full state on CPU: the fp32 master of each trained parameter, the gathered
        weight of each frozen one (ZeRO-3 gathers one parameter at a time). All ranks call it."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        zero3 = self.engine.zero_optimization_partition_weights()
        state: dict[str, Tensor] = {}
        for name, tensor in module.state_dict(keep_vars=True).items():
            master = (
                safe_get_full_fp32_param(tensor)
                if isinstance(tensor, nn.Parameter) and tensor.requires_grad
                else None
            )
            if master is not None:
                state[name] = master.detach().cpu().clone()
            elif zero3 and hasattr(tensor, "ds_id"):
                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                    state[name] = tensor.detach().cpu().clone()
            else:
                state[name] = tensor.detach().cpu().clone()
        return state


def verify_deepspeed_checkpoint(tag_dir: Path) -> None:
    """Read every file of a DeepSpeed checkpoint with `weights_only=True` before DeepSpeed loads it
    with full unpickling: anything but tensors, plain values and DeepSpeed's own enums is refused."""
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    if not tag_dir.is_dir():
        raise ckpt.CheckpointError(f"no DeepSpeed checkpoint in {tag_dir}")
    for path in sorted(tag_dir.glob("*.pt")):
        ckpt.safe_torch_load(path, allowed=(ZeroStageEnum, fragment_address))


def make_engine(model: nn.Module, cfg: Train, topo: Topology, total: int) -> Engine:
    return (DeepSpeedEngine if cfg.deepspeed else PlainEngine)(model, cfg, topo, total)


def deepspeed_bf16(cfg: Train) -> bool:
    """True when the stage runs DeepSpeed with bf16 weights (so the LLM can be loaded in bf16)."""
    if not cfg.deepspeed:
        return False
    conf = json.loads(Path(cfg.deepspeed).read_text())
    enabled = conf.get("bf16", {}).get("enabled", False)
    return cfg.bf16 if enabled == "auto" else bool(enabled)
