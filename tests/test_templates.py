"""Templates render LLaVA's exact strings; masking supervises exactly the answers and their stop token."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from msr.config import Params
from msr.data.templates import VICUNA_SYSTEM, TemplateError, prompt, render
from msr.data.tokenize import IGNORE_INDEX, BadSample, encode

TURNS = (
    ("human", "What is the dog holding?\n<image>"),
    ("gpt", "Frisbee"),
    ("human", "Is it daytime?"),
    ("gpt", "Yes"),
)


def test_vicuna_v1_render_matches_llava() -> None:
    r = render(TURNS, "vicuna_v1")
    assert r.text == (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat is the dog holding? ASSISTANT: Frisbee</s>"
        "USER: Is it daytime? ASSISTANT: Yes</s>"
    )
    assert [r.text[a:b] for a, b in r.spans] == [" Frisbee</s>", " Yes</s>"]


def test_chatml_render_matches_qwen() -> None:
    r = render(TURNS, "chatml")
    assert r.text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is the dog holding?<|im_end|>\n<|im_start|>assistant\nFrisbee<|im_end|>\n"
        "<|im_start|>user\nIs it daytime?<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n"
    )
    assert [r.text[a:b] for a, b in r.spans] == ["Frisbee<|im_end|>", "Yes<|im_end|>"]


def test_plain_drops_the_instruction() -> None:
    r = render((("human", "Give a short caption.\n<image>"), ("gpt", "a red circle")), "plain")
    assert (
        r.text == "<image>a red circle\n"
        and r.text[r.spans[0][0] : r.spans[0][1]] == "a red circle\n"
    )


def test_plain_rejects_multi_turn() -> None:
    with pytest.raises(TemplateError, match=r"one .* pair"):
        render(TURNS, "plain")


def test_eval_prompts() -> None:
    assert prompt("Q?", "vicuna_v1") == f"{VICUNA_SYSTEM} USER: <image>\nQ? ASSISTANT:"
    assert prompt("Q?", "chatml").endswith(
        "<|im_start|>user\n<image>\nQ?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt("Q?", "vicuna_v1", has_image=False).endswith("USER: Q? ASSISTANT:")


@pytest.fixture(scope="module")
def tokenizer(tiny_workspace: Params):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_workspace.llm.model)


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml"])
def test_masking_supervises_exactly_the_answers(tokenizer, template: str) -> None:  # type: ignore[no-untyped-def]
    enc = encode(
        "k", TURNS, tokenizer, template, num_image_tokens=36, max_length=512, has_image=True
    )
    supervised = [
        t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX
    ]
    stop = "</s>" if template == "vicuna_v1" else "<|im_end|>"
    assert tokenizer.decode(supervised).replace(" ", "") == f"Frisbee{stop}Yes{stop}"
    assert all(
        lab in (IGNORE_INDEX, tok) for tok, lab in zip(enc.input_ids, enc.labels, strict=True)
    )


def test_image_expands_to_m_positions(tokenizer) -> None:  # type: ignore[no-untyped-def]
    enc = encode(
        "k", TURNS, tokenizer, "vicuna_v1", num_image_tokens=36, max_length=512, has_image=True
    )
    assert enc.image_start is not None
    block = enc.input_ids[enc.image_start : enc.image_start + 36]
    assert block == [tokenizer.pad_token_id] * 36
    assert enc.labels[enc.image_start : enc.image_start + 36] == [IGNORE_INDEX] * 36
    assert (
        enc.input_ids[0] == tokenizer.bos_token_id
        and enc.input_ids.count(tokenizer.bos_token_id) == 1
    )


def test_prompt_tokens_equal_training_prefix(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The evaluation prompt tokenizes exactly like the start of a training sample (no drift)."""
    turns = (("human", "<image>\nWhat color is it?"), ("gpt", "Red"))
    train = encode("k", turns, tokenizer, "vicuna_v1", 36, 512, True)
    from msr.data.tokenize import tokenize_with_image

    ids, _ = tokenize_with_image(prompt("What color is it?", "vicuna_v1"), tokenizer)
    first_label = next(i for i, lab in enumerate(train.labels) if lab != IGNORE_INDEX)
    expanded = [t for t in ids if t >= 0]
    assert (
        train.input_ids[: train.image_start] + train.input_ids[train.image_start + 36 : first_label]
        == expanded
    )


def test_plain_masks_bos_and_image(tokenizer) -> None:  # type: ignore[no-untyped-def]
    enc = encode(
        "k",
        (("human", "Caption?\n<image>"), ("gpt", "a red circle")),
        tokenizer,
        "plain",
        36,
        512,
        True,
    )
    assert enc.image_start == 1 and enc.labels[:37] == [IGNORE_INDEX] * 37
    assert tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX]) == "a red circle\n"


def test_all_masked_after_truncation_is_an_error(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadSample, match=r"^key7: every label is masked after truncation to 80"):
        encode(
            "key7",
            TURNS,
            tokenizer,
            "vicuna_v1",
            num_image_tokens=36,
            max_length=80,
            has_image=True,
        )


def test_truncation_inside_image_is_an_error(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadSample, match="cuts into the image tokens"):
        encode(
            "k", TURNS, tokenizer, "vicuna_v1", num_image_tokens=36, max_length=20, has_image=True
        )


def test_template_that_cannot_be_split_names_the_key(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadSample, match=r"^abc/1: template 'plain'"):
        encode("abc/1", TURNS, tokenizer, "plain", 36, 512, True)
    with pytest.raises(BadSample, match="cannot split"):
        encode("k", (("human", "hi"),), tokenizer, "vicuna_v1", 36, 512, False)
