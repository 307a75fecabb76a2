"""Training: what each stage trains, the loss falls, checkpoints resume exactly, bad input stops early."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from msr.config import Params, parse_params
from msr.data.skips import TooManySkips
from msr.models.mllm import MLLM
from msr.projectors import files as pfiles
from msr.train import checkpoint as ckpt
from msr.train.loop import TrainingError, train
from stages import features


def variant(params: Params, root: Path, **sections: dict[str, Any]) -> Params:
    """params with its own pretrain/finetune/reports dirs under root and section overrides."""
    raw = params.model_dump(mode="json")
    raw["paths"].update(
        pretrain=str(root / "pretrain"),
        finetune=str(root / "finetune"),
        reports=str(root / "reports"),
    )
    raw["llm"]["dtype"] = "fp32"  # save the master weights, so comparisons are exact
    for key, value in sections.items():
        raw[key] = {**raw[key], **value}
    return parse_params(raw)


FAST = {"log_every": 1, "save_every": 1000, "loader_workers": 0, "shuffle_buffer": 50}


@pytest.fixture(scope="module")
def workspace(tiny_workspace: Params, tmp_path_factory: pytest.TempPathFactory) -> Params:
    raw = tiny_workspace.model_dump(mode="json")
    raw["paths"]["features"] = str(tmp_path_factory.mktemp("features"))
    raw["pretrain"].update(per_device_batch=4, **FAST)
    raw["finetune"].update(per_device_batch=4, **FAST)
    params = parse_params(raw)
    features.run(params, workers=0)
    return params


def test_stage1_trains_only_the_projector(workspace: Params, tmp_path: Path) -> None:
    p = variant(workspace, tmp_path, pretrain={"max_steps": 3})
    result = train(p, "pretrain")
    assert result.steps == 3 and result.samples == 12
    out = Path(p.paths.pretrain)
    assert sorted(f.name for f in out.iterdir()) == [
        "projector.json",
        "projector.safetensors",
        "skips.json",
    ]
    # 10 samples, batches of 4: each epoch's last 2 are read but not trained on, and named;
    # the second epoch stops at max_steps, before its end, so nothing of it is reported
    skips = json.loads((out / "skips.json").read_text())
    assert skips["skipped_bad"] == 0 and skips["unused"] == 2 and skips["trained"] == 12
    assert len(skips["keys"]["loader: incomplete last batch (drop_last)"]) == 2
    trained = load_file(out / "projector.safetensors")
    torch.manual_seed(0)
    from msr.projectors import create_projector

    fresh, _ = create_projector(p.projector, 64, 128, (24, 24))
    assert any(not torch.equal(trained[k], v) for k, v in fresh.state_dict().items())
    assert json.loads((out / "projector.json").read_text())["name"] == "ms_resampler"


def interrupted(params: Params, stage: str, after: int) -> None:
    """Run `stage` and stop it (as a crash would) once `after` steps are logged."""

    def stop(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == after:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(params, stage, progress=stop)  # type: ignore[arg-type]


def test_checkpoints_hold_only_trainable_weights(workspace: Params, tmp_path: Path) -> None:
    p1 = variant(workspace, tmp_path, pretrain={"max_steps": 4, "save_every": 2})
    interrupted(p1, "pretrain", after=3)
    names = load_file(Path(p1.paths.pretrain) / "checkpoints" / "last" / "trainable.safetensors")
    assert names and all(k.startswith("projector.") for k in names)  # stage 1: the LLM stays frozen
    train(p1, "pretrain")
    p2 = variant(workspace, tmp_path, finetune={"max_steps": 4, "save_every": 2})
    interrupted(p2, "finetune", after=3)
    names = load_file(Path(p2.paths.finetune) / "checkpoints" / "last" / "trainable.safetensors")
    assert any(k.startswith("llm.") for k in names) and any(
        k.startswith("projector.") for k in names
    )


def test_stage2_loss_falls_and_llm_changes(workspace: Params, tmp_path: Path) -> None:
    p = variant(
        workspace,
        tmp_path,
        pretrain={"max_steps": 2},
        finetune={"max_steps": 30, "lr": 2e-3, "warmup_ratio": 0.1},
    )
    train(p, "pretrain")
    result = train(p, "finetune", log_dir=Path(p.paths.reports) / "finetune")
    assert result.last_loss < 0.6 * result.first_loss, (result.first_loss, result.last_loss)
    out = Path(p.paths.finetune)
    saved = load_file(out / "llm" / "model.safetensors")
    initial = load_file(Path(p.llm.model) / "model.safetensors")
    assert any(not torch.equal(saved[k], initial[k].float()) for k in initial)
    stage1 = load_file(Path(p.paths.pretrain) / "projector.safetensors")
    stage2 = load_file(out / "projector.safetensors")
    assert any(not torch.equal(stage1[k], stage2[k]) for k in stage1)
    reports = Path(p.paths.reports) / "finetune"
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["steps"] == 30 and "loss" in metrics["train"]
    # DVC outs hold what was learned, not how fast: the timings are beside them
    assert set(metrics["train"]) == {"loss", "lr"}
    assert not {"seconds", "data_wait_seconds"} & set(metrics)
    plots = {f.stem for f in (reports / "plots" / "metrics" / "train").iterdir()}
    assert plots == {"loss", "lr"}
    timings = json.loads((reports / "timings.json").read_text())
    assert timings["seconds"] > 0 and timings["tokens_per_s"] > 0
    config = MLLM.from_pretrained(out, vision=False).config
    assert config is not None
    assert config.template == "vicuna_v1" and config.projector["num_queries"] == 36


def test_resume_gives_exactly_the_same_weights(workspace: Params, tmp_path: Path) -> None:
    common = {"max_steps": 6, "save_every": 2}
    straight = variant(workspace, tmp_path / "a", pretrain={"max_steps": 2}, finetune=common)
    train(straight, "pretrain")
    train(straight, "finetune")
    resumed = variant(workspace, tmp_path / "b", pretrain={"max_steps": 2}, finetune=common)
    shutil.copytree(straight.paths.pretrain, resumed.paths.pretrain)
    interrupted(resumed, "finetune", after=5)  # the last checkpoint is at step 4
    state = json.loads(
        (Path(resumed.paths.finetune) / "checkpoints" / "last" / "state.json").read_text()
    )
    assert state["step"] == 4
    result = train(resumed, "finetune", resume="yes")
    assert result.resumed_from == 4 and result.steps == 6
    for rel in ("projector.safetensors", "llm/model.safetensors"):
        a = load_file(Path(straight.paths.finetune) / rel)
        b = load_file(Path(resumed.paths.finetune) / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    assert not (Path(resumed.paths.finetune) / "checkpoints").exists()  # removed once finished


def test_resume_refuses_a_checkpoint_of_other_params(workspace: Params, tmp_path: Path) -> None:
    p = variant(workspace, tmp_path, pretrain={"max_steps": 4, "save_every": 2})
    interrupted(p, "pretrain", after=3)
    other = variant(workspace, tmp_path, pretrain={"max_steps": 4, "save_every": 2, "lr": 5e-4})
    with pytest.raises(TrainingError, match="made with other params"):
        train(other, "pretrain", resume="yes")
    assert train(other, "pretrain", resume="auto").resumed_from == 0  # auto: start over


def test_stage1_checkpoint_of_another_projector_is_rejected(
    workspace: Params, tmp_path: Path
) -> None:
    p = variant(workspace, tmp_path, pretrain={"max_steps": 1})
    train(p, "pretrain")
    raw = p.model_dump(mode="json")
    raw["projector"]["num_queries"] = 64
    with pytest.raises(
        ckpt.CheckpointError, match=r"num_queries: checkpoint has 36, params ask for 64"
    ):
        train(parse_params(raw), "finetune")
    raw["projector"]["num_queries"], raw["projector"]["name"] = 36, "resampler"
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"name: checkpoint has 'ms_resampler', params ask for 'resampler'",
    ):
        train(parse_params(raw), "finetune")


def test_features_of_another_encoder_stop_before_training(
    workspace: Params, tmp_path: Path
) -> None:
    raw = variant(workspace, tmp_path).model_dump(mode="json")
    raw["vision"]["feature_layer"] = -1
    with pytest.raises(TrainingError, match=r"another encoder .*layer: -2 vs -1"):
        train(parse_params(raw), "pretrain")


def test_missing_features_stop_before_training(workspace: Params, tmp_path: Path) -> None:
    raw = variant(workspace, tmp_path).model_dump(mode="json")
    raw["paths"]["features"] = str(tmp_path / "nowhere")
    with pytest.raises(TrainingError, match="no feature manifest"):
        train(parse_params(raw), "pretrain")


def test_nan_loss_names_step_and_samples(
    workspace: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from msr.models.mllm import MLLM

    original = MLLM.forward

    def poisoned(self: MLLM, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MLLM, "forward", poisoned)
    p = variant(workspace, tmp_path, pretrain={"max_steps": 2})
    with pytest.raises(TrainingError, match=r"loss is nan at step 0 .*samples: \S+/\S+"):
        train(p, "pretrain")


def test_schedule_warms_up_then_decays() -> None:
    from msr.train.engine import cosine_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, total=100, warmup_ratio=0.03)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 3) and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:])) and lrs[-1] < 0.01


def test_projector_lr_is_its_own_group_under_the_same_schedule(
    workspace: Params, tmp_path: Path
) -> None:
    """finetune.projector_lr: the projector's parameters step at it, the LLM's at lr, one schedule."""
    from msr.train.engine import cosine_with_warmup, param_groups

    p = variant(
        workspace, tmp_path, finetune={"lr": 1e-4, "projector_lr": 1e-2, "weight_decay": 0.1}
    )
    model = torch.nn.Module()  # the MLLM's two trainable children, by the same names
    model.projector = torch.nn.Linear(4, 4)
    model.llm = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = param_groups(model, p.finetune)
    names = {id(q): n for n, q in model.named_parameters()}
    rate = {names[id(q)]: g.get("lr", "lr") for g in groups for q in g["params"]}
    decay = {names[id(q)]: g["weight_decay"] for g in groups for q in g["params"]}
    assert rate == {
        "projector.weight": 1e-2,
        "projector.bias": 1e-2,
        "llm.0.weight": "lr",
        "llm.0.bias": "lr",
        "llm.1.weight": "lr",
        "llm.1.bias": "lr",
    }
    assert sorted(n for n, d in decay.items() if d) == ["llm.0.weight", "projector.weight"]
    opt = torch.optim.AdamW(groups, lr=p.finetune.lr)
    sched = cosine_with_warmup(opt, total=10, warmup_ratio=0.0)
    for _ in range(5):
        opt.step()
        sched.step()
    assert sorted(g["initial_lr"] for g in opt.param_groups) == [1e-4, 1e-4, 1e-2, 1e-2]
    assert len({round(g["lr"] / g["initial_lr"], 12) for g in opt.param_groups}) == 1
    unset = variant(workspace, tmp_path, finetune={"projector_lr": None})
    assert all("lr" not in g for g in param_groups(model, unset.finetune))


def test_projector_lr_moves_the_projector_at_its_own_rate(
    workspace: Params, tmp_path: Path
) -> None:
    """A vanishing projector_lr in stage 2 leaves the stage-1 projector as it was; the LLM trains."""
    p = variant(
        workspace,
        tmp_path,
        pretrain={"max_steps": 2},
        finetune={"max_steps": 3, "lr": 2e-3, "projector_lr": 1e-12},
    )
    train(p, "pretrain")
    train(p, "finetune")
    stage1 = load_file(Path(p.paths.pretrain) / "projector.safetensors")
    stage2 = load_file(Path(p.paths.finetune) / "projector.safetensors")
    for k in stage1:
        torch.testing.assert_close(stage2[k], stage1[k], rtol=0, atol=1e-9)
    saved = load_file(Path(p.paths.finetune) / "llm" / "model.safetensors")
    initial = load_file(Path(p.llm.model) / "model.safetensors")
    assert any(not torch.equal(saved[k], initial[k].float()) for k in initial)


class _Payload:
    """Unpickling this calls print — stands for any code a tampered checkpoint would run."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


