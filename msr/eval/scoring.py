"""Scorers equal to each benchmark's official rule (the rule LLaVA-1.5's evaluation applies).

- `vqa_accuracy`: EvalAI's answer processor (as in m4c_evaluator / VQA eval) and the soft score
  min(1, matches/3) averaged over the ten leave-one-out subsets of the ten human answers.
- `pope_metrics`: LLaVA's eval_pope parsing and accuracy / precision / recall / F1 / yes-ratio.
- `sqa_parse`: eval_science_qa's letter parsing; `mme_score`: MME's calculation.py;
  `mmbench_circular`: every rotated copy must be right; `gqa_match`: exact match after
  `rstrip('.').lower()`; `seed_match`: exact text; `ocrbench_match`: the OCRBench substring rule;
  `choice_letter`: letter extraction for MMBench / MMStar style answers.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

# ---- EvalAI answer processing (VQAv2 / TextVQA) --------------------------------------------------

CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
NUMBER_MAP = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATIONS = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def normalize_answer(text: str) -> str:
    """EvalAI's answer processor: lowercase, punctuation, digit commas, periods, number words,
    articles, contractions."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in PUNCTUATIONS:
        if (p + " " in text or " " + p in text) or re.search(COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = PERIOD_STRIP.sub("", out)
    words = [NUMBER_MAP.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Soft VQA accuracy of one prediction against the ten human answers."""
    if len(answers) != 10:
        raise ValueError(f"VQA accuracy needs the 10 human answers, got {len(answers)}")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)


# ---- POPE -------------------------------------------------------------------------------------


def pope_yes(text: str) -> bool:
    """LLaVA's POPE parsing: first sentence, commas removed; a word No/no/not means no."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def pope_metrics(texts: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of yes/no answers against 'yes'/'no' labels."""
    if len(texts) != len(labels):
        raise ValueError(
            f"{len(texts)} answers for {len(labels)} labels: POPE zips them by position"
        )
    preds = [pope_yes(t) for t in texts]
    gold = [label == "yes" for label in labels]
    tp = sum(p and g for p, g in zip(preds, gold, strict=True))
    fp = sum(p and not g for p, g in zip(preds, gold, strict=True))
    tn = sum(not p and not g for p, g in zip(preds, gold, strict=True))
    fn = sum(not p and g for p, g in zip(preds, gold, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "acc": (tp + tn) / len(preds),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(preds) / len(preds),
    }


# ---- ScienceQA -------------------------------------------------------------------------------

SQA_OPTIONS = ("A", "B", "C", "D", "E")
_SQA_ANSWER = re.compile(r"The answer is ([A-Z]).")


def sqa_parse(text: str, num_choices: int) -> str:
    """eval_science_qa: an exact letter, "X. …", or a single "The answer is X." — else FAILED.
    A letter outside the question's choices is FAILED too (it can never be right)."""
    if text in SQA_OPTIONS:
        letter = text
    elif len(text) >= 3 and text[0] in SQA_OPTIONS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _SQA_ANSWER.findall(text)
        letter = found[0] if len(found) == 1 else "FAILED"
    return letter if letter in SQA_OPTIONS[:num_choices] else "FAILED"


# ---- MME ---------------------------------------------------------------------------------------

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)


def mme_label(text: str) -> str:
    """calculation.py: 'yes'/'no' if the answer is that, else by its first four characters, else 'other'."""
    pred = text.lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_score(rows: Iterable[tuple[str, str, str, str]]) -> dict[str, float]:
    """rows of (task, image, gold yes/no, prediction) in file order; adjacent rows of an image pair.

    Task score = 100·acc + 100·acc+ (both questions of an image right). Returns every task's score
    plus `perception` (sum of 10 tasks) and `cognition` (sum of 4) over the tasks present.
    """
    by_task: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for task, image, gold, pred in rows:
        by_task[task].append((image, mme_label(pred) == gold.strip().lower()))
    scores: dict[str, float] = {}
    for task, items in by_task.items():
        acc = sum(ok for _, ok in items) / len(items)
        per_image: dict[str, list[bool]] = defaultdict(list)
        for image, ok in items:
            per_image[image].append(ok)
        acc_plus = sum(all(v) for v in per_image.values()) / len(per_image)
        scores[task] = 100 * acc + 100 * acc_plus
    scores["perception"] = sum(scores.get(t, 0.0) for t in MME_PERCEPTION)
    scores["cognition"] = sum(scores.get(t, 0.0) for t in MME_COGNITION)
    return scores


# ---- multiple choice ---------------------------------------------------------------------------

_LETTER = re.compile(r"^\(?([A-F])(?:[\.\):]|\s|$)")


def choice_letter(text: str, options: Mapping[str, str] | None = None) -> str | None:
    """The option a free-form answer picks: a leading letter ("B", "B.", "(B)", "B) …"), else an
    answer equal to one option's text; None when it picks none."""
    text = text.strip()
    m = _LETTER.match(text)
    if m:
        return m.group(1)
    if options:
        norm = text.lower().rstrip(".")
        hits = [k for k, v in options.items() if v.strip().lower().rstrip(".") == norm]
        if len(hits) == 1:
            return hits[0]
    return None


def mmbench_circular(results: Iterable[tuple[int, bool]]) -> tuple[float, dict[int, bool]]:
    """(index, correct) of every copy -> (circular accuracy, per question). Copies share index % 1e6."""
    per_question: dict[int, bool] = {}
    for index, correct in results:
        base = int(index) % 1_000_000
        per_question[base] = per_question.get(base, True) and correct
    if not per_question:
        return 0.0, {}
    return sum(per_question.values()) / len(per_question), per_question


def gqa_match(prediction: str, answer: str) -> bool:
    """convert_gqa_for_eval + eval.py: prediction.rstrip('.').lower() == answer."""
    return prediction.rstrip(".").lower() == answer


def seed_match(prediction: str, answer: str) -> bool:
    """SEED-Bench (LLaVA's convert_seed_for_submission): exact text, so "A." does not match "A"."""
    return prediction == answer


def ocrbench_match(prediction: str, answers: str | Sequence[str], dataset: str = "") -> bool:
    """OCRBench: a gold answer is a substring of the prediction — lowercased; for HME100k spaces
    removed and case kept."""
    golds = [answers] if isinstance(answers, str) else list(answers)
    for gold in golds:
        if dataset == "HME100k":
            g = gold.strip().replace("\n", " ").replace(" ", "")
            p = prediction.strip().replace("\n", " ").replace(" ", "")
        else:
            g = gold.lower().strip().replace("\n", " ")
            p = prediction.lower().strip().replace("\n", " ")
        if g in p:
            return True
    return False
