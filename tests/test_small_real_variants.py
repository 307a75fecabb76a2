"""Where each small-real variant reads and writes, and when it may reuse a finished stage 1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from small_real_variants import VARIANTS, _trained_stage1, variant_params


def test_a_stage2_variant_starts_from_the_presets_stage1() -> None:
    params = variant_params("projector_lr", VARIANTS["projector_lr"])
    assert params.paths.pretrain == "data/small-real/pretrain"
    assert params.paths.finetune == "data/small-real/variants/projector_lr/finetune"
    assert params.finetune.projector_lr == pytest.approx(1e-3)


def test_variants_share_the_features_their_overrides_make_the_same_way() -> None:
    a = variant_params("fp32_pre_e3", VARIANTS["fp32_pre_e3"])
    b = variant_params("fp32_pre_e3_heads8", VARIANTS["fp32_pre_e3_heads8"])
    assert a.paths.features == b.paths.features == "data/small-real/variants/features-dtype-fp32"
    assert a.paths.pretrain != b.paths.pretrain  # stage 1 differs: each trains its own
    assert b.projector.options["ms_resampler"]["num_heads"] == 8
    turns = variant_params("turns24", VARIANTS["turns24"])
    assert turns.paths.synth == "data/small-real/variants/synth-turns-2-4"
    assert turns.paths.features == "data/small-real/variants/features-turns-2-4"


def test_a_finished_stage1_is_reused_only_with_the_same_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = "fp32_pre_e3"
    params = variant_params(name, VARIANTS[name])
    before = {"overrides": VARIANTS[name], "seconds": {"pretrain": 1.0}, "loss": {"pretrain": 0.4}}
    assert not _trained_stage1(name, params, before)  # no projector on disk yet
    out = Path(params.paths.pretrain)
    out.mkdir(parents=True)
    (out / "projector.safetensors").write_bytes(b"")
    assert _trained_stage1(name, params, before)
    assert not _trained_stage1(name, params, {**before, "overrides": VARIANTS["fp32"]})
    assert not _trained_stage1(name, params, {**before, "loss": {}})  # stage 1 never finished
