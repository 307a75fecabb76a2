"""The language side of an exported model: the tokenizer with `<image>` as a special token, the LLM
with an embedding row for it, and the generation config msr generates with (greedy, stopping where
msr's template stops)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AddedToken, GenerationConfig, PreTrainedModel

from msr.data.templates import IMAGE_TOKEN, Template
from msr.eval.generate import stop_ids


def add_image_token(tokenizer: Any) -> int:
    """The id of `<image>`, added as a special token when the vocabulary lacks it (as the
    transformers LLaVA converter does); msr itself splits the text at `<image>` and never feeds it."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens(
            AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True
        )
    return int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def fit_embeddings(llm: PreTrainedModel, vocab: int) -> None:
    """Grow the LLM's embeddings (and an untied output head) to `vocab` rows, each new row the mean
    of the old ones: the image token's input row is replaced by image features, and a mean output
    row never wins a greedy step over the rows it averages, so the answers stay msr's."""
    embeddings: Any = llm.get_input_embeddings()
    old = int(embeddings.weight.shape[0])
    if vocab <= old:
        return
    llm.resize_token_embeddings(vocab, mean_resizing=False)
    heads: list[Any] = [llm.get_input_embeddings(), llm.get_output_embeddings()]
    with torch.no_grad():
        for module in {id(m): m for m in heads if m is not None}.values():
            weight = module.weight
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
            bias = getattr(module, "bias", None)
            if bias is not None:
                bias[old:] = bias[:old].mean()


def with_image_token(tokenizer: Any, llm: PreTrainedModel) -> int:
    """`<image>` in the tokenizer and an embedding row for it in the LLM (both formats); its id."""
    image_token_id = add_image_token(tokenizer)
    fit_embeddings(llm, len(tokenizer))
    return image_token_id


def generation_config(
    tokenizer: Any, template: Template, max_new_tokens: int = 128
) -> GenerationConfig:
    """Greedy, ending on EOS or the template's end-of-turn token, as `msr predict` and `msr eval`."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids(tokenizer, template),
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
    )
