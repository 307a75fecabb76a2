"""`msr export`: the exported model answers as `msr predict` does — the same prompt ids, logits
within 1e-4 in fp32, the same greedy tokens — for every vision family, in both formats, loaded by
plain transformers; and in a Python where msr cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from msr.config import Params
from msr.eval.benchmarks import ImageRef, Question
from msr.eval.generate import GenerationArgs, Generator
from msr.export import export
from msr.models.mllm import MLLM
from tests.conftest import random_model

QUESTION = "What colour is the circle?"
NEW_TOKENS = 6


def exported(model_dir: Path, fmt: str) -> Path:
    """An export folder named after its model: transformers caches remote code by folder name, so
    two exports named alike in one process would share modules."""
    return model_dir.with_name(f"{model_dir.name}-{fmt}")


def image(path: Path) -> Path:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)).save(path)  # not square
    return path


def msr_answer(
    model_dir: Path, img: Path
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """(input ids, image positions, logits, greedy tokens) of msr's own path (msr predict's)."""
    model = MLLM.from_pretrained(model_dir, dtype="fp32")
    gen = Generator(model, GenerationArgs(max_new_tokens=NEW_TOKENS))
    q = Question("q", "q", QUESTION, QUESTION, ImageRef(img))
    ids, attention, image_mask, features = gen.inputs([q])
    with torch.no_grad():
        logits = model(ids, attention, image_mask, features).logits
        new = model.generate(ids, attention, image_mask, features, max_new_tokens=NEW_TOKENS,
                             do_sample=False, eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id)  # fmt: skip
    return ids, image_mask, logits, new[0].tolist()


def hf_answer(out: Path, img: Path, fmt: str) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """(input ids, logits, greedy tokens, image token id) of the exported folder, plain transformers."""
    remote = fmt == "remote-code"
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=remote, backend="pil")
    model = AutoModelForImageTextToText.from_pretrained(
        out, trust_remote_code=remote, dtype=torch.float32
    )
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(img), text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        new = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    T = inputs["input_ids"].shape[1]
    image_id = model.config.image_token_id
    return inputs["input_ids"], logits, new[0, T:].tolist(), image_id


def assert_same_answer(model_dir: Path, out: Path, img: Path, fmt: str) -> None:
    ids, image_mask, logits, tokens = msr_answer(model_dir, img)
    hf_ids, hf_logits, hf_tokens, image_id = hf_answer(out, img, fmt)
    assert hf_ids.shape == ids.shape
    assert torch.equal(hf_ids == image_id, image_mask)  # the image at msr's M positions
    assert torch.equal(hf_ids[~image_mask], ids[~image_mask])  # and the same prompt ids around it
    V = logits.shape[-1]
    torch.testing.assert_close(hf_logits[..., :V], logits, atol=1e-4, rtol=0)
    assert hf_tokens == tokens


@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2"])
@pytest.mark.parametrize("fmt", ["llava-hf", "remote-code"])
def test_export_answers_as_msr_predict(
    tiny_workspace: Params, tmp_path: Path, family: str, fmt: str
) -> None:
    projector = "mlp" if fmt == "llava-hf" else "ms_resampler"
    # CLIP and SigLIP native at 224, used at 112: the exported tower holds the interpolated table
    model_dir = random_model(
        tiny_workspace, tmp_path, family, projector, native=224 if family != "dinov2" else 112
    )
    out = export(model_dir, exported(model_dir, fmt), fmt)
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    assert_same_answer(model_dir, out, image(tmp_path / "img.png"), fmt)


NO_MSR = """
import importlib.abc, json, sys
class NoMsr(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("msr", "stages"):
            raise ModuleNotFoundError(f"No module named {name!r} (msr is blocked here)")
sys.meta_path.insert(0, NoMsr())
"""


def run_without_msr(script: str, tmp: Path) -> str:
    """stdout of `script` in a fresh Python where `import msr` fails."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp / "hf_modules"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", NO_MSR + textwrap.dedent(script)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    ("fmt", "projector"), [("remote-code", "ms_resampler"), ("llava-hf", "mlp")]
)
def test_the_export_needs_no_msr(
    tiny_workspace: Params, tmp_path: Path, fmt: str, projector: str
) -> None:
    """Loaded and run by transformers alone, the export answers with msr predict's tokens."""
    model_dir = random_model(tiny_workspace, tmp_path, "dinov2", projector)
    out = export(model_dir, exported(model_dir, fmt), fmt)
    img = image(tmp_path / "img.png")
    _, _, _, tokens = msr_answer(model_dir, img)
    got = run_without_msr(
        f"""
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        try:
            import msr
            raise SystemExit("msr was importable")
        except ModuleNotFoundError:
            pass
        out = {str(out)!r}
        processor = AutoProcessor.from_pretrained(out, trust_remote_code=True, backend="pil")
        model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": {QUESTION!r}}}]}}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.open({str(img)!r}), text=prompt, return_tensors="pt")
        new = model.generate(**inputs, max_new_tokens={NEW_TOKENS})
        print(json.dumps(new[0, inputs["input_ids"].shape[1]:].tolist()))
        """,
        tmp_path,
    )
    assert json.loads(got.strip().splitlines()[-1]) == tokens


