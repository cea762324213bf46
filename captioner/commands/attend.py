"""`captioner attend`: draw where each word of the caption looked, and test whether it mattered.

    captioner attend --ckpt runs/demo/checkpoints/best.ckpt photo.jpg photos/ --out overlays/
    captioner attend --ckpt best.ckpt photo.jpg --out overlays/ --smooth --per-word --json

Writes `OUT/<image name>.png` per image: the image, then one panel per emitted word with
its attention as a heat map over the image (one scale for all words, with a colour bar of
α; see docs/attention.md), the word as the panel's title, and under it the share of the
image holding half its attention and its deletion test (docs/attention.md): p(word) as
decoded → with no look at all, and whether erasing its cells in order of α takes the word
away sooner than every random order (faithful), or "not image-dependent". With --per-word, also
`OUT/<image name>/<t>_<word>.png`, one file per word. Overlays are drawn over the original
image (upright, at its own size): the attention grid covers the whole image, whatever size
the model saw. Prints each path written, or with --json one JSON line per image (its
caption, files and per-word deletion results). Unreadable images, and images too long and
thin to draw (one side over MAX_DRAWN_ASPECT times the other), are reported on stderr and
skipped, exit status 1, as in `captioner caption`. An --out that cannot be a folder to write
in (a file, under a file, a read-only or virtual file system) is one error line, exit status 2,
before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.commands.common import (
    CaptionRun,
    add_decoding_arguments,
    check_decoding_arguments,
    open_captioner,
    report,
)
from captioner.errors import CaptionerError
from captioner.files import make_folder
from captioner.viz.overlay import SCALES, HeatmapStyle, save_attention

# Figures are as tall as the image's shape asks: beyond this ratio of its sides a panel would be a
# sliver, and the figure could pass matplotlib's size limit.
MAX_DRAWN_ASPECT = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories (walked) or glob patterns")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    add_decoding_arguments(parser)
    parser.add_argument("--smooth", action="store_true", help="blur the attention grid instead of showing cells")
    parser.add_argument("--cols", type=int, default=5, help="panels per row of the figure (default 5)")
    parser.add_argument("--per-word", action="store_true", help="also write one PNG per word")
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="relative",
        help="relative (default): one scale for all words, α relative to uniform; "
        "word: each word stretched to its own range (overstates diffuse attention)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line per image instead of the paths")


def run(args: argparse.Namespace) -> int:
    check_decoding_arguments(args)
    if args.cols < 1:
        raise CaptionerError(f"--cols must be at least 1, got {args.cols}")
    make_folder(args.out)
    captioner = open_captioner(args)
    style = HeatmapStyle(scale=args.scale)
    images = CaptionRun(captioner, args.images, args, "drawing attention", faithfulness=True)
    names: set[str] = set()
    undrawn = 0
    for item in images:
        width, height = item.image.size
        if max(width, height) > MAX_DRAWN_ASPECT * min(width, height):
            report(
                f"{item.path}: a {width}x{height} image is too long and thin to draw (one side over "
                f"{MAX_DRAWN_ASPECT} times the other); crop it to draw it (`captioner caption` captions it as it is)"
            )
            undrawn += 1
            continue
        name = unique_name(item.path.stem, names)
        result = item.result
        try:
            written = save_attention(
                item.image,
                result.words,
                result.alphas,
                result.grid,
                args.out / f"{name}.png",
                cols=args.cols,
                smooth=args.smooth,
                per_word_dir=args.out / name if args.per_word else None,
                notes=result.faithfulness.notes(),
                style=style,
            )
        except (OSError, ValueError) as error:  # this image's figure could not be made or written
            report(f"{item.path}: could not draw its attention into {args.out}: {error}")
            undrawn += 1
            continue
        if args.json:
            words = [{"word": w, **f} for w, f in zip(result.words, result.faithfulness.as_json())]
            line = {"image": str(item.path), "caption": result.caption, "files": [str(p) for p in written]}
            print(json.dumps({**line, "words": words}), flush=True)
        else:
            for path in written:
                print(path, flush=True)
    return 1 if images.failed or undrawn else 0


def unique_name(stem: str, taken: set[str]) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... when images in different folders share a name."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name
