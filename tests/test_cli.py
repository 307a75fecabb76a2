"""The `msr` command line: help, presets, overrides, projector listing and benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from msr.presets import load_preset, preset_path
from msr.resolve import load_params

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "preset",
        "projectors",
        "synth",
        "models",
        "features",
        "pretrain",
        "finetune",
        "train",
        "eval",
        "predict",
        "profile",
        "report",
    ):
        assert command in result.output


def test_console_script_is_installed() -> None:
    beside = Path(sys.executable).parent / "msr"  # the venv's bin/, even when it is not on PATH
    exe = str(beside) if beside.exists() else shutil.which("msr")
    assert exe is not None, "the msr console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "preset", "list"], capture_output=True, text=True, check=True)
    assert "llava15-7b" in out.stdout


def test_preset_show_prints_complete_valid_yaml() -> None:
    result = runner.invoke(app, ["preset", "show", "llava15-7b"])
    assert result.exit_code == 0
    assert yaml.safe_load(result.output) == yaml.safe_load(preset_path("llava15-7b").read_text())


def test_preset_use_writes_params(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    result = runner.invoke(app, ["preset", "use", "qwen25-3b", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_params(out) == load_preset("qwen25-3b")


def test_preset_use_fp32_and_overrides(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    args = ["preset", "use", "small-real", "--out", str(out), "--fp32"]
    result = runner.invoke(app, [*args, "--set", "projector.num_queries=64"])
    assert result.exit_code == 0, result.output
    p, preset = load_params(out), load_preset("small-real")
    assert (p.vision.dtype, p.llm.dtype, p.eval.dtype, p.profile.dtype) == ("fp32",) * 4
    assert not p.pretrain.bf16 and not p.finetune.bf16 and p.bench.dtypes == ["fp32"]
    assert preset.vision.dtype == "bf16" and preset.pretrain.bf16  # the preset itself is bf16
    assert p.projector.num_queries == 64
    # everything else is the preset's: undo the overrides and the two are equal
    undone, expected = p.model_dump(), preset.model_dump()
    for section, key in [("vision", "dtype"), ("llm", "dtype"), ("eval", "dtype"),
                         ("profile", "dtype"), ("pretrain", "bf16"), ("finetune", "bf16"),
                         ("bench", "dtypes"), ("projector", "num_queries")]:  # fmt: skip
        undone[section][key] = expected[section][key]
    assert undone == expected
    assert out.read_text().startswith("# preset small-real")


def test_preset_use_with_a_bad_override_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    result = runner.invoke(
        app, ["preset", "use", "tiny", "--out", str(out), "--set", "vision.dtyp=x"]
    )
    assert result.exit_code == 2
    assert "vision.dtyp" in result.output
    assert not out.exists()


def test_preset_use_refuses_what_load_params_would_refuse(tmp_path: Path) -> None:
    """50 queries do not tile the tiny preset's grid: the schema accepts it, the resolve step does
    not — and `preset use` runs both before it writes."""
    out = tmp_path / "params.yaml"
    args = ["preset", "use", "tiny", "--out", str(out), "--set", "projector.num_queries=50"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "projector:" in result.output and "50" in result.output
    assert not out.exists()


def test_params_takes_a_preset_name() -> None:
    from msr.presets import params_file

    assert load_params(params_file("small-real")) == load_preset("small-real")


def test_unknown_preset_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["preset", "use", "huge", "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2
    assert "unknown preset 'huge'" in result.output
    assert not (tmp_path / "p.yaml").exists()


def test_projectors_list() -> None:
    result = runner.invoke(app, ["projectors", "list"])
    assert result.exit_code == 0
    for name in ("ms_resampler", "c_abstractor", "tokenpacker", "kernels"):
        assert name in result.output


def small_bench_params(tmp_path: Path) -> Path:
    raw = yaml.safe_load(preset_path("tiny").read_text())
    raw["bench"] = {
        "projectors": ["mlp", "ms_resampler", "avgpool"],
        "scales": {
            "tiny": {
                "batch": 2,
                "grid": [24, 24],
                "vision_dim": 32,
                "llm_dim": 48,
                "num_queries": 36,
            }
        },
        "dtypes": ["fp32"],
        "repeats": 1,
        "warmup": 0,
        "threads": None,
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_projectors_bench_writes_reports(tmp_path: Path) -> None:
    params = small_bench_params(tmp_path)
    result = runner.invoke(
        app, ["projectors", "bench", "--params", str(params), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r" / "projectors_bench.json").read_text())
    rows = data["results"]["tiny"]["fp32"]
    assert set(rows["forward"]) == {
        "mlp",
        "ms_resampler",
        "ms_resampler (textbook)",
        "ms_resampler (branches)",
        "ms_resampler (torch fusion)",
        "avgpool",
    }
    assert rows["forward"]["mlp"]["ratio_to_mlp"] == 1.0
    assert (
        rows["forward"]["ms_resampler"]["macs_counted"]
        == rows["forward"]["ms_resampler"]["macs_analytic"]
    )
    assert rows["forward+backward"]["mlp"]["macs_counted"] > rows["forward"]["mlp"]["macs_counted"]
    md = (tmp_path / "r" / "projectors_bench.md").read_text()
    assert "| `ms_resampler` | 36 |" in md
    share = rows["forward+backward"]["ms_resampler"]["fusion_share"]
    assert share is not None and f"{100 * share:.0f}%" in md  # timings: no bound asserted


def test_bad_override_exits_with_the_key(tmp_path: Path) -> None:
    params = small_bench_params(tmp_path)
    result = runner.invoke(
        app, ["projectors", "bench", "--params", str(params), "--set", "bench.repeat=3"]
    )
    assert result.exit_code == 2
    assert "unknown key 'bench.repeat'" in result.output


@pytest.mark.parametrize("args", [["projectors", "bench", "--params", "missing.yaml"]])
def test_missing_params_file(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "does not exist" in result.output


def test_report_summarises_what_exists(tmp_path: Path) -> None:
    raw = yaml.safe_load(preset_path("tiny").read_text())
    raw["paths"]["reports"] = str(tmp_path)
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "metrics.json").write_text(json.dumps({"steps": 3, "samples": 48, "first_loss": 6.5,
                                                                    "last_loss": 6.1, "seconds": 2.0}))  # fmt: skip
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["report", "--params", str(params)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "summary.md").read_text()
    assert (
        "pretrain: 3 steps, 48 samples, loss 6.500 → 6.100" in text
        and "`ms_resampler` (M = 36" in text
    )


def test_report_refuses_params_that_did_not_produce_the_run(tmp_path: Path) -> None:
    """The trained model records what it was built from: `msr report --set` of another projector
    or budget is refused, not written into summary.md as if it had produced the numbers."""
    raw = yaml.safe_load(preset_path("tiny").read_text())
    raw["paths"].update(reports=str(tmp_path), finetune=str(tmp_path / "finetune"))
    (tmp_path / "finetune").mkdir()
    options = {"kernels": [2, 6, 14], "beta": 4.0, "learnable_bias": False, "fusion": "channel_mlp",
               "fusion_hidden": 8, "num_heads": 1}  # fmt: skip
    recorded = {
        "vision": {"model": raw["vision"]["model"]},
        "llm": {"model": raw["llm"]["model"]},
        "template": "vicuna_v1",
        "projector": {
            "name": "ms_resampler",
            "num_queries": 36,
            "grid": [24, 24],
            "options": options,
        },
    }
    (tmp_path / "finetune" / "mllm.json").write_text(json.dumps(recorded))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["report", "--params", str(params)]).exit_code == 0
    for override, named in [
        ("projector.num_queries=64", "M: params 64, model 36"),
        ("projector.name=resampler", "projector.name: params 'resampler', model 'ms_resampler'"),
        ("projector.options.ms_resampler.beta=0.0", "beta: params 0.0, model 4.0"),
    ]:
        (tmp_path / "summary.md").unlink(missing_ok=True)
        result = runner.invoke(app, ["report", "--params", str(params), "--set", override])
        assert result.exit_code == 2 and named in " ".join(result.output.split()), result.output
        assert not (tmp_path / "summary.md").exists()


def test_bad_budget_fails_before_training_starts(repo_root: Path) -> None:
    """The params check runs at load: exit 2 with the reason, before anything is built."""
    params = str(repo_root / "params.yaml")
    result = runner.invoke(app, ["train", "--params", params, "--set", "projector.num_queries=50"])
    assert result.exit_code == 2
    assert "num_queries=50 does not tile the 24×24 grid" in " ".join(result.output.split())
    assert "loss" not in result.output


def test_local_rank_before_the_command_is_accepted() -> None:
    """The DeepSpeed launcher starts `cli.py --local_rank=N <command> ...`."""
    from msr.runtime import strip_local_rank

    assert strip_local_rank(["--local_rank=1", "pretrain", "--params", "p.yaml"]) == [
        "pretrain",
        "--params",
        "p.yaml",
    ]
    assert strip_local_rank(["--local_rank", "0", "eval"]) == ["eval"]
    beside = Path(sys.executable).parent / "msr"
    exe = str(beside) if beside.exists() else shutil.which("msr")
    assert exe is not None
    out = subprocess.run(
        [exe, "--local_rank=0", "preset", "list"], capture_output=True, text=True, check=True
    )
    assert "llava15-7b" in out.stdout


def test_train_runs_both_stages_or_one(tmp_path: Path, tiny_workspace: Any) -> None:
    from stages import features

    raw = tiny_workspace.model_dump(mode="json")
    raw["paths"].update(
        features=str(tmp_path / "features"),
        pretrain=str(tmp_path / "pretrain"),
        finetune=str(tmp_path / "finetune"),
        reports=str(tmp_path / "reports"),
    )
    raw["pretrain"].update(max_steps=2, loader_workers=0, per_device_batch=4)
    raw["finetune"].update(max_steps=2, loader_workers=0, per_device_batch=4)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    features.run(load_params(params_file), workers=0)
    result = runner.invoke(app, ["train", "--params", str(params_file), "--stage", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pretrain" / "projector.safetensors").exists()
    assert not (tmp_path / "finetune").exists()
    result = runner.invoke(app, ["train", "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    assert "pretrain: 2 steps" in result.output and "finetune: 2 steps" in result.output
    assert (tmp_path / "finetune" / "mllm.json").exists()
    result = runner.invoke(app, ["train", "--params", str(params_file), "--stage", "3"])
    assert result.exit_code == 2 and "accepted: 1 (pretrain), 2 (finetune)" in result.output
