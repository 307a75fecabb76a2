"""Efficiency profile: analytic counts on meta tensors vs closed forms, real presets offline, the
measured KV cache equals the formula, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from msr.config import Params, parse_params
from msr.models.configs import llm_config, vision_config
from msr.models.vision import vision_class
from msr.presets import load_preset
from msr.profile.analytic import (
    analytic_profile,
    kv_cache_bytes,
    llm_macs_formula,
    vision_backbone,
    vision_macs_formula,
)
from msr.profile.flops import counted_macs
from msr.profile.measure import measure
from msr.projectors import active_options

KEYS = {"visual_tokens", "projector_macs", "llm_macs", "kv_cache_bytes", "params"}


@pytest.mark.parametrize(("family", "native"), [("clip", 336), ("siglip", 336), ("dinov2", 224)])
def test_counts_on_real_tensors_match_closed_forms(
    tiny_workspace: Params, family: str, native: int
) -> None:
    """flop_counter on a tiny backbone of each family (DINOv2 interpolating its position embeddings
    from 224 to 336 px) and the tiny LLM is within 1% of the closed-form formulas."""
    from msr.models.tiny import vision_config as tiny_vision_config

    v = tiny_workspace.vision
    assert v.build is not None
    vcfg = tiny_vision_config(v.build.model_copy(update={"family": family}), native)
    lcfg = llm_config(tiny_workspace.llm)
    tower = vision_class(vcfg).from_config(vcfg, image_size=336)
    llm = AutoModelForCausalLM.from_config(lcfg)
    pixels = torch.randint(0, 256, (1, 3, 336, 336), dtype=torch.uint8)
    with torch.no_grad():
        vision = counted_macs(lambda: tower(pixels))
        decoder = counted_macs(
            lambda: llm.model(inputs_embeds=torch.randn(1, 36, lcfg.hidden_size), use_cache=True)
        )
    assert tower.grid == (24, 24)
    assert vision == pytest.approx(vision_macs_formula(vcfg, -2, 336), rel=0.01)
    assert decoder == pytest.approx(llm_macs_formula(lcfg, 36), rel=0.01)


def test_analytic_profile_builds_the_params_backbone(tiny_workspace: Params) -> None:
    with torch.device("meta"):
        tower = vision_backbone(tiny_workspace.vision)
    assert tower.family == "clip" and tower.grid == (24, 24) and tower.embed_dim == 64


def test_analytic_on_meta_equals_real_tensor_counts(tiny_workspace: Params) -> None:
    a = analytic_profile(tiny_workspace)
    assert set(a) >= KEYS and set(a["params"]) == {"vision", "projector", "llm"}
    lcfg = llm_config(tiny_workspace.llm)
    assert a["llm_macs"] == llm_macs_formula(lcfg, 36)
    assert a["kv_cache_bytes"] == 2 * lcfg.num_hidden_layers * 36 * lcfg.hidden_size * 2
    assert a["prompt"]["tokens"] == 36 + tiny_workspace.profile.text_tokens


@pytest.mark.parametrize(
    ("preset", "llm_params"),
    [("llava15-7b", 6_738_415_616), ("llava15-13b", 13_015_864_320), ("qwen25-3b", 3_085_938_688)],
)
def test_real_presets_profile_offline(preset: str, llm_params: int) -> None:
    """Shipped configs: the paper's models profile with no weights and no network."""
    a = analytic_profile(load_preset(preset))
    assert a["params"]["llm"] == llm_params and a["visual_tokens"] == 144
    cfg = llm_config(load_preset(preset).llm)
    assert a["llm_macs"] == llm_macs_formula(cfg, 144) and a["kv_cache_bytes"] == kv_cache_bytes(
        cfg, 144
    )
    assert a["vision_macs"] == vision_macs_formula(
        vision_config(load_preset(preset).vision), -2, 336
    )
    mlp = analytic_profile(load_preset(preset), projector="mlp")
    assert mlp["visual_tokens"] == 576 and mlp["kv_cache_bytes"] == 4 * a["kv_cache_bytes"]


def test_llava7b_numbers_as_published() -> None:
    """CLIP-L/14-336 + MS-Resampler (M = 144) + Vicuna-7B: the KV cache of 144 visual tokens is
    2 × 32 layers × 144 × 4096 × 2 bytes = 72 MiB; the 576 tokens of LLaVA-1.5 take 288 MiB."""
    a = analytic_profile(load_preset("llava15-7b"))
    assert a["kv_cache_bytes"] == 72 * 2**20
    assert a["projector_macs"] == 4_152_360_960  # the reassociated order: ~6× fewer than textbook


def test_measured_kv_cache_equals_the_formula(tiny_workspace: Params) -> None:
    raw = tiny_workspace.model_dump(mode="json")
    raw["profile"].update(repeats=1, warmup=0, decode_tokens=2)
    params = parse_params(raw)
    m = measure(params, [("ms_resampler", 36, active_options(params.projector)), ("mlp", 576, {})])
    for tokens in (36, 576):
        expected = analytic_profile(params, projector="mlp" if tokens == 576 else None)[
            "kv_cache_bytes"
        ]
        assert m["llm"][str(tokens)]["kv_cache_bytes_visual"] == expected
        assert (
            m["llm"][str(tokens)]["prefill_ms"] > 0
            and m["llm"][str(tokens)]["decode_tokens_per_s"] > 0
        )
    assert m["projectors"]["ms_resampler@36"]["projector_ms"] > 0 and m["peak_memory_bytes"] > 0


def test_cli_analytic_writes_the_contract_keys(tmp_path: Path) -> None:
    from cli import app

    out = tmp_path / "a.json"
    preset = Path(__file__).resolve().parents[2] / "msr" / "presets" / "llava15-7b.yaml"
    result = CliRunner().invoke(
        app, ["profile", "--params", str(preset), "--analytic", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) >= KEYS and data["llm_macs"] > 0 and "MACs, not FLOPs" in data["conventions"]


def test_profile_stage_report(tiny_workspace: Params, tmp_path: Path) -> None:
    from stages import profile

    raw = tiny_workspace.model_dump(mode="json")
    raw["paths"]["reports"] = str(tmp_path)
    raw["profile"].update(
        repeats=1,
        warmup=0,
        decode_tokens=2,
        projectors=["mlp", "ms_resampler", "c_abstractor"],
        budgets=[36, 50],
    )
    result = profile.run(parse_params(raw))
    assert [(c["projector"], c["visual_tokens"]) for c in result["comparison"]] == [
        ("mlp", 576),
        ("ms_resampler", 36),
        ("c_abstractor", 36),
    ]
    assert any("ms_resampler at M=50" in n for n in result["not_run"])  # 50 does not tile the grid
    md = (tmp_path / "profile.md").read_text()
    assert "Table 7 layout" in md and "MACs, not FLOPs" in md and "| `mlp` | 576 |" in md
    assert (tmp_path / "plots" / "profile.png").stat().st_size > 1000
    assert set(json.loads((tmp_path / "profile.json").read_text())) >= KEYS


def test_unknown_model_without_a_config() -> None:
    raw = load_preset("llava15-7b").model_dump(mode="json")
    raw["llm"]["model"] = "someone/unknown-llm"
    with pytest.raises(ValueError, match=r"no config for llm\.model='someone/unknown-llm'"):
        analytic_profile(parse_params(raw))
