"""Where each small-real variant reads and writes, and when it may reuse a finished stage 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from small_real_variants import (
    NOT_STAGE1,
    OUT,
    STAGE2_DATA,
    VARIANTS,
    _trained_stage1,
    llm_owner,
    merge,
    stage1_owner,
    variant_params,
)

from msr.data.synth.generate import generate
from tests.conftest import tiny_params


def test_a_stage2_variant_starts_from_the_presets_stage1() -> None:
    params = variant_params("projector_lr")
    assert params.paths.pretrain == "data/small-real/pretrain"
    assert params.paths.finetune == "data/small-real/variants/projector_lr/finetune"
    assert params.finetune.projector_lr == pytest.approx(1e-3)


def test_variants_share_the_features_their_overrides_make_the_same_way() -> None:
    a = variant_params("fp32_pre_e3")
    b = variant_params("fp32_pre_e3_heads8")
    fp32 = "data/small-real/variants/features-turns-1-2_dtype-fp32"  # v3's data in fp32
    assert a.paths.features == b.paths.features == fp32
    assert a.paths.pretrain != b.paths.pretrain  # stage 1 differs: each trains its own
    assert b.projector.options["ms_resampler"]["num_heads"] == 8
    v3 = variant_params("v3")  # one or two turns per image: other conversations, other shards
    assert v3.paths.synth == "data/small-real/variants/synth-turns-1-2"
    assert v3.paths.features == "data/small-real/variants/features-turns-1-2"
    assert variant_params("turns24").paths.features == "data/small-real/features"  # the preset's


def test_a_finished_stage1_is_reused_only_with_the_same_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = "fp32_pre_e3"
    params = variant_params(name)
    before = {"overrides": VARIANTS[name], "seconds": {"pretrain": 1.0}, "loss": {"pretrain": 0.4}}
    assert not _trained_stage1(name, params, before)  # no projector on disk yet
    out = Path(params.paths.pretrain)
    out.mkdir(parents=True)
    (out / "projector.safetensors").write_bytes(b"")
    assert _trained_stage1(name, params, before)
    assert not _trained_stage1(name, params, {**before, "overrides": VARIANTS["fp32"]})
    assert not _trained_stage1(name, params, {**before, "loss": {}})  # stage 1 never finished


def test_a_variant_of_the_instruct_questions_shares_its_bases_stage1() -> None:
    mc = variant_params("fp32_pre_e3_mc50")
    assert stage1_owner("fp32_pre_e3_mc50") == "fp32_pre_e3"
    assert mc.paths.pretrain == variant_params("fp32_pre_e3").paths.pretrain
    assert mc.paths.synth == "data/small-real/variants/synth-mc_prob-0.5_turns-1-2"
    assert mc.data.synth.mc_prob == pytest.approx(0.5)
    assert stage1_owner("baseline") is None  # the preset's stage 1
    assert stage1_owner("pre_e3_turns24") == "v3"  # v3's (sdpa): v4's data on it
    assert stage1_owner("turns24") == "v2"  # v2's: one stage-1 epoch
    assert stage1_owner("fp32_pre_e3_heads8") == "fp32_pre_e3_heads8"  # its own
    # scored on the preset's evaluation sets, trained on its own instruct data
    scored = variant_params("fp32_pre_e3_mc50", eval_synth="data/small-real/synth")
    assert scored.paths.synth == "data/small-real/synth"
    assert scored.data.instruct_json == mc.data.instruct_json


def test_the_stage2_data_params_change_no_image_and_no_caption(tmp_path: Path) -> None:
    """What lets a variant of the instruct questions share its base's stage 1 and eval scenes."""
    changed = {
        "turns": (2, 4),
        "mc_prob": 0.9,
        "ocr_prob": 0.0,
        "text_only": 0,
        "categories": ["global", "counting"],
        "text_mc": 8,
        "text_qa": 8,
    }
    assert {f"data.synth.{k}=" for k in changed} == set(STAGE2_DATA)
    params = tiny_params(tmp_path)
    base = tmp_path / "base"
    generate(base, params.data.synth, image_size=params.vision.image_size)
    for key, value in changed.items():
        out = tmp_path / key
        generate(out, params.data.synth.model_copy(update={key: value}), params.vision.image_size)
        assert (out / "pretrain.json").read_bytes() == (base / "pretrain.json").read_bytes(), key
        images = sorted(p.relative_to(out) for p in out.rglob("*.jpg"))
        assert images, key
        for rel in images:  # an instruct scene with no question asked is not written
            assert (out / rel).read_bytes() == (base / rel).read_bytes(), (key, rel)
    # fewer instruct images leave the captions and their images as they were (stage 1's data)
    assert set(NOT_STAGE1) - set(STAGE2_DATA) == {"data.synth.instruct_images="}
    update = {"instruct_images": 0, "text_qa": 8}
    out = tmp_path / "no_instruct_images"
    generate(out, params.data.synth.model_copy(update=update), params.vision.image_size)
    assert (out / "pretrain.json").read_bytes() == (base / "pretrain.json").read_bytes()
    captions = sorted(p.relative_to(out) for p in (out / "pretrain_images").rglob("*.jpg"))
    assert captions
    for rel in captions:
        assert (out / rel).read_bytes() == (base / rel).read_bytes(), rel


