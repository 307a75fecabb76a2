"""Conversation templates bound to a tokenizer: `plain` (stage 1), `vicuna_v1` (LLaVA-1.5),
`chatml` (Qwen2.5, SmolLM2) and `chat_template` (the tokenizer's own jinja chat template).

`Template.render` turns a conversation into the training text and the character spans the loss
supervises (each assistant answer plus its end-of-turn token); `Template.prompt` builds the
evaluation prompt, which is exactly the rendered text up to where an answer starts. `vicuna_v1`
ends each answer with the tokenizer's EOS token; `chatml` has a system block only when a system
prompt is given. The strings follow LLaVA's `conversation.py` (https://github.com/haotian-liu/LLaVA);
see FORMATS in the design notes. `msr.models.llm.check_template` proves at load that the spans
tokenize to exactly the answers and the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IMAGE_TOKEN = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("plain", "vicuna_v1", "chatml", "chat_template")
CHATML_EOT = "<|im_end|>"


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


def _check_rounds(turns: Sequence[tuple[str, str]]) -> None:
    if (
        len(turns) < 2
        or len(turns) % 2
        or any(role != ("human", "gpt")[i % 2] for i, (role, _) in enumerate(turns))
    ):
        raise TemplateError(f"cannot split into (human, gpt) rounds: roles {[r for r, _ in turns]}")


@dataclass(frozen=True)
class Template:
    """One conversation format with its end-of-turn token `eot` (what an answer ends with and what
    generation stops on)."""

    name: str
    eot: str
    system: str | None = None
    tokenizer: Any = field(default=None, repr=False, compare=False)  # chat_template only

    def render(self, turns: Sequence[tuple[str, str]]) -> Rendered:
        """Training text of a conversation ((role, text), ... alternating human, gpt). The spans start
        where the evaluation prompt ends, so what is supervised is exactly what generation produces."""
        _check_rounds(turns)
        if self.name == "plain":
            if len(turns) != 2:
                raise TemplateError(
                    f"template 'plain' takes one (human, gpt) pair, got {len(turns) // 2} rounds"
                )
            # stage 1 drops the instruction: "<image>" + caption + "\n", caption and "\n" supervised
            head = IMAGE_TOKEN if IMAGE_TOKEN in turns[0][1] else ""
            answer = turns[1][1] + self.eot
            return Rendered(head + answer, ((len(head), len(head) + len(answer)),))
        if self.name == "chat_template":
            return self._render_chat(turns)
        text, spans = self._head(), []
        for i in range(0, len(turns), 2):
            text += self._user(_move_image_first(turns[i][1]))
            start = len(text)
            text += self._answer(turns[i + 1][1])
            spans.append((start, len(text)))
            text += "\n" if self.name == "chatml" else ""
        return Rendered(text, tuple(spans))

    def prompt(self, question: str, has_image: bool = True) -> str:
        """Generation prompt for one question, as LLaVA's evaluation builds it (no trailing space)."""
        if self.name == "plain":
            return (IMAGE_TOKEN if has_image else "") + question
        text = f"{IMAGE_TOKEN}\n{question}" if has_image else question
        if self.name == "chat_template":
            return self._apply(self._messages([("human", text)]), generation=True)
        return self._head() + self._user(text)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end an assistant turn."""
        return (self.eot,) if self.eot else ()

    # -- the fixed formats -------------------------------------------------------------------

    def _head(self) -> str:
        if self.name == "vicuna_v1":
            return (self.system if self.system is not None else VICUNA_SYSTEM) + " "
        return f"<|im_start|>system\n{self.system}<|im_end|>\n" if self.system is not None else ""

    def _user(self, text: str) -> str:
        if self.name == "vicuna_v1":
            return f"USER: {text} ASSISTANT:"
        return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"

    def _answer(self, text: str) -> str:
        # vicuna: generation starts right after "ASSISTANT:" (the prompt's end), so the space that
        # precedes the answer is supervised too, whether or not the tokenizer merges it
        return (" " + text if self.name == "vicuna_v1" else text) + self.eot

    # -- the tokenizer's own chat template ---------------------------------------------------

    def _messages(self, turns: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        roles = {"human": "user", "gpt": "assistant"}
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return system + [{"role": roles[r], "content": t} for r, t in turns]

    def _apply(self, messages: list[dict[str, str]], generation: bool = False) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
        )

    def _render_chat(self, turns: Sequence[tuple[str, str]]) -> Rendered:
        """Spans by incremental rendering: round i's answer is what the conversation up to it adds
        to the generation prompt of its question, trailing whitespace not supervised."""
        turns = [(r, _move_image_first(t) if r == "human" else t) for r, t in turns]
        text = self._apply(self._messages(turns))
        spans = []
        for i in range(0, len(turns), 2):
            prompt = self._apply(self._messages(turns[: i + 1]), generation=True)
            done = self._apply(self._messages(turns[: i + 2]))
            if not (done.startswith(prompt) and text.startswith(done)):
                raise TemplateError(
                    "the tokenizer's chat template does not render a conversation as its prefixes "
                    f"(round {i // 2 + 1}); use template 'chatml' or 'vicuna_v1'"
                )
            spans.append((len(prompt), len(done.rstrip())))
        return Rendered(text, tuple(spans))


def make_template(name: str, tokenizer: Any = None, system: str | None = None) -> Template:
    """The template `name` for a tokenizer: vicuna_v1 ends turns with its EOS token, chatml with
    <|im_end|>, chat_template renders with its jinja template."""
    if name == "plain":
        return Template("plain", "\n")
    if name == "chatml":
        return Template("chatml", CHATML_EOT, system)
    if tokenizer is None:
        raise TemplateError(f"template {name!r} needs the tokenizer (its EOS or chat template)")
    if name == "vicuna_v1":
        if tokenizer.eos_token is None:
            raise TemplateError(
                "template 'vicuna_v1' ends turns with EOS, but the tokenizer has none"
            )
        return Template("vicuna_v1", str(tokenizer.eos_token), system)
    if name == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "template 'chat_template': the tokenizer has no chat template; use 'chatml' or 'vicuna_v1'"
            )
        return Template("chat_template", str(tokenizer.eos_token), system, tokenizer)
    raise TemplateError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")
