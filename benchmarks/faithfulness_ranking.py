"""Does the deletion test rank attention that points at the object above diffuse attention and
above attention at chance? One JSON line per checkpoint, on one split with boxes.

    python -m benchmarks.faithfulness_ranking --data data/shapes --ckpt runs/demo/checkpoints/best.ckpt [--ckpt ...]

Each checkpoint captions the split's images with its own decoding settings and runs each word's
deletion test (`captioner.evaluation.faithfulness`, as `captioner train test` does). Printed per
checkpoint: over the words that name an object category, the pointing game (its chance beside
it) and attention in box (`captioner.evaluation.grounding`), the median spread (share of the
image holding half of α), and the deletion aggregates (`object_deletion_*`: faithfulness over the
image-dependent words, the share that are image-dependent, the areas, the lead, the counts);
the same aggregates over content words (`deletion_*`); and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from captioner.data.collection import showing
from captioner.evaluation.faithfulness import attention_spread, faithfulness_scores
from captioner.evaluation.grounding import GroundingSample, coco_category_words, grounding_scores
from captioner.inference.api import Captioner


def rank_row(ckpt: Path, data_dir: Path, split: str, batch_size: int = 50) -> dict[str, object]:
    """The grounding and deletion numbers of `ckpt` on `split` of `data_dir` (a COCO layout with boxes)."""
    began = time.perf_counter()
    captioner = Captioner.from_checkpoint(ckpt, device="cpu")
    data = showing(data_dir, split, format="coco")
    records, boxes = data.records("test"), data.boxes("test")
    categories = sorted({box.category for image_boxes in boxes.values() for box in image_boxes})
    objects = coco_category_words(categories)
    words, deletions, samples, spreads = [], [], [], []
    files = captioner.caption_files([r.path for r in records], batch_size=batch_size, faithfulness=True)
    for record, item in zip(records, files):
        result = item.result
        words.append(result.words)
        deletions.append(result.faithfulness)
        samples.append(
            GroundingSample(result.words, result.alphas, result.grid, item.image.size, boxes[record.image_id])
        )
        spread = attention_spread(result.alphas)
        spreads += [float(spread[t]) for t, word in enumerate(result.words) if word.lower() in objects]
    grounding = grounding_scores(samples, objects)
    scores = faithfulness_scores(words, deletions, objects)
    row = {
        "ckpt": str(ckpt),
        "split": split,
        "images": len(records),
        **{name: _round(value) for name, value in grounding.items()},
        "object_median_spread": _round(float(np.median(spreads)) if spreads else math.nan),
        **{name: _round(value) for name, value in scores.items() if name.startswith("object_")},
        **{name: _round(value) for name, value in scores.items() if not name.startswith("object_")},
        "seconds": round(time.perf_counter() - began, 1),
    }
    return row


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, action="append", required=True, help="a checkpoint; repeat for several")
    parser.add_argument("--data", type=Path, required=True, help="a data set in the COCO layout, with instances files")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for ckpt in args.ckpt:
        print(json.dumps(rank_row(ckpt, args.data, args.split)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
