"""Every vision family and both LLM families through the whole pipeline (features → pretrain →
finetune → eval) by local path; the MLLM's save_pretrained / from_pretrained round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from msr.config import Params, parse_params
from msr.data.shards import read_manifest
from msr.models.mllm import MLLM
from msr.train.loop import train
from stages import eval as eval_stage
from stages import features, models

QUICK = {
    "log_every": 1,
    "save_every": 1000,
    "loader_workers": 0,
    "shuffle_buffer": 20,
    "per_device_batch": 4,
    "max_steps": 2,
}
SMALL_VISION = {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64}
SMALL_LLM = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128}


def pipeline_params(
    workspace: Params, root: Path, vision_family: str, llm_family: str, template: str
) -> Params:
    """The tiny workspace's synthetic data, models of the given families built under `root`."""
    raw = workspace.model_dump(mode="json")
    raw["paths"].update(
        models=str(root / "models"),
        features=str(root / "features"),
        pretrain=str(root / "pretrain"),
        finetune=str(root / "finetune"),
        eval=str(root / "eval"),
        reports=str(root / "reports"),
    )
    raw["vision"].update(
        model=str(root / "models" / "vision"), build={**SMALL_VISION, "family": vision_family}
    )
    raw["llm"].update(
        model=str(root / "models" / "llm"),
        template=template,
        build={**raw["llm"]["build"], **SMALL_LLM, "family": llm_family},
    )
    raw["pretrain"].update(QUICK)
    raw["finetune"].update(QUICK)
    raw["eval"].update(limit=3, batch_size=3, max_new_tokens=4, synth=["synth_gqa"])
    return parse_params(raw)


@pytest.mark.parametrize(
    ("vision_family", "llm_family", "template"),
    [("siglip", "qwen2", "chatml"), ("dinov2", "llama", "vicuna_v1"), ("clip", "qwen2", "chatml")],
)
def test_every_family_runs_the_pipeline(
    tiny_workspace: Params, tmp_path: Path, vision_family: str, llm_family: str, template: str
) -> None:
    p = pipeline_params(tiny_workspace, tmp_path, vision_family, llm_family, template)
    models.run(p)
    report = features.run(p, workers=0)
    assert report.images > 0
    _, fingerprint = read_manifest(Path(p.paths.features))
    assert fingerprint["family"] == vision_family
    assert train(p, "pretrain").steps == 2
    assert train(p, "finetune").steps == 2
    model = MLLM.from_pretrained(p.paths.finetune)
    assert model.config is not None and model.config.template == template
    assert type(model.llm).__name__.lower().startswith(llm_family)
    assert model.vision is not None and model.vision.family == vision_family
    summary = eval_stage.run(p)
    assert summary["benchmarks"]["synth_gqa"]["n"] == 3


def test_mllm_round_trip(tiny_workspace: Params, tmp_path: Path) -> None:
    """save_pretrained then from_pretrained gives the same logits and the same config; the json
    beside the weights is the class's own."""
    p = pipeline_params(tiny_workspace, tmp_path, "clip", "llama", "vicuna_v1")
    models.run(p)
    features.run(p, workers=0)
    train(p, "pretrain")
    train(p, "finetune")
    first = MLLM.from_pretrained(p.paths.finetune)
    first.save_pretrained(tmp_path / "copy", dtype="fp32")
    again = MLLM.from_pretrained(tmp_path / "copy")
    assert again.config == first.config
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 1:] = False
    with torch.no_grad():
        a = first(ids, torch.ones_like(ids), mask).logits
        b = again(ids, torch.ones_like(ids), mask).logits
    torch.testing.assert_close(a, b)
    features_in = torch.randn(1, 576, 32)
    torch.testing.assert_close(first.image_tokens(features_in), again.image_tokens(features_in))
    with pytest.raises(FileNotFoundError, match=r"mllm\.json missing"):
        MLLM.from_pretrained(tmp_path)
