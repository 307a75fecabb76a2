"""Benchmark adapters on their real file layouts: questions, prompts, official scores, answer files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msr.config import Params
from msr.eval.benchmarks import REAL, SYNTH, BenchmarkMissing, make_benchmark
from tests.eval.eval_fixtures import MC, make_eval_root


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("eval")
    return root, make_eval_root(root)


FULL = {
    "sqa": ("img_acc", 100.0),
    "mme": ("perception", 200.0),
    "seed": ("image_acc", 100.0),
    "mmstar": ("avg", 100.0),
    "ocrbench": ("total", 2.0),
    "vqav2": ("val_acc", 100.0),
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_gold_answers_score_full_marks(
    eval_root: tuple[Path, dict], name: str, tmp_path: Path
) -> None:
    root, gold = eval_root
    bench = make_benchmark(name, root, root)
    qs = bench.questions()
    assert {q.key for q in qs} == set(gold[name])
    metrics = bench.metrics(qs, {q.key: gold[name][q.key] for q in qs})
    metric, best = FULL[name]
    assert metrics[metric] == pytest.approx(best)
    wrong = bench.metrics(qs, {q.key: "zzz" for q in qs})
    assert wrong[metric] == pytest.approx(0.0)


def test_sqa_prompt_and_img_acc(eval_root: tuple[Path, dict]) -> None:
    root, _ = eval_root
    qs = {q.key: q for q in make_benchmark("sqa", root, root).questions()}
    assert qs["10"].text == "Which?\nA. cat\nB. dog" + MC
    assert qs["10"].prompt.startswith("<image>\n") and qs["12"].image is None
    m = make_benchmark("sqa", root, root).metrics(
        list(qs.values()), {"10": "B", "11": "C", "12": "A"}
    )
    assert m["img_acc"] == pytest.approx(50.0) and m["acc"] == pytest.approx(200 / 3)


def test_mme_writes_the_official_answer_files(eval_root: tuple[Path, dict], tmp_path: Path) -> None:
    root, gold = eval_root
    bench = make_benchmark("mme", root, root)
    qs = bench.questions()
    records = [{"question_id": q.qid, "text": gold["mme"][q.key]} for q in qs]
    paths = bench.write_answers(tmp_path, qs, records)
    existence = (tmp_path / "eval_tool" / "answers" / "existence.txt").read_text().splitlines()
    assert (
        len(paths) == 2
        and existence[0] == "e1.txt\tIs there a cat? Please answer yes or no.\tYes\tYes"
    )


def test_vqav2_submission_covers_every_test_question(
    eval_root: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = eval_root
    bench = make_benchmark("vqav2", root, root)
    qs = bench.questions()
    records = [{"question_id": q.qid, "text": "Two."} for q in qs]
    (path,) = bench.write_answers(tmp_path, qs, records)
    assert json.loads(path.read_text()) == [
        {"question_id": 1, "answer": "2"},
        {"question_id": 3, "answer": ""},
    ]


def test_mmvet_is_not_scored_but_answers_are_written(
    eval_root: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = eval_root
    bench = make_benchmark("mmvet", root, root)
    qs = bench.questions()
    assert bench.metrics(qs, {"0": "x"}) == {}
    assert bench.items(qs, {"0": "x"})["scores"] == []  # no units: no interval, no paired test
    (path,) = bench.write_answers(tmp_path, qs, [{"question_id": 0, "text": "A picture."}])
    assert json.loads(path.read_text()) == {"v1_0": "A picture."}


@pytest.mark.parametrize("name", sorted(REAL))
def test_missing_directory_lists_expected_files(name: str, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkMissing, match=r"expected file\(s\) missing under .*It reads"):
        make_benchmark(name, tmp_path, tmp_path).questions()


def test_missing_eval_root() -> None:
    with pytest.raises(BenchmarkMissing, match=r"needs eval\.root"):
        make_benchmark("gqa", None, ".")


def test_unknown_benchmark() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'vizwiz'"):
        make_benchmark("vizwiz", ".", ".")


# ---- the synthetic sets, through the same adapters --------------------------------------------


@pytest.mark.parametrize("name", sorted(SYNTH))
def test_synthetic_sets_score_perfectly_with_gold(tiny_workspace: Params, name: str) -> None:
    bench = make_benchmark(name, None, tiny_workspace.paths.synth)
    qs = bench.questions()
    answers = {q.key: (bench.gold_text(q) if name != "synth_mmbench" else q.gold) for q in qs}
    metrics = bench.metrics(qs, answers)
    assert metrics[bench.main] == pytest.approx(100.0)
    cats = bench.per_category(qs, answers)
    assert cats and all(
        v["acc"] == pytest.approx(100.0) and 0 < v["majority"] <= 100 for v in cats.values()
    )


def test_pope_majority_baseline_is_half(tiny_workspace: Params) -> None:
    bench = make_benchmark("synth_pope", None, tiny_workspace.paths.synth)
    qs = bench.questions()
    cats = bench.per_category(qs, {q.key: "yes" for q in qs})
    assert cats["existence"]["majority"] == pytest.approx(50.0) and cats["existence"][
        "acc"
    ] == pytest.approx(50.0)
    m = bench.metrics(qs, {q.key: "Yes" for q in qs})
    assert m["random/yes_ratio"] == 1.0 and m["random/recall"] == pytest.approx(100.0)


def test_mmbench_prompt_matches_llava(tiny_workspace: Params) -> None:
    qs = make_benchmark("synth_mmbench", None, tiny_workspace.paths.synth).questions()
    q = next(q for q in qs if int(q.qid) % 1_000_000 == 0)
    assert (
        q.text == q.prompt + MC
        and "\nA. " in q.prompt
        and q.image is not None
        and q.image.open().size == (336, 336)
    )
