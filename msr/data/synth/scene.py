"""Scenes: a background colour, a few non-overlapping coloured shapes, optionally one glyph.

Sampling is a pure function of a `random.Random`, so a seed reproduces every scene exactly; drawing
uses PIL at 336×336 (the paper's input size).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 170),
    "orange": (250, 130, 10),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "pink": (250, 150, 190),
    "cyan": (40, 200, 220),
}
SIZES: dict[str, tuple[float, float]] = {  # radius as a fraction of the image side
    "small": (0.06, 0.08),
    "medium": (0.11, 0.14),
    "large": (0.17, 0.21),
}
GLYPHS = "ABCDEFGHKLMNPRSTUVXYZ23456789"


@dataclass(frozen=True)
class Shape:
    kind: str  # circle | square | triangle | star
    color: str
    size: str  # small | medium | large
    cx: float  # centre, pixels
    cy: float
    radius: float  # pixels


@dataclass(frozen=True)
class Glyph:
    char: str
    color: str
    cx: float
    cy: float
    size: int  # font size, pixels


@dataclass(frozen=True)
class Scene:
    id: str
    background: str
    shapes: tuple[Shape, ...]
    glyph: Glyph | None = None
    image_size: int = 336
    tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def colors(self) -> set[str]:
        return {s.color for s in self.shapes}


@dataclass(frozen=True)
class SceneSpec:
    """What a scene may contain."""

    kinds: tuple[str, ...]
    colors: tuple[str, ...]
    backgrounds: tuple[str, ...]
    max_objects: int
    glyph_size: int  # 0: no glyphs
    glyph_prob: float
    image_size: int = 336
    min_objects: int = 1  # a scene where fewer fit is drawn again by the caller


def sample_scene(rng: random.Random, spec: SceneSpec, scene_id: str) -> Scene:
    """Draw a scene: min_objects..max_objects shapes that do not overlap (fewer where they do not
    fit), a glyph in free space if it fits."""
    side = spec.image_size
    background = rng.choice(spec.backgrounds)
    palette = [c for c in spec.colors if c != background]
    placed: list[tuple[float, float, float]] = []
    shapes: list[Shape] = []
    for _ in range(rng.randint(spec.min_objects, spec.max_objects)):
        size = rng.choice(list(SIZES))
        lo, hi = SIZES[size]
        radius = rng.uniform(lo, hi) * side
        spot = _free_spot(rng, side, radius, placed)
        if spot is None:
            continue
        placed.append((*spot, radius))
        shapes.append(Shape(rng.choice(spec.kinds), rng.choice(palette), size, *spot, radius))
    glyph = None
    if spec.glyph_size and rng.random() < spec.glyph_prob:
        spot = _free_spot(rng, side, 0.75 * spec.glyph_size, placed)
        if spot is not None:
            glyph = Glyph(rng.choice(GLYPHS), rng.choice(palette), *spot, spec.glyph_size)
    return Scene(scene_id, background, tuple(shapes), glyph, side)


def _free_spot(
    rng: random.Random, side: int, radius: float, placed: list[tuple[float, float, float]]
) -> tuple[float, float] | None:
    margin = radius + 4
    for _ in range(50):
        x, y = rng.uniform(margin, side - margin), rng.uniform(margin, side - margin)
        if all(math.hypot(x - px, y - py) > radius + pr + 6 for px, py, pr in placed):
            return x, y
    return None


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image."""
    img = Image.new("RGB", (scene.image_size, scene.image_size), COLORS[scene.background])
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        fill = COLORS[s.color]
        if s.kind == "circle":
            draw.ellipse(
                [s.cx - s.radius, s.cy - s.radius, s.cx + s.radius, s.cy + s.radius], fill=fill
            )
        elif s.kind == "square":
            half = s.radius / math.sqrt(2) * 1.2
            draw.rectangle([s.cx - half, s.cy - half, s.cx + half, s.cy + half], fill=fill)
        elif s.kind == "triangle":
            draw.polygon(_star_points(s, points=3, inner=None), fill=fill)
        elif s.kind == "star":
            draw.polygon(_star_points(s, points=5, inner=0.45), fill=fill)
        else:
            raise ValueError(
                f"unknown shape kind {s.kind!r}; known: circle, square, triangle, star"
            )
    if scene.glyph is not None:
        g = scene.glyph
        font = ImageFont.load_default(size=g.size)
        draw.text((g.cx, g.cy), g.char, fill=COLORS[g.color], font=font, anchor="mm")
    return img


def _star_points(s: Shape, points: int, inner: float | None) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (inner=None) or star, pointing up."""
    out = []
    steps = points if inner is None else 2 * points
    for i in range(steps):
        r = s.radius if inner is None or i % 2 == 0 else s.radius * inner
        angle = -math.pi / 2 + 2 * math.pi * i / steps
        out.append((s.cx + r * math.cos(angle), s.cy + r * math.sin(angle)))
    return out
