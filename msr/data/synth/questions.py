"""Questions about a scene, one generator per category; each answer is derived from the scene alone.

Categories (every question has one): local attribute, glyph reading, counting, spatial relation,
existence, global. `choices` carries distractors for multiple-choice formats (answer included).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from msr.data.synth.scene import GLYPHS, Scene

CATEGORIES = ("local_attribute", "glyph", "counting", "spatial", "existence", "global")
LABELS = {
    "local_attribute": "local attribute",
    "glyph": "glyph reading",
    "counting": "counting",
    "spatial": "spatial relation",
    "existence": "existence",
    "global": "global",
}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass(frozen=True)
class QA:
    question: str
    answer: str  # canonical short answer, lowercase ("red", "yes", "3", "k")
    category: str
    choices: tuple[str, ...] = ()  # for multiple choice: the answer and distractors

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}; known: {', '.join(CATEGORIES)}")


def _mc(rng: random.Random, answer: str, pool: Sequence[str], n: int = 4) -> tuple[str, ...]:
    others = [p for p in dict.fromkeys(pool) if p != answer]
    picks = [answer, *rng.sample(others, min(n - 1, len(others)))]
    rng.shuffle(picks)
    return tuple(picks)


def unique_kinds(scene: Scene) -> list[str]:
    counts = Counter(s.kind for s in scene.shapes)
    return [k for k, n in counts.items() if n == 1]


def ask_global(rng: random.Random, scene: Scene, palette: Sequence[str]) -> QA | None:
    return QA(
        "What color is the background?",
        scene.background,
        "global",
        _mc(rng, scene.background, palette),
    )


def ask_local_attribute(rng: random.Random, scene: Scene, palette: Sequence[str]) -> QA | None:
    kinds = unique_kinds(scene)
    if not kinds:
        return None
    kind = rng.choice(kinds)
    shape = next(s for s in scene.shapes if s.kind == kind)
    return QA(
        f"What color is the {kind}?", shape.color, "local_attribute", _mc(rng, shape.color, palette)
    )


def ask_glyph(rng: random.Random, scene: Scene, palette: Sequence[str]) -> QA | None:
    if scene.glyph is None:
        return None
    char = scene.glyph.char.lower()
    pool = [c.lower() for c in GLYPHS]
    return QA("What letter or digit is written in the image?", char, "glyph", _mc(rng, char, pool))


def ask_counting(rng: random.Random, scene: Scene, palette: Sequence[str]) -> QA | None:
    n = str(len(scene.shapes))
    return QA(
        "How many shapes are there?", n, "counting", _mc(rng, n, [str(i) for i in range(1, 7)])
    )


def ask_spatial(rng: random.Random, scene: Scene, palette: Sequence[str]) -> QA | None:
    kinds = unique_kinds(scene)
    if len(kinds) < 2:
        return None
    a, b = rng.sample(kinds, 2)
    sa = next(s for s in scene.shapes if s.kind == a)
    sb = next(s for s in scene.shapes if s.kind == b)
    margin = 0.12 * scene.image_size
    if abs(sa.cx - sb.cx) >= margin and (
        abs(sa.cx - sb.cx) >= abs(sa.cy - sb.cy) or rng.random() < 0.5
    ):
        answer = "yes" if sa.cx < sb.cx else "no"
        return QA(f"Is the {a} to the left of the {b}?", answer, "spatial", ("yes", "no"))
    if abs(sa.cy - sb.cy) >= margin:
        answer = "yes" if sa.cy < sb.cy else "no"
        return QA(f"Is the {a} above the {b}?", answer, "spatial", ("yes", "no"))
    return None


def ask_side(rng: random.Random, scene: Scene, palette: Sequence[str]) -> QA | None:
    """Which half of the image a uniquely-shaped object is in (a spatial question with a word answer)."""
    kinds = unique_kinds(scene)
    if not kinds:
        return None
    kind = rng.choice(kinds)
    s = next(s for s in scene.shapes if s.kind == kind)
    third = scene.image_size / 3
    if s.cx < third:
        side = "left"
    elif s.cx > 2 * third:
        side = "right"
    else:
        return None
    return QA(f"Which side of the image is the {kind} on?", side, "spatial", ("left", "right"))


def ask_existence(
    rng: random.Random, scene: Scene, palette: Sequence[str], negatives: Sequence[str] | None = None
) -> QA | None:
    """ "Is there a {color} shape?" — yes for a present colour, no for one drawn from `negatives`."""
    present = sorted(scene.colors)
    absent = [c for c in (negatives or palette) if c not in scene.colors and c != scene.background]
    if present and (not absent or rng.random() < 0.5):
        return QA(
            f"Is there a {rng.choice(present)} shape in the image?",
            "yes",
            "existence",
            ("yes", "no"),
        )
    if not absent:
        return None
    return QA(
        f"Is there a {rng.choice(absent)} shape in the image?", "no", "existence", ("yes", "no")
    )


Asker = Callable[[random.Random, Scene, Sequence[str]], QA | None]
ASKERS: dict[str, tuple[Asker, ...]] = {
    "local_attribute": (ask_local_attribute,),
    "glyph": (ask_glyph,),
    "counting": (ask_counting,),
    "spatial": (ask_spatial, ask_side),
    "existence": (ask_existence,),
    "global": (ask_global,),
}


def ask(rng: random.Random, scene: Scene, category: str, palette: Sequence[str]) -> QA | None:
    """One question of `category` about `scene`, or None if the scene cannot support one."""
    askers = list(ASKERS[category])
    rng.shuffle(askers)
    for asker in askers:
        qa = asker(rng, scene, palette)
        if qa is not None:
            return qa
    return None


def caption(scene: Scene) -> str:
    """A short, complete description: every shape with size and colour, the background, the glyph."""
    parts = [f"a {s.size} {s.color} {s.kind}" for s in scene.shapes]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text += f" on a {scene.background} background"
    if scene.glyph is not None:
        kind = "digit" if scene.glyph.char.isdigit() else "letter"
        text += f", with the {scene.glyph.color} {kind} {scene.glyph.char}"
    return text


def mc_options(qa: QA) -> tuple[str, str]:
    """The options lines as evaluation writes them ("\nA. red\nB. blue") and the gold letter."""
    letters = "ABCD"[: len(qa.choices)]
    lines = "".join(f"\n{k}. {c}" for k, c in zip(letters, qa.choices, strict=False))
    return lines, letters[qa.choices.index(qa.answer)]


def display(answer: str) -> str:
    """How an assistant says a short answer in the training conversations: capitalised."""
    return answer[:1].upper() + answer[1:]
