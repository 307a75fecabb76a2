"""Questions about a scene, derived from the scene alone, asked as minimal pairs.

A question *type* is one question form ("What color is the {kind}?"); a *category* groups types as
the evaluation sets report them (local attribute, glyph, counting, spatial, existence, global).
Every type whose answer depends on a content word of the question is asked as a **minimal pair**:
the same image, two content words, two different gold answers. A policy that gives one answer per
image and type gets no pair right and at most half the questions (VQA v2's complementary pairs,
https://arxiv.org/abs/1612.00837, are the idea).

`choices` is the answer's own vocabulary for multiple choice (answer first, distractors after);
where the options go is decided by `LetterBalancer`, so every letter is gold equally often.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from msr.data.synth.scene import GLYPHS, Scene, Shape

# what a caption answers (it names every shape, its size and colour and the background, not where
# the shapes are)
CAPTION_CATEGORIES = ("global", "local_attribute", "counting", "existence")

CATEGORIES = ("local_attribute", "glyph", "counting", "spatial", "existence", "global")
LABELS = {
    "local_attribute": "local attribute",
    "glyph": "glyph reading",
    "counting": "counting",
    "spatial": "spatial relation",
    "existence": "existence",
    "global": "global",
}
# question type -> category; the paired types need the question to be read
TYPES: dict[str, str] = {
    "background": "global",  # What color is the background?  (no content word: one question)
    "attribute": "local_attribute",  # What color is the {kind}?  (two kinds of different colours)
    "count": "counting",  # How many {kind}s are there?  (two kinds with different counts)
    "side": "spatial",  # Which side of the image is the {kind} on?  (one left, one right)
    "relation": "spatial",  # Is the {a} to the left of / above the {b}?  (a, b swapped)
    "exist": "existence",  # Is there a {colour} shape?  (a shape's colour; one nowhere)
    "exist_decoy": "existence",  # the "no" colour is only the glyph's or the background's
    "glyph": "glyph",  # What letter or digit is written in the image?  (one question)
}
PAIRED = ("attribute", "count", "side", "relation", "exist", "exist_decoy")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
MAX_COUNT = 8


@dataclass(frozen=True)
class QA:
    question: str
    answer: str  # canonical short answer, lowercase ("red", "yes", "3", "k")
    category: str
    choices: tuple[str, ...] = ()  # multiple choice: the answer first, then its distractors
    type: str = ""  # the question form (TYPES); "" for questions made outside this module

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}; known: {', '.join(CATEGORIES)}")
        if self.type and TYPES.get(self.type) != self.category:
            raise ValueError(
                f"question type {self.type!r} is not of category {self.category!r}; "
                f"types: {', '.join(f'{t} ({c})' for t, c in TYPES.items())}"
            )


@dataclass(frozen=True)
class Vocab:
    """What answers and distractors are drawn from: shape colours, background colours, counts."""

    colors: tuple[str, ...]
    backgrounds: tuple[str, ...]


def _options(rng: random.Random, answer: str, pool: Sequence[str], n: int = 4) -> tuple[str, ...]:
    """The answer first, then up to n − 1 distractors from its own vocabulary."""
    others = [p for p in dict.fromkeys(pool) if p != answer]
    return (answer, *rng.sample(others, min(n - 1, len(others))))


def unique_kinds(scene: Scene) -> list[str]:
    counts = Counter(s.kind for s in scene.shapes)
    return sorted(k for k, n in counts.items() if n == 1)


def _only(scene: Scene, kind: str) -> Shape:
    return next(s for s in scene.shapes if s.kind == kind)


def _side(scene: Scene, s: Shape) -> str | None:
    third = scene.image_size / 3
    return "left" if s.cx < third else "right" if s.cx > 2 * third else None


def _pair(rng: random.Random, first: QA, second: QA) -> tuple[QA, ...]:
    assert first.answer != second.answer, (first, second)
    return (first, second) if rng.random() < 0.5 else (second, first)


def ask_background(rng: random.Random, scene: Scene, vocab: Vocab) -> tuple[QA, ...]:
    bg = scene.background
    return (
        QA(
            "What color is the background?",
            bg,
            "global",
            _options(rng, bg, vocab.backgrounds),
            "background",
        ),
    )


def ask_attribute(rng: random.Random, scene: Scene, vocab: Vocab) -> tuple[QA, ...]:
    """The colours of two uniquely-shaped objects whose colours differ."""
    kinds = unique_kinds(scene)
    pairs = [
        (a, b)
        for i, a in enumerate(kinds)
        for b in kinds[i + 1 :]
        if _only(scene, a).color != _only(scene, b).color
    ]
    if not pairs:
        return ()
    a, b = rng.choice(pairs)
    qa = [
        QA(
            f"What color is the {k}?",
            _only(scene, k).color,
            "local_attribute",
            _options(rng, _only(scene, k).color, vocab.colors),
            "attribute",
        )
        for k in (a, b)
    ]
    return _pair(rng, *qa)


def ask_count(rng: random.Random, scene: Scene, vocab: Vocab) -> tuple[QA, ...]:
    """How many of two kinds, both present, with different counts."""
    counts = Counter(s.kind for s in scene.shapes)
    pairs = [
        (a, b) for a in sorted(counts) for b in sorted(counts) if a < b and counts[a] != counts[b]
    ]
    if not pairs:
        return ()
    numbers = [str(i) for i in range(1, MAX_COUNT + 1)]
    qa = [
        QA(
            f"How many {PLURALS.get(k, k + 's')} are there?",
            str(counts[k]),
            "counting",
            _options(rng, str(counts[k]), numbers),
            "count",
        )
        for k in rng.choice(pairs)
    ]
    return _pair(rng, *qa)


def ask_side(rng: random.Random, scene: Scene, vocab: Vocab) -> tuple[QA, ...]:
    """Which half of the image, for two uniquely-shaped objects on opposite sides."""
    kinds = unique_kinds(scene)
    left = [k for k in kinds if _side(scene, _only(scene, k)) == "left"]
    right = [k for k in kinds if _side(scene, _only(scene, k)) == "right"]
    if not left or not right:
        return ()
    qa = [
        QA(
            f"Which side of the image is the {k} on?",
            side,
            "spatial",
            (side, "right" if side == "left" else "left"),
            "side",
        )
        for k, side in ((rng.choice(left), "left"), (rng.choice(right), "right"))
    ]
    return _pair(rng, *qa)


def ask_relation(rng: random.Random, scene: Scene, vocab: Vocab) -> tuple[QA, ...]:
    """Is a left of (above) b, and is b left of (above) a: two uniquely-shaped objects apart."""
    kinds = unique_kinds(scene)
    margin = 0.12 * scene.image_size
    found = []
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            sa, sb = _only(scene, a), _only(scene, b)
            if abs(sa.cx - sb.cx) >= margin:
                found.append((a, b, "to the left of", sa.cx < sb.cx))
            if abs(sa.cy - sb.cy) >= margin:
                found.append((a, b, "above", sa.cy < sb.cy))
    if not found:
        return ()
    a, b, rel, a_first = rng.choice(found)
    yes_no = {True: "yes", False: "no"}
    qa = [
        QA(
            f"Is the {x} {rel} the {y}?",
            yes_no[truth],
            "spatial",
            (yes_no[truth], yes_no[not truth]),
            "relation",
        )
        for x, y, truth in ((a, b, a_first), (b, a, not a_first))
    ]
    return _pair(rng, *qa)


def _exist_pair(
    rng: random.Random, scene: Scene, absent: Sequence[str], kind: str
) -> tuple[QA, ...]:
    present = sorted(scene.colors)
    if not present or not absent:
        return ()
    qa = [
        QA(f"Is there a {c} shape in the image?", gold, "existence", (gold, other), kind)
        for c, gold, other in (
            (rng.choice(present), "yes", "no"),
            (rng.choice(sorted(absent)), "no", "yes"),
        )
    ]
    return _pair(rng, *qa)


def decoy_colors(scene: Scene, vocab: Vocab) -> list[str]:
    """Shape colours that no shape has but the glyph or the background does."""
    decoys = {scene.background} | ({scene.glyph.color} if scene.glyph else set())
    return sorted(c for c in decoys if c in vocab.colors and c not in scene.colors)


def ask_exist(rng: random.Random, scene: Scene, vocab: Vocab) -> tuple[QA, ...]:
    """A colour some shape has (yes), a colour nothing in the image has (no)."""
    taken = scene.colors | {scene.background} | ({scene.glyph.color} if scene.glyph else set())
    return _exist_pair(rng, scene, [c for c in vocab.colors if c not in taken], "exist")


def ask_exist_decoy(rng: random.Random, scene: Scene, vocab: Vocab) -> tuple[QA, ...]:
    """A colour some shape has (yes), a colour only the glyph or the background has (no)."""
    return _exist_pair(rng, scene, decoy_colors(scene, vocab), "exist_decoy")


def ask_glyph(rng: random.Random, scene: Scene, vocab: Vocab) -> tuple[QA, ...]:
    if scene.glyph is None:
        return ()
    char = scene.glyph.char.lower()
    pool = [c.lower() for c in GLYPHS]
    return (
        QA(
            "What letter or digit is written in the image?",
            char,
            "glyph",
            _options(rng, char, pool),
            "glyph",
        ),
    )


Asker = Callable[[random.Random, Scene, Vocab], tuple[QA, ...]]
ASKERS: dict[str, Asker] = {
    "background": ask_background,
    "attribute": ask_attribute,
    "count": ask_count,
    "side": ask_side,
    "relation": ask_relation,
    "exist": ask_exist,
    "exist_decoy": ask_exist_decoy,
    "glyph": ask_glyph,
}
assert set(ASKERS) == set(TYPES)


def types_of(category: str) -> list[str]:
    return [t for t, c in TYPES.items() if c == category]


def ask_type(rng: random.Random, scene: Scene, qtype: str, vocab: Vocab) -> tuple[QA, ...]:
    """The questions of one type about `scene`: a minimal pair for a paired type, one question for
    the others, or () if the scene cannot support the type."""
    if qtype not in ASKERS:
        raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(ASKERS)}")
    return ASKERS[qtype](rng, scene, vocab)


def ask_category(rng: random.Random, scene: Scene, category: str, vocab: Vocab) -> tuple[QA, ...]:
    """The questions of one type of `category` that the scene supports (types tried in random
    order), or ()."""
    for qtype in rng.sample(types_of(category), len(types_of(category))):
        qas = ask_type(rng, scene, qtype, vocab)
        if qas:
            return qas
    return ()


def caption(scene: Scene) -> str:
    """A short, complete description: every shape with size and colour, the background, the glyph."""
    parts = [f"a {s.size} {s.color} {s.kind}" for s in scene.shapes]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text += f" on a {scene.background} background"
    if scene.glyph is not None:
        kind = "digit" if scene.glyph.char.isdigit() else "letter"
        text += f", with the {scene.glyph.color} {kind} {scene.glyph.char}"
    return text


class LetterBalancer:
    """Where the gold option goes: each block of n questions with n options puts the gold at every
    letter once, in a random order, so every letter is gold equally often (to within one block)
    and no letter can be learned instead of the options (https://arxiv.org/abs/2210.12353)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pending: dict[int, list[int]] = {}

    def position(self, n: int) -> int:
        block = self.pending.get(n)
        if not block:
            block = self.pending[n] = self.rng.sample(range(n), n)
        return block.pop()

    def order(self, qa: QA) -> tuple[str, ...]:
        """The options of `qa` in the order they are shown: the distractors shuffled, the gold at
        the balanced position."""
        others = list(qa.choices[1:])
        self.rng.shuffle(others)
        others.insert(self.position(len(qa.choices)), qa.answer)
        return tuple(others)


def mc_options(qa: QA, options: Sequence[str] | None = None) -> tuple[str, str]:
    """The options lines as evaluation writes them ("\\nA. red\\nB. blue") and the gold letter;
    `options` in the order shown (default: `qa.choices` as they are)."""
    shown = list(options if options is not None else qa.choices)
    letters = "ABCD"[: len(shown)]
    lines = "".join(f"\n{k}. {c}" for k, c in zip(letters, shown, strict=True))
    return lines, letters[shown.index(qa.answer)]


def display(answer: str) -> str:
    """How an assistant says a short answer in the training conversations: capitalised."""
    return answer[:1].upper() + answer[1:]
