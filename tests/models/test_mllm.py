"""MLLM assembly: projected tokens land exactly on the image positions, for Llama and Qwen2 LLMs."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from msr.models.mllm import MLLM
from msr.projectors import build_projector

LLMS = {
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    ),
    "qwen2": lambda: Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=100,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ),
}


def batch(m: int) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(3, 100, (2, 20))
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, 2 : 2 + m] = True  # sample 0 has an image, sample 1 is text-only
    labels = ids.clone()
    labels[mask] = -100
    return ids, torch.ones(2, 20, dtype=torch.long), mask, labels


@pytest.mark.parametrize("family", sorted(LLMS))
def test_forward_and_backward(family: str) -> None:
    torch.manual_seed(0)
    llm = LLMS[family]()
    model = MLLM(llm, build_projector("resampler", vision_dim=16, llm_dim=48, num_queries=4))
    ids, attn, mask, labels = batch(4)
    out = model(ids, attn, mask, torch.randn(1, 16, 16), labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.projector.attention.query.grad is not None


def test_tokens_land_on_the_image_positions() -> None:
    torch.manual_seed(0)
    model = MLLM(
        LLMS["llama"](), build_projector("resampler", vision_dim=16, llm_dim=48, num_queries=4)
    )
    ids, _, mask, _ = batch(4)
    feats = torch.randn(1, 16, 16)
    embeds = model.embed(ids, mask, feats)
    torch.testing.assert_close(embeds[0, 2:6], model.image_tokens(feats)[0])
    text = model.llm.get_input_embeddings()(ids)
    torch.testing.assert_close(embeds[~mask], text[~mask])


def test_count_mismatch_names_both_counts() -> None:
    model = MLLM(
        LLMS["llama"](), build_projector("resampler", vision_dim=16, llm_dim=48, num_queries=4)
    )
    ids, _, mask, _ = batch(5)
    with pytest.raises(
        ValueError,
        match=r"marks 5 image positions, the projector produced 4 tokens \(1 images × M=4\)",
    ):
        model.embed(ids, mask, torch.randn(1, 16, 16))


def test_width_mismatch() -> None:
    with pytest.raises(
        ValueError, match="projector outputs width 64, but the LLM's embeddings are 48 wide"
    ):
        MLLM(
            LLMS["llama"](), build_projector("resampler", vision_dim=16, llm_dim=64, num_queries=4)
        )


@pytest.mark.parametrize("projector", ["resampler", "ms_resampler", "avgpool"])
def test_a_batch_without_images_trains_against_a_frozen_llm(projector: str) -> None:
    """Stage 2 with the LLM frozen meets text-only batches: the loss still reaches the projector
    (zero gradient), so backward runs and every weight gets a gradient on every rank."""
    torch.manual_seed(0)
    options = {"grid": (4, 4)}
    proj = build_projector(projector, vision_dim=16, llm_dim=48, num_queries=4, **options)
    model = MLLM(LLMS["llama"](), proj)
    model.llm.requires_grad_(False)
    ids, attn, _, labels = batch(4)
    no_image = torch.zeros_like(attn, dtype=torch.bool)
    out = model(ids, attn, no_image, None, labels)
    out.loss.backward()  # without the blank image: "element 0 of tensors does not require grad"
    grads = [p.grad for p in model.projector.parameters()]
    assert all(g is not None and not g.any() for g in grads)
    model.eval()  # outside training nothing is added and the projector does not run
    before = model(ids, attn, no_image, None, labels).loss
    assert not before.requires_grad
    with torch.no_grad():
        model.train()
        assert model(ids, attn, no_image, None, labels).loss == before
