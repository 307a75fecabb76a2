"""Generation and the eval stage on a quickly trained tiny model: batched = batch 1, the response
cache, answer-file guarantees, the report, and `msr predict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msr.config import Params, parse_params
from msr.eval.answers import (
    AnswersError,
    answer_records,
    answer_spread,
    read_answers,
    write_answers,
)
from msr.eval.benchmarks import make_benchmark
from msr.eval.generate import FeatureMemo, GenerationArgs, Generator, ResponseCache
from msr.models.mllm import MLLM
from msr.train.loop import train
from stages import eval as eval_stage
from stages import features
from tests.conftest import relocated

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
    raw = relocated(tiny_workspace, root, "features", "pretrain", "finetune", "eval", "reports")
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


def test_each_distinct_image_is_encoded_once(
    trained: Params, loaded: MLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    qs = make_benchmark("synth_pope", None, trained.paths.synth).questions()[:24]
    distinct = {q.image.digest() for q in qs if q.image is not None}
    assert len(distinct) < len(qs)  # POPE asks several questions of each image
    lone = [Generator(loaded, GenerationArgs(max_new_tokens=4)).answer([q], 1)[0] for q in qs]
    encoded: list[int] = []
    original = MLLM.encode_images

    def counting(self: MLLM, pixels):  # type: ignore[no-untyped-def]
        encoded.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(MLLM, "encode_images", counting)
    gen = Generator(loaded, GenerationArgs(max_new_tokens=4))
    assert gen.answer(qs, batch_size=5) == lone  # features from the memo answer alike
    assert sum(encoded) == len(distinct) == gen.memo.misses
    assert gen.memo.hits == len(qs) - len(distinct)
    tight = Generator(loaded, GenerationArgs(max_new_tokens=4), memo=FeatureMemo(max_bytes=0))
    assert tight.answer(qs, batch_size=5) == lone  # a memo of one entry: re-encodes, same answers
    assert len(tight.memo.entries) == 1


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


def test_answer_spread_names_a_collapse() -> None:
    spread = answer_spread([" B", "b", "B.", "A", "B "], ["A", "B", "C", "D", "A"])
    assert spread == {
        "top": "b",
        "top_share": 60.0,  # "B." is another answer: only whitespace and case are folded
        "distinct": 3,
        "gold_top": "a",
        "gold_top_share": 40.0,
    }
    assert "gold_top" not in answer_spread(["yes"], [["yes", "yes", "no"]])  # VQA's 10 answers
    assert answer_spread([]) == {"top": None, "top_share": 0.0, "distinct": 0}


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
    assert "| this run | `ms_resampler` | 36 |" in md and "| majority | question-blind |" in md
    assert "## 95 % intervals" in md
    items = json.loads((Path(trained.paths.reports) / "eval_items.json").read_text())
    for name in trained.eval.synth:  # an interval for every set, from the units behind it
        iv, units = metrics["intervals"][name], items[name]
        assert iv["lo"] <= iv["value"] <= iv["hi"] and iv["n"] == len(units["scores"])
        assert iv["value"] == pytest.approx(100 * sum(units["scores"]) / len(units["scores"]))
        for cat in metrics["categories"].get(name, {}).values():
            assert cat["lo"] <= cat["acc"] <= cat["hi"]
    paired = {t: v for t, v in metrics["categories"]["synth_gqa"].items() if "pairs" in v}
    assert paired  # the first 12 questions (eval.limit) hold pairs of some types
    for v in paired.values():  # minimal pairs: a question-blind policy gets at most half
        assert v["blind"] <= 50.0 and 0 <= v["pair_lo"] <= v["pair_acc"] <= v["pair_hi"]
    assert "## Answer spread" in md
    for name in trained.eval.synth:  # the spread is of this run's own answers
        lines = (Path(trained.paths.eval) / name / "answers.jsonl").read_text().splitlines()
        texts = [json.loads(line)["text"] for line in lines]
        assert metrics["answers"][name] == {
            **answer_spread(texts),
            **{k: v for k, v in metrics["answers"][name].items() if k.startswith("gold")},
        }
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
    from msr.eval.benchmarks import ImageRef, Question
    from msr.eval.generate import GenerationArgs, Generator
    from msr.models.mllm import MLLM

    q = "What color is the background?"
    loaded = MLLM.from_pretrained(Path(trained.paths.finetune), dtype=trained.eval.dtype)
    gen = Generator(loaded, GenerationArgs(max_new_tokens=trained.eval.max_new_tokens))
    expected = gen.answer([Question("q", "q", q, q, ImageRef(image))], batch_size=1)[0]
    assert result.stdout.strip() == expected.strip()  # the model's answer (a tiny one may be "")
    missing = CliRunner().invoke(
        app, ["predict", "--params", str(params_file), "--image", "nope.jpg", "--question", "q"]
    )
    assert missing.exit_code == 2 and "missing image: nope.jpg" in missing.output


def test_predict_answers_a_jsonl_in_order(trained: Params, tmp_path: Path) -> None:
    """`msr predict --input q.jsonl --output a.jsonl`: every line answered, in order, ids kept,
    each answer the one `msr predict --image --question` gives; bad lines named before any model
    loads, and no answers file written."""
    import json

    import yaml

    from cli import app

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(trained.model_dump(mode="json")))
    images = sorted((Path(trained.paths.synth) / "eval" / "gqa" / "data" / "images").glob("*.jpg"))
    folder = tmp_path / "asks"
    folder.mkdir()
    rows = []
    for i, image in enumerate(images[:3]):
        (folder / image.name).write_bytes(image.read_bytes())
        rows.append(
            {"id": f"q{i}", "image": image.name, "question": "What color is the background?"}
        )
    rows.append({"question": "Is there a red shape?", "image": images[0].name})  # no id: its line
    (folder / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "a.jsonl"
    args = ["predict", "--params", str(params_file), "--input", str(folder / "q.jsonl")]
    result = CliRunner().invoke(app, [*args, "--output", str(out), "--batch", "2"])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == ["q0", "q1", "q2", 4]
    for a, r in zip(answers, rows, strict=True):
        single = CliRunner().invoke(app, ["predict", "--params", str(params_file), "--image",
                                          str(folder / r["image"]), "--question", r["question"]])  # fmt: skip
        assert a["answer"] == single.stdout.strip()
    (folder / "bad.jsonl").write_text(
        '{"question": "ok?", "image": "nope.jpg"}\nnot json\n{"image": "x.jpg"}\n'
    )
    bad = CliRunner().invoke(
        app,
        [*args[:3], "--input", str(folder / "bad.jsonl"), "--output", str(tmp_path / "b.jsonl")],
    )
    assert bad.exit_code == 2, bad.output
    for part in ("3 bad line(s)", "line 1: missing image", "line 2: not json", "line 3: needs"):
        assert part in " ".join(bad.output.split()), bad.output
    assert not (tmp_path / "b.jsonl").exists()
    both = CliRunner().invoke(app, [*args, "--image", str(images[0]), "--question", "q"])
    assert both.exit_code == 2 and "give --image and --question, or --input" in both.output


def write_custom_set(trained: Params, root: Path, metric: str = "exact_match") -> dict[str, str]:
    """A custom set made of the synthetic GQA questions, in the custom-set file format."""
    qs = make_benchmark("synth_gqa", None, trained.paths.synth).questions()[:9]
    images = root / "images"
    images.mkdir(parents=True)
    questions, answers = [], []
    for n, q in enumerate(qs):
        assert q.image is not None and q.image.path is not None
        name = f"img{n}{q.image.path.suffix}"
        (images / name).write_bytes(q.image.path.read_bytes())
        questions.append({"question_id": n, "image": name, "text": q.text, "category": q.category})
        answers.append({"question_id": n, "answer": [str(q.gold)]})
    (root / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))
    (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in answers))
    return {"name": "my_set", "questions": str(root / "q.jsonl"), "answers": str(root / "a.jsonl"),
            "images": str(images), "metric": metric}  # fmt: skip


def test_a_custom_eval_set_is_scored_and_reported(trained: Params, tmp_path: Path) -> None:
    from msr.eval.scoring import normalize_answer

    spec = write_custom_set(trained, tmp_path / "set")
    n = len(Path(spec["questions"]).read_text().splitlines())
    raw = trained.model_dump(mode="json")
    raw["paths"].update(eval=str(tmp_path / "eval"), reports=str(tmp_path / "reports"))
    raw["eval"].update(synth=[], custom=[spec])
    summary = eval_stage.run(parse_params(raw))
    assert summary is not None and summary["benchmarks"]["my_set"]["n"] == n
    cats = summary["categories"]["my_set"]
    assert cats and all({"n", "acc", "majority"} <= set(v) for v in cats.values())
    rows = [
        json.loads(x) for x in (tmp_path / "eval/my_set/answers.jsonl").read_text().splitlines()
    ]
    lines = Path(spec["answers"]).read_text().splitlines()
    gold = {json.loads(x)["question_id"]: json.loads(x)["answer"] for x in lines}
    hits = [
        normalize_answer(r["text"]) == normalize_answer(gold[r["question_id"]][0]) for r in rows
    ]
    assert summary["headline"]["my_set"] == pytest.approx(100 * sum(hits) / n)
    assert "my_set" in (tmp_path / "reports" / "eval.md").read_text()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda q, a: q.write_text(q.read_text() + "{not json\n"), r"q.jsonl:\d+: not valid json"),
        (
            lambda q, a: a.write_text("".join(a.read_text().splitlines(True)[1:])),
            r"question_id 0 has no line in",
        ),
        (
            lambda q, a: q.write_text(q.read_text().replace('"text"', '"txt"', 1)),
            r"q.jsonl:1: missing field 'text'",
        ),
        (
            lambda q, a: a.write_text(a.read_text().replace('["', '[1, "', 1)),
            r"a.jsonl:1: answer must be a string",
        ),
    ],
)
def test_a_malformed_custom_set_is_a_clear_error(
    trained: Params, tmp_path: Path, damage, message
) -> None:  # type: ignore[no-untyped-def]
    from msr.eval.benchmarks.custom import Custom, CustomSetError

    spec = write_custom_set(trained, tmp_path)
    damage(Path(spec["questions"]), Path(spec["answers"]))
    raw = trained.model_dump(mode="json")
    raw["eval"]["custom"] = [spec]
    with pytest.raises(CustomSetError, match=message):
        Custom(parse_params(raw).eval.custom[0]).questions()


def test_choice_metric_needs_letters(trained: Params, tmp_path: Path) -> None:
    from msr.eval.benchmarks.custom import Custom, CustomSetError

    spec = write_custom_set(trained, tmp_path, metric="choice")
    raw = trained.model_dump(mode="json")
    raw["eval"]["custom"] = [spec]
    with pytest.raises(CustomSetError, match=r"metric 'choice' needs an option letter"):
        Custom(parse_params(raw).eval.custom[0]).questions()
