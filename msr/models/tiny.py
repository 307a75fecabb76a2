"""The tiny preset's models, built offline: a CLIP vision tower and a Llama from configs with a fixed
seed, and a byte-level BPE tokenizer trained on the synthetic text. All three are saved with
`save_pretrained`, so later stages load them with `from_pretrained` exactly like hub models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from msr.config import LLMBuild, VisionBuild
from msr.data.templates import QWEN_SYSTEM, VICUNA_SYSTEM
from msr.models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>"]

# Chat templates (jinja) that render exactly what msr.data.templates renders.
CHAT_TEMPLATES = {
    "vicuna_v1": (
        "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + ' ' }}"
        "{%- set msgs = messages[1:] -%}{%- else -%}{{ '"
        + VICUNA_SYSTEM.replace("'", "\\'")
        + " ' }}"
        "{%- set msgs = messages -%}{%- endif -%}"
        "{%- for m in msgs -%}{%- if m['role'] == 'user' -%}{{ 'USER: ' + m['content'] + ' ' }}"
        "{%- else -%}{{ 'ASSISTANT: ' + m['content'] + '</s>' }}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
    ),
    "chatml": (
        "{%- if messages[0]['role'] != 'system' -%}"
        "{{ '<|im_start|>system\\n" + QWEN_SYSTEM + "<|im_end|>\\n' }}{%- endif -%}"
        "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    ),
    "plain": "{%- for m in messages -%}{{ m['content'] }}{%- endfor -%}",
}


def corpus(json_files: Iterable[Path]) -> Iterator[str]:
    """Every conversation turn of LLaVA-format training json, plus the template strings."""
    yield VICUNA_SYSTEM
    yield QWEN_SYSTEM
    yield "USER: ASSISTANT: system user assistant"
    for path in json_files:
        for record in json.loads(Path(path).read_text()):
            for turn in record["conversations"]:
                yield turn["value"].replace("<image>", "")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, template: str, max_length: int
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Llama-style special tokens (BOS added), `<image>` and ChatML markers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<image>", "<|im_start|>", "<|im_end|>"],
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATES[template],
    )


def vision_config(cfg: VisionBuild, image_size: int, patch_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=image_size,
        patch_size=patch_size,
    )


def llm_config(
    cfg: LLMBuild,
    vocab_size: int,
    max_length: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=max_length,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_vision(cfg: VisionBuild, image_size: int, patch_size: int) -> tuple[CLIPVisionModel, Any]:
    """A randomly initialised CLIP vision tower and its image processor (OpenAI CLIP normalisation)."""
    config = vision_config(cfg, image_size, patch_size)
    torch.manual_seed(cfg.seed)
    model = CLIPVisionModel(config)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    return model, processor


def build_llm(
    cfg: LLMBuild, tokenizer: PreTrainedTokenizerFast, max_length: int
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized by `cfg`, its vocabulary the tokenizer's."""
    config = llm_config(
        cfg,
        len(tokenizer),
        max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
