"""What the erasure test adds to a caption request: latency with and without it; one JSON line.

    python -m benchmarks.erasure_cost --ckpt runs/demo/checkpoints/best.ckpt --images data/shapes/test

Times `Captioner.caption` (what the service's worker runs per batch) on the same images, beam
3, one thread, batches of 1 and of 8 images: the median of `--repeats` runs after two warm-up
runs, without and with `erasure=True`, and the ratio. Run it on a quiet machine (the load
average is printed with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from captioner.inference.api import Captioner


def median_seconds(captioner: Captioner, images: torch.Tensor, repeats: int, erasure: bool) -> float:
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        captioner.caption(images, batch_size=len(images), beam_size=3, erasure=erasure)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="a folder of PNG images")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    captioner = Captioner.from_checkpoint(args.ckpt, device="cpu")
    paths = sorted(args.images.glob("*.png"))[:8]
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
    row["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
