"""The labelled-token loss equals HF's causal-LM loss, value and gradients, and falls back to it for
heads that are not a plain projection."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedModel

from msr.models.loss import lm_loss, plain_head
from msr.models.mllm import MLLM
from msr.projectors import build_projector
from tests.models.test_mllm import LLMS


def _batch() -> tuple[torch.Tensor, ...]:
    """Two samples: one with 4 image positions and right padding, one text-only, sparse labels."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, 20), generator=g)
    image = torch.zeros(2, 20, dtype=torch.bool)
    image[0, 1:5] = True
    attn = torch.ones(2, 20, dtype=torch.long)
    attn[0, 17:] = 0
    labels = torch.full((2, 20), -100)
    labels[0, 9:12], labels[0, 14:17] = ids[0, 9:12], ids[0, 14:17]
    labels[1, 5:7], labels[1, 18:] = ids[1, 5:7], ids[1, 18:]
    return ids, attn, image, labels


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", sorted(LLMS))
def test_labelled_token_loss_equals_hf_loss_and_gradients(family: str) -> None:
    torch.manual_seed(0)
    model = MLLM(
        LLMS[family](), build_projector("resampler", vision_dim=16, llm_dim=48, num_queries=4)
    )
    assert plain_head(model.llm)
    ids, attn, image, labels = _batch()
    features = torch.randn(1, 16, 16)

    fast = model(ids, attn, image, features, labels).loss
    fast.backward()
    fast_grads = _grads(model)
    model.zero_grad()
    embeds = model.embed(ids, image, features)
    hf = model.llm(inputs_embeds=embeds, attention_mask=attn, labels=labels, use_cache=False).loss
    hf.backward()

    torch.testing.assert_close(fast, hf, rtol=1e-6, atol=1e-6)
    hf_grads = _grads(model)
    assert fast_grads.keys() == hf_grads.keys()
    assert any(n.startswith("projector.") for n in fast_grads)
    for name, g in hf_grads.items():
        torch.testing.assert_close(fast_grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def _gemma2() -> PreTrainedModel:
    config = Gemma2Config(
        vocab_size=100,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        final_logit_softcapping=30.0,
    )
    return Gemma2ForCausalLM(config)


def test_a_capped_head_goes_through_the_hf_loss() -> None:
    torch.manual_seed(0)
    llm = _gemma2()
    assert not plain_head(llm)
    ids, attn, _, labels = _batch()
    embeds = llm.get_input_embeddings()(ids)
    hf = llm(inputs_embeds=embeds, attention_mask=attn, labels=labels, use_cache=False).loss
    torch.testing.assert_close(lm_loss(llm, embeds, attn, labels), hf)
