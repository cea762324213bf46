"""`captioner caption`: caption image files with a trained checkpoint.

    captioner caption --ckpt runs/demo/checkpoints/best.ckpt photos/ extra.jpg 'more/*.png'
    captioner caption --ckpt best.ckpt photos/ --json > captions.jsonl

Prints `path<TAB>caption` per image (or, with --json, one object per line with path,
caption, tokens (the caption's words) and score), as each batch finishes. Unreadable images
are reported on stderr and skipped; the exit status is then 1. A bad checkpoint or setting
is one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json

from captioner.commands.common import CaptionRun, add_decoding_arguments, check_decoding_arguments, open_captioner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories (walked) or glob patterns")
    add_decoding_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line: path, caption, tokens, score")


def run(args: argparse.Namespace) -> int:
    check_decoding_arguments(args)
    captioner = open_captioner(args)
    images = CaptionRun(captioner, args.images, args, "captioning", full_size=False)  # no overlays to draw
    for item in images:
        result = item.result
        if args.json:
            record = {"path": str(item.path), "caption": result.caption, "tokens": result.words, "score": result.score}
            line = json.dumps(record, ensure_ascii=False)
        else:
            line = f"{item.path}\t{result.caption}"
        print(line, flush=True)  # flushed so a pipe sees each caption as its batch finishes
    return 1 if images.failed else 0
