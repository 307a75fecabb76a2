"""The processor of an msr model exported as remote code: LLaVA's (image processor, tokenizer,
chat template), with each `<image>` expanded to the projector's M tokens. Written by `msr export
--format remote-code`; it needs transformers only (https://github.com/msr-project/msr, Apache-2.0)."""

from __future__ import annotations

from typing import Any

from transformers import LlavaProcessor


class MsrProcessor(LlavaProcessor):
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        **kwargs: Any,
    ) -> None:
        self.num_image_tokens = num_image_tokens
        super().__init__(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            image_token=image_token,
            **kwargs,
        )

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        if self.num_image_tokens is None:
            raise ValueError(
                "this processor does not know M (num_image_tokens in processor_config.json)"
            )
        return self.image_token * self.num_image_tokens
