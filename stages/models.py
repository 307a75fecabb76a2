"""Stage `models`: build the tiny preset's models offline (when `*.build` is set), convert an ONNX
vision backbone (`vision.source`, small-real's DINOv2), and record which models the pipeline uses
in `${paths.models}/models.json`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from msr.config import Params
from msr.models.convert_onnx import convert_dinov2_onnx
from msr.models.tiny import build_llm, build_vision, corpus, train_tokenizer
from msr.utils.io import atomic_write_json
from msr.utils.resources import resolve


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a freshly written directory into place."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def run(params: Params) -> dict[str, Any]:
    out = Path(params.paths.models)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {}
    v, m = params.vision, params.llm
    if v.build is not None:
        model, processor = build_vision(v.build, v.image_size)
        tmp = out / ".vision.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _replace_dir(tmp, out / "vision")
        manifest["vision"] = {"built": True, "path": v.model, "config": v.build.model_dump()}
    elif v.source is not None:
        check = convert_dinov2_onnx(Path(resolve(v.source)), out / "vision")
        manifest["vision"] = {"converted": v.source, "path": v.model, "check": check}
    else:
        manifest["vision"] = {"built": False, "model": v.model, "revision": v.revision}
    if m.build is not None:
        sources = [Path(params.data.pretrain_json), Path(params.data.instruct_json)]
        missing = [str(f) for f in sources if not f.is_file()]
        if missing:  # the tokenizer is trained on the training text
            raise FileNotFoundError(
                f"{', '.join(missing)} missing: the tiny tokenizer is trained on the training "
                "text; run `msr synth` first (or `dvc repro`, which runs it)"
            )
        texts = corpus(sources)
        tokenizer = train_tokenizer(texts, m.build.vocab_size, m.template, m.max_length)
        llm = build_llm(m.build, tokenizer, m.max_length)
        tmp = out / ".llm.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        llm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, out / "llm")
        manifest["llm"] = {
            "built": True,
            "path": m.model,
            "config": m.build.model_dump(),
            "vocab": len(tokenizer),
        }
    else:
        manifest["llm"] = {"built": False, "model": m.model, "revision": m.revision}
    manifest["id"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    atomic_write_json(out / "models.json", manifest)
    return manifest