def test_every_projector_runs_as_exported_code(tmp_path: Path) -> None:
    """Each projector's bundled source, imported without msr, computes what msr's projector does."""
    from msr.export.bundle import projector_sources
    from msr.projectors import PROJECTORS, build_projector, output_tokens

    cases = {}
    for name in sorted(PROJECTORS):
        folder = tmp_path / f"p_{name}"
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        for file, source in projector_sources(name).items():
            (folder / file).write_text(source)
        m = output_tokens(name, 16, 64)
        torch.manual_seed(0)
        projector = build_projector(
            name, vision_dim=32, llm_dim=48, num_queries=m, grid=(8, 8)
        ).eval()
        x = torch.randn(2, 64, 32)
        with torch.no_grad():
            y = projector(x)
        torch.save({"state": projector.state_dict(), "x": x, "y": y}, folder / "case.pt")
        config = {
            "name": name,
            "vision_dim": 32,
            "llm_dim": 48,
            "num_queries": m,
            "grid": [8, 8],
            "options": {},
        }
        cases[name] = config
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = run_without_msr(
        """
        import importlib, json, torch
        for name, config in json.load(open("cases.json")).items():
            module = importlib.import_module(f"p_{name}.projector_msr")
            projector = module.build_projector(config).eval()
            case = torch.load(f"p_{name}/case.pt")
            projector.load_state_dict(case["state"])
            with torch.no_grad():
                y = projector(case["x"])
            torch.testing.assert_close(y, case["y"], atol=1e-5, rtol=1e-5)
            print(name)
        """,
        tmp_path,
    )
    assert out.split() == sorted(cases)


def test_llava_hf_names_what_llava_cannot_express(tiny_workspace: Params, tmp_path: Path) -> None:
    model_dir = random_model(tiny_workspace, tmp_path, "clip", "ms_resampler")
    with pytest.raises(ValueError, match=r"projector is 'ms_resampler'.*--format remote-code"):
        export(model_dir, tmp_path / "export", "llava-hf")
    assert not (tmp_path / "export").exists() and not (tmp_path / "export.tmp").exists()
    normed = random_model(tiny_workspace, tmp_path, "dinov2", "mlp", final_norm=True)
    with pytest.raises(ValueError, match=r"final LayerNorm"):
        export(normed, tmp_path / "export", "llava-hf")
    with pytest.raises(ValueError, match=r"--format 'gguf'; accepted: llava-hf, remote-code"):
        export(normed, tmp_path / "export", "gguf")


def test_final_norm_is_exported_as_code(tiny_workspace: Params, tmp_path: Path) -> None:
    """DINOv2's final LayerNorm on the features (vision.final_norm): remote code applies it too."""
    model_dir = random_model(tiny_workspace, tmp_path, "dinov2", "avgpool", final_norm=True)
    out = export(model_dir, exported(model_dir, "remote-code"), "remote-code")
    assert_same_answer(model_dir, out, image(tmp_path / "img.png"), "remote-code")


def test_the_model_card_is_written_from_the_run(tiny_workspace: Params, tmp_path: Path) -> None:
    """The card states the backbones, projector and options, the recipe of the params given and the
    eval of this very model with its intervals; an eval of another model is refused."""
    from msr.models.mllm import MLLM

    model_dir = random_model(tiny_workspace, tmp_path, "clip", "avgpool")
    fingerprint = MLLM.from_pretrained(model_dir, vision=False).fingerprint
    interval = {"metric": "acc", "n": 300, "value": 41.0, "lo": 35.6, "hi": 46.6}
    scores = {"model": {"fingerprint": fingerprint}, "intervals": {"synth_gqa": interval},
              "headline": {"synth_gqa": 41.0}}  # fmt: skip
    out = export(model_dir, exported(model_dir, "remote-code"), "remote-code",
                 params=tiny_workspace, evaluation=scores)  # fmt: skip
    card = (out / "README.md").read_text()
    head = card.split("---")[1]
    for needed in ("license: apache-2.0", "pipeline_tag: image-text-to-text", "projector-avgpool",
                   "library_name: transformers"):  # fmt: skip
        assert needed in head, needed
    assert "`avgpool`" in card and "**finetune**: lr" in card
    assert "| synth_gqa | acc | 300 | 41.0 | [35.6, 46.6] |" in card
    other = {**scores, "model": {"fingerprint": "0123456789abcdef"}}
    with pytest.raises(ValueError, match=r"scored on model '0123456789abcdef', not on this one"):
        export(model_dir, tmp_path / "other", "remote-code", evaluation=other)
