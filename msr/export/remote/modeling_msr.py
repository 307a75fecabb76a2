"""An msr model as transformers code: vision tower → msr's projector → causal LLM, the projected
image tokens in place of the `<image>` positions of the input. Written by `msr export --format
remote-code` beside the projector's own source (`projector_msr.py` and the files it imports); it
needs torch and transformers only (https://github.com/msr-project/msr, Apache-2.0)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_msr import MsrConfig
from .projector_msr import build_projector


class MsrPreTrainedModel(PreTrainedModel):
    config_class = MsrConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True


class MsrForConditionalGeneration(MsrPreTrainedModel, GenerationMixin):
    """`model(input_ids, pixel_values, attention_mask)` → the LLM's output; `generate` as any
    causal LM (the image is read at the prefill step only)."""

    def __init__(self, config: MsrConfig) -> None:
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.projector = build_projector(config.projector)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """(I, 3, S, S) normalised images → (I, M, c) LLM tokens."""
        tower = self.vision_tower
        dtype = next(tower.parameters()).dtype
        hidden = tower(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        h = hidden.hidden_states[-1]  # the tower ends at msr's feature layer
        if self.config.vision_final_norm:
            h = tower.get_submodule(self.config.vision_final_norm)(h)
        patches = h[:, self.config.vision_prefix_tokens :]
        if self.config.vision_select == "cls_patch":
            patches = torch.cat([h[:, :1], patches], dim=1)
        param = next(self.projector.parameters())
        return self.projector(patches.to(param.dtype))

    def forward(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("pixel_values need input_ids: their <image> tokens mark where")
            tokens = self.get_image_features(pixel_values)  # (I, M, c)
            positions = input_ids == self.config.image_token_id  # (B, T)
            if int(positions.sum()) != tokens.shape[0] * tokens.shape[1]:
                raise ValueError(
                    f"{int(positions.sum())} image tokens in input_ids, but {tokens.shape[0]} "
                    f"image(s) of {tokens.shape[1]} tokens each: let the processor expand <image>"
                )
            mask = positions.unsqueeze(-1).to(inputs_embeds.device)
            inputs_embeds = inputs_embeds.masked_scatter(mask, tokens.to(inputs_embeds.dtype))
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
