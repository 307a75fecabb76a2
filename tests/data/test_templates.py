"""Templates render LLaVA's exact strings; masking supervises exactly the answers and their
end-of-turn token; the load-time check rejects a template that does not."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from msr.config import Params
from msr.data.templates import VICUNA_SYSTEM, Template, TemplateError, make_template
from msr.data.tokenize import IGNORE_INDEX, BadSample, encode
from msr.models.llm import TemplateMismatch, check_template, load_template

TURNS = (
    ("human", "What is the dog holding?\n<image>"),
    ("gpt", "Frisbee"),
    ("human", "Is it daytime?"),
    ("gpt", "Yes"),
)
VICUNA = Template("vicuna_v1", "</s>")
CHATML = make_template("chatml")
PLAIN = make_template("plain")


def test_vicuna_v1_render_matches_llava() -> None:
    r = VICUNA.render(TURNS)
    assert r.text == (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat is the dog holding? ASSISTANT: Frisbee</s>"
        "USER: Is it daytime? ASSISTANT: Yes</s>"
    )
    assert [r.text[a:b] for a, b in r.spans] == [" Frisbee</s>", " Yes</s>"]


def test_chatml_has_a_system_block_only_when_asked() -> None:
    r = CHATML.render(TURNS)
    assert r.text == (
        "<|im_start|>user\n<image>\nWhat is the dog holding?<|im_end|>\n<|im_start|>assistant\nFrisbee<|im_end|>\n"
        "<|im_start|>user\nIs it daytime?<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n"
    )
    assert [r.text[a:b] for a, b in r.spans] == ["Frisbee<|im_end|>", "Yes<|im_end|>"]
    qwen = make_template("chatml", system="You are a helpful assistant.")
    assert qwen.render(TURNS).text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    )
    assert qwen.prompt("Q?").startswith("<|im_start|>system\nYou are a helpful assistant.")


def test_vicuna_ends_turns_with_the_tokenizers_eos() -> None:
    class Tok:
        eos_token = "<|endoftext|>"

    t = make_template("vicuna_v1", Tok())
    assert t.render(TURNS).text.endswith("ASSISTANT: Yes<|endoftext|>")
    assert t.stop_strings == ("<|endoftext|>",)


def test_plain_drops_the_instruction() -> None:
    r = PLAIN.render((("human", "Give a short caption.\n<image>"), ("gpt", "a red circle")))
    assert (
        r.text == "<image>a red circle\n"
        and r.text[r.spans[0][0] : r.spans[0][1]] == "a red circle\n"
    )


def test_plain_rejects_multi_turn() -> None:
    with pytest.raises(TemplateError, match=r"one .* pair"):
        PLAIN.render(TURNS)


def test_eval_prompts() -> None:
    assert VICUNA.prompt("Q?") == f"{VICUNA_SYSTEM} USER: <image>\nQ? ASSISTANT:"
    assert CHATML.prompt("Q?") == "<|im_start|>user\n<image>\nQ?<|im_end|>\n<|im_start|>assistant\n"
    assert VICUNA.prompt("Q?", has_image=False).endswith("USER: Q? ASSISTANT:")


def test_unknown_template() -> None:
    with pytest.raises(TemplateError, match="unknown template 'alpaca'"):
        make_template("alpaca", object())


@pytest.fixture(scope="module")
def tokenizer(tiny_workspace: Params):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_workspace.llm.model)


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml"])
def test_masking_supervises_exactly_the_answers(tokenizer, template: str) -> None:  # type: ignore[no-untyped-def]
    t = make_template(template, tokenizer)
    enc = encode("k", TURNS, tokenizer, t, num_image_tokens=36, max_length=512, has_image=True)
    supervised = [
        t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX
    ]
    stop = "</s>" if template == "vicuna_v1" else "<|im_end|>"
    assert tokenizer.decode(supervised).replace(" ", "") == f"Frisbee{stop}Yes{stop}"
    assert all(
        lab in (IGNORE_INDEX, tok) for tok, lab in zip(enc.input_ids, enc.labels, strict=True)
    )


def test_image_expands_to_m_positions(tokenizer) -> None:  # type: ignore[no-untyped-def]
    enc = encode("k", TURNS, tokenizer, VICUNA, num_image_tokens=36, max_length=512, has_image=True)
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
    train = encode("k", turns, tokenizer, VICUNA, 36, 512, True)
    from msr.data.tokenize import tokenize_with_image

    ids, _ = tokenize_with_image(VICUNA.prompt("What color is it?"), tokenizer)
    first_label = next(i for i, lab in enumerate(train.labels) if lab != IGNORE_INDEX)
    expanded = [t for t in ids if t >= 0]
    assert (
        train.input_ids[: train.image_start] + train.input_ids[train.image_start + 36 : first_label]
        == expanded
    )


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml"])
@pytest.mark.parametrize("has_image", [True, False])
def test_the_processor_gives_training_and_generation_the_same_prompt(  # type: ignore[no-untyped-def]
    tokenizer, template: str, has_image: bool
) -> None:
    """One processor for both paths: the generation prompt of a question is exactly the start of
    the training example of the same conversation — ids, image positions, and once batched (right-
    padded for training, left-padded for generation) the same image mask over the same tokens."""
    from msr.data.processor import PromptProcessor

    processor = PromptProcessor(tokenizer, make_template(template, tokenizer), 36, 512)
    question = "What color is it?"
    human = f"<image>\n{question}" if has_image else question
    train = processor.conversation("k", [("human", human), ("gpt", "Red")], has_image)
    prompt = processor.prompt(question, has_image)
    first_label = next(i for i, lab in enumerate(train.labels) if lab != IGNORE_INDEX)
    assert train.input_ids[:first_label] == prompt.input_ids
    assert train.image_start == prompt.image_start == (prompt.image_start if has_image else None)
    right = processor.pad([train, prompt], side="right")
    left = processor.pad([train, prompt], side="left")
    shift = len(train.input_ids) - len(prompt.input_ids)
    assert right.image_mask[1].sum() == left.image_mask[1].sum() == 36 * has_image
    assert torch.equal(left.input_ids[1, shift:], right.input_ids[1, : len(prompt.input_ids)])
    assert torch.equal(left.image_mask[1, shift:], right.image_mask[1, : len(prompt.input_ids)])
    assert torch.equal(right.image_mask[0, :first_label], right.image_mask[1, :first_label])


def test_plain_masks_bos_and_image(tokenizer) -> None:  # type: ignore[no-untyped-def]
    enc = encode(
        "k",
        (("human", "Caption?\n<image>"), ("gpt", "a red circle")),
        tokenizer,
        PLAIN,
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
            VICUNA,
            num_image_tokens=36,
            max_length=80,
            has_image=True,
        )


def test_truncation_inside_image_is_an_error(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadSample, match="cuts into the image tokens"):
        encode("k", TURNS, tokenizer, VICUNA, num_image_tokens=36, max_length=20, has_image=True)


def test_template_that_cannot_be_split_names_the_key(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadSample, match=r"^abc/1: template 'plain'"):
        encode("abc/1", TURNS, tokenizer, PLAIN, 36, 512, True)
    with pytest.raises(BadSample, match="cannot split"):
        encode("k", (("human", "hi"),), tokenizer, VICUNA, 36, 512, False)


@pytest.mark.parametrize("name", ["plain", "vicuna_v1", "chatml", "chat_template"])
def test_every_template_passes_the_load_check_on_its_tokenizer(tokenizer, name: str) -> None:  # type: ignore[no-untyped-def]
    load_template(name, tokenizer, "tiny-llama")


def test_a_template_whose_end_of_turn_is_not_one_token_is_rejected(tokenizer) -> None:  # type: ignore[no-untyped-def]
    wrong = Template("vicuna_v1", "<|end|>")  # not a token of this tokenizer
    with pytest.raises(
        TemplateMismatch,
        match=r"tiny-llama: template 'vicuna_v1' ends turns with '<\|end\|>', which is not one token",
    ):
        check_template(wrong, tokenizer, "tiny-llama")


def test_a_template_that_supervises_the_wrong_span_is_rejected(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Templates whose spans take in the role header or the newline before the answer, or stop
    before the end-of-turn token: the error names the model and the template."""

    def shifted(start: int, end: int) -> Template:
        class Shifted(Template):
            def render(self, turns):  # type: ignore[no-untyped-def]
                r = super().render(turns)
                return type(r)(r.text, tuple((a + start, b + end) for a, b in r.spans))

        return Shifted("chatml", "<|im_end|>")

    for start in (-len("assistant\n"), -1):
        with pytest.raises(
            TemplateMismatch,
            match=r"tiny-llama: template 'chatml': the first answer's span starts after",
        ):
            check_template(shifted(start, 0), tokenizer, "tiny-llama")
    with pytest.raises(
        TemplateMismatch, match=r"renders answer 1 as 'A red circle on a gray background.'"
    ):
        check_template(shifted(0, -len("<|im_end|>")), tokenizer, "tiny-llama")


