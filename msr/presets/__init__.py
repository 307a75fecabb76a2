"""Named presets: complete params files shipped with the package (`tiny` is the default params.yaml)."""

from __future__ import annotations

from pathlib import Path

import yaml

from msr.config import Params, parse_params

PRESET_DIR = Path(__file__).parent


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset `name`; ValueError naming the known presets otherwise."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(list_presets())}")
    return path


def preset_text(name: str) -> str:
    """The preset's complete params YAML (with its comments), validated before it is returned."""
    text = preset_path(name).read_text()
    parse_params(yaml.safe_load(text), source=f"preset {name}")
    return text


def load_preset(name: str) -> Params:
    """The typed params of preset `name`."""
    return parse_params(yaml.safe_load(preset_path(name).read_text()), source=f"preset {name}")
