"""msr's conversation templates as HF chat templates (jinja), for an exported model's processor.

`processor.apply_chat_template(messages, add_generation_prompt=True)` renders exactly msr's
`Template.prompt(question)` for one user turn with an image, and a whole conversation as
`Template.render` does. Content is a string or HF's list of parts ({"type": "image"}, {"type":
"text", "text": …}); a turn with an image becomes "<image>\\n" + its text, stripped (LLaVA's rule).
A leading system message replaces the model's system prompt.
"""

from __future__ import annotations

import json

from msr.data.templates import CHATML_EOT, IMAGE_TOKEN, VICUNA_SYSTEM, Template

EXPORTABLE = ("vicuna_v1", "chatml")

_TEXT = (
    "{%- macro text(m) -%}"
    "{%- if m.content is string -%}"
    "{%- set image = IMAGE in m.content -%}{%- set body = m.content | replace(IMAGE, '') -%}"
    "{%- else -%}"
    "{%- set ns = namespace(image=false, body='') -%}"
    "{%- for part in m.content -%}"
    "{%- if part.type == 'image' -%}{%- set ns.image = true -%}"
    "{%- elif part.type == 'text' -%}{%- set ns.body = ns.body ~ part.text -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set image = ns.image -%}{%- set body = ns.body -%}"
    "{%- endif -%}"
    "{%- if image -%}{{ IMAGE ~ SEP ~ (body | trim) }}{%- else -%}{{ body }}{%- endif -%}"
    "{%- endmacro -%}"
)

_SYSTEM = (
    "{%- set ns2 = namespace(system=SYSTEM, start=0) -%}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set ns2.system = messages[0].content if messages[0].content is string "
    "else messages[0].content[0].text -%}{%- set ns2.start = 1 -%}"
    "{%- endif -%}"
)

_BODY = {
    # "<system> USER: <image>\nQ ASSISTANT: A</s>USER: … ASSISTANT:"
    "vicuna_v1": (
        "{{- ns2.system ~ ' ' -}}"
        "{%- for m in messages[ns2.start:] -%}"
        "{%- if m.role == 'user' -%}{{- 'USER: ' ~ text(m) ~ ' ASSISTANT:' -}}"
        "{%- elif m.role == 'assistant' -%}{{- ' ' ~ text(m) ~ EOT -}}{%- endif -%}"
        "{%- endfor -%}"
    ),
    # "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<image>\nQ<|im_end|>\n<|im_start|>assistant\n"
    "chatml": (
        "{%- if ns2.system is not none -%}"
        "{{- '<|im_start|>system' ~ SEP ~ ns2.system ~ EOT ~ SEP -}}{%- endif -%}"
        "{%- for m in messages[ns2.start:] -%}"
        "{%- if m.role == 'user' -%}"
        "{{- '<|im_start|>user' ~ SEP ~ text(m) ~ EOT ~ SEP ~ '<|im_start|>assistant' ~ SEP -}}"
        "{%- elif m.role == 'assistant' -%}{{- text(m) ~ EOT ~ SEP -}}{%- endif -%}"
        "{%- endfor -%}"
    ),
}


def chat_template(template: Template) -> str:
    """The jinja chat template that renders as `template` does; ValueError for a template this
    cannot express (stage 1's `plain`; the tokenizer's own `chat_template`, whose jinja may not
    take HF's content parts)."""
    if template.name not in _BODY:
        raise ValueError(
            f"template {template.name!r} cannot be exported as a chat template; exportable: "
            f"{', '.join(EXPORTABLE)}"
        )
    system = template.system
    if template.name == "vicuna_v1" and system is None:
        system = VICUNA_SYSTEM
    eot = CHATML_EOT if template.name == "chatml" else template.eot
    head = (
        f"{{%- set IMAGE = {json.dumps(IMAGE_TOKEN)} -%}}{{%- set SEP = {json.dumps(chr(10))} -%}}"
        f"{{%- set EOT = {json.dumps(eot)} -%}}{{%- set SYSTEM = {json.dumps(system)} -%}}"
    )
    return head.replace("= null", "= none") + _TEXT + _SYSTEM + _BODY[template.name]
