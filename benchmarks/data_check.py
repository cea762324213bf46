"""`captioner data check` on a COCO-sized collection: wall time and peak memory; prints JSON.

python -m benchmarks.data_check --root /tmp/coco_like                # COCO 2014 size (123,287 images)
python -m benchmarks.data_check --root /tmp/coco_like --scale 0.1    # a tenth, for development
python -m benchmarks.data_check --tiny                               # a seconds-long smoke run (tests)

The collection is made for the benchmark once under --root (and reused while its stamp says
the same size): COCO 2014's layout and sizes, `train2014/` with 82,783 and `val2014/` with
40,504 image files of a few bytes each (the check decodes no image) and five captions per
image, six for every seventh, as COCO has some: 616,000 captions at full size. Captions are
COCO-like: 8 to 18 words from a 12,000-word list with a Zipf-like draw. The check runs as a
user runs it, `captioner data check ROOT --config coco_resnet101 --json`, in a child process
whose peak resident memory the kernel reports; the target is <= 30 s and <= 2 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPLITS = {"train2014": 82_783, "val2014": 40_504}  # COCO 2014's images per split
WORDS = 12_000
TARGET_SECONDS, TARGET_MB = 30, 2048


def make_collection(root: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """COCO 2014-shaped files under `root` (module docstring); returns the counts. Kept if made before."""
    counts = {split: max(2, round(n * scale)) for split, n in SPLITS.items()}
    stamp = root / "made.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("counts") == counts:
        return json.loads(stamp.read_text())
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(WORDS)])
    weights = 1.0 / np.arange(1, WORDS + 1)
    weights /= weights.sum()
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_id = caption_id = 0
    for split, n in counts.items():
        folder = root / split
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for _ in range(n):
            image_id += 1
            name = f"COCO_{split}_{image_id:012d}.jpg"
            (folder / name).write_bytes(name.encode())  # distinct bytes: no false duplicates
            images.append({"id": image_id, "file_name": name, "width": 640, "height": 480})
            for _ in range(6 if image_id % 7 == 0 else 5):
                caption_id += 1
                words = rng.choice(vocabulary, size=int(rng.integers(8, 19)), p=weights)
                caption = "A " + " ".join(words) + "."
                annotations.append({"id": caption_id, "image_id": image_id, "caption": caption})
        data = {"images": images, "annotations": annotations}
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))
    made = {"counts": counts, "images": image_id, "captions": caption_id}
    stamp.write_text(json.dumps(made))
    return made


def time_check(root: Path) -> dict:
    """Run the check as a user does; its wall time, the child's peak memory and its report."""
    command = [sys.executable, "-m", "captioner.cli", "data", "check", str(root), "--config", "coco_resnet101"]
    started = time.perf_counter()
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 2):
        raise SystemExit(f"the check failed:\n{done.stderr}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1), "report": json.loads(done.stdout)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_check", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="folder for the collection (made once, then reused)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO 2014's size (default 1)")
    parser.add_argument("--tiny", action="store_true", help="200 images in a temporary folder: a smoke run")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) if args.tiny or args.root is None else args.root
        scale = 200 / sum(SPLITS.values()) if args.tiny else args.scale
        started = time.perf_counter()
        made = make_collection(root, scale)
        making = time.perf_counter() - started
        timed = time_check(root)
    report = timed.pop("report")
    results = {
        "images": made["images"],
        "captions": made["captions"],
        "cpus": os.cpu_count(),
        "load_average_1min_before": round(load, 2),
        "make_seconds": round(making, 1),
        **timed,
        "target_seconds": TARGET_SECONDS,
        "target_peak_rss_mb": TARGET_MB,
        "checked_images": report["images"]["found"],
        # coco_resnet101 tests on val2014, so train and val are the distinct splits.
        "checked_captions": report["splits"]["train"]["captions"] + report["splits"]["val"]["captions"],
        "vocabulary": report["captions"]["vocabulary"],
        "token_coverage": report["captions"]["token_coverage"],
    }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
