"""A synthetic captioning family of cluttered scenes: two to four objects of two sizes on a textured ground.

    captioner data synth --kind scenes --out data/scenes --train 2000 --val 200 --test 200 --size 96

It differs in kind from shapes and glyphs: more objects (2 to 4), of two sizes (small
objects 13-17% of the image side, large ones 26-34%), a textured ground crossed by faint lines
and specks (clutter that is never named), and a caption grammar of its own: objects are named
"<size> <colour> <kind>", without articles, and listed, not placed on a 3x3 grid:

    left to right : large white star , small cyan ring and small orange cross
    a scene with large white star , small cyan ring and small orange cross
    three objects : large white star , small cyan ring and small orange cross
    large : large white star ; small : small cyan ring and small orange cross
    right to left : small orange cross , small cyan ring and large white star

The first (canonical) reference lists left to right; object centres are at least
`MIN_X_GAP` of the side apart along x, so that order is never a close call. A small object
still spans more than one cell of an 8x8 grid, so the pointing game can always score it.
Every reference names every object once, in at most 20 words (the recipes' max_caption_len);
category names occur in captions only as names.

The layout, formats and determinism are those of the shapes family (`synth.write_dataset`),
with the Karpathy file `dataset_scenes.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from captioner.data.synth import MARGIN, Instance, all_apart, clearly_ordered, write_dataset
from captioner.errors import CaptionerError

CATEGORIES = ("star", "ring", "cross", "diamond", "arrow")  # COCO category ids 1..5
COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "white": (235, 235, 235),
    "orange": (245, 140, 20),
    "purple": (160, 60, 220),
    "cyan": (40, 215, 230),
}
SIZE_RANGES = {"small": (0.13, 0.17), "large": (0.26, 0.34)}  # object side, of the image side
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
MIN_X_GAP = 0.07  # of the image side, between neighbouring object centres along x
_COLOUR_JITTER = 10
_CLUTTER = (6, 14)  # faint lines per image, low to high (exclusive)


@dataclass(frozen=True)
class Thing:
    """One drawn object: kind, size word, colour word, and its square frame (centre, side in pixels)."""

    kind: str
    size: str
    colour: str
    cx: float
    cy: float
    side: float

    @property
    def w(self) -> float:
        return self.side

    @property
    def h(self) -> float:
        return self.side

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.kind}"

    @property
    def polygon(self) -> list[tuple[float, float]]:
        """Outline in pixels (for the ring, its outer edge as a 24-gon); every point lies in the frame."""
        cx, cy, r = self.cx, self.cy, self.side / 2
        if self.kind == "star":  # five points, the top one up; inner radius 0.45 r
            angles = np.linspace(0, 2 * math.pi, 10, endpoint=False)
            radii = [r if i % 2 == 0 else 0.45 * r for i in range(10)]
            return [(cx + rad * math.sin(a), cy - rad * math.cos(a)) for a, rad in zip(angles, radii)]
        if self.kind == "ring":
            return [
                (cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)
            ]
        if self.kind == "diamond":
            return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
        t = r / 3  # half the arm width of the cross, half the shaft width of the arrow
        if self.kind == "cross":
            return [
                (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t),
            ]  # fmt: skip
        return [  # arrow pointing right: shaft on the left, head filling the frame's height
            (cx - r, cy - t), (cx, cy - t), (cx, cy - r), (cx + r, cy), (cx, cy + r), (cx, cy + t), (cx - r, cy + t),
        ]  # fmt: skip

    @property
    def bbox(self) -> list[float]:
        """COCO xywh of the outline's extent, from rounded corners so that it encloses the outline."""
        xs, ys = zip(*self.polygon)
        x0, y0 = math.floor(min(xs) * 100) / 100, math.floor(min(ys) * 100) / 100
        x1, y1 = math.ceil(max(xs) * 100) / 100, math.ceil(max(ys) * 100) / 100
        return [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]

    @property
    def area(self) -> float:
        if self.kind == "ring":  # outer disc less the hole (inner radius 0.55 r)
            return round(math.pi * (self.side / 2) ** 2 * (1 - 0.55**2), 2)
        xs, ys = np.array(self.polygon).T
        return round(float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2), 2)  # shoelace


