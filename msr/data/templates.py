"""Conversation templates: `plain` (stage 1), `vicuna_v1` (LLaVA-1.5), `chatml` (Qwen2.5).

`render` turns a conversation into the training text and the character spans the loss supervises
(each assistant answer plus its end-of-turn marker); `prompt` builds the evaluation prompt. The
strings follow LLaVA's `conversation.py` (https://github.com/haotian-liu/LLaVA) and Qwen2.5's chat
template exactly; see ../FORMATS in the design notes for the layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

IMAGE_TOKEN = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TEMPLATES = ("plain", "vicuna_v1", "chatml")


class TemplateError(ValueError):
    """A conversation that does not fit the template (the sample key is added by the caller)."""


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: tuple[tuple[int, int], ...]  # [start, end) character ranges that are supervised


def _move_image_first(text: str) -> str:
    """LLaVA's rule: a turn that holds `<image>` becomes "<image>\\n" + the rest, stripped."""
    if IMAGE_TOKEN not in text:
        return text
    return IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()


def render(turns: Sequence[tuple[str, str]], template: str, system: str | None = None) -> Rendered:
    """Training text of a conversation ((role, text), ... alternating human, gpt). The spans start
    where the evaluation prompt ends, so what is supervised is exactly what generation produces."""
    if (
        len(turns) < 2
        or len(turns) % 2
        or any(role != ("human", "gpt")[i % 2] for i, (role, _) in enumerate(turns))
    ):
        raise TemplateError(f"cannot split into (human, gpt) rounds: roles {[r for r, _ in turns]}")
    if template == "plain":
        if len(turns) != 2:
            raise TemplateError(
                f"template 'plain' takes one (human, gpt) pair, got {len(turns) // 2} rounds"
            )
        # stage 1 drops the instruction: "<image>" + caption + "\n", caption and "\n" supervised
        has_image = IMAGE_TOKEN in turns[0][1]
        head = IMAGE_TOKEN if has_image else ""
        answer = turns[1][1] + "\n"
        return Rendered(head + answer, ((len(head), len(head) + len(answer)),))
    if template == "vicuna_v1":
        text, spans = (system if system is not None else VICUNA_SYSTEM) + " ", []
        for i in range(0, len(turns), 2):
            # generation starts right after "ASSISTANT:" (the eval prompt's end), so the space that
            # precedes the answer is supervised too, whether or not the tokenizer merges it
            text += "USER: " + _move_image_first(turns[i][1]) + " ASSISTANT:"
            start = len(text)
            text += " " + turns[i + 1][1] + "</s>"
            spans.append((start, len(text)))
        return Rendered(text, tuple(spans))
    if template == "chatml":
        sys_text = system if system is not None else QWEN_SYSTEM
        text, spans = f"<|im_start|>system\n{sys_text}<|im_end|>\n", []
        for i in range(0, len(turns), 2):
            text += f"<|im_start|>user\n{_move_image_first(turns[i][1])}<|im_end|>\n<|im_start|>assistant\n"
            start = len(text)
            text += turns[i + 1][1] + "<|im_end|>"
            spans.append((start, len(text)))
            text += "\n"
        return Rendered(text, tuple(spans))
    raise TemplateError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")


def prompt(question: str, template: str, has_image: bool = True, system: str | None = None) -> str:
    """Generation prompt for one question, as LLaVA's evaluation builds it (no trailing space)."""
    text = f"{IMAGE_TOKEN}\n{question}" if has_image else question
    if template == "plain":
        return (IMAGE_TOKEN if has_image else "") + question
    if template == "vicuna_v1":
        return (system if system is not None else VICUNA_SYSTEM) + f" USER: {text} ASSISTANT:"
    if template == "chatml":
        sys_text = system if system is not None else QWEN_SYSTEM
        return f"<|im_start|>system\n{sys_text}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    raise TemplateError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")


def stop_strings(template: str) -> tuple[str, ...]:
    """Strings that end an assistant turn."""
    return {"plain": ("\n",), "vicuna_v1": ("</s>",), "chatml": ("<|im_end|>",)}[template]
