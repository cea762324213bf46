"""What the deletion test of faithfulness costs: in a caption request, and over a split; one JSON line.

    python -m benchmarks.faithfulness_cost --ckpt runs/demo/checkpoints/best.ckpt --data data/shapes

Request: times `Captioner.caption` (what the service's worker runs per batch) on the first test
images, beam 3, one thread, batches of 1, 8 and 16 images (the service's most): the median of `--repeats` runs after
two warm-up runs, without and with `faithfulness=True`, and the ratio.

Split (`--split`, test by default; batches of 50, the checkpoint's decoding settings, one
thread): the seconds spent decoding (encoder included), computing the caption metrics (what
validation does besides) and running the deletion test, its ratio to decoding and its share of
the first two (what `model.validation_faithfulness` would add to validation).

Run it on a quiet machine (the load average is printed with the numbers). Whether the test
ranks models as it should: `benchmarks/faithfulness_ranking.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from captioner.data.records import read_split
from captioner.evaluation.captions import caption_scores
from captioner.evaluation.faithfulness import deletion_curves
from captioner.inference.api import Captioner
from captioner.models.search import decode_captions


def median_seconds(captioner: Captioner, images: torch.Tensor, repeats: int, faithfulness: bool) -> float:
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        captioner.caption(images, batch_size=len(images), beam_size=3, faithfulness=faithfulness)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def split_seconds(captioner: Captioner, data_dir: Path, split: str) -> dict[str, float]:
    """Seconds spent decoding, scoring and testing faithfulness over `split` of `data_dir`."""
    records = read_split(data_dir, split)
    decode_s = test_s = 0.0
    candidates, references = {}, {}
    for start in range(0, len(records), 50):
        chunk = records[start : start + 50]
        images = torch.stack([captioner.to_tensor(record.path) for record in chunk])
        began = time.perf_counter()
        with torch.inference_mode():
            features = captioner.runtime.encode(images).features
            captions = decode_captions(captioner.runtime.decoder, features, captioner.vocab, captioner.decoding)
        decoded = time.perf_counter()
        deletion_curves(captioner.runtime.decoder, features, [c.tokens for c in captions], captioner.vocab.start_id)
        test_s += time.perf_counter() - decoded
        decode_s += decoded - began
        for record, caption in zip(chunk, captions):
            candidates[record.image_id] = captioner.vocab.decode(caption.tokens)
            references[record.image_id] = list(record.captions)
    began = time.perf_counter()
    caption_scores(references, candidates)
    score_s = time.perf_counter() - began
    return {
        "split": split,
        "images": len(records),
        "decode_s": round(decode_s, 2),
        "scores_s": round(score_s, 2),
        "faithfulness_s": round(test_s, 2),
        "faithfulness_over_decoding": round(test_s / decode_s, 2),
        "faithfulness_share": round(test_s / (decode_s + score_s), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a data set as `captioner data synth` writes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    captioner = Captioner.from_checkpoint(args.ckpt, device="cpu")
    paths = [record.path for record in read_split(args.data, "test")[:16]]
    row: dict = {"load_before": [round(v, 2) for v in os.getloadavg()]}
    for batch in (1, 8, 16):
        images = torch.stack([captioner.to_tensor(path) for path in paths[:batch]])
        plain = median_seconds(captioner, images, args.repeats, faithfulness=False)
        tested = median_seconds(captioner, images, args.repeats, faithfulness=True)
        row[f"batch{batch}"] = {
            "caption_ms": round(1000 * plain, 1),
            "with_faithfulness_ms": round(1000 * tested, 1),
            "ratio": round(tested / plain, 2),
        }
    row["over_split"] = split_seconds(captioner, args.data, args.split)
    row["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