def _sample_things(rng: np.random.Generator, size: int) -> list[Thing]:
    count = int(rng.integers(2, 5))
    margin = MARGIN * size
    while True:
        # At most two large objects, so that four still fit on the ground.
        sizes = ["large" if rng.random() < 0.4 else "small" for _ in range(count)]
        things = []
        for size_word in sizes:
            low, high = SIZE_RANGES[size_word]
            side = float(rng.uniform(low, high)) * size
            lo, hi = side / 2 + margin, size - side / 2 - margin
            cx, cy = rng.uniform(lo, hi, size=2).tolist()
            kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            colour = list(COLOUR_WORDS)[int(rng.integers(len(COLOUR_WORDS)))]
            things.append(Thing(kind, size_word, colour, cx, cy, side))
        if sizes.count("large") <= 2 and _layout_ok(things, size):
            return things


def _layout_ok(things: list[Thing], size: int) -> bool:
    """Frames at least the margin apart, and the left-to-right order clear."""
    return all_apart(things, MARGIN * size) and clearly_ordered([t.cx for t in things], MIN_X_GAP * size)


def _listing(things: list[Thing]) -> str:
    phrases = [t.phrase for t in things]
    return phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]


def captions_for(things: list[Thing]) -> list[str]:
    """The five references for a scene (module docstring); the first is the canonical template."""
    ordered = sorted(things, key=lambda t: t.cx)
    listing = _listing(ordered)
    groups = [(word, [t for t in ordered if t.size == word]) for word in ("large", "small")]
    by_size = " ; ".join(f"{word} : {_listing(group)}" for word, group in groups if group)
    return [
        f"left to right : {listing}",
        f"a scene with {listing}",
        f"{COUNT_WORDS[len(things)]} objects : {listing}",
        by_size,
        f"right to left : {_listing(ordered[::-1])}",
    ]


def _ground(rng: np.random.Generator, size: int) -> Image.Image:
    """A dark, coloured, blotchy texture (smoothed noise) with faint lines and specks on it."""
    coarse = rng.normal(0, 1, size=(max(2, size // 12), max(2, size // 12), 3))
    blotches = Image.fromarray(np.uint8(np.clip(128 + 40 * coarse, 0, 255))).resize((size, size), Image.BICUBIC)
    base = rng.integers(25, 55) + rng.integers(-8, 9, size=3)
    pixels = base + (np.asarray(blotches, dtype=np.float64) - 128) * 0.35
    image = Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(*_CLUTTER))):
        x0, y0, x1, y1 = rng.uniform(0, size, size=4).tolist()
        grey = int(rng.integers(60, 95))
        draw.line([(x0, y0), (x1, y1)], fill=(grey, grey - 5, grey - 10), width=1)
    for x, y in rng.uniform(0, size, size=(int(rng.integers(10, 30)), 2)).tolist():
        grey = int(rng.integers(55, 90))
        draw.rectangle([x, y, x + 1, y + 1], fill=(grey, grey, grey))
    return image.filter(ImageFilter.SMOOTH)


def render(things: list[Thing], size: int, rng: np.random.Generator) -> Image.Image:
    """Draw `things` over a cluttered ground; (size, size) RGB image."""
    image = _ground(rng, size)
    draw = ImageDraw.Draw(image)
    for t in things:
        fill = np.clip(np.array(COLOUR_WORDS[t.colour]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255)
        fill = tuple(int(v) for v in fill)
        if t.kind == "ring":
            r = t.side / 2
            draw.ellipse([t.cx - r, t.cy - r, t.cx + r, t.cy + r], outline=fill, width=max(2, round(0.45 * r)))
        else:
            draw.polygon(t.polygon, fill=fill)
    return image


def _sample_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[str], list[Instance]]:
    things = _sample_things(rng, size)
    image = render(things, size, rng)
    return image, captions_for(things), [Instance(t.kind, t.bbox, t.area, t.polygon) for t in things]


def generate(
    out_dir: str | Path, *, train: int = 2000, val: int = 200, test: int = 200, size: int = 96, seed: int = 0
) -> Path:
    """Write the synthetic scenes set under `out_dir` (the shapes layout, `dataset_scenes.json`); returns it."""
    if size < 64:
        raise CaptionerError(f"size must be at least 64 pixels for four objects of two sizes, got {size}")
    counts = {"train": train, "val": val, "test": test}
    return write_dataset(
        out_dir, kind="scenes", categories=CATEGORIES, sample=_sample_image, counts=counts, size=size, seed=seed
    )
