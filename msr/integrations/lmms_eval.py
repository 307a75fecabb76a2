"""msr as an lmms-eval model: `python -m lmms_eval --model msr --model_args pretrained=DIR`.

Registered through lmms-eval's `lmms_eval.models` entry point (pyproject.toml), so lmms-eval's own
repository is not edited (https://github.com/EvolvingLMMs-Lab/lmms-eval, its plugin models). The
model answers as `msr eval` does: the model's template builds the prompt (`<image>\\n` + the task's
text), generation is greedy on left-padded batches, the images are prepared by msr. Requests are
grouped by their generation arguments and run longest prompt first; results come back in request
order. Several processes: lmms-eval's launch (`accelerate launch -m lmms_eval ...` or torchrun)
gives each its rank; each process uses its LOCAL_RANK's device.

Install: `pip install -e ".[lmms]"`.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image

from msr.eval.benchmarks import ImageRef, Question
from msr.eval.generate import GenerationArgs, Generator
from msr.models.mllm import MLLM
from msr.runtime import device_for

DEFAULT_MAX_NEW_TOKENS = 128


def manifests() -> list[ModelManifest]:
    """The entry point's payload: the model id `msr` and its class."""
    return [ModelManifest(model_id="msr", simple_class_path=f"{__name__}.MsrLMM")]


def batches(
    contexts: Sequence[str], kwargs: Sequence[dict[str, Any]], size: int
) -> list[tuple[dict[str, Any], list[int]]]:
    """Request indices in batches of at most `size`: one group per distinct generation arguments,
    longest context first within a group (lmms-eval's own order), each batch with its arguments."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, kw in enumerate(kwargs):
        groups[json.dumps(kw, sort_keys=True, default=str)].append(i)
    out = []
    for members in groups.values():
        members.sort(key=lambda i: (-len(contexts[i]), i))
        for start in range(0, len(members), size):
            out.append((kwargs[members[0]], members[start : start + size]))
    return out


def _image_ref(visuals: Sequence[Any]) -> ImageRef | None:
    """One image of a request as msr reads it (PNG bytes: the same pixels); None for text only."""
    if not visuals:
        return None
    if len(visuals) > 1:
        raise ValueError(
            f"msr's models take one image per question, this request has {len(visuals)}"
        )
    visual = visuals[0]
    if isinstance(visual, str | Path):
        return ImageRef(Path(visual))
    if not isinstance(visual, Image.Image):
        raise ValueError(f"msr's lmms-eval model takes images, got {type(visual).__name__}")
    buffer = io.BytesIO()
    visual.save(buffer, format="PNG")
    return ImageRef(data=buffer.getvalue())


class MsrLMM(lmms):
    """An msr model folder (`paths.finetune`) as an lmms-eval model."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        dtype: str = "bf16",
        batch_size: int | str = 8,
        device: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(
                f"unknown model_args {sorted(kwargs)}; msr takes pretrained, dtype, batch_size, device"
            )
        self._device = device_for(device)
        self.model = MLLM.from_pretrained(pretrained, dtype=dtype, device=self._device)
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size={batch_size}; it must be ≥ 1")

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _question(self, i: int, context: str, visuals: Sequence[Any]) -> Question:
        return Question(str(i), i, context, context, _image_ref(visuals))

    def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Any]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return [v for v in (visuals or []) if v is not None]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        args = [r.args for r in requests]
        contexts = [a[0] for a in args]
        gen_kwargs = [dict(a[1]) for a in args]
        out: list[str | None] = [None] * len(requests)
        for kw, idx in batches(contexts, gen_kwargs, self.batch_size):
            if float(kw.get("temperature", 0) or 0) > 0 or kw.get("do_sample"):
                raise ValueError("msr's lmms-eval model decodes greedily: set temperature 0")
            if int(kw.get("num_beams", 1) or 1) != 1:
                raise ValueError("msr's lmms-eval model decodes greedily: set num_beams 1")
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
            generator = Generator(self.model, GenerationArgs(max_new_tokens=max_new))
            questions = [self._question(i, contexts[i], self._visuals(*args[i][2:6])) for i in idx]
            for i, text in zip(idx, generator.answer(questions, len(questions)), strict=True):
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                out[i] = text
        return [o if o is not None else "" for o in out]

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log p(continuation | the prompt of the context, with its image) and whether greedy
        decoding would produce exactly the continuation."""
        model, results = self.model, []
        processor = model.processor
        assert model.tokenizer is not None
        for i, request in enumerate(requests):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if not isinstance(continuation, str):
                continuation = continuation(self.task_dict[task][split][doc_id])
            q = self._question(i, context, self._visuals(doc_to_visual, doc_id, task, split))
            prompt = processor.prompt(q.text, q.image is not None)
            target = model.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not target:
                results.append((0.0, True))
                continue
            ids = torch.tensor([prompt.input_ids + target], device=self.device)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            if prompt.image_start is not None:
                mask[0, prompt.image_start : prompt.image_start + model.num_image_tokens] = True
            features = Generator(model, GenerationArgs()).features([q.image]) if q.image else None
            logits = model(ids, torch.ones_like(ids), mask, features).logits.float()
            n = len(target)
            logp = torch.log_softmax(logits[0, -n - 1 : -1], dim=-1)  # predicts each target token
            wanted = torch.tensor(target, device=self.device)
            score = float(logp.gather(1, wanted[:, None]).sum())
            results.append((score, bool((logp.argmax(-1) == wanted).all())))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "msr's lmms-eval model answers one round per request; multi-round tasks are not supported"
        )
