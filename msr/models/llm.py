"""The language-model backbone: any `AutoModelForCausalLM` by hub id, local directory, or GGUF file,
with its tokenizer and the prompt template of its family — both checked at load.

At load (prismatic's `base_llm.py` does the first part: https://github.com/TRI-ML/prismatic-vlms):
the tokenizer has an EOS and a pad id and does not append EOS by itself, and its end-of-turn token
is one token that generation stops on; then one conversation is rendered, tokenized and masked,
and the supervised tokens must be exactly the assistant answers plus the end-of-turn token. A
mismatch is an error naming the model, the template and the first differing token — where LLaVA
warns "tokenization mismatch" and trains on an all-masked sample.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel

from msr.data.templates import Template, make_template
from msr.data.tokenize import IGNORE_INDEX, encode
from msr.models.vision import DTYPES
from msr.utils.resources import resolve

log = logging.getLogger(__name__)
CHECK_TURNS = (
    ("human", "<image>\nWhat is in the image?"),
    ("gpt", "A red circle on a gray background."),
    ("human", "How many objects are there?"),
    ("gpt", "Two."),
)


class TemplateMismatch(ValueError):
    """The template and the tokenizer do not supervise exactly the answers."""


def load_tokenizer(model: str, *, revision: str | None = None, gguf_file: str | None = None) -> Any:
    """The tokenizer of a hub id, local directory or GGUF file, with a pad id (LLaVA pads with
    <unk> where there is one, else EOS) and checked (`check_tokenizer`)."""
    kwargs: dict[str, Any] = {"revision": revision}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(resolve(model), **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token else tokenizer.eos_token
    check_tokenizer(tokenizer, model)
    return tokenizer


def check_tokenizer(tokenizer: Any, name: str) -> None:
    """EOS and pad exist; the tokenizer does not append EOS to every text (msr adds end-of-turn
    tokens itself, and tokenizes text around `<image>` in pieces)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{name}: the tokenizer has no EOS token; msr ends answers with it")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{name}: the tokenizer has no pad token, <unk> or EOS to pad with")
    ids = tokenizer("a b").input_ids
    if ids and ids[-1] == tokenizer.eos_token_id:
        raise ValueError(
            f"{name}: the tokenizer appends EOS ({tokenizer.eos_token!r}) to every text; "
            "msr expects it not to (answers end with the template's end-of-turn token)"
        )
    if tokenizer.bos_token_id is not None and ids and ids[0] != tokenizer.bos_token_id:
        log.info("%s: the tokenizer does not add BOS %r; none is added", name, tokenizer.bos_token)


def eot_id(template: Template, tokenizer: Any, name: str) -> int | None:
    """The id of the template's end-of-turn token: one token, one that generation stops on."""
    if template.name == "plain":
        return None  # stage 1 ends captions with "\n", which is text
    ids = tokenizer(template.eot, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise TemplateMismatch(
            f"{name}: template {template.name!r} ends turns with {template.eot!r}, which is not one "
            f"token of this tokenizer (it tokenizes as {pieces}); pick the template of the model's "
            "family"
        )
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(template.eot)}
    if ids[0] not in stops:
        raise TemplateMismatch(f"{name}: end-of-turn {template.eot!r} is not a stop token")
    return int(ids[0])


