"""Shared fixtures: deterministic seeds, small dimensions, a repo-root path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from msr.config import Params

ROOT = Path(__file__).resolve().parents[1]

# Small but non-trivial widths: d ≠ c so a transposed weight cannot pass by accident.
D, C = 32, 48


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def tiny_params(root: Path, **sections: dict) -> Params:
    """The tiny preset with every path under `root`, small synthetic sizes and a tiny LLM."""
    import yaml

    from msr.presets import preset_path
    from msr.resolve import resolve_params

    raw = yaml.safe_load(preset_path("tiny").read_text())
    raw["paths"] = {
        k: str(root / v.removeprefix("data/")) if v.startswith("data") else str(root / v)
        for k, v in raw["paths"].items()
    }
    synth, models = raw["paths"]["synth"], raw["paths"]["models"]
    raw["data"].update(
        pretrain_json=f"{synth}/pretrain.json",
        pretrain_images=f"{synth}/pretrain_images",
        instruct_json=f"{synth}/instruct.json",
        instruct_images=synth,
        shard_mb=1,
        encode_batch=8,
    )
    raw["data"]["synth"].update(
        pretrain_images=10, instruct_images=14, text_only=3, eval_images=8, gqa_pairs=3
    )
    raw["vision"]["model"], raw["llm"]["model"] = f"{models}/vision", f"{models}/llm"
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return resolve_params(raw)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """Synthetic data and tiny models, built once per test session (offline)."""
    from stages import models, synth

    root = tmp_path_factory.mktemp("tiny")
    params = tiny_params(root)
    synth.run(params)
    models.run(params)
    return params


def relocated(params: Params, root: Path, *names: str) -> dict:
    """The raw params of `params` with the path of each of `names` (features, pretrain, …) moved
    under `root`: a fixture's own outputs, beside the shared workspace's inputs."""
    raw = params.model_dump(mode="json")
    raw["paths"].update({name: str(root / name) for name in names})
    return raw


def random_tower(root: Path, family: str, native: int) -> Path:
    """A tiny random tower of `family`, native at `native` px, saved with its HF image processor."""
    from msr.config import VisionBuild
    from msr.models.tiny import build_vision

    path = root / f"{family}-{native}"
    if not path.exists():
        build = VisionBuild(
            family=family, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64
        )
        model, processor = build_vision(build, native)
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return path


def random_model(
    workspace: Params,
    root: Path,
    family: str = "clip",
    projector: str = "ms_resampler",
    *,
    native: int = 112,
    size: int = 112,
    num_queries: int = 16,
    final_norm: bool = False,
) -> Path:
    """An msr model folder as stage 2 saves it (fp32), untrained but not silent: a tower of `family`
    at `size` px, a `projector` and the workspace's tiny LLM, their weights moved off their init so
    that image tokens matter and greedy answers vary (a random tied LLM repeats its input)."""
    from msr.config import parse_params
    from msr.models.mllm import MLLM

    raw = workspace.model_dump(mode="json")
    raw["vision"].update(model=str(random_tower(root, family, native)), image_size=size,
                         dtype="fp32", final_norm=final_norm, build=None)  # fmt: skip
    grid = size // 14
    tokens = grid * grid if projector == "mlp" else num_queries
    raw["projector"].update(name=projector, num_queries=tokens, options={})
    params = parse_params(raw)
    model, _ = MLLM.from_params(params, vision_width=32, grid=(grid, grid), dtype="fp32")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        for p in model.llm.get_decoder().layers.parameters():
            p.add_(torch.randn_like(p) * 0.15)
    out = root / f"model-{family}-{projector}-{size}-{int(final_norm)}"
    model.save_pretrained(out, dtype="fp32")
    return out
