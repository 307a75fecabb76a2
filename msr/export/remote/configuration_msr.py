"""Configuration of an msr model exported as remote code: a vision tower cut at its feature layer,
msr's projector, and a causal LLM. Written by `msr export --format remote-code`; it needs torch and
transformers only (https://github.com/msr-project/msr, Apache-2.0)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import CONFIG_MAPPING, PretrainedConfig


def _sub_config(value: Any) -> PretrainedConfig | None:
    if isinstance(value, dict):
        return CONFIG_MAPPING[value["model_type"]](**value)
    return value


class MsrConfig(PretrainedConfig):
    """`vision_config` and `text_config` are the towers' own HF configs; `projector` is msr's
    projector json (name, dims, grid, options); the vision fields say which of the tower's tokens
    the projector reads."""

    model_type = "msr"
    sub_configs: ClassVar[dict[str, type]] = {
        "vision_config": PretrainedConfig,
        "text_config": PretrainedConfig,
    }

    def __init__(
        self,
        vision_config: dict[str, Any] | PretrainedConfig | None = None,
        text_config: dict[str, Any] | PretrainedConfig | None = None,
        projector: dict[str, Any] | None = None,
        image_token_id: int | None = None,
        vision_prefix_tokens: int = 1,  # tokens before the patches (CLS, registers)
        vision_select: str = "patch",  # "patch": patches only; "cls_patch": CLS + patches
        vision_final_norm: str
        | None = None,  # the tower's final LayerNorm, applied to the features
        **kwargs: Any,
    ) -> None:
        self.vision_config = _sub_config(vision_config)
        self.text_config = _sub_config(text_config)
        self.projector = projector or {}
        self.image_token_id = image_token_id
        self.vision_prefix_tokens = vision_prefix_tokens
        self.vision_select = vision_select
        self.vision_final_norm = vision_final_norm
        if (
            self.text_config is not None
        ):  # the LLM's own tying decides (LLaVA's config does the same)
            kwargs.setdefault("tie_word_embeddings", self.text_config.tie_word_embeddings)
        super().__init__(**kwargs)

    @property
    def num_image_tokens(self) -> int:
        """M: the tokens one image takes in the LLM's input."""
        return int(self.projector["num_queries"])
