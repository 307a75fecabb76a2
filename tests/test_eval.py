"""Generation and the eval stage on a quickly trained tiny model: batched = batch 1, the response
cache, answer-file guarantees, the report, and `msr predict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msr.config import Params, parse_params
from msr.eval.answers import AnswersError, answer_records, read_answers, write_answers
from msr.eval.benchmarks import make_benchmark
from msr.eval.generate import GenerationArgs, Generator, ResponseCache
from msr.models.mllm import MLLM
from msr.train.loop import train
from stages import eval as eval_stage
from stages import features

QUICK = {
    "log_every": 5,
    "save_every": 1000,
    "loader_workers": 0,
    "shuffle_buffer": 50,
    "per_device_batch": 4,
}


@pytest.fixture(scope="module")
def trained(tiny_workspace: Params, tmp_path_factory: pytest.TempPathFactory) -> Params:
    root = tmp_path_factory.mktemp("trained")
    raw = tiny_workspace.model_dump(mode="json")
    raw["paths"].update(
        features=str(root / "features"),
        pretrain=str(root / "pretrain"),
        finetune=str(root / "finetune"),
        eval=str(root / "eval"),
        reports=str(root / "reports"),
    )
    raw["pretrain"].update(QUICK, max_steps=2)
    raw["finetune"].update(QUICK, max_steps=20)
    raw["eval"].update(limit=12, batch_size=5, max_new_tokens=8)
    params = parse_params(raw)
    features.run(params, workers=0)
    train(params, "pretrain")
    train(params, "finetune")
    return params


@pytest.fixture(scope="module")
def loaded(trained: Params) -> MLLM:
    return MLLM.from_pretrained(trained.paths.finetune, dtype="fp32")


@pytest.mark.parametrize("name", ["synth_mmbench", "synth_gqa"])
def test_batched_equals_batch_of_one(trained: Params, loaded: MLLM, name: str) -> None:
    qs = make_benchmark(name, None, trained.paths.synth).questions()[:10]
    assert len({len(q.text) for q in qs}) > 1  # prompts of different lengths: padding matters
    gen = Generator(loaded, GenerationArgs(max_new_tokens=8))
    assert gen.answer(qs, batch_size=5) == gen.answer(qs, batch_size=1)


def test_cache_generates_only_what_is_new(
    trained: Params, loaded: MLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qs = make_benchmark("synth_gqa", None, trained.paths.synth).questions()[:8]
    cache_file = tmp_path / "cache.jsonl"
    first = Generator(loaded, GenerationArgs(max_new_tokens=8), ResponseCache(cache_file)).answer(
        qs[:5], batch_size=4
    )
    calls: list[int] = []
    original = Generator.generate

    def counting(self: Generator, batch):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(Generator, "generate", counting)
    again = Generator(loaded, GenerationArgs(max_new_tokens=8), ResponseCache(cache_file))
    assert again.answer(qs, batch_size=4)[:5] == first
    assert sum(calls) == 3  # only the 3 new questions
    other_args = Generator(loaded, GenerationArgs(max_new_tokens=4), ResponseCache(cache_file))
    other_args.answer(qs[:2], batch_size=4)
    assert sum(calls) == 5  # other generation arguments are other cache entries


def test_answer_file_of_another_model_is_refused(trained: Params, tmp_path: Path) -> None:
    qs = make_benchmark("synth_gqa", None, trained.paths.synth).questions()[:4]
    path = tmp_path / "answers.jsonl"
    write_answers(path, answer_records(qs, ["yes"] * 4, "model-a"))
    assert read_answers(path, qs, "model-a") == {q.key: "yes" for q in qs}
    with pytest.raises(AnswersError, match=r"another model \(model-a; this model is model-b\)"):
        read_answers(path, qs, "model-b")


def test_missing_answers_are_counted_and_named(trained: Params, tmp_path: Path) -> None:
    qs = make_benchmark("synth_gqa", None, trained.paths.synth).questions()[:5]
    path = tmp_path / "answers.jsonl"
    write_answers(path, answer_records(qs[:3], ["a"] * 3, "m"))
    with pytest.raises(
        AnswersError,
        match=rf"answers 3 of 5 questions; 2 missing: question ids {qs[3].qid}, {qs[4].qid}",
    ):
        read_answers(path, qs, "m")


def test_eval_stage_writes_answers_and_reports(trained: Params, tmp_path: Path) -> None:
    summary = eval_stage.run(trained)
    assert set(summary["benchmarks"]) == set(trained.eval.synth)
    for name in trained.eval.synth:
        lines = (Path(trained.paths.eval) / name / "answers.jsonl").read_text().splitlines()
        row = json.loads(lines[0])
        n = len(make_benchmark(name, None, trained.paths.synth).questions())
        assert len(lines) == min(12, n) and set(row) >= {
            "question_id",
            "prompt",
            "text",
            "answer_id",
            "model_id",
        }
    assert (Path(trained.paths.eval) / "synth_gqa" / "testdev_balanced_predictions.json").exists()
    metrics = json.loads((Path(trained.paths.reports) / "eval.json").read_text())
    assert "adversarial/f1" in metrics["benchmarks"]["synth_pope"] and metrics["avg"] is None
    md = (Path(trained.paths.reports) / "eval.md").read_text()
    assert "| this run | `ms_resampler` | 36 |" in md and "majority baseline" in md
    raw = trained.model_dump(mode="json")
    raw["eval"]["reference"] = str(Path(trained.paths.reports) / "eval.json")
    again = eval_stage.run(
        parse_params(raw)
    )  # cached: nothing regenerated, Avg. = 100 against itself
    scored = [v for v in again["headline"].values() if v]
    assert again["avg"] == pytest.approx(100.0) if scored else again["avg"] is None


def test_predict_cli(trained: Params, tmp_path: Path) -> None:
    import yaml

    from cli import app

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(trained.model_dump(mode="json")))
    image = next((Path(trained.paths.synth) / "eval" / "gqa" / "data" / "images").glob("*.jpg"))
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--params",
            str(params_file),
            "--image",
            str(image),
            "--question",
            "What color is the background?",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip()
    missing = CliRunner().invoke(
        app, ["predict", "--params", str(params_file), "--image", "nope.jpg", "--question", "q"]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output
