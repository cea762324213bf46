"""Attention grounding: does the decoder look at the right place when it names an object?

For each generated word that names a category (``word_to_category``) the *pointing game*
checks whether the grid cell with the largest α lies in a box of that category, and
*attention in box* sums the α mass there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from captioner.arrays import to_numpy
from captioner.errors import CaptionerError

if TYPE_CHECKING:  # only a type here: grounding reads .category .x .y .w .h
    from captioner.data import Box

__all__ = ["GroundingSample", "coco_category_words", "grounding_scores"]


@dataclass(frozen=True)
class GroundingSample:
    """One generated caption with its attention, and the image's boxes.

    words: the generated words (no <start>/<end>).
    alphas: (L, P) attention, row t for ``words[t]``; L >= len(words) (extra trailing
        rows, e.g. one for <end>, are ignored). P = rows·cols, row-major, row 0 at the top of the image.
    grid: (rows, cols) of the attention grid.
    image_size: (W, H) in the pixels the boxes are given in.
    boxes: the image's boxes (``captioner.data.Box``: category, x, y, w, h; COCO xywh).
    """

    words: Sequence[str]
    alphas: Any
    grid: tuple[int, int]
    image_size: tuple[int, int]
    boxes: Sequence[Box]


# Plurals the simple rules below get wrong, for COCO's single-word category names.
_IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep"}


def coco_category_words(category_names: Sequence[str]) -> dict[str, str]:
    """Map caption words to category names: each name, its plural, and for multi-word
    names ("cell phone") the head noun ("phone", "phones").

    Captions are tokenized into single words, so a multi-word name can only be matched
    through its last word; a word that is itself a category name (or the plural of one)
    always maps to that category ("hot dog" does not take "dog").
    """
    single = [name for name in category_names if " " not in name]
    multi = [name for name in category_names if " " in name]
    mapping = {name: name for name in single}
    # setdefault: an exact name beats a plural, which beats a head noun.
    for name in single:
        mapping.setdefault(_plural(name), name)
    for name in multi:
        head = name.split()[-1]
        mapping.setdefault(head, name)
        mapping.setdefault(_plural(head), name)
    return mapping


def _plural(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def grounding_scores(samples: Sequence[GroundingSample], word_to_category: Mapping[str, str]) -> dict[str, float | int]:
    """Pointing game and attention-in-box over every category word of every caption.

    A grid cell is "in" a category when its centre lies inside (edges included) any box
    of that category. For each generated word found (lower-cased) in ``word_to_category``:

    - pointing game: 1 if the cell with the largest α is in the category. Ties count
      as the fraction of tied cells that are in (a random tie-break, in expectation),
      so a uniform α scores exactly the chance rate.
    - attention in box: the α mass of the cells in the category.
    - chance: the fraction of cells in the category, i.e. what a pointer choosing a
      cell at random would score (the boxes' share of the image, up to grid rounding).

    A word naming a category with no box in the image is a miss (0 on all three), so
    hallucinated objects lower the scores.

    Returns ``pointing_game``, ``attention_in_box``, ``chance_pointing_game`` (means
    over the grounded words; NaN when there are none) and ``grounded_words`` (count).
    """
    hits: list[float] = []
    masses: list[float] = []
    chances: list[float] = []
    for sample in samples:
        alphas = to_numpy(sample.alphas, np.float64)
        rows, cols = sample.grid
        if alphas.ndim != 2 or alphas.shape[1] != rows * cols:
            raise CaptionerError(f"alphas must be (L, {rows * cols}) for grid {sample.grid}, got {alphas.shape}")
        if alphas.shape[0] < len(sample.words):
            raise CaptionerError(f"{len(sample.words)} words but only {alphas.shape[0]} attention rows")
        centres_x, centres_y = _cell_centres(sample.grid, sample.image_size)
        for t, word in enumerate(sample.words):
            category = word_to_category.get(word.lower())
            if category is None:
                continue
            inside = _cells_in_category(centres_x, centres_y, sample.boxes, category)
            alpha = alphas[t]
            peaks = alpha == alpha.max()
            hits.append(float(inside[peaks].mean()))
            masses.append(float(alpha[inside].sum()))
            chances.append(float(inside.mean()))
    return {
        "pointing_game": _mean(hits),
        "attention_in_box": _mean(masses),
        "chance_pointing_game": _mean(chances),
        "grounded_words": len(hits),
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _cell_centres(grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(P,) x and (P,) y pixel centres of the grid cells, row-major."""
    rows, cols = grid
    width, height = image_size
    xs = (np.arange(cols) + 0.5) * width / cols
    ys = (np.arange(rows) + 0.5) * height / rows
    grid_x, grid_y = np.meshgrid(xs, ys)  # (rows, cols) each
    return grid_x.ravel(), grid_y.ravel()


def _cells_in_category(centres_x: np.ndarray, centres_y: np.ndarray, boxes: Sequence[Box], category: str) -> np.ndarray:
    """(P,) bool: cells whose centre lies in any box of ``category``."""
    inside = np.zeros(centres_x.shape, dtype=bool)
    for box in boxes:
        if box.category == category:
            inside |= (
                (centres_x >= box.x)
                & (centres_x <= box.x + box.w)
                & (centres_y >= box.y)
                & (centres_y <= box.y + box.h)
            )
    return inside
