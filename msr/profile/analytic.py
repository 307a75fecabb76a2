"""Analytic cost of a configuration, from configs alone: the vision tower, projector and LLM are
built on the meta device (no weights, no download) and run under torch.utils.flop_counter.

Conventions (DESIGN §3): MACs, not FLOPs. `projector_macs`: what the implementation computes for
one image. `llm_macs`: the base decoder (no embedding, no LM head) on the visual tokens alone —
linear layers plus the attention score and value matmuls over the full sequence (no causal
halving). `kv_cache_bytes`: keys and values of the visual tokens, all layers, 2 bytes per value.
`vision_macs`: the tower up to the feature layer. Params: the vision tower as it runs (blocks after
the feature layer dropped), the projector, the whole LLM (embeddings and LM head included).
`projector_macs_ptflops`: the same projector counted in ptflops' convention (`ptflops.py`), which is
what the paper's Table 7 "FLOPs" column reports.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from msr.config import Params, Vision
from msr.models.configs import llm_config, vision_config, vision_grid
from msr.models.vision import VisionBackbone, vision_class
from msr.profile.flops import counted_macs
from msr.profile.ptflops import ptflops_macs
from msr.projectors import active_options, build_projector, output_tokens

CONVENTIONS = (
    "MACs, not FLOPs (FLOPs = 2 × MACs). projector_macs: what the implementation computes for one "
    "image. llm_macs: the base decoder (no embedding, no LM head) run on the visual tokens alone — "
    "linear layers plus attention score and value matmuls over the full sequence (no causal halving). "
    "kv_cache_bytes: keys and values of the visual tokens, all layers, 2 bytes per value. vision_macs: "
    "the tower up to the feature layer. Params: vision tower as run (blocks after the feature layer "
    "dropped), projector, whole LLM (embeddings and LM head included). projector_macs_ptflops: "
    "the projector's MACs as ptflops >= 0.7.2 (pytorch backend) counts them, the convention of "
    "the paper's Table 7 'FLOPs' column: listed modules, patched functionals and tensor ops only "
    "(no @, +, *, F.linear, einsum or SDPA), so it can be above or below projector_macs."
)

# `msr profile --convention`: which projector count the summary reports.
PROJECTOR_MACS_KEYS = {"pure": "projector_macs", "ptflops": "projector_macs_ptflops"}


def projector_macs_key(convention: str) -> str:
    """The result key of the projector MACs in `convention` ("pure" or "ptflops")."""
    if convention not in PROJECTOR_MACS_KEYS:
        raise ValueError(
            f"unknown MAC convention {convention!r}; accepted: {', '.join(PROJECTOR_MACS_KEYS)}"
        )
    return PROJECTOR_MACS_KEYS[convention]


def kept_layers(vcfg: PretrainedConfig, feature_layer: int) -> int:
    """Encoder blocks that run to produce hidden_states[feature_layer]."""
    return feature_layer % (vcfg.num_hidden_layers + 1)


def vision_backbone(v: Vision) -> VisionBackbone:
    """The backbone of `v` from its config alone (random weights: build it on the meta device)."""
    vcfg = vision_config(v)
    return vision_class(vcfg, v.model).from_config(
        vcfg,
        feature_layer=v.feature_layer,
        select=v.select,
        image_size=v.image_size,
        final_norm=v.final_norm,
    )


def head_dim(cfg: PretrainedConfig) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def kv_cache_bytes(cfg: PretrainedConfig, tokens: int, bytes_per_value: int = 2) -> int:
    """Keys and values of `tokens` positions in every layer."""
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * tokens * kv_heads * head_dim(cfg) * bytes_per_value


def llm_macs_formula(cfg: PretrainedConfig, tokens: int) -> int:
    """Closed form of `llm_macs` for Llama / Qwen2 decoders."""
    c, L, inter = cfg.hidden_size, tokens, cfg.intermediate_size
    kv = (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) * head_dim(cfg)
    q = cfg.num_attention_heads * head_dim(cfg)
    per_layer = L * c * q + 2 * L * c * kv + L * q * c + 3 * L * c * inter + 2 * L * L * q
    return cfg.num_hidden_layers * per_layer


def vision_macs_formula(vcfg: PretrainedConfig, feature_layer: int, image_size: int) -> int:
    """Closed form of `vision_macs` for a pre-LN ViT with a GELU MLP (CLIP, SigLIP, DINOv2): patch
    embedding, then per block QKV + output projections, MLP, and attention over prefix + patches."""
    d, p = vcfg.hidden_size, vcfg.patch_size
    inter = getattr(vcfg, "intermediate_size", None) or int(vcfg.mlp_ratio * d)
    n = (image_size // p) ** 2
    prefix = int(vision_class(vcfg).has_cls) + (getattr(vcfg, "num_register_tokens", 0) or 0)
    seq = n + prefix
    per_layer = 4 * seq * d * d + 2 * seq * d * inter + 2 * seq * seq * d
    return n * 3 * p * p * d + kept_layers(vcfg, feature_layer) * per_layer


def analytic_profile(
    params: Params,
    *,
    projector: str | None = None,
    num_queries: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cost of (vision tower, projector, LLM) for the active params, or another projector / M."""
    v, p = params.vision, params.projector
    name = projector or p.name
    opts = (
        options
        if options is not None
        else (active_options(p) if name == p.name else p.options.get(name, {}))
    )
    lcfg = llm_config(params.llm)
    grid = vision_grid(v)
    n = grid[0] * grid[1]
    m = output_tokens(name, num_queries or p.num_queries, n)
    text = params.profile.text_tokens
    with torch.device("meta"):
        tower = vision_backbone(v)
        proj = build_projector(
            name,
            vision_dim=tower.embed_dim,
            llm_dim=lcfg.hidden_size,
            num_queries=m,
            grid=grid,
            **opts,
        )
        llm = AutoModelForCausalLM.from_config(lcfg)
        pixels = torch.randint(0, 256, (1, 3, v.image_size, v.image_size), dtype=torch.uint8)
        features = torch.randn(1, n, proj.input_dim)
        vision_macs = counted_macs(lambda: tower(pixels))
        projector_macs = counted_macs(lambda: proj(features))
        projector_macs_ptflops = ptflops_macs(proj, features)
        llm_macs = counted_macs(
            lambda: llm.model(inputs_embeds=torch.randn(1, m, lcfg.hidden_size), use_cache=True)
        )
        prompt_macs = counted_macs(
            lambda: llm.model(
                inputs_embeds=torch.randn(1, m + text, lcfg.hidden_size), use_cache=True
            )
        )
    return {
        "projector": name,
        "num_queries": m,
        "visual_tokens": m,
        "vision_macs": vision_macs,
        "projector_macs": projector_macs,
        "projector_macs_ptflops": projector_macs_ptflops,
        "llm_macs": llm_macs,
        "total_macs": vision_macs + projector_macs + llm_macs,
        "kv_cache_bytes": kv_cache_bytes(lcfg, m),
        "params": {
            "vision": sum(t.numel() for t in tower.parameters()),
            "projector": sum(t.numel() for t in proj.parameters()),
            "llm": sum(t.numel() for t in llm.parameters()),
        },
        "prompt": {
            "text_tokens": text,
            "tokens": m + text,
            "llm_macs": prompt_macs,
            "kv_cache_bytes": kv_cache_bytes(lcfg, m + text),
        },
    }
