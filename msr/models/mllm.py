"""The multimodal LLM: (cached features | a live vision backbone) → projector → the LLM's input
embeddings, with its tokenizer and template. It owns its files (nanoVLM's habit:
https://github.com/huggingface/nanoVLM): `save_pretrained(dir)` writes the LLM (`llm/`, HF format,
with the tokenizer), the projector (`projector.safetensors` + `projector.json`) and `mllm.json` —
the backbone ids, feature layer, template and projector — and `from_pretrained(dir)` reads them
back. Nothing else writes or parses that json.

The batch marks M positions per image sample (`image_mask`); the projected tokens of the batch's
images, in order, replace the embeddings at exactly those positions.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from msr.config import Params
from msr.data.processor import PromptProcessor
from msr.data.templates import Template
from msr.models.llm import LLMBackbone, TemplateMismatch
from msr.models.loss import lm_loss
from msr.models.vision import DTYPES, VisionBackbone, describe_vision, load_vision
from msr.projectors import Projector, create_projector
from msr.projectors import files as pfiles
from msr.utils import reading
from msr.utils.io import atomic_write_json

CONFIG = "mllm.json"
LLM_DIR = "llm"
HF_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class VisionRef:
    """The vision backbone a model reads features from: `load_vision(**asdict(ref))`."""

    model: str
    revision: str | None = None
    feature_layer: int = -2
    select: str = "patch"
    image_size: int | None = None
    aspect: str = "pad"
    dtype: str = "fp32"
    final_norm: bool = False


@dataclass(frozen=True)
class LLMRef:
    """The base LLM a model was trained from (its weights are the model's own `llm/`)."""

    model: str
    revision: str | None = None
    gguf_file: str | None = None


@dataclass(frozen=True)
class MLLMConfig:
    """What puts a saved model back together (`mllm.json`, beside its weights)."""

    vision: VisionRef
    llm: LLMRef
    template: str
    system: str | None
    max_length: int
    projector: dict[str, Any]  # msr.projectors.files.projector_config: the projector's own json

    @classmethod
    def from_params(
        cls, params: Params, projector: Projector, options: dict[str, Any], template: str
    ) -> MLLMConfig:
        v, m = params.vision, params.llm
        return cls(
            vision=VisionRef(v.model, **v.backbone_options),
            llm=LLMRef(m.model, m.revision, m.gguf_file),
            template=template,
            system=m.system,
            max_length=m.max_length,
            projector=pfiles.projector_config(projector, options),
        )

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MLLMConfig:
        """TypeError or KeyError when `raw` is not such a config."""
        return cls(**{**raw, "vision": VisionRef(**raw["vision"]), "llm": LLMRef(**raw["llm"])})


class MLLM(nn.Module):
    """projector + LLM (+ an optional frozen vision backbone for raw images)."""

    def __init__(
        self,
        llm: PreTrainedModel,
        projector: Projector,
        vision: VisionBackbone | None = None,
        *,
        tokenizer: Any = None,
        template: Template | None = None,
        config: MLLMConfig | None = None,
    ) -> None:
        super().__init__()
        self.llm, self.projector, self.vision = llm, projector, vision
        self.tokenizer, self.template, self.config = tokenizer, template, config
        self.fingerprint = ""  # set by from_pretrained: identifies the saved files
        c = llm.get_input_embeddings().embedding_dim
        if projector.llm_dim != c:
            raise ValueError(
                f"projector outputs width {projector.llm_dim}, but the LLM's embeddings are {c} wide"
            )

    @property
    def num_image_tokens(self) -> int:
        return self.projector.num_queries

    @property
    def processor(self) -> PromptProcessor:
        """What turns a conversation or a question into this model's inputs (training, eval)."""
        if self.tokenizer is None or self.template is None:
            raise ValueError("the model has no tokenizer or template: load it with from_pretrained")
        max_length = self.config.max_length if self.config is not None else 2**31 - 1
        return PromptProcessor(self.tokenizer, self.template, self.num_image_tokens, max_length)

    def image_tokens(self, features: Tensor) -> Tensor:
        """(I, N, d) vision features -> (I, M, c) LLM tokens."""
        param = next(self.projector.parameters())
        return self.projector(features.to(param.dtype))

    def encode_images(self, pixels: Tensor) -> Tensor:
        """uint8 images (I, 3, S, S) -> (I, N, d) features, with the live backbone."""
        if self.vision is None:
            raise ValueError(
                "this model has no vision backbone: pass cached features, or load it with one"
            )
        return self.vision(pixels)

    def _blank_image_term(self) -> Tensor | None:
        """In training, 0 × the projector's output on one blank image, else None: a batch without
        images still reaches the projector, so a stage with the LLM frozen has a loss to
        differentiate and every rank's gradients cover the same weights (LLaVA gives text-only
        samples a zero image for the same reason: https://github.com/haotian-liu/LLaVA, train.py)."""
        param = next(self.projector.parameters())
        if not (self.training and torch.is_grad_enabled() and param.requires_grad):
            return None
        h, w = self.projector.grid or (1, 1)
        blank = param.new_zeros(1, h * w, self.projector.input_dim)  # (1, N, d)
        return self.projector(blank).sum() * 0.0

    def embed(self, input_ids: Tensor, image_mask: Tensor, features: Tensor | None) -> Tensor:
        """(B, T) ids, (B, T) mask, (I, N, d) features -> (B, T, c) input embeddings."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, T, c)
        positions = int(image_mask.sum())
        if features is None or features.numel() == 0:
            if positions:
                raise ValueError(f"{positions} image positions in the batch but no image features")
            blank = self._blank_image_term()
            return embeds if blank is None else embeds + blank.to(embeds.dtype)
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
        """Without labels: the LLM's output (logits at every position). With labels: the loss
        alone, its logits computed only where a token is labelled (msr.models.loss)."""
        embeds = self.embed(input_ids, image_mask, features)
        if labels is not None:
            return CausalLMOutputWithPast(loss=lm_loss(self.llm, embeds, attention_mask, labels))
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)

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

    # -- files -------------------------------------------------------------------------------

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        dtype: str = "bf16",
        llm_state: dict[str, Tensor] | None = None,
        projector_state: dict[str, Tensor] | None = None,
    ) -> None:
        """Write the model atomically (a temp directory renamed into place). `llm_state` and
        `projector_state` are full state dicts to write instead of the modules' own (ZeRO-3 ranks
        hold shards; the caller gathers them)."""
        if self.config is None or self.tokenizer is None:
            raise ValueError("save_pretrained needs the model's config and tokenizer")
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = llm_state if llm_state is not None else self.llm.state_dict()
        cast = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
        self.llm.save_pretrained(
            tmp / LLM_DIR, state_dict=cast, max_shard_size="5GB", safe_serialization=True
        )
        cfg_path = tmp / LLM_DIR / "config.json"
        llm_config = json.loads(cfg_path.read_text())
        llm_config["dtype"] = HF_DTYPES[dtype]
        cfg_path.write_text(json.dumps(llm_config, indent=2))
        self.tokenizer.save_pretrained(tmp / LLM_DIR)
        projector = self.projector
        if projector_state is not None:
            projector = pfiles.build_from_config(self.config.projector)
            projector.load_state_dict(projector_state)
        pfiles.save_projector(tmp, projector, self.config.projector["options"])
        atomic_write_json(tmp / CONFIG, asdict(self.config))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        dtype: str = "fp32",
        device: str | torch.device = "cpu",
        vision: bool = True,
    ) -> MLLM:
        """The model `save_pretrained` wrote, with its live vision backbone (`vision=True`)."""
        directory = Path(directory)
        if not (directory / CONFIG).exists():
            raise FileNotFoundError(
                f"no trained model in {directory} ({CONFIG} missing): run `msr finetune` first"
            )
        fix = "rerun stage 2 (`msr finetune`) to rebuild it"
        raw = reading.read_json(directory / CONFIG, fix)
        try:
            config = MLLMConfig.from_json(raw)
        except (TypeError, KeyError) as err:
            raise reading.CheckpointError(
                f"{directory / CONFIG} is damaged ({err}); {fix}"
            ) from None
        backbone = load_vision(**asdict(config.vision)) if vision else None
        try:
            lm = LLMBackbone.load(str(directory / LLM_DIR), template=config.template,
                                  system=config.system, dtype=dtype)  # fmt: skip
        except TemplateMismatch:
            raise
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise reading.CheckpointError(
                f"the LLM in {directory / LLM_DIR} cannot be loaded ({first}); {fix}"
            ) from None
        llm, tokenizer, template = lm.model, lm.tokenizer, lm.template
        projector = pfiles.load_projector(directory, fix=fix).to(DTYPES[dtype])
        model = cls(llm, projector, backbone, tokenizer=tokenizer, template=template, config=config)
        vision_id = (
            backbone.fingerprint()["id"]
            if backbone is not None
            else describe_vision(**asdict(config.vision))[0]["id"]
        )
        model.fingerprint = files_fingerprint(directory, vision_id)
        return model.to(device).eval()

    @classmethod
    def from_params(
        cls,
        params: Params,
        *,
        vision_width: int,
        grid: tuple[int, int],
        dtype: str,
        attention: str = "sdpa",
        template: str | None = None,
        stage1: Path | None = None,
        loading: AbstractContextManager[Any] | None = None,
    ) -> tuple[MLLM, dict[str, Any]]:
        """The model the params describe, for cached features `vision_width` wide on `grid` (no
        live backbone): the base LLM in `dtype` (loaded inside `loading`, e.g. DeepSpeed's
        `zero.Init`), and a new projector — or, with `stage1`, the projector saved there, which
        must be the one the params describe. Returns the model and the projector's options."""
        m = params.llm
        name = template or m.template
        lm = LLMBackbone.load(m.model, template=name, revision=m.revision, gguf_file=m.gguf_file,
                              system=m.system, dtype=dtype, attention=attention, loading=loading)  # fmt: skip
        projector, options = create_projector(params.projector, vision_width, lm.hidden_size, grid)
        if stage1 is not None:
            expected = pfiles.projector_config(projector, options)
            saved = pfiles.load_projector(stage1, expected, fix="rerun stage 1 (`msr pretrain`)")
            projector.load_state_dict(saved.state_dict())
        config = MLLMConfig.from_params(params, projector, options, name)
        model = cls(
            lm.model, projector, tokenizer=lm.tokenizer, template=lm.template, config=config
        )
        return model, options

    @classmethod
    def from_stage1(
        cls, params: Params, stage1: Path, **kwargs: Any
    ) -> tuple[MLLM, dict[str, Any]]:
        """`from_params` with the stage-1 projector saved in `stage1` (what stage 2 starts from)."""
        return cls.from_params(params, stage1=stage1, **kwargs)


def files_fingerprint(directory: Path, vision_id: str) -> str:
    """sha256 over the saved weights and configs, and the vision backbone's identity (its
    fingerprint id: the same whether or not the backbone is loaded)."""
    h = hashlib.sha256()
    files = sorted(
        [
            *directory.glob("*.safetensors"),
            *directory.glob("*.json"),
            *(directory / LLM_DIR).glob("*.safetensors"),
            *(directory / LLM_DIR).glob("*.json"),
        ]
    )
    for f in files:
        if f.name == "skips.json":
            continue  # the training run's skip report, not part of the model
        h.update(f.relative_to(directory).as_posix().encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(vision_id.encode())
    return h.hexdigest()[:16]
