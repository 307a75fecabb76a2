"""Measured cost on the current device (CPU here, GPU when present): vision tower, projector and
LLM prefill latency (their sum is the time to first token), decode tokens/s, the KV cache size read
from the model's own cache object, and peak memory. Models are built from the configs with random
weights: latency does not depend on the values. Medians of repeats after warm-up."""

from __future__ import annotations

import functools
import os
import resource
from collections.abc import Iterable
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from msr.config import Params
from msr.models.configs import llm_config, vision_grid
from msr.models.vision import DTYPES
from msr.profile.analytic import vision_backbone
from msr.profile.timing import time_round_robin
from msr.projectors import build_projector


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def fits(cfg: PretrainedConfig, dtype: torch.dtype, dev: torch.device) -> tuple[bool, str]:
    """Whether a random-weight copy of the LLM fits comfortably (half the free memory)."""
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    need = n * torch.finfo(dtype).bits // 8
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return (
        need < free // 2,
        f"the LLM needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {dev.type}",
    )


def cache_values(cache: Any) -> int:
    """Number of stored key and value elements in a HF cache object."""
    if hasattr(cache, "layers"):  # transformers ≥ 4.56 Cache with per-layer objects
        return sum(
            layer.keys.numel() + layer.values.numel()
            for layer in cache.layers
            if layer.keys is not None
        )
    return sum(k.numel() + v.numel() for k, v in cache)


def peak_memory_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak RSS of this process


def measure(params: Params, configs: Iterable[tuple[str, int, dict[str, Any]]]) -> dict[str, Any]:
    """Latencies for the active preset: each (projector, M, options) in `configs`, LLM prefill and
    decode for each distinct visual-token count."""
    prof, v = params.profile, params.vision
    dev = device()
    dtype = DTYPES[prof.dtype]
    lcfg, grid = llm_config(params.llm), vision_grid(v)
    ok, why = fits(lcfg, dtype, dev)
    if not ok:
        return {"skipped": f"measured profile skipped: {why}"}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with dev:
        tower = vision_backbone(v).to(dtype).eval()
        llm = AutoModelForCausalLM.from_config(lcfg, dtype=dtype).eval()
    n = grid[0] * grid[1]
    out: dict[str, Any] = {"device": str(dev), "dtype": prof.dtype, "projectors": {}, "llm": {}}
    with torch.no_grad():
        pixels = torch.randn(1, 3, v.image_size, v.image_size, device=dev, dtype=dtype)
        t = time_round_robin(  # normalised pixels straight into the family's HF call
            {"vision": lambda: tower.hidden_states(pixels)}, prof.repeats, prof.warmup
        )["vision"]
        out["vision_ms"] = t.median_ms
        tokens = set()
        for name, m, opts in configs:
            proj = (
                build_projector(
                    name,
                    vision_dim=tower.embed_dim,
                    llm_dim=lcfg.hidden_size,
                    num_queries=m,
                    grid=grid,
                    **opts,
                )
                .to(dev, dtype)
                .eval()
            )
            x = torch.randn(1, n, proj.input_dim, device=dev, dtype=dtype)
            t = time_round_robin({"p": functools.partial(proj, x)}, prof.repeats, prof.warmup)["p"]
            out["projectors"][f"{name}@{m}"] = {"projector_ms": t.median_ms}
            tokens.add(m)
        for m in sorted(tokens, reverse=True):
            out["llm"][str(m)] = _prefill_and_decode(
                llm,
                lcfg,
                m,
                prof.text_tokens,
                prof.decode_tokens,
                prof.repeats,
                prof.warmup,
                dev,
                dtype,
            )
    out["peak_memory_bytes"] = peak_memory_bytes(dev)
    out["peak_memory_kind"] = (
        "max allocated (CUDA)" if dev.type == "cuda" else "peak RSS of the process"
    )
    return out


def _prefill_and_decode(
    llm: Any,
    cfg: PretrainedConfig,
    visual: int,
    text: int,
    decode: int,
    repeats: int,
    warmup: int,
    dev: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    c = cfg.hidden_size
    visual_embeds = torch.randn(1, visual, c, device=dev, dtype=dtype)
    prompt_embeds = torch.randn(1, visual + text, c, device=dev, dtype=dtype)
    prefill = time_round_robin(
        {"p": lambda: llm(inputs_embeds=prompt_embeds, use_cache=True)}, repeats, warmup
    )["p"]
    kv_visual = cache_values(llm(inputs_embeds=visual_embeds, use_cache=True).past_key_values)
    first = llm(inputs_embeds=prompt_embeds, use_cache=True)

    def decode_tokens() -> None:
        cache = _copy_cache(first.past_key_values)
        token = first.logits[:, -1:].argmax(-1)
        for _ in range(decode):
            step = llm(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = step.past_key_values, step.logits[:, -1:].argmax(-1)

    dec = time_round_robin({"d": decode_tokens}, max(1, repeats // 2), min(warmup, 1))["d"]
    return {
        "prefill_ms": prefill.median_ms,
        "decode_tokens_per_s": decode / (dec.median_ms / 1e3),
        "kv_values_visual": kv_visual,
        "kv_cache_bytes_visual": kv_visual * 2,  # at 2 bytes per value, the analytic convention
    }


def _copy_cache(cache: Any) -> Any:
    import copy

    return copy.deepcopy(cache)
