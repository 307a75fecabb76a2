"""Tiny models round-trip through save/load offline; preprocessing equals the HF processor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from msr.config import Params
from msr.data.templates import make_template
from msr.models.preprocess import (
    ImageSpec,
    expand_to_square,
    normalize,
    prepare,
    prepare_hwc,
    preprocess,
    stack_hwc,
)
from msr.models.vision import describe_vision, fold_normalization, load_vision
from tests.conftest import random_tower


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_llm_and_tokenizer_round_trip(tiny_workspace: Params, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tok = AutoTokenizer.from_pretrained(tiny_workspace.llm.model)
    model = AutoModelForCausalLM.from_pretrained(tiny_workspace.llm.model)
    b = tiny_workspace.llm.build
    assert b is not None and model.config.hidden_size == b.hidden_size
    assert model.config.num_hidden_layers == b.num_layers and model.config.vocab_size == len(tok)
    ids = tok("What color is the background?", return_tensors="pt").input_ids
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(model(ids).logits, again(ids).logits)
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id
    assert tok.decode(tok("<image> red</s>").input_ids, skip_special_tokens=True).strip() == "red"
    assert ids[0, 0].item() == tok.bos_token_id


def test_chat_template_matches_msr_templates(tiny_workspace: Params) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_workspace.llm.model)
    vicuna = make_template("vicuna_v1", tok)
    messages = [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "A"}]
    assert (
        tok.apply_chat_template(messages, tokenize=False)
        == vicuna.render((("human", "<image>\nQ?"), ("gpt", "A"))).text
    )
    assert tok.apply_chat_template(
        messages[:1], tokenize=False, add_generation_prompt=True
    ) == vicuna.prompt("Q?")


FAMILIES = [("clip", 336), ("clip", 224), ("siglip", 336), ("dinov2", 336), ("dinov2", 224)]


def family_tower(root: Path, family: str, native: int) -> str:
    return str(random_tower(root, family, native))


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("towers")


@pytest.mark.parametrize(("family", "native"), FAMILIES)
def test_features_equal_hf_model_and_processor(towers: Path, family: str, native: int) -> None:
    """fp32, 336 px requested: msr's features equal HF's image processor + HF model (its hidden
    state −2, prefix tokens dropped, position embeddings interpolated where native ≠ 336). The
    image is square, so LLaVA's pad-to-square (not an HF processor step) does not enter."""
    path = family_tower(towers, family, native)
    ours = load_vision(path, image_size=336, dtype="fp32")
    assert ours.family == family and ours.grid == (24, 24) and ours.embed_dim == 32
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (500, 500, 3), dtype=np.uint8))
    processor = AutoImageProcessor.from_pretrained(path)
    sizes = (
        {"size": {"height": 336, "width": 336}}
        if family == "siglip"
        else {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
    )
    pixels = processor(img, return_tensors="pt", **sizes)["pixel_values"]
    hf = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    extra = {} if family == "dinov2" else {"interpolate_pos_encoding": native != 336}
    with torch.no_grad():
        hidden = hf(pixel_values=pixels, output_hidden_states=True, **extra).hidden_states[-2]
    expected = hidden[:, 0 if family == "siglip" else 1 :]
    got = ours(prepare(img, ours.spec)[None])
    assert got.shape == expected.shape == (1, 576, 32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2"])
def test_final_norm_applies_the_familys_last_layernorm(towers: Path, family: str) -> None:
    path = family_tower(towers, family, 336)
    plain = load_vision(path, dtype="fp32")
    normed = load_vision(path, dtype="fp32", final_norm=True)
    norm = normed.model.get_submodule(normed.norm_path)
    x = torch.randint(0, 256, (2, 3, 336, 336), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(normed(x), norm(plain(x)))
    assert normed.fingerprint()["final_norm"] is True and "final_norm" not in plain.fingerprint()
    assert describe_vision(path, dtype="fp32", final_norm=True)[0] == normed.fingerprint()


@pytest.mark.parametrize(("family", "native"), [("clip", 336), ("siglip", 336), ("dinov2", 224)])
def test_describe_equals_the_loaded_backbone(towers: Path, family: str, native: int) -> None:
    path = family_tower(towers, family, native)
    fp, width, grid = describe_vision(path, image_size=336, dtype="bf16")
    tower = load_vision(path, image_size=336, dtype="bf16")
    assert (fp, width, grid) == (tower.fingerprint(), tower.embed_dim, tower.grid)
    assert fp["family"] == family and fp["resolution"] == 336


def test_dinov2_registers_and_cls_patch(towers: Path) -> None:
    """Register tokens sit between CLS and the patches: dropped for `patch`, and for `cls_patch`
    CLS is kept in front of the patches."""
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        num_register_tokens=4,
    )
    path = towers / "dinov2-registers"
    Dinov2WithRegistersModel(config).save_pretrained(path)
    patch = load_vision(str(path), image_size=56, dtype="fp32")
    both = load_vision(str(path), image_size=56, dtype="fp32", select="cls_patch")
    assert patch.num_prefix_tokens == 5 and patch.family == "dinov2_with_registers"
    x = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    assert patch(x).shape == (2, 16, 32) and both(x).shape == (2, 17, 32)
    torch.testing.assert_close(both(x)[:, 1:], patch(x))


def test_siglip_has_no_cls_and_no_pooling_head(towers: Path) -> None:
    path = family_tower(towers, "siglip", 336)
    with pytest.raises(ValueError, match="select='cls_patch': a siglip backbone has no CLS token"):
        load_vision(path, select="cls_patch")
    tower = load_vision(path, dtype="fp32")
    assert not any("head" in name for name, _ in tower.named_modules())


def test_vision_tower_loads_and_drops_unused_blocks(tiny_workspace: Params) -> None:
    tower = load_vision(tiny_workspace.vision.model, feature_layer=-2, dtype="fp32")
    x = torch.randint(
        0, 256, (2, 3, 336, 336), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    assert tower(x).shape == (2, 576, 64) and tower.grid == (24, 24)
    hf = CLIPVisionModel.from_pretrained(tiny_workspace.vision.model, dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf(pixel_values=normalize(x, tower.spec), output_hidden_states=True)
    # HF's layer −2 on HF-normalised pixels, CLS dropped (fp32 normalises as HF does)
    torch.testing.assert_close(tower(x), out.hidden_states[-2][:, 1:], rtol=1e-5, atol=1e-5)
    assert len(tower.model.encoder.layers) == tiny_workspace.vision.build.num_layers - 1  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="uint8 images"):
        tower(normalize(x, tower.spec))  # already-normalised floats would be normalised twice
    with pytest.raises(ValueError, match=r"uint8 images \(B, 3, 336, 336\)"):
        tower(x[:, :, :224, :224])  # another resolution than the backbone was set up for
    cls_patch = load_vision(tiny_workspace.vision.model, select="cls_patch", dtype="fp32")
    assert cls_patch(x).shape == (2, 577, 64)


def test_folded_normalisation_equals_normalise_then_conv() -> None:
    """With a bias (SigLIP's patch embedding has one) and another mean/std; padding is refused."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 14, stride=14, bias=True).double()
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    x = torch.randint(0, 256, (2, 3, 28, 42)).double()
    expected = conv(
        (x / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    )
    fold_normalization(conv, mean, std)
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no padding"):
        fold_normalization(torch.nn.Conv2d(3, 8, 3, padding=1), mean, std)


def test_bf16_tower_error_is_within_twice_hfs_own(tiny_workspace: Params) -> None:
    """The fold rounds the scaled weights and the bias once more than HF's bf16 path does."""
    tower = load_vision(tiny_workspace.vision.model, dtype="bf16")
    path = tiny_workspace.vision.model
    x = torch.randint(
        0, 256, (4, 3, 336, 336), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    x[:, :, 100:200] = 200  # flat regions as well as noise

    def hf_features(dtype: torch.dtype) -> torch.Tensor:
        hf = CLIPVisionModel.from_pretrained(path, dtype=dtype).eval()
        with torch.no_grad():
            out = hf(pixel_values=normalize(x, tower.spec, dtype), output_hidden_states=True)
        return out.hidden_states[-2][:, 1:].float()

    ref = hf_features(torch.float32)
    hf_err = (hf_features(torch.bfloat16) - ref).norm() / ref.norm()
    err = (tower(x).float() - ref).norm() / ref.norm()
    assert hf_err > 0 and err <= 2.5 * hf_err, (err, hf_err)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_only_bf16_folds_the_normalisation(tiny_workspace: Params, dtype: str) -> None:
    path = tiny_workspace.vision.model
    tower = load_vision(path, dtype=dtype)  # fp16 compute is GPU work: load only
    bf16 = load_vision(path, dtype="bf16")
    assert not tower.folded and bf16.folded
    assert "folded" not in tower.fingerprint()["preprocessing"]
    assert "folded" in bf16.fingerprint()["preprocessing"]
    theirs = CLIPVisionModel.from_pretrained(path, dtype=tower.dtype)
    state = theirs.state_dict()
    for name, p in tower.model.state_dict().items():  # the patch embedding included: HF's own
        assert torch.equal(p, state[name]), name


def test_fingerprint_changes_with_what_changes_features(tiny_workspace: Params) -> None:
    path = tiny_workspace.vision.model
    a = load_vision(path).fingerprint()
    b = load_vision(path, feature_layer=-1).fingerprint()
    c = load_vision(path, image_size=224).fingerprint()
    assert a["id"] != b["id"] and a["weights"] == b["weights"] and a["id"] != c["id"]
    assert a == load_vision(path).fingerprint()


def test_bad_vision_options(tiny_workspace: Params) -> None:
    path = tiny_workspace.vision.model
    with pytest.raises(ValueError, match="feature_layer=9"):
        load_vision(path, feature_layer=9)
    with pytest.raises(ValueError, match="select='cls'"):
        load_vision(path, select="cls")
    with pytest.raises(
        ValueError, match="image_size=330 is not a multiple of the clip patch size 14"
    ):
        load_vision(path, image_size=330)


def test_unknown_vision_family_names_the_known_ones(tiny_workspace: Params) -> None:
    with pytest.raises(ValueError, match=r"model_type 'llama'; supported: clip, .*dinov2.*siglip"):
        load_vision(tiny_workspace.llm.model)


@pytest.mark.parametrize("size", [(336, 336), (500, 300), (300, 500), (100, 80)])
@pytest.mark.parametrize("aspect", ["pad", "crop"])
def test_preprocess_equals_hf_processor(size: tuple[int, int], aspect: str) -> None:
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    spec = ImageSpec.from_processor(processor, aspect)
    img = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    )
    source = expand_to_square(img, spec.pad_color) if aspect == "pad" else img
    expected = processor(source, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(preprocess([img], spec), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        preprocess([img], spec, torch.bfloat16).float(), expected, rtol=0, atol=0.04
    )
    # the feature cache's batch path (HWC arrays, one transposing copy) gives `prepare`'s pixels,
    # for RGB input and for a mode that is converted first
    grey = img.convert("L")
    assert torch.equal(
        stack_hwc([prepare_hwc(img, spec), prepare_hwc(grey, spec)]),
        torch.stack([prepare(img, spec), prepare(grey, spec)]),
    )


def test_pad_colour_is_llavas() -> None:
    assert ImageSpec(336).pad_color == (122, 116, 104)
