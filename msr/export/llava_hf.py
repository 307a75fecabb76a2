"""`msr export --format llava-hf`: an `mlp`-projector model as transformers' own LLaVA
(`LlavaForConditionalGeneration` + `LlavaProcessor`), loadable with no code of ours — and through
transformers by vLLM, VLMEvalKit and lmms-eval's `llava_hf`. msr's `mlp` (depth 2) is LLaVA-1.5's
`mlp2x_gelu`, which is exactly `LlavaMultiModalProjector`. The layout follows the transformers
LLaVA converter (https://github.com/huggingface/transformers, models/llava): `<image>` added to
the tokenizer, the embeddings grown by its row; each part is loaded from its module's own state
dict, not from key names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from msr.export.chat import chat_template
from msr.export.language import generation_config, with_image_token
from msr.export.vision import ExportedVision
from msr.models.mllm import MLLM
from msr.models.vision import DTYPES


def check_llava(model: MLLM, vision: ExportedVision) -> None:
    """ValueError naming what LLaVA's architecture cannot express (use `--format remote-code`)."""
    cfg = model.config
    assert cfg is not None
    projector, options = cfg.projector["name"], cfg.projector["options"]
    reasons = []
    if projector != "mlp" or options.get("depth", 2) != 2:
        reasons.append(f"its projector is {projector!r} {options} (LLaVA's is mlp with depth 2)")
    if vision.final_norm:
        reasons.append("its features pass the tower's final LayerNorm (vision.final_norm)")
    # LLaVA reads hidden[:, 1:] ("default") or hidden ("full"); msr reads the patches after
    # `prefix_tokens` (CLS, registers), with CLS in front for select=cls_patch
    if vision.prefix_tokens > 1 or (vision.select == "cls_patch" and vision.prefix_tokens != 1):
        reasons.append(
            f"its features are {vision.select} of a tower with {vision.prefix_tokens} prefix "
            "tokens (LLaVA keeps all tokens or drops the first)"
        )
    if reasons:
        raise ValueError(
            "this model cannot be exported as llava-hf: "
            + "; ".join(reasons)
            + "; export it with --format remote-code"
        )


def write_llava_hf(model: MLLM, vision: ExportedVision, out: Path, dtype: str) -> None:
    """Write `out` (a directory that does not exist yet or is a temp directory)."""
    check_llava(model, vision)
    assert model.tokenizer is not None and model.template is not None
    tokenizer = model.tokenizer
    llm = model.llm
    image_token_id = with_image_token(tokenizer, llm)
    default = vision.select == "patch" and vision.prefix_tokens == 1  # LLaVA's "default" drops CLS
    config = LlavaConfig(
        vision_config=vision.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=vision.num_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default" if default else "full",
        vision_feature_layer=-1,  # the tower ends at msr's feature layer
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(llm.config.tie_word_embeddings),
    )
    hf: Any = LlavaForConditionalGeneration(config)
    hf = hf.to(DTYPES[dtype]).eval()
    hf.model.vision_tower.load_state_dict(vision.state)
    mlp: Any = model.projector.mlp  # (Linear, GELU, Linear)
    first, _, second = mlp
    hf.model.multi_modal_projector.linear_1.load_state_dict(first.state_dict())
    hf.model.multi_modal_projector.linear_2.load_state_dict(second.state_dict())
    hf.model.language_model.load_state_dict(llm.get_decoder().state_dict())
    hf.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
    hf.generation_config = generation_config(tokenizer, model.template)
    hf.save_pretrained(out, safe_serialization=True)
    processor = LlavaProcessor(
        image_processor=vision.image_processor(),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=chat_template(model.template),
        num_additional_image_tokens=vision.num_tokens
        - (vision.spec.size // vision.patch_size) ** 2
        + int(default),
    )
    processor.save_pretrained(out)
