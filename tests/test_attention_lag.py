"""`benchmarks.studies.attention_lag`: hits, distances and the direction of a miss, on hand-made attention."""

import numpy as np
import pytest

from benchmarks.studies.attention_lag import lag_statistics, summarise
from captioner.data.records import Box

# A 40x40 image on a 4x4 grid (10 px cells): a circle in cell 0, a square in cell 3.
BOXES = [Box("circle", 0, 0, 10, 10), Box("square", 30, 0, 10, 10)]
WORDS = ["a", "circle", "and", "a", "square"]
CATEGORIES = {"circle": "circle", "square": "square"}


def _alphas(peaks: dict[int, int]) -> np.ndarray:
    alphas = np.full((len(WORDS), 16), 0.01)
    for t, cell in peaks.items():
        alphas[t, cell] = 1.0
    return alphas


def test_a_miss_towards_the_next_object_has_cosine_one_and_a_hit_counts_as_such():
    records = lag_statistics(WORDS, _alphas({1: 1, 4: 3}), 4, (40, 40), BOXES, CATEGORIES)
    assert records[0] == {"hit": False, "cells": 1, "cosine": pytest.approx(1.0)}
    assert records[1] == {"hit": True, "cells": 0}  # the last object: nothing named after it
    summary = summarise(records)
    assert (summary["hits"], summary["misses_by_cells"], summary["cosine_to_next_misses"]) == (1, {"1": 1}, 1.0)


def test_a_miss_across_the_direction_of_the_next_object_has_cosine_zero():
    # Peak in cell 8 (centre (5, 25)): two cells below the circle, at right angles to the square.
    (first, _) = lag_statistics(WORDS, _alphas({1: 8, 4: 3}), 4, (40, 40), BOXES, CATEGORIES)
    assert first["hit"] is False and first["cells"] == 2 and first["cosine"] == pytest.approx(0.0, abs=1e-9)


def test_words_naming_objects_not_in_the_image_are_skipped():
    records = lag_statistics(["a", "triangle"], np.full((2, 16), 1 / 16), 4, (40, 40), BOXES, {"triangle": "triangle"})
    assert records == []
