"""`captioner export`: a trained checkpoint as a folder model hubs and other runtimes read.

    captioner export --ckpt runs/demo/checkpoints/best.ckpt --out exports/shapes
    captioner caption --model exports/shapes photo.jpg

Writes model.safetensors (the weights), config.json (every model, decoding and image setting,
and the vocabulary), README.md (a model card) and, when `captioner train test` left one beside
the checkpoint, metrics.json. Loading it back (`--model DIR`, `Captioner.from_pretrained`)
unpickles nothing. docs/export.md tells how to put it on the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by `captioner train fit`")
    parser.add_argument("--out", required=True, type=Path, help="folder for the export (made if needed)")


def run(args: argparse.Namespace) -> int:
    from captioner.inference.export import export

    for path in export(args.ckpt, args.out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0
