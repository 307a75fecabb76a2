"""The parts of an export: msr's templates as HF chat templates, and the `<image>` token added to a
vocabulary that lacks it without changing any answer."""

from __future__ import annotations

import jinja2
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from msr.data.templates import make_template
from msr.export.chat import chat_template
from msr.export.language import add_image_token, fit_embeddings


class _Tokenizer:
    eos_token = "</s>"
    chat_template = None


def render(template: str, messages: list[dict], generation: bool = False) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=generation)


TEMPLATES = {
    "vicuna_v1": make_template("vicuna_v1", _Tokenizer()),
    "vicuna_v1 with a system": make_template("vicuna_v1", _Tokenizer(), system="Be brief."),
    "chatml": make_template("chatml"),
    "chatml with a system": make_template("chatml", system="You are a careful observer."),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_template_renders_as_msr(name: str) -> None:
    """One question with an image (HF's content parts, or a string) renders msr's prompt; a
    two-round conversation renders msr's training text."""
    t = TEMPLATES[name]
    jinja = chat_template(t)
    q = "What colour is the circle?"
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    assert render(jinja, parts, generation=True) == t.prompt(q)
    assert render(jinja, [{"role": "user", "content": f"<image>\n{q}"}], True) == t.prompt(q)
    conversation = [
        *parts,
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "text", "text": "And the square?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
    ]
    turns = [
        ("human", f"<image>\n{q}"),
        ("gpt", "red"),
        ("human", "And the square?"),
        ("gpt", "blue"),
    ]
    assert render(jinja, conversation) == t.render(turns).text


def test_a_system_message_replaces_the_models_system_prompt() -> None:
    t = make_template("chatml", system="Default.")
    jinja = chat_template(t)
    messages = [{"role": "system", "content": "Other."}, {"role": "user", "content": "Hi"}]
    assert render(jinja, messages, True) == make_template("chatml", system="Other.").prompt(
        "Hi", has_image=False
    )


@pytest.mark.parametrize("name", ["plain", "chat_template"])
def test_templates_without_a_chat_template_are_named(name: str) -> None:
    class Own(_Tokenizer):
        chat_template = "{{ messages }}"

    with pytest.raises(
        ValueError, match=rf"template '{name}' cannot be exported.*vicuna_v1, chatml"
    ):
        chat_template(make_template(name, Own()))


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<unk>", "<s>", "</s>", "a", "red", "circle", "square", "blue", "the", "is"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@pytest.mark.parametrize("tied", [True, False])
def test_the_image_token_changes_no_answer(tied: bool) -> None:
    """`<image>` is added as a special token with the mean row: logits over the old vocabulary are
    unchanged and the new token's logit is their mean (never the greedy choice)."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(0)
    llm = LlamaForCausalLM(config).eval()
    ids = torch.tensor([tokenizer("the red circle is")["input_ids"]])
    with torch.no_grad():
        before = llm(ids).logits
    old = len(tokenizer)
    image_id = add_image_token(tokenizer)
    assert image_id == old and tokenizer.convert_ids_to_tokens(image_id) == "<image>"
    assert tokenizer("a <image> red")["input_ids"] == [3, image_id, 4]  # one special token
    fit_embeddings(llm, len(tokenizer))
    with torch.no_grad():
        after = llm(ids).logits
    torch.testing.assert_close(after[..., :old], before)
    torch.testing.assert_close(after[..., old], before.mean(-1))
    assert add_image_token(tokenizer) == image_id  # a second time: nothing added
