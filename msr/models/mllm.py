"""The multimodal LLM: (cached features | a live vision tower) → projector → the LLM's input embeddings.

The batch marks M positions per image sample (`image_mask`); the projected tokens of the batch's
images, in order, replace the embeddings at exactly those positions. The LLM is any
`AutoModelForCausalLM` (Llama/Vicuna and Qwen2 families are tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from msr.models.vision import VisionTower
from msr.projectors import Projector


class MLLM(nn.Module):
    """projector + LLM (+ an optional frozen vision tower for raw images)."""

    def __init__(
        self, llm: PreTrainedModel, projector: Projector, vision: VisionTower | None = None
    ) -> None:
        super().__init__()
        self.llm, self.projector, self.vision = llm, projector, vision
        c = llm.get_input_embeddings().embedding_dim
        if projector.llm_dim != c:
            raise ValueError(
                f"projector outputs width {projector.llm_dim}, but the LLM's embeddings are {c} wide"
            )

    @property
    def num_image_tokens(self) -> int:
        return self.projector.num_queries

    def image_tokens(self, features: Tensor) -> Tensor:
        """(I, N, d) vision features -> (I, M, c) LLM tokens."""
        param = next(self.projector.parameters())
        return self.projector(features.to(param.dtype))

    def encode_images(self, pixels: Tensor) -> Tensor:
        """uint8 images (I, 3, S, S) -> (I, N, d) features, with the live tower."""
        if self.vision is None:
            raise ValueError(
                "this model has no vision tower: pass cached features, or load it with one"
            )
        return self.vision(pixels)

    def embed(self, input_ids: Tensor, image_mask: Tensor, features: Tensor | None) -> Tensor:
        """(B, T) ids, (B, T) mask, (I, N, d) features -> (B, T, c) input embeddings."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, T, c)
        positions = int(image_mask.sum())
        if features is None or features.numel() == 0:
            if positions:
                raise ValueError(f"{positions} image positions in the batch but no image features")
            return embeds
        tokens = self.image_tokens(features)  # (I, M, c)
        produced = tokens.shape[0] * tokens.shape[1]
        if produced != positions:
            raise ValueError(
                f"image positions and projected tokens differ: the batch marks {positions} image positions, "
                f"the projector produced {produced} tokens ({tokens.shape[0]} images × M={tokens.shape[1]})"
            )
        # row-major scatter: image i of the batch fills the i-th block of M marked positions
        return embeds.masked_scatter(image_mask.unsqueeze(-1), tokens.to(embeds.dtype))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_mask: Tensor,
        features: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        embeds = self.embed(input_ids, image_mask, features)
        return self.llm(
            inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_mask: Tensor,
        features: Tensor | None,
        **generate_kwargs: object,
    ) -> Tensor:
        """Greedy (or as configured) generation from left-padded prompts; returns new tokens only."""
        embeds = self.embed(input_ids, image_mask, features)
        return self.llm.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs
        )  # type: ignore[operator]