def test_a_checkpoint_that_would_run_code_is_refused(
    workspace: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = variant(workspace, tmp_path, pretrain={"max_steps": 4, "save_every": 2})
    interrupted(p, "pretrain", after=3)
    last = Path(p.paths.pretrain) / "checkpoints" / "last"
    assert {"rng.json", "rng.safetensors"} <= {f.name for f in last.iterdir()}  # no pickle
    assert not list(last.glob("rng.pt"))
    torch.save({"state": {}, "param_groups": [], "x": _Payload()}, last / "optimizer.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer.pt holds more than tensors"):
        train(p, "pretrain", resume="yes")
    assert "pwned" not in capsys.readouterr().out


def test_deepspeed_checkpoint_files_are_verified_before_loading(tmp_path: Path) -> None:
    from msr.train.engine import verify_deepspeed_checkpoint

    tag = tmp_path / "ds" / "last"
    tag.mkdir(parents=True)
    torch.save(
        {"module": {"w": torch.zeros(2)}, "ds_version": "0.19.8"},
        tag / "mp_rank_00_model_states.pt",
    )
    verify_deepspeed_checkpoint(tag)  # tensors and plain values pass
    torch.save({"optimizer_state_dict": _Payload()}, tag / "zero_pp_rank_0_optim_states.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"optim_states.pt holds more than tensors"):
        verify_deepspeed_checkpoint(tag)


def test_gradient_checkpointing_in_stage_1_changes_nothing(
    workspace: Params, tmp_path: Path
) -> None:
    """Stage 1 honours gradient_checkpointing (the LLM is frozen, the projector's gradient flows
    through it): the same weights as without it."""
    plain = variant(workspace, tmp_path / "a", pretrain={"max_steps": 2, "bf16": False})
    ckpt_on = variant(
        workspace,
        tmp_path / "b",
        pretrain={"max_steps": 2, "bf16": False, "gradient_checkpointing": True},
    )
    calls = []
    from transformers import PreTrainedModel

    original = PreTrainedModel.activation_checkpointing_enable

    def spy(self: PreTrainedModel, *args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        original(self, *args, **kwargs)

    PreTrainedModel.activation_checkpointing_enable = spy  # type: ignore[method-assign]
    try:
        train(plain, "pretrain")
        train(ckpt_on, "pretrain")
    finally:
        PreTrainedModel.activation_checkpointing_enable = original  # type: ignore[method-assign]
    assert len(calls) == 1
    a = load_file(Path(plain.paths.pretrain) / "projector.safetensors")
    b = load_file(Path(ckpt_on.paths.pretrain) / "projector.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_too_many_unusable_samples_stop_with_the_reasons(workspace: Params, tmp_path: Path) -> None:
    """max_length 60 cuts the answers of every instruct sample with an image (14 of 17): stage 2
    stops and names the reason; with data.max_skip_share raised it runs, and its skips.json counts
    and names every skip — met inside a loader worker process."""
    p = variant(workspace, tmp_path, pretrain={"max_steps": 1})
    train(p, "pretrain")
    raw = p.model_dump(mode="json")
    raw["llm"]["max_length"] = 60
    raw["finetune"].update(per_device_batch=1, max_steps=3, loader_workers=1)
    with pytest.raises(
        TooManySkips,
        match=r"finetune \(samples met\): 14 of 17 samples .* were skipped as unusable, more than "
        r"data.max_skip_share=0.01; top reasons: template: max_length=60 cuts into the image tokens: 14",
    ):
        train(parse_params(raw), "finetune")
    raw["data"]["max_skip_share"] = 1.0
    result = train(parse_params(raw), "finetune")
    assert result.skipped == 14 and result.steps == 3
    report = json.loads((Path(p.paths.finetune) / "skips.json").read_text())
    assert report["trained"] == 3 and report["skipped_bad"] == 14
    keys = report["keys"]["template: max_length=60 cuts into the image tokens"]
    assert len(keys) == 14 and all("/" in k for k in keys)


def test_an_experiment_with_another_projector_never_resumes_its_checkpoint(
    workspace: Params, tmp_path: Path
) -> None:
    """What `dvc exp run -S projector.name=...` meets in a persisted out: a checkpoint of another
    projector. `--resume auto` starts over; `--resume yes` refuses."""
    p = variant(workspace, tmp_path, pretrain={"max_steps": 4, "save_every": 2})
    interrupted(p, "pretrain", after=3)
    raw = p.model_dump(mode="json")
    raw["projector"]["name"] = "avgpool"
    other = parse_params(raw)
    with pytest.raises(TrainingError, match="made with other params"):
        train(other, "pretrain", resume="yes")
    result = train(other, "pretrain", resume="auto")
    assert result.resumed_from == 0
    assert pfiles.load_projector(Path(p.paths.pretrain)).name == "avgpool"
