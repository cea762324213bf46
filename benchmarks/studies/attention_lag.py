"""Where a checkpoint's attention peaks when an object word misses its box: next to it, and
towards the object the caption names next?

    python -m benchmarks.studies.attention_lag CHECKPOINT DATA_DIR [--split test]

Captions the split's images greedily, and for every word that names a category (the words the
pointing game scores) finds the attention peak's cell. Prints one JSON line: hits and misses,
how many cells each miss lies from the named box, and, for each named object followed in the
caption by another object of a different category (each with one box in the image), the mean
cosine between "named box centre -> peak" and "named box centre -> next object's box centre",
for hits and for misses. A decoder that already looks at the next object while naming this one
shows a high cosine for its misses; a merely imprecise one shows a cosine near 0.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner.data.records import Box


def lag_statistics(
    words: Sequence[str], alphas: np.ndarray, grid: int, size: tuple[int, int], boxes: Sequence[Box], categories
) -> list[dict]:
    """One record per category word of one caption: hit (peak cell centre in a box of the named
    category), cells (Chebyshev distance in cells from the nearest such box, 0 for a hit) and,
    when the caption names another single-box category next, cosine (see the module docstring).

    alphas (L, grid²) row-major; size (W, H) of the image the boxes are in; categories maps a
    word to its category."""
    width, height = size
    cell_w, cell_h = width / grid, height / grid
    named = [(t, categories[w.lower()]) for t, w in enumerate(words) if w.lower() in categories]
    records = []
    for index, (t, category) in enumerate(named):
        own = [box for box in boxes if box.category == category]
        if not own:
            continue
        peak = int(np.argmax(alphas[t]))
        px, py = (peak % grid + 0.5) * cell_w, (peak // grid + 0.5) * cell_h
        gaps = [max(_gap(px, box.x, box.w) / cell_w, _gap(py, box.y, box.h) / cell_h) for box in own]
        record = {"hit": min(gaps) == 0, "cells": math.ceil(min(gaps))}
        following = named[index + 1][1] if index + 1 < len(named) else None
        others = [box for box in boxes if box.category == following]
        if following not in (None, category) and len(own) == 1 and len(others) == 1:
            start, end = _centre(own[0]), _centre(others[0])
            to_peak, to_next = np.array([px, py]) - start, end - start
            if np.linalg.norm(to_peak) > 0:
                record["cosine"] = float(to_peak @ to_next / np.linalg.norm(to_peak) / np.linalg.norm(to_next))
        records.append(record)
    return records


def _gap(point: float, start: float, extent: float) -> float:
    return max(start - point, 0.0, point - start - extent)


def _centre(box: Box) -> np.ndarray:
    return np.array([box.x + box.w / 2, box.y + box.h / 2])


def summarise(records: list[dict]) -> dict:
    hits = [r for r in records if r["hit"]]
    misses = [r for r in records if not r["hit"]]

    def mean_cosine(rows: list[dict]) -> float | None:
        values = [r["cosine"] for r in rows if "cosine" in r]
        return round(float(np.mean(values)), 3) if values else None

    return {
        "words": len(records),
        "hits": len(hits),
        "misses_by_cells": {str(k): sum(r["cells"] == k for r in misses) for k in sorted({r["cells"] for r in misses})},
        "cosine_to_next_hits": mean_cosine(hits),
        "cosine_to_next_misses": mean_cosine(misses),
        "pairs_hits": sum("cosine" in r for r in hits),
        "pairs_misses": sum("cosine" in r for r in misses),
    }


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from captioner.data.collection import showing
    from captioner.evaluation.grounding import coco_category_words
    from captioner.inference.api import Captioner

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.attention_lag", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data_dir", type=Path, help="a COCO-layout data set with instances_<split>.json")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    captioner = Captioner.from_checkpoint(args.checkpoint)
    data = showing(args.data_dir, args.split, format="coco")
    images, boxes = data.records("test"), data.boxes("test")
    categories = coco_category_words(sorted({box.category for image_boxes in boxes.values() for box in image_boxes}))
    results = captioner.caption([image.path for image in images], beam_size=1)
    records = []
    for image, result in zip(images, results):
        with Image.open(image.path) as picture:
            size = picture.size
        alphas = result.alphas.numpy()
        records += lag_statistics(result.words, alphas, result.grid[0], size, boxes.get(image.image_id, []), categories)
    print(json.dumps(summarise(records)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