def test_masking_that_supervises_a_token_before_the_answer_names_it(
    tokenizer,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """Token-level: labels that also supervise the token before each answer (the newline after
    the role header) are an error naming that token."""
    import msr.models.llm as llm

    real = llm.encode

    def leaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        enc = real(*args, **kwargs)
        labels = list(enc.labels)
        starts = [
            i
            for i in range(1, len(labels))
            if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX
        ]
        for i in starts:
            labels[i - 1] = enc.input_ids[i - 1]
        return type(enc)(enc.input_ids, labels, enc.image_start)

    monkeypatch.setattr(llm, "encode", leaky)
    with pytest.raises(
        TemplateMismatch,
        match=r"tiny-llama: template 'chatml': answer 1 differs at supervised token 0 'Ċ'",
    ):
        check_template(CHATML, tokenizer, "tiny-llama")


def test_a_tokenizer_that_appends_eos_is_rejected(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from msr.models.llm import check_tokenizer

    class Appends:
        eos_token, eos_token_id, pad_token_id, bos_token_id = "</s>", 2, 0, None

        def __call__(self, text):  # type: ignore[no-untyped-def]
            return type("E", (), {"input_ids": [5, 6, 2]})()

    with pytest.raises(ValueError, match="appends EOS"):
        check_tokenizer(Appends(), "bad")
