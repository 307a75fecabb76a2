"""Structured questions about probe scenes: a question is a (type, content word) pair with one
answer from a closed vocabulary, so a small readout can be trained to answer it without an LLM.

Types (content word → answers):
    color   the <kind>        → its colour         (only where one shape is of that kind)
    cell    <cell> of a 3×3   → the kind there or "none" (only where at most one shape is there)
    count   how many <kind>   → 0..MAX_COUNT
    exist   a <colour> shape  → yes / no
    side    the <kind>        → left / right        (one shape of that kind, in the outer third)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from msr.data.synth.scene import Scene

TYPES = ("color", "cell", "count", "exist", "side")
CELLS = 3  # the cell grid is CELLS × CELLS
MAX_COUNT = 8


@dataclass(frozen=True)
class Vocabulary:
    """Every (type, word) question and every answer, as indices: what the readout embeds and
    predicts. `allowed[type]` are the answers a question of that type may have."""

    kinds: tuple[str, ...]
    colors: tuple[str, ...]

    @property
    def questions(self) -> list[tuple[str, str]]:
        cells = [str(i) for i in range(CELLS * CELLS)]
        words = {"color": self.kinds, "cell": cells, "count": self.kinds, "exist": self.colors,
                 "side": self.kinds}  # fmt: skip
        return [(t, w) for t in TYPES for w in words[t]]

    @property
    def answers(self) -> list[str]:
        counts = [str(i) for i in range(MAX_COUNT + 1)]
        return list(dict.fromkeys([*self.colors, *self.kinds, "none", *counts, "yes", "no",
                                   "left", "right"]))  # fmt: skip

    def allowed(self, qtype: str) -> list[str]:
        return {
            "color": list(self.colors),
            "cell": [*self.kinds, "none"],
            "count": [str(i) for i in range(MAX_COUNT + 1)],
            "exist": ["yes", "no"],
            "side": ["left", "right"],
        }[qtype]


def _cell(scene: Scene, x: float, y: float) -> int:
    side = scene.image_size / CELLS
    return min(CELLS - 1, int(y // side)) * CELLS + min(CELLS - 1, int(x // side))


def ask_all(scene: Scene, vocab: Vocabulary) -> list[tuple[str, str, str]]:
    """Every question the scene answers unambiguously: (type, word, answer)."""
    kinds = Counter(s.kind for s in scene.shapes)
    out: list[tuple[str, str, str]] = []
    for kind in vocab.kinds:
        if kinds[kind] == 1:
            shape = next(s for s in scene.shapes if s.kind == kind)
            out.append(("color", kind, shape.color))
        out.append(("count", kind, str(min(kinds[kind], MAX_COUNT))))
    cells: dict[int, list[str]] = {i: [] for i in range(CELLS * CELLS)}
    for s in scene.shapes:
        cells[_cell(scene, s.cx, s.cy)].append(s.kind)
    for i, there in cells.items():
        if len(there) <= 1:
            out.append(("cell", str(i), there[0] if there else "none"))
    for color in vocab.colors:
        out.append(("exist", color, "yes" if color in scene.colors else "no"))
    third = scene.image_size / 3
    for kind in vocab.kinds:
        if kinds[kind] == 1:
            s = next(s for s in scene.shapes if s.kind == kind)
            if s.cx < third or s.cx > 2 * third:
                out.append(("side", kind, "left" if s.cx < third else "right"))
    return out
