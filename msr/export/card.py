"""The model card of an exported model: `README.md` with the Hub's YAML metadata, written from the
run — the backbones, the projector and its options, the training recipe (when the params are
given) and the evaluation with its 95 % intervals (when the eval of this very model is given)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from msr.config import Params
from msr.models.mllm import MLLMConfig

USAGE = """```python
from transformers import {model_class}, AutoProcessor
from PIL import Image

model = {model_class}.from_pretrained("{repo}"{remote})
processor = AutoProcessor.from_pretrained("{repo}"{remote}, backend="pil")
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is in the image?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open("image.png"), text=prompt, return_tensors="pt")
out = model.generate(**inputs)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""
MODEL_CLASS = {
    "llava-hf": "LlavaForConditionalGeneration",
    "remote-code": "AutoModelForImageTextToText",
}


RECIPE = ("lr", "epochs", "max_steps", "per_device_batch", "grad_accum", "train_llm",
          "warmup_ratio", "weight_decay", "template", "seed")  # fmt: skip


def _base_model(ref: str) -> str | None:
    """A hub id (owner/name) is a base model the Hub can link; a local path is not."""
    parts = ref.split("/")
    return ref if len(parts) == 2 and not Path(ref).exists() and not ref.startswith(".") else None


def _recipe(params: Params) -> list[str]:
    lines = []
    for stage in ("pretrain", "finetune"):
        s = getattr(params, stage)
        raw = s.model_dump(mode="json")
        keep = {k: raw[k] for k in RECIPE if k in raw and raw[k] is not None}
        lines.append(f"- **{stage}**: " + ", ".join(f"{k} {v}" for k, v in keep.items()))
    d = params.data
    lines.append(f"- **data**: pretrain `{d.pretrain_json}`, instruct `{d.instruct_json}`")
    return lines


def _results(evaluation: dict[str, Any]) -> list[str]:
    rows = [
        "| benchmark | metric | units | score | 95 % interval |",
        "| :--- | :--- | ---: | ---: | :--- |",
    ]
    for name, iv in evaluation.get("intervals", {}).items():
        rows.append(
            f"| {name} | {iv['metric']} | {iv['n']} | {iv['value']:.1f} | "
            f"[{iv['lo']:.1f}, {iv['hi']:.1f}] |"
        )
    headline = evaluation.get("headline", {})
    if headline:
        rows += ["", "Headline scores (each benchmark's official metric): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in headline.items())]  # fmt: skip
    return rows


def model_card(
    config: MLLMConfig,
    fmt: str,
    *,
    params: Params | None = None,
    evaluation: dict[str, Any] | None = None,
    repo: str = "path/to/this/folder",
) -> str:
    p = config.projector
    bases = [b for b in (_base_model(config.vision.model), _base_model(config.llm.model)) if b]
    meta: dict[str, Any] = {
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["msr", "multimodal", "llava", f"projector-{p['name']}", "image-text-to-text"],
    }
    if bases:
        meta["base_model"] = bases
    options = json.dumps(p["options"], sort_keys=True)
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {p['name']} (M = {p['num_queries']}), trained with msr",
        "",
        "A LLaVA-1.5-style multimodal LLM: a frozen vision tower, a projector that turns its "
        f"patch features into M = {p['num_queries']} LLM tokens, and an LLM.",
        "",
        f"- **vision tower**: `{config.vision.model}` (hidden state {config.vision.feature_layer}, "
        f"{config.vision.select}, {config.vision.image_size or 'native'} px, aspect "
        f"{config.vision.aspect})",
        f"- **projector**: `{p['name']}`, {p['params']:,} parameters, options `{options}`",
        f"- **LLM**: `{config.llm.model}`"
        + (f" (`{config.llm.gguf_file}`)" if config.llm.gguf_file else ""),
        f"- **prompt template**: `{config.template}` (the processor's chat template renders it)",
        f"- **format**: `{fmt}`"
        + (
            " (code in this folder: load with `trust_remote_code=True`)"
            if fmt == "remote-code"
            else ""
        ),
        "",
        "## Use",
        "",
        USAGE.format(
            model_class=MODEL_CLASS[fmt],
            repo=repo,
            remote=", trust_remote_code=True" if fmt == "remote-code" else "",
        ),
        "",
        "Greedy decoding as in `generation_config.json` gives the answers msr gives. The image "
        'processor pads to a square with the mean colour, as LLaVA-1.5; `backend="pil"` keeps '
        "msr's exact resizing (torchvision's bicubic differs by a few intensity levels).",
    ]
    if params is not None:
        lines += ["", "## Training", "", *_recipe(params)]
    if evaluation is not None:
        lines += ["", "## Evaluation", "", *_results(evaluation)]
    lines += [
        "",
        "## Citation",
        "",
        "See `CITATION.cff` of msr for how to cite the implementation and the MS-Resampler paper.",
        "",
    ]
    return "\n".join(lines)
