"""The tiny preset's models, built offline: a vision tower (CLIP, SigLIP or DINOv2) and an LLM
(Llama or Qwen2) from configs with a fixed seed, and a byte-level BPE tokenizer trained on the
synthetic text. All three are saved with `save_pretrained`, so later stages load them with
`from_pretrained` exactly like hub models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from msr.config import LLMBuild, VisionBuild
from msr.data.templates import VICUNA_SYSTEM
from msr.models.vision import VISION_BACKBONES

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
        "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    ),
    "plain": "{%- for m in messages -%}{{ m['content'] }}{%- endfor -%}",
}


def corpus(json_files: Iterable[Path]) -> Iterator[str]:
    """Every conversation turn of LLaVA-format training json, plus the template strings."""
    yield VICUNA_SYSTEM
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


def vision_config(cfg: VisionBuild, image_size: int) -> PretrainedConfig:
    """The HF config of a tiny tower of `cfg.family`, native at `image_size`."""
    d, layers, heads, inter = cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size
    if cfg.family == "dinov2":
        return Dinov2Config(
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            mlp_ratio=inter // d,
            image_size=image_size,
            patch_size=cfg.patch_size,
        )
    family = {"clip": CLIPVisionConfig, "siglip": SiglipVisionConfig}[cfg.family]
    return family(
        hidden_size=d,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=cfg.patch_size,
    )


def llm_config(
    cfg: LLMBuild,
    vocab_size: int,
    max_length: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> PretrainedConfig:
    """A Llama or Qwen2 (biased QKV) decoder config sized by `cfg`."""
    family = {"llama": LlamaConfig, "qwen2": Qwen2Config}[cfg.family]
    return family(
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


def build_vision(cfg: VisionBuild, image_size: int) -> tuple[PreTrainedModel, Any]:
    """A randomly initialised tower of `cfg.family` and the image processor of that family
    (CLIP's, SigLIP's, DINOv2's normalisation), both sized for `image_size`."""
    config = vision_config(cfg, image_size)
    family = VISION_BACKBONES[config.model_type]
    torch.manual_seed(cfg.seed)
    model = family.model_class(config)
    mean, std = list(family.mean), list(family.std)
    processor: Any
    if cfg.family == "siglip":
        processor = SiglipImageProcessorPil(
            size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std
        )
    else:
        kind = CLIPImageProcessorPil if cfg.family == "clip" else BitImageProcessorPil
        processor = kind(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_mean=mean,
            image_std=std,
        )
    return model, processor


def build_llm(
    cfg: LLMBuild, tokenizer: PreTrainedTokenizerFast, max_length: int
) -> PreTrainedModel:
    """A randomly initialised Llama or Qwen2 sized by `cfg`, its vocabulary the tokenizer's."""
    config = llm_config(
        cfg,
        len(tokenizer),
        max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
