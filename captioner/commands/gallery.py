"""`captioner gallery`: a static HTML page of captions, references, CIDEr and attention.

    captioner gallery --ckpt runs/demo/checkpoints/best.ckpt --data data/shapes --split test --n 24 --out gallery/
    captioner gallery --ckpt best.ckpt --data /data/coco --format karpathy \\
        --annotations /data/coco/dataset_coco.json --split test --out gallery/
    captioner gallery --ckpt best.ckpt --data my_photos/captions.csv --split test --out gallery/

Captions the first N images of the split, scores each against its references with CIDEr
(computed over those N images), draws its attention overlay and writes `OUT/index.html`
with everything it shows copied beside it. Opens in any browser, no server needed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from captioner.commands.common import (
    CaptionRun,
    add_decoding_arguments,
    check_decoding_arguments,
    model_source,
    open_captioner,
)
from captioner.data.collection import showing
from captioner.data.readers import FORMATS
from captioner.errors import CaptionerError
from captioner.evaluation.captions import per_image_cider
from captioner.files import make_folder
from captioner.viz.gallery import GalleryItem, write_gallery
from captioner.viz.overlay import save_attention


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="the data set (as data.data_dir in training)")
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="annotation format (default auto: recognised at --data)"
    )
    parser.add_argument(
        "--annotations",
        "--karpathy-json",
        type=Path,
        help="the captions file when apart from --data (as data.annotations in training)",
    )
    parser.add_argument(
        "--split",
        default="test",
        help="split to show, e.g. test or val2014; data without one of that name is split as training does "
        "with the default data.holdout (default test)",
    )
    parser.add_argument("--n", type=int, default=24, help="number of images, from the start of the split (default 24)")
    parser.add_argument("--out", required=True, type=Path, help="folder for index.html and its images")
    add_decoding_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_decoding_arguments(args)
    if args.n < 1:
        raise CaptionerError(f"--n must be at least 1, got {args.n}")
    make_folder(args.out)  # before the work, not after it
    captioner = open_captioner(args)
    records = showing(args.data, args.split, format=args.format, annotations=args.annotations).records("test")[: args.n]
    if not records:
        raise CaptionerError(f"split {args.split!r} of {args.data} has no images; pick another --split")
    by_path = {record.path: record for record in records}

    with tempfile.TemporaryDirectory() as scratch:  # write_gallery copies the overlays in
        images = CaptionRun(captioner, list(by_path), args, "captioning")
        shown = []
        for item in images:
            record = by_path[item.path]
            result = item.result
            overlay = Path(scratch) / f"{record.image_id}.png"
            # Smoothed, as the service's page draws it: a heat map looks the same in both.
            save_attention(item.image, result.words, result.alphas, result.grid, overlay, smooth=True)
            shown.append((record, result.caption, overlay))
        scored = {record.image_id: caption for record, caption, _ in shown if record.captions}
        cider = (
            per_image_cider({r.image_id: list(r.captions) for r, _, _ in shown if r.captions}, scored) if scored else {}
        )
        items = [
            GalleryItem(record.path, caption, record.captions, cider.get(record.image_id), overlay)
            for record, caption, overlay in shown
        ]
        page = write_gallery(items, args.out, title=f"{model_source(args).name} on {args.data.name}/{args.split}")
    print(page)
    return 1 if images.failed else 0
