"""`benchmarks.studies.attention_offset`: resizing keeps a dot in place; peak offsets on hand-made
attention; a report."""

import json
import math

import numpy as np
import pytest

from benchmarks.studies.attention_offset import drawn_centres, peak_offsets, resize_shift, summarise_offsets
from captioner.data.records import Box


def test_resizing_moves_no_dot():
    assert resize_shift(128, 64) == pytest.approx(0.0, abs=1e-6)
    assert resize_shift(96, 64) == pytest.approx(0.0, abs=1e-6)


def test_peak_offsets_per_placement_and_the_last_object_word():
    # 40x40 image, 4x4 grid of 10 px cells; a circle centred at (15, 15), a square at (35, 5).
    boxes = [Box("circle", 10, 10, 10, 10), Box("square", 30, 0, 10, 10)]
    words = ["a", "circle", "and", "a", "square"]
    alphas = np.full((5, 16), 0.01)
    alphas[1, 4 * 2 + 2] = 1.0  # circle: cell (2, 2), drawn centre (25, 25)
    alphas[4, 3] = 1.0  # square: cell (0, 3), drawn centre (35, 5)
    drawn = drawn_centres(4, 40)
    centres = {"drawn": (drawn, drawn), "feature": (drawn - 10, drawn - 10)}
    categories = {"circle": "circle", "square": "square"}
    first, last = peak_offsets(words, alphas, centres, boxes, categories)
    assert first == {
        "last": False,
        "drawn": {"dx": 10.0, "dy": 10.0, "hit": False},
        "feature": {"dx": 0.0, "dy": 0.0, "hit": True},
    }
    assert last["last"] and last["drawn"] == {"dx": 0.0, "dy": 0.0, "hit": True}
    summary = summarise_offsets([first, last], cell=10)
    assert summary["all"]["drawn"] == {"dx_px": 5.0, "dy_px": 5.0, "dx_cells": 0.5, "dy_cells": 0.5, "hit_rate": 0.5}
    assert summary["last"]["words"] == 1 and summary["last"]["feature"]["dx_px"] == -10.0
    # A category with two boxes has no single centre to measure from: skipped.
    assert peak_offsets(words, alphas, centres, [*boxes, Box("circle", 0, 30, 5, 5)], categories) == [last]


def test_peaks_report_on_a_trained_checkpoint(tiny_checkpoint, synth_data, capsys):
    from benchmarks.studies.attention_offset import main

    assert main(["peaks", str(tiny_checkpoint), str(synth_data), "--images", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["images"], report["image_size"], report["grid"]) == (4, 64, 4)
    # Stride 8 pooled in 2x2 bins, aligned (the default): each feature looks 0.5 px below and
    # right of its drawn cell's centre (3.5 px up and left without `align_grid`).
    assert report["feature_minus_drawn_px"] == [0.5] * 4
    for key in ("effective_minus_drawn_px", "untrained_effective_minus_drawn_px"):
        effective = report[key]
        assert len(effective["per_column_dx"]) == len(effective["per_row_dy"]) == 4
        assert all(math.isfinite(v) for v in effective["per_column_dx"] + effective["per_row_dy"])
    words = report["peaks"]["all"]["words"]
    assert words > 0 and {"drawn", "feature"} <= set(report["peaks"]["all"])
