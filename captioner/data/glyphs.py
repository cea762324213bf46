"""A synthetic captioning family in which colour carries no information: grey digits on a dark ground.

    captioner data synth --kind glyphs --out data/glyphs --train 2000 --val 200 --test 200 --size 96

Each image is a dark, noisy background with 1 to 3 digits drawn in matplotlib's bundled
DejaVu Sans Bold, each in its own grey level (no colour), tilted a little, at varied places
and scales (ink 18-42% of the image side high, at most 32% with three). Digits are told
apart by shape alone, so a caption can only be right if the model looks at the digit it names.
The captions follow the shapes family (`captioner.data.synth`): one digit by its cell of a
3x3 grid ("a seven in the top left corner"), two by their relation ("a two to the left of an
eight"), three left to right ("a two , a five and a seven"). Boxes in `instances_*.json` are
the tight boxes of the drawn ink (every pixel the glyph touches lies inside, each edge touches).

Category names are the digits' English names, single words that occur in the captions only
as names: the templates never count ("a single" rather than "one"; no "three digits"), and
the digits one (a thin stroke a coarse grid can miss, and a count word), six and nine (each
other turned round) and zero (the letter o) are not drawn.

The layout, formats and determinism are those of the shapes family (`synth.write_dataset`),
with the Karpathy file `dataset_glyphs.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from captioner.data.synth import MARGIN, Instance, PixelFrame, describe, layout_ok, write_dataset
from captioner.errors import CaptionerError

CATEGORIES = ("two", "three", "four", "five", "seven", "eight")  # COCO category ids 1..6
DIGITS = {"two": "2", "three": "3", "four": "4", "five": "5", "seven": "7", "eight": "8"}
_NOISE = 8  # background noise amplitude in grey levels
_MAX_TILT = 12  # degrees either way
_REFERENCE_PX = 160  # font size the glyphs are drawn at before scaling down


@cache
def _reference_mask(category: str) -> Image.Image:
    """The glyph's ink as an 8-bit coverage mask ("L"), cropped to its ink, at `_REFERENCE_PX`."""
    path = font_manager.findfont(
        font_manager.FontProperties(family="DejaVu Sans", weight="bold"), fallback_to_default=False
    )
    font = ImageFont.truetype(path, _REFERENCE_PX)
    canvas = Image.new("L", (2 * _REFERENCE_PX, 2 * _REFERENCE_PX), 0)
    ImageDraw.Draw(canvas).text((_REFERENCE_PX // 2, _REFERENCE_PX // 4), DIGITS[category], fill=255, font=font)
    return canvas.crop(canvas.getbbox())


@dataclass(frozen=True)
class Glyph(PixelFrame):
    """One drawn digit: its category, grey level and ink mask placed with its top-left corner at
    (x, y); its box is the ink's."""

    category: str
    grey: int
    x: int
    y: int
    mask: Image.Image  # "L" coverage, cropped to the ink: every edge row/column has ink

    @property
    def w(self) -> int:
        return self.mask.width

    @property
    def h(self) -> int:
        return self.mask.height

    @property
    def phrase(self) -> str:
        article = "an" if self.category[0] in "aeiou" else "a"
        return f"{article} {self.category}"


def _glyph_mask(category: str, height: int, tilt: float) -> Image.Image:
    """The digit's ink tilted by `tilt` degrees and scaled to `height` pixels, cropped to its ink."""
    reference = _reference_mask(category).rotate(tilt, resample=Image.BICUBIC, expand=True)
    reference = reference.crop(reference.getbbox())
    width = max(1, round(reference.width * height / reference.height))
    mask = reference.resize((width, height), resample=Image.LANCZOS)
    return mask.crop(mask.getbbox())


def _sample_glyphs(rng: np.random.Generator, size: int) -> list[Glyph]:
    count = int(rng.integers(1, 4))
    high = 0.42 if count < 3 else 0.32  # three glyphs need a little more room
    margin = round(MARGIN * size)
    while True:
        glyphs = []
        for _ in range(count):
            category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            height = round(float(rng.uniform(0.18, high)) * size)
            mask = _glyph_mask(category, height, float(rng.uniform(-_MAX_TILT, _MAX_TILT)))
            x_hi, y_hi = size - margin - mask.width, size - margin - mask.height
            if count == 1:
                # Centre near the middle of a random 3x3 cell, pulled inside the image if needed.
                row, col = rng.integers(0, 3, size=2)
                cx, cy = ((np.array([col, row]) + 0.5 + rng.uniform(-0.15, 0.15, size=2)) * size / 3).tolist()
                x = min(max(round(cx - mask.width / 2), margin), x_hi)
                y = min(max(round(cy - mask.height / 2), margin), y_hi)
            else:
                x, y = int(rng.integers(margin, x_hi + 1)), int(rng.integers(margin, y_hi + 1))
            glyphs.append(Glyph(category, int(rng.integers(150, 256)), x, y, mask))
        if layout_ok(glyphs, size):
            return glyphs


def captions_for(glyphs: list[Glyph], size: int) -> list[str]:
    """The five references for an image; the first is the canonical template. Digit names
    appear only as names of drawn digits (see the module docstring)."""
    return describe(
        glyphs,
        size,
        alone=lambda g, where: (f"a single {g.category} {where}", f"the digit {g.category} {where} of the image"),
        row=("a row of digits", "digits in a row"),
    )


def render(glyphs: list[Glyph], size: int, rng: np.random.Generator) -> Image.Image:
    """Draw `glyphs` on a dark noisy grey background; (size, size) RGB image with R = G = B."""
    ground = np.full((size, size), float(rng.integers(10, 50)))
    for g in glyphs:
        coverage = np.asarray(g.mask, dtype=np.float64) / 255
        window = ground[g.y : g.y + g.h, g.x : g.x + g.w]
        window += coverage * (g.grey - window)
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(size, size))
    grey = np.clip(np.rint(ground) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))


def _sample_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[str], list[Instance]]:
    glyphs = _sample_glyphs(rng, size)
    image = render(glyphs, size, rng)
    objects = [
        Instance(
            g.category,
            g.bbox,
            float(np.count_nonzero(np.asarray(g.mask))),  # ink pixels
            [(g.x, g.y), (g.x + g.w, g.y), (g.x + g.w, g.y + g.h), (g.x, g.y + g.h)],
        )
        for g in glyphs
    ]
    return image, captions_for(glyphs, size), objects


def generate(
    out_dir: str | Path, *, train: int = 2000, val: int = 200, test: int = 200, size: int = 96, seed: int = 0
) -> Path:
    """Write the synthetic glyphs set under `out_dir` (the shapes layout, `dataset_glyphs.json`); returns it."""
    if size < 48:
        raise CaptionerError(f"size must be at least 48 pixels for digits a grid can tell apart, got {size}")
    counts = {"train": train, "val": val, "test": test}
    return write_dataset(
        out_dir, kind="glyphs", categories=CATEGORIES, sample=_sample_image, counts=counts, size=size, seed=seed
    )
