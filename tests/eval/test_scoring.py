"""Golden cases for every scorer, written from the official definitions (EvalAI / m4c_evaluator,
LLaVA's eval_pope.py, eval_science_qa.py, MME calculation.py, MMBench circular evaluation, GQA's
eval.py, SEED conversion, OCRBench)."""

from __future__ import annotations

import pytest

from msr.eval.scoring import (
    choice_letter,
    gqa_match,
    mmbench_circular,
    mme_label,
    mme_score,
    normalize_answer,
    ocrbench_match,
    pope_metrics,
    pope_yes,
    seed_match,
    sqa_parse,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),  # number words become digits
        ("Ten Dogs.", "10 dogs"),  # a final period is stripped
        ("the cat", "cat"),  # articles dropped
        ("An apple", "apple"),
        ("1,000", "1000"),  # commas are dropped before punctuation handling
        ("3.5", "3.5"),  # a period between digits stays
        ("dont", "don't"),  # contractions restored
        ("yes!", "yes"),
        ("left-hand", "left hand"),  # punctuation between words becomes a space
        ("  Red\n", "red"),
        ("what?", "what"),
        ("it's", "it 's"),  # EvalAI splits the possessive
    ],
)
def test_evalai_normalization(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize(
    ("matches", "score"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_soft_score_leave_one_out(matches: int, score: float) -> None:
    """Mean over the 10 leave-one-out subsets of min(1, matches/3)."""
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("Cat.", answers) == pytest.approx(score)


def test_vqa_needs_ten_answers() -> None:
    with pytest.raises(ValueError, match="10 human answers"):
        vqa_accuracy("a", ["a"] * 3)


@pytest.mark.parametrize(
    ("text", "yes"),
    [
        ("Yes", True),
        ("Yes, there is a dog.", True),
        ("No", False),
        ("No.", False),
        ("no, there isn't.", False),
        ("There is not a dog.", False),
        ("Yes. No.", True),
        ("I don't know", True),
        ("Nope", True),
        ("NO", True),
    ],
)
def test_pope_parsing(text: str, yes: bool) -> None:
    """First sentence, commas removed, the words No / no / not mean no — everything else is yes."""
    assert pope_yes(text) is yes


def test_pope_metrics() -> None:
    m = pope_metrics(["Yes", "Yes", "No", "No", "Yes"], ["yes", "no", "no", "yes", "yes"])
    # TP 2, FP 1, TN 1, FN 1
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == pytest.approx(3 / 5)
    assert pope_metrics(["No", "No"], ["yes", "no"])["precision"] == 0.0  # no positive predictions
    with pytest.raises(ValueError, match="zips them by position"):
        pope_metrics(["Yes"], ["yes", "no"])


@pytest.mark.parametrize(
    ("text", "choices", "letter"),
    [
        ("A", 4, "A"),
        ("B. Paris", 4, "B"),
        ("The answer is C.", 4, "C"),
        ("The answer is C. The answer is D.", 4, "FAILED"),
        ("E", 4, "FAILED"),
        ("a", 4, "FAILED"),
        ("B.Paris", 4, "FAILED"),
        ("I think the answer is B", 4, "FAILED"),
        ("D", 4, "D"),
        ("D", 3, "FAILED"),
    ],
)
def test_sqa_parse(text: str, choices: int, letter: str) -> None:
    assert sqa_parse(text, choices) == letter


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes, it is.", "yes"),
        ("Nope.", "no"),
        ("Maybe", "other"),
        ("The answer is yes", "other"),
    ],
)
def test_mme_label(text: str, label: str) -> None:
    assert mme_label(text) == label


def test_mme_score_acc_plus_pairs_questions_of_an_image() -> None:
    rows = [
        ("existence", "1.jpg", "Yes", "Yes"),
        ("existence", "1.jpg", "No", "No"),  # both right
        ("existence", "2.jpg", "Yes", "Yes"),
        ("existence", "2.jpg", "No", "Yes"),  # one right
        ("code_reasoning", "3.png", "No", "No"),
        ("code_reasoning", "3.png", "Yes", "No"),
    ]
    s = mme_score(rows)
    assert s["existence"] == pytest.approx(100 * 3 / 4 + 100 * 1 / 2)
    assert s["code_reasoning"] == pytest.approx(50.0)
    assert s["perception"] == s["existence"] and s["cognition"] == s["code_reasoning"]


def test_mmbench_circular() -> None:
    acc, per_q = mmbench_circular(
        [(5, True), (1_000_005, True), (2_000_005, False), (7, True), (1_000_007, True)]
    )
    assert per_q == {5: False, 7: True} and acc == 0.5


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        ("D) red", "D"),
        ("A: gray", "A"),
        ("red", "A"),
        ("Red.", "A"),
        ("Both", None),
        ("", None),
    ],
)
def test_choice_letter(text: str, letter: str | None) -> None:
    assert choice_letter(text, {"A": "red", "B": "blue", "C": "green", "D": "gray"}) == letter


def test_gqa_seed_ocrbench_rules() -> None:
    assert (
        gqa_match("Yes.", "yes")
        and gqa_match("left", "left")
        and not gqa_match("on the left", "left")
    )
    assert seed_match("A", "A") and not seed_match("A.", "A")
    assert ocrbench_match("The sign says STOP here", "stop")
    assert ocrbench_match("x", ["nope", "X"]) and not ocrbench_match("x", ["nope"])
    assert ocrbench_match("a + b = c", "a+b=c", "HME100k") and not ocrbench_match(
        "A+B=C", "a+b=c", "HME100k"
    )
