"""Typed params: one pydantic model per params.yaml section, unknown keys rejected.

`load_params(path, overrides)` is the one entry point: it reads the YAML, applies `key.path=value`
overrides (values parsed as YAML), validates, and raises `ParamsError` (a ValueError) naming the key
path and the accepted keys or type on any mistake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from msr.data.images import MAX_ASPECT, MAX_PIXELS, ImageLimits

DType = Literal["fp32", "bf16", "fp16"]
Template = Literal["plain", "vicuna_v1", "chatml", "chat_template"]
Launcher = Literal["none", "torchrun", "deepspeed"]
Category = Literal["local_attribute", "glyph", "counting", "spatial", "existence", "global"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Where each stage writes; dvc.yaml names the same paths through `${paths.*}`."""

    data: str = "data"
    models: str = "data/models"
    synth: str = "data/synth"
    features: str = "data/features"
    pretrain: str = "data/pretrain"
    finetune: str = "data/finetune"
    eval: str = "data/eval"
    probe: str = "data/probe"
    reports: str = "reports"


class Synth(Section):
    """The synthetic dataset: scene content, question categories and sizes (`msr synth`)."""

    seed: int = 0
    pretrain_images: int = Field(gt=0)
    instruct_images: int = Field(ge=0)  # 0 with text records: a text-only instruct set
    text_only: int = Field(0, ge=0)  # text-only instruct records, like ShareGPT in mix665k
    # text-only multiple-choice records: a scene in words, a question about it and its options,
    # answered with the letter (reading an answer off the options, apart from seeing)
    text_mc: int = Field(0, ge=0)
    # text-only short-answer records: the same scenes in words and questions, answered in a word
    # as the image questions are (checking a scene, e.g. whether a colour is in it, apart from seeing)
    text_qa: int = Field(0, ge=0)
    eval_images: int = Field(gt=0)  # scenes per evaluation set
    turns: tuple[int, int] = (1, 3)  # question turns per instruct record (min, max)
    # what instruct records ask about; each listing is one entry of the shuffle a record
    # draws its turns from, so a category listed n times is asked more often
    categories: list[Category] = Field(min_length=1)
    kinds: list[Literal["circle", "square", "triangle", "star"]] = Field(min_length=1)
    colors: list[str] = Field(min_length=2)
    backgrounds: list[str] = Field(min_length=1)
    min_objects: int = Field(1, gt=0)  # shapes per training scene: min_objects..max_objects
    max_objects: int = Field(3, gt=0)
    # shapes per evaluation scene (min, max); null: as training. Local attribute and counting are
    # asked only where another shape differs in the asked property, so several shapes are needed
    eval_objects: tuple[int, int] | None = None
    # the evaluation sets' own random streams (scenes and questions): a variant of the training
    # data (turns, categories, sizes) is scored on the same questions
    eval_seed: int = 0
    gqa_pairs: int = Field(
        20, gt=0
    )  # synth GQA: minimal pairs per paired type (single questions per other type)
    glyph_size: int = Field(56, ge=0)  # font size in pixels; 0 draws no glyphs
    glyph_prob: float = Field(0.5, ge=0, le=1)
    mc_prob: float = Field(0.25, ge=0, le=1)  # share of training questions asked as multiple choice
    ocr_prob: float = Field(0.5, ge=0, le=1)  # share of glyph questions with an OCR-token line
    # share of multiple-choice questions with a hint line before the question, training and eval
    hint_prob: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> Synth:
        if not self.instruct_images + self.text_only + self.text_mc + self.text_qa:
            raise ValueError(
                "the instruct set is empty: instruct_images, text_only, text_mc and text_qa are all 0"
            )
        if not 1 <= self.turns[0] <= self.turns[1]:
            raise ValueError(f"turns={list(self.turns)} must be (min, max) with 1 ≤ min ≤ max")
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects={self.min_objects} > max_objects={self.max_objects}: "
                "a scene has min_objects..max_objects shapes"
            )
        if self.eval_objects is not None and not 1 <= self.eval_objects[0] <= self.eval_objects[1]:
            raise ValueError(
                f"eval_objects={list(self.eval_objects)} must be (min, max) with 1 ≤ min ≤ max"
            )
        return self


