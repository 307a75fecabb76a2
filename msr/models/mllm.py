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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from msr.data.templates import Template
from msr.models.llm import load_causal_lm, load_template, load_tokenizer
from msr.models.loss import lm_loss
from msr.models.vision import DTYPES, VisionBackbone, load_vision
from msr.projectors import Projector
from msr.train import checkpoint as ckpt
from msr.utils.io import atomic_write_json

CONFIG = "mllm.json"
LLM_DIR = "llm"
HF_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class MLLMConfig:
    """What puts a saved model back together (the json beside its weights)."""

    vision: dict[str, Any]  # model, revision, feature_layer, select, image_size, aspect, dtype
    llm: dict[str, Any]  # the base LLM it was trained from: model, revision, gguf_file
    template: str
    system: str | None
    max_length: int
    projector: dict[str, Any]  # msr.train.checkpoint.projector_config


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
            projector = ckpt.build_from_config(self.config.projector)
            projector.load_state_dict(projector_state)
        ckpt.save_projector(tmp, projector, self.config.projector["options"])
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
        raw = ckpt.read_json(directory / CONFIG, fix)
        try:
            config = MLLMConfig(**raw)
        except TypeError as err:
            raise ckpt.CheckpointError(f"{directory / CONFIG} is damaged ({err}); {fix}") from None
        backbone = load_vision(**config.vision) if vision else None
        try:
            llm = load_causal_lm(str(directory / LLM_DIR), dtype=dtype)
            tokenizer = load_tokenizer(str(directory / LLM_DIR))
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ckpt.CheckpointError(
                f"the LLM in {directory / LLM_DIR} cannot be loaded ({first}); {fix}"
            ) from None
        template = load_template(config.template, tokenizer, str(directory), config.system)
        projector = ckpt.load_projector(directory, fix=fix).to(DTYPES[dtype])
        model = cls(llm, projector, backbone, tokenizer=tokenizer, template=template, config=config)
        model.fingerprint = files_fingerprint(directory, backbone)
        return model.to(device).eval()


def files_fingerprint(directory: Path, vision: VisionBackbone | None) -> str:
    """sha256 over the saved weights and configs, and the vision backbone's identity."""
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
    if vision is not None:
        h.update(vision.fingerprint()["id"].encode())
    return h.hexdigest()[:16]