def check_template(template: Template, tokenizer: Any, name: str) -> None:
    """Render, tokenize and mask one conversation: each supervised span of the text must be an
    answer followed by the end-of-turn token (a leading space aside), and the supervised tokens
    must be exactly those spans."""
    turns = CHECK_TURNS if template.name != "plain" else CHECK_TURNS[:2]
    answers = [text for role, text in turns if role == "gpt"]
    where = f"{name}: template {template.name!r}"
    eot = eot_id(template, tokenizer, name)
    rendered = template.render(turns)
    spans = [rendered.text[a:b] for a, b in rendered.spans]
    prompt = template.prompt(turns[0][1].removeprefix("<image>\n"))
    head = rendered.text[: rendered.spans[0][0]]
    if template.name != "plain" and head != prompt:  # plain (stage 1) drops the instruction
        raise TemplateMismatch(
            f"{where}: the first answer's span starts after {head[-20:]!r}, but the evaluation "
            f"prompt ends with {prompt[-20:]!r}: training would supervise other tokens than "
            "generation produces"
        )
    for i, (span, answer) in enumerate(zip(spans, answers, strict=True), 1):
        if span.lstrip() != answer + template.eot:
            raise TemplateMismatch(
                f"{where} renders answer {i} as {span!r}, expected {answer + template.eot!r}"
            )
    enc = encode("template-check", turns, tokenizer, template, 1, 1 << 20, has_image=True)
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in enc.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    if len(runs) != len(answers):
        raise TemplateMismatch(
            f"{where} supervises {len(runs)} token runs for {len(answers)} answers: "
            f"{[tokenizer.decode(r) for r in runs]}"
        )
    for i, (run, span) in enumerate(zip(runs, spans, strict=True), 1):
        # decoding may drop a leading space (sentencepiece), so compare without it; a token that is
        # only whitespace may lead only where the span itself starts with whitespace
        expected = span.lstrip()
        for k in range(len(run)):
            text = tokenizer.decode(run[: k + 1])
            stray = k == 0 and not text.strip() and span == expected
            text = text.lstrip()
            if stray or (not expected.startswith(text) and "\ufffd" not in text):
                token = tokenizer.convert_ids_to_tokens(run[k])
                raise TemplateMismatch(
                    f"{where}: answer {i} differs at supervised token {k} {token!r} (id {run[k]}): "
                    f"supervised {tokenizer.decode(run)!r}, expected {expected!r}"
                )
        if tokenizer.decode(run).lstrip() != expected or (eot is not None and run[-1] != eot):
            raise TemplateMismatch(
                f"{where}: answer {i} is supervised as {tokenizer.decode(run)!r} ending with "
                f"{tokenizer.convert_ids_to_tokens(run[-1])!r}, expected {expected!r} ending with "
                "the end-of-turn token"
            )


def load_template(name: str, tokenizer: Any, model: str, system: str | None = None) -> Template:
    """The template `name` bound to the tokenizer, checked (`check_template`)."""
    template = make_template(name, tokenizer, system)
    check_template(template, tokenizer, model)
    return template


def load_causal_lm(
    model: str,
    *,
    revision: str | None = None,
    gguf_file: str | None = None,
    dtype: str = "bf16",
    attention: str = "sdpa",
) -> PreTrainedModel:
    """Weights of a hub id, local directory or GGUF file in `dtype`, running the `attention`
    kernel (not saved with the model). A GGUF file is dequantised into a plain dense model
    (trainable, saved like any other); transformers needs `gguf` for it."""
    kwargs: dict[str, Any] = {
        "revision": revision,
        "dtype": DTYPES[dtype],
        "attn_implementation": attention,
    }
    if gguf_file is not None:
        kwargs.update(gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True))
    try:
        llm = AutoModelForCausalLM.from_pretrained(resolve(model), **kwargs)
    except SafetensorError as err:  # names no file by itself
        raise OSError(f"the weights of {model} are damaged (safetensors: {err})") from None
    if gguf_file is not None:  # dense now: nothing of the file's quantisation is left to record
        llm.config.quantization_config = None
        setattr(llm, "hf_quantizer", None)  # noqa: B010  (typed as a module attribute)
        setattr(llm, "is_quantized", False)  # noqa: B010
    if llm.generation_config.pad_token_id is None:
        llm.generation_config.pad_token_id = llm.config.eos_token_id
    return llm


@dataclass
class LLMBackbone:
    """The language side, loaded and checked as one (the vision side is a `VisionBackbone`): the
    causal LM, its tokenizer, and the prompt template bound to that tokenizer."""

    model: PreTrainedModel
    tokenizer: Any
    template: Template

    @classmethod
    def load(
        cls,
        model: str,
        *,
        template: str,
        revision: str | None = None,
        gguf_file: str | None = None,
        system: str | None = None,
        dtype: str = "bf16",
        attention: str = "sdpa",
        loading: AbstractContextManager[Any] | None = None,
    ) -> LLMBackbone:
        """A hub id, local directory or GGUF file (`load_causal_lm`), its tokenizer and the template
        `template`, checked together; the weights are built inside `loading` when given (e.g.
        DeepSpeed's `zero.Init`)."""
        tokenizer = load_tokenizer(model, revision=revision, gguf_file=gguf_file)
        with loading if loading is not None else nullcontext():
            llm = load_causal_lm(
                model, revision=revision, gguf_file=gguf_file, dtype=dtype, attention=attention
            )
        return cls(llm, tokenizer, load_template(template, tokenizer, model, system))

    @property
    def hidden_size(self) -> int:
        """c: the width of the LLM's input embeddings, what a projector must output."""
        return int(self.model.config.hidden_size)
