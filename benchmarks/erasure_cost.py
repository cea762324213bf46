"""What the erasure test costs: in a caption request, and in validation; one JSON line.

    python -m benchmarks.erasure_cost --ckpt runs/demo/checkpoints/best.ckpt --data data/shapes

Request: times `Captioner.caption` (what the service's worker runs per batch) on the first test
images, beam 3, one thread, batches of 1 and of 8 images: the median of `--repeats` runs after
two warm-up runs, without and with `erasure=True`, and the ratio.

Validation: over the val split (batches of 50, the checkpoint's decoding settings), the seconds
spent decoding (encoder included), computing the caption metrics (what validation does besides)
and running the erasure test, and the erasure's share of the first two.

Test: the erasure aggregates over the test split (content words, and object words named by
`annotations/instances_test.json`'s categories), as `captioner train test` logs them.

Run it on a quiet machine (the load average is printed with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from captioner.evaluation.captions import caption_scores
from captioner.evaluation.erasure import erase_words, erasure_scores
from captioner.evaluation.grounding import coco_category_words
from captioner.inference.api import Captioner
from captioner.models.search import decode_captions


def median_seconds(captioner: Captioner, images: torch.Tensor, repeats: int, erasure: bool) -> float:
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        captioner.caption(images, batch_size=len(images), beam_size=3, erasure=erasure)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def validation_seconds(captioner: Captioner, data_dir: Path) -> dict[str, float]:
    """Seconds spent decoding, scoring and erasing over the val split of `data_dir`."""
    records = json.loads(next(data_dir.glob("dataset_*.json")).read_text())["images"]
    val = [record for record in records if record["split"] == "val"]
    decode_s = erase_s = 0.0
    candidates, references = {}, {}
    for start in range(0, len(val), 50):
        chunk = val[start : start + 50]
        images = torch.stack([captioner.to_tensor(data_dir / "val" / record["filename"]) for record in chunk])
        began = time.perf_counter()
        with torch.inference_mode():
            features = captioner.runtime.encode(images).features
            captions = decode_captions(captioner.runtime.decoder, features, captioner.vocab, captioner.decoding)
        decoded = time.perf_counter()
        erase_words(captioner.runtime.decoder, features, [c.tokens for c in captions], captioner.vocab.start_id)
        erase_s += time.perf_counter() - decoded
        decode_s += decoded - began
        for record, caption in zip(chunk, captions):
            candidates[record["cocoid"]] = captioner.vocab.decode(caption.tokens)
            references[record["cocoid"]] = [sentence["raw"] for sentence in record["sentences"]]
    began = time.perf_counter()
    caption_scores(references, candidates)
    score_s = time.perf_counter() - began
    return {
        "images": len(val),
        "decode_s": round(decode_s, 2),
        "scores_s": round(score_s, 2),
        "erasure_s": round(erase_s, 2),
        "erasure_share": round(erase_s / (decode_s + score_s), 3),
    }


def test_faithfulness(captioner: Captioner, data_dir: Path) -> dict[str, float]:
    """The erasure aggregates of the checkpoint's own captions of the test split."""
    records = json.loads(next(data_dir.glob("dataset_*.json")).read_text())["images"]
    test = [record for record in records if record["split"] == "test"]
    instances = json.loads((data_dir / "annotations" / "instances_test.json").read_text())
    objects = coco_category_words([category["name"] for category in instances["categories"]])
    words, erasures = [], []
    for start in range(0, len(test), 50):
        paths = [data_dir / "test" / record["filename"] for record in test[start : start + 50]]
        for result in captioner.caption(paths, batch_size=50, erasure=True):
            words.append(result.words)
            erasures.append(result.erasure)
    return {"images": len(test), **{k: round(v, 4) for k, v in erasure_scores(words, erasures, objects).items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a data set as `captioner data synth` writes")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    captioner = Captioner.from_checkpoint(args.ckpt, device="cpu")
    paths = sorted((args.data / "test").glob("*.png"))[:8]
    row: dict = {"load_before": [round(v, 2) for v in os.getloadavg()]}
    for batch in (1, 8):
        images = torch.stack([captioner.to_tensor(path) for path in paths[:batch]])
        plain = median_seconds(captioner, images, args.repeats, erasure=False)
        tested = median_seconds(captioner, images, args.repeats, erasure=True)
        row[f"batch{batch}"] = {
            "caption_ms": round(1000 * plain, 1),
            "with_erasure_ms": round(1000 * tested, 1),
            "ratio": round(tested / plain, 2),
        }
    row["validation"] = validation_seconds(captioner, args.data)
    row["test"] = test_faithfulness(captioner, args.data)
    row["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