class Data(Section):
    """Training data in LLaVA's formats (json + image root) and how it is cached as features."""

    pretrain_json: (
        str  # LLaVA-Pretrain/blip_laion_cc_sbu_558k.json (or the synthetic pretrain.json)
    )
    pretrain_images: str  # image paths in the json are relative to this
    instruct_json: str  # llava_v1_5_mix665k.json (or the synthetic instruct.json)
    instruct_images: str
    strict: bool = False  # a bad sample is an error instead of a skip-report entry
    max_skip_share: float = Field(
        0.01, ge=0, le=1
    )  # a stage stops when more of its samples are bad
    # an image is checked from its header before it is decoded: the pixels it needs once made
    # square, and its aspect ratio; one that breaks a limit is a named skip
    max_image_pixels: int = Field(MAX_PIXELS, gt=0)
    max_image_aspect: float = Field(MAX_ASPECT, ge=1)
    # image paths in a data json are relative to the image folder; an absolute or `..` path is a
    # named skip unless this allows reading outside it
    images_outside_root: bool = False
    launcher: Launcher = (
        "none"  # `msr features` on num_devices processes (shards split, then merged)
    )
    num_devices: int = Field(1, gt=0)
    shard_mb: int = Field(256, gt=0)
    encode_batch: int = Field(32, gt=0)
    synth: Synth

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.max_image_aspect)


class VisionBuild(Section):
    """Config of a tower built from scratch (the tiny preset): random init, fixed seed."""

    family: Literal["clip", "siglip", "dinov2"] = "clip"
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    patch_size: int = Field(14, gt=0)
    seed: int = 0


class Vision(Section):
    """The frozen vision backbone and which of its features the projector sees. Its width, patch
    size and so the grid come from the backbone itself (msr.models.vision), not from params."""

    model: str  # HF hub id, local path, or pip:PACKAGE/SUBPATH (a directory an installed package ships)
    revision: str | None = None
    source: str | None = (
        None  # an ONNX file `msr models` converts into `model` (small-real's DINOv2)
    )
    feature_layer: int = -2  # HF hidden_states index; −2 = penultimate block, before any final norm
    select: Literal["patch", "cls_patch"] = "patch"
    final_norm: bool = False  # apply the backbone's final LayerNorm to the chosen layer
    image_size: int = Field(336, gt=0)  # the resolution images are resized to
    aspect: Literal["pad", "crop"] = "pad"  # LLaVA-1.5 `image_aspect_ratio`
    dtype: DType = "bf16"
    build: VisionBuild | None = None

    @property
    def backbone_options(self) -> dict[str, Any]:
        """The keyword arguments of msr.models.vision's load_vision / describe_vision."""
        return {
            "revision": self.revision,
            "feature_layer": self.feature_layer,
            "select": self.select,
            "image_size": self.image_size,
            "aspect": self.aspect,
            "dtype": self.dtype,
            "final_norm": self.final_norm,
        }

    @model_validator(mode="after")
    def _one_origin(self) -> Vision:
        if self.build is not None and self.source is not None:
            raise ValueError(
                "vision.build and vision.source are exclusive: build a tower or convert one"
            )
        return self


class LLMBuild(Section):
    """Config of an LLM built from scratch (the tiny preset), with its own trained BPE tokenizer."""

    family: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    seed: int = 0


class LLM(Section):
    """The language model and its conversation template."""

    model: str  # HF hub id, local path, or pip:PACKAGE (a directory an installed package ships)
    revision: str | None = None
    gguf_file: str | None = None  # a GGUF file inside `model`, loaded (dequantised) with gguf_file=
    template: Template = "vicuna_v1"
    system: str | None = None  # the system prompt; None: the template's own (none for chatml)
    max_length: int = Field(2048, gt=0)
    dtype: DType = "bf16"
    build: LLMBuild | None = None