def test_rerunning_stage1_alone_keeps_the_rows_stage2_numbers() -> None:
    name = "fp32_pre_e3_resampler"
    finished = {
        "overrides": VARIANTS[name],
        "seconds": {"pretrain": 2100.0, "finetune": 3600.0, "eval": 400.0},
        "loss": {"pretrain": 0.451, "finetune": 0.543},
        "categories": {"synth_gqa": {"global": {"accuracy": 82.0}}},
        "eval_synth": "data/small-real/synth",
    }
    stage1 = {
        "overrides": VARIANTS[name],
        "seconds": {"features": 900.0, "pretrain": 2050.0},
        "loss": {"pretrain": 0.452},
        "categories": {},
        "stage1_words": {"object colour": 60.0},
    }
    row = merge(finished, stage1, name)
    assert row["categories"] == finished["categories"]
    # the finished run's own numbers stay (one run's); what it lacked is added
    assert row["loss"] == {"pretrain": 0.451, "finetune": 0.543}
    assert row["seconds"] == {
        "pretrain": 2100.0,
        "finetune": 3600.0,
        "eval": 400.0,
        "features": 900.0,
    }
    assert row["stage1_words"] == {"object colour": 60.0}
    assert row["eval_synth"] == "data/small-real/synth"
    # a full run replaces the row; a first run starts from an empty one
    again = merge(row, {**stage1, "categories": {"synth_gqa": {}}}, name)
    assert again["categories"] == {"synth_gqa": {}} and again["loss"] == {"pretrain": 0.452}
    assert merge(None, stage1, name)["categories"] == {}


def test_every_reported_variant_states_its_overrides_against_the_current_preset() -> None:
    """A row's overrides are what the variant changes in today's preset: when the preset moves on
    (v2 → v3: three stage-1 epochs; v3 → v4: 2–4 turns, eager attention), the rows measured on
    the old one name what set them back."""
    rows = json.loads((Path(__file__).resolve().parents[1] / OUT / "variants.json").read_text())
    assert rows
    for name, row in rows.items():
        if name in VARIANTS:
            assert row["overrides"] == VARIANTS[name], name
    assert rows["v2"]["overrides"][-1] == "pretrain.epochs=1.0"
    assert variant_params("v2").pretrain.epochs == 1.0
    v3, v4 = variant_params("v3"), variant_params("baseline")
    assert v3.pretrain.epochs == v4.pretrain.epochs == 3.0
    assert v3.data.synth.turns == (1, 2) and v4.data.synth.turns == (2, 4)
    assert v3.finetune.attention == "sdpa" and v4.finetune.attention == "eager"


def test_a_stage2_from_another_variants_llm() -> None:
    """text_first trains the preset's stage 2 from the LLM that text_warmup fine-tuned on text."""
    assert llm_owner("text_first") == "text_warmup"
    assert llm_owner("text_warmup") is None and llm_owner("baseline") is None
    first, warm = variant_params("text_first"), variant_params("text_warmup")
    assert first.llm.model == f"{warm.paths.finetune}/llm" and first.llm.gguf_file is None
    assert first.paths.features == "data/small-real/features"  # the preset's data and stage 1
    assert first.paths.pretrain == warm.paths.pretrain == "data/small-real/pretrain"
    assert stage1_owner("text_warmup") is None  # no image is encoded again, no stage 1 retrained
    assert warm.data.synth.instruct_images == 0 and warm.data.synth.text_qa == 1600


def test_several_variants_run_one_process_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process keeps the peak heap of each stage it ran: several variants, several processes,
    and a variant that starts from another's LLM gets that one's stage 2 first."""
    import small_real_variants

    monkeypatch.chdir(tmp_path)  # no variant has run here
    calls: list[list[str]] = []
    monkeypatch.setattr(small_real_variants.subprocess, "run", lambda a, check: calls.append(a))
    monkeypatch.setattr(sys, "argv", ["small_real_variants.py", "resampler", "text_first"])
    small_real_variants.main()
    assert [c[2:] for c in calls] == [
        ["--until", "eval", "resampler"],
        ["--until", "finetune", "text_warmup"],  # its LLM is not on disk
        ["--until", "eval", "text_first"],
    ]
    assert all(c[:2] == [sys.executable, small_real_variants.__file__] for c in calls)
