"""Model configs without weights: a local model directory, a config shipped with msr for the real
presets' hub ids (msr/presets/configs/), or the tiny preset's build params — so the analytic
profile of any preset runs offline."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, CLIPVisionConfig, PretrainedConfig, SiglipVisionConfig

from msr.config import LLM, Vision
from msr.models import tiny

SHIPPED = Path(__file__).resolve().parents[1] / "presets" / "configs"
_VISION = {"clip_vision_model": CLIPVisionConfig, "siglip_vision_model": SiglipVisionConfig}


def shipped_path(model: str) -> Path:
    return SHIPPED / f"{model.replace('/', '__')}.json"


def vision_config(v: Vision) -> PretrainedConfig:
    local = Path(v.model)
    if (local / "config.json").exists():
        cfg = AutoConfig.from_pretrained(local)
        return getattr(cfg, "vision_config", cfg)
    if shipped_path(v.model).exists():
        raw = json.loads(shipped_path(v.model).read_text())
        return _VISION[raw.pop("model_type")](**raw)
    if v.build is not None:
        return tiny.vision_config(v.build, v.image_size, v.patch_size)
    raise ValueError(_missing("vision", v.model))


def llm_config(m: LLM) -> PretrainedConfig:
    local = Path(m.model)
    if (local / "config.json").exists():
        return AutoConfig.from_pretrained(local)
    if shipped_path(m.model).exists():
        raw = json.loads(shipped_path(m.model).read_text())
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    if m.build is not None:
        return tiny.llm_config(m.build, m.build.vocab_size, m.max_length)
    raise ValueError(_missing("llm", m.model))


def _missing(section: str, model: str) -> str:
    return (
        f"no config for {section}.model={model!r}: not a local model directory, not shipped with msr "
        f"(known: {', '.join(p.stem.replace('__', '/') for p in sorted(SHIPPED.glob('*.json')))}); "
        f"pass a local path or add {shipped_path(model).name} to {SHIPPED}"
    )