class Projector(Section):
    """Which projector, its token budget M, and per-projector options (checked against its signature)."""

    name: str = "ms_resampler"
    num_queries: int = Field(144, gt=0)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Train(Section):
    """One training stage (stage 1 `pretrain` or stage 2 `finetune`). Global batch =
    per_device_batch × grad_accum × num_devices × nodes.count."""

    lr: float = Field(gt=0)
    projector_lr: float | None = Field(None, gt=0)  # None: `lr` (LLaVA's mm_projector_lr)
    per_device_batch: int = Field(gt=0)
    grad_accum: int = Field(1, gt=0)
    num_devices: int = Field(1, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    train_llm: bool = False
    gradient_checkpointing: bool = False
    # the LLM's attention kernel while training (transformers' attn_implementation): on a CPU
    # eager's plain matmuls beat sdpa's kernel at ~100–150 tokens (small-real: stage 1 ~1.3×,
    # stage 2 ~1.1×; benchmarks/step_kernels.py); evaluation always runs sdpa
    attention: Literal["sdpa", "eager"] = "sdpa"
    launcher: Launcher = "none"
    deepspeed: str | None = None  # path of a DeepSpeed json config (ZeRO stage etc.)
    bf16: bool = True
    seed: int = 0
    save_every: int = Field(500, gt=0)  # optimizer steps between resumable checkpoints
    log_every: int = Field(10, gt=0)
    template: Template | None = None  # None: the LLM's template (stage 1 uses `plain`)
    group_by_modality_length: bool = False
    shuffle_buffer: int = Field(1000, gt=0)
    loader_workers: int = Field(1, ge=0)

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step on one node (× nodes.count on several)."""
        return self.per_device_batch * self.grad_accum * self.num_devices


class CustomEval(Section):
    """A user's eval set (msr.eval.benchmarks.custom): LLaVA's question jsonl, an answer jsonl, the
    image folder, and how to score."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # its folder under paths.eval and report label
    questions: str  # jsonl: question_id, image, text, optional category
    answers: str  # jsonl: question_id, answer (a string or a list of accepted strings)
    images: str  # the folder `image` is relative to
    metric: Literal["vqa_accuracy", "exact_match", "choice"] = "exact_match"


class Eval(Section):
    """Benchmarks to run and how to generate."""

    benchmarks: list[str] = Field(default_factory=list)  # real benchmarks, read from eval.root
    synth: list[str] = Field(default_factory=list)  # synthetic sets, read from paths.synth/eval
    custom: list[CustomEval] = Field(default_factory=list)  # your own sets
    root: str | None = None  # LLaVA's playground/data/eval, for the real benchmarks
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(128, gt=0)
    dtype: DType = "bf16"  # inference dtype of the LLM and projector
    limit: int | None = Field(None, gt=0)  # at most this many questions per benchmark (quick runs)
    reference: str | None = None  # a reports/eval.json to compute the paper's "Avg." against
    launcher: Launcher = (
        "none"  # `msr eval` on num_devices processes (questions split, answers merged)
    )
    num_devices: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> Eval:
        names = [*self.benchmarks, *self.synth, *(c.name for c in self.custom)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"benchmark name(s) {twice} appear more than once (custom names too)")
        return self


class Profile(Section):
    """Efficiency profiling (Table 7): a typical prompt and the timing protocol."""

    text_tokens: int = Field(64, ge=0)  # text tokens of a typical prompt, after the visual ones
    decode_tokens: int = Field(32, gt=0)
    repeats: int = Field(5, gt=0)
    warmup: int = Field(1, ge=0)
    dtype: DType = "bf16"  # of the measured models
    projectors: list[str] = Field(
        default_factory=list
    )  # the comparison; empty: every registered one
    budgets: list[int] = Field(
        default_factory=lambda: [144, 64, 36]
    )  # M of the comparison (mlp keeps N)


class Probe(Section):
    """`msr probe`: what survives a projector, measured without an LLM. Probe scenes (their own
    cached features) → each projector of `grid` at each budget, trained from scratch with a small
    question-conditioned readout → held-out accuracy per question type."""

    scenes: int = Field(1000, gt=0)  # training scenes
    eval_scenes: int = Field(400, gt=0)  # held-out scenes
    objects: tuple[int, int] = (2, 8)  # shapes per scene (min, max)
    seed: int = 0  # the scenes
    # which projectors: `active` (projector.name with its options) or a named grid of
    # msr.probe.grids (`claim`: the paper's multi-scope claim, §4 of docs/measurement.md)
    grid: str = "active"
    budgets: list[int] = Field(default_factory=lambda: [36], min_length=1)  # M; the MLP keeps N
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # training seeds per run
    steps: int = Field(400, gt=0)
    batch: int = Field(32, gt=0)  # images per step
    questions_per_image: int = Field(8, gt=0)  # questions drawn per image and step
    lr: float = Field(1e-3, gt=0)
    width: int = Field(256, gt=0)  # c: the width of the projector's tokens and of the readout
    dtype: Literal["fp32", "bf16"] = "bf16"  # compute dtype (autocast) of training
    # a control that must score at chance: the projector's tokens replaced by noise, or no tokens
    ablation: Literal["none", "noise", "no_tokens"] = "none"

    @model_validator(mode="after")
    def _check(self) -> Probe:
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(
                f"probe.objects={list(self.objects)} must be (min, max), 1 ≤ min ≤ max"
            )
        return self


class BenchScale(Section):
    """One problem size of the projector benchmark."""

    batch: int = Field(gt=0)
    grid: tuple[int, int]
    vision_dim: int = Field(gt=0)
    llm_dim: int = Field(gt=0)
    num_queries: int = Field(gt=0)


class Bench(Section):
    """`msr projectors bench`: every projector, forward and forward+backward, timed side by side."""

    projectors: list[str] = Field(default_factory=list)  # empty: every registered projector
    scales: dict[str, BenchScale]
    dtypes: list[Literal["fp32", "bf16"]] = ["fp32", "bf16"]
    repeats: int = Field(5, gt=0)
    warmup: int = Field(1, ge=0)
    threads: int | None = Field(None, gt=0)


class Nodes(Section):
    """Several machines (docs/gpus.md). Every stage's launcher starts `num_devices` processes on each
    of `count` nodes; checkpoints, features and reports live on a filesystem every node sees.
    torchrun: one agent per node, meeting at master_addr:master_port (c10d rendezvous, ranks in
    the order nodes join). deepspeed: the hostfile lists the nodes; with `ssh` the first node starts
    them all (pdsh), otherwise one launcher per node (SLURM's srun) with its `rank`."""

    count: int = Field(1, gt=0)
    rank: int | None = Field(None, ge=0)  # None: $SLURM_NODEID, $NODE_RANK or $GROUP_RANK
    master_addr: str | None = None  # the first node's address; None: $MASTER_ADDR
    master_port: int = Field(29500, gt=0, lt=65536)
    hostfile: str | None = None  # deepspeed: `host slots=N` per line (MPI style)
    ssh: bool = False  # deepspeed: start every node from this one over passwordless ssh
    job_id: str = Field("msr", pattern=r"^[A-Za-z0-9_.-]+$")  # torchrun's rendezvous id


class Params(Section):
    """The whole params.yaml."""

    paths: Paths = Field(default_factory=Paths)
    data: Data
    vision: Vision
    llm: LLM
    projector: Projector = Field(default_factory=Projector)
    pretrain: Train
    finetune: Train
    eval: Eval = Field(default_factory=Eval)
    profile: Profile = Field(default_factory=Profile)
    probe: Probe = Field(default_factory=Probe)
    bench: Bench
    nodes: Nodes = Field(default_factory=Nodes)

    @model_validator(mode="after")
    def _built_models_live_under_paths_models(self) -> Params:
        made = (("vision", self.vision, "build"), ("vision", self.vision, "source"))
        for name, section, origin in (*made, ("llm", self.llm, "build")):
            expected = f"{self.paths.models}/{name}"
            if getattr(section, origin) is not None and section.model.rstrip("/") != expected:
                raise ValueError(
                    f"{name}.{origin} is set, so {name}.model must be {expected!r} (where the models "
                    f"stage saves it), got {section.model!r}"
                )
        return self


class ParamsError(ValueError):
    """A params file or override that does not fit the schema."""


def parse_params(raw: Mapping[str, Any], source: str = "params") -> Params:
    """Validate a params mapping; ParamsError names every offending key path."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"{source}: " + "; ".join(_describe(e) for e in err.errors())) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML (`[2, 6, 24]`, `1e-3`)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {item!r} must look like key.path=value")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ParamsError(f"override {item!r}: value is not valid YAML: {err}") from None
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(
                f"override {item!r}: {'.'.join(parts[: depth + 1])} is a value, not a section"
            )
        node = child
    node[parts[-1]] = value


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        return f"unknown key {where!r}; allowed keys here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"missing key {where!r}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    return (
        f"{where}: {msg} (got {error.get('input')!r})"
        if error["type"] != "value_error"
        else f"{where}: {msg}"
    )


def _allowed_keys(loc: Iterable[Any]) -> list[str]:
    """Field names of the model found at `loc` inside Params."""
    model: Any = Params
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return []
    return sorted(model.model_fields)
