"""Helpers that the captioning commands (`caption`, `attend`, `gallery`) share: the decoding
flags and `CaptionRun`, which captions files and reports the bad ones."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from captioner.data.images import list_image_files
from captioner.errors import CaptionerError, require_positive
from captioner.inference.api import Captioner, FileCaption
from captioner.inference.precision import MAX_CALIBRATION_IMAGES, PRECISIONS
from captioner.models.search import DECODING_LIMITS, DecodingConfig

# Fewer images than this finish before a progress bar would be worth drawing.
PROGRESS_MIN_IMAGES = 32


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """--ckpt or --model, --beam-size, --max-len, --batch-size, --device, --precision, --calibrate.
    Decoding flags left out keep the checkpoint's own settings (`model.decoding` in training)."""
    add_model_arguments(parser)
    parser.add_argument(
        "--beam-size",
        type=int,
        help=f"beam width, 1 to {DECODING_LIMITS['beam_size']}; 1 decodes greedily (default: the checkpoint's)",
    )
    parser.add_argument(
        "--max-len",
        type=int,
        help=f"longest caption in words, at most {DECODING_LIMITS['max_len']} (default: the checkpoint's)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images decoded together (default 16)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default); bf16 (CPUs with AVX512-BF16/AMX, recent GPUs); int8 (CPU: quantized encoder)",
    )
    parser.add_argument(
        "--calibrate",
        nargs="+",
        metavar="IMAGE",
        help=f"int8: images (files, folders, globs; the first {MAX_CALIBRATION_IMAGES} are used) to calibrate "
        "the quantized encoder on (default: the first batch captioned)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--ckpt CKPT or --model DIR (one of them): the trained model to load."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="checkpoint written by `captioner train fit`")
    source.add_argument(
        "--model", metavar="DIR", help="folder written by `captioner export` (or its Hugging Face Hub id)"
    )


def model_source(args: argparse.Namespace) -> Path:
    """The --ckpt file or --model folder/id that `args` name, for titles and reports."""
    return Path(args.ckpt if args.ckpt is not None else args.model)


def load_captioner(args: argparse.Namespace, **options: Any) -> Captioner:
    """The Captioner of --ckpt or --model in `args`; `options` go to its constructor."""
    if args.model is not None:
        return Captioner.from_pretrained(args.model, **options)
    return Captioner.from_checkpoint(args.ckpt, **options)


def open_captioner(args: argparse.Namespace) -> Captioner:
    """The Captioner that the decoding flags in `args` ask for."""
    calibration = None
    if args.calibrate:
        if args.precision != "int8":
            raise CaptionerError(f"--calibrate is for --precision int8 only, not {args.precision}")
        files, problems = list_image_files(args.calibrate)
        if problems:
            raise CaptionerError(f"--calibrate: {problems[0]}")
        calibration = files[:MAX_CALIBRATION_IMAGES]
    return load_captioner(args, device=args.device, precision=args.precision, calibration=calibration)


def decoding_flags(args: argparse.Namespace) -> dict[str, int]:
    """The decoding flags given (--beam-size, --max-len) as `DecodingConfig` changes, each checked
    by `DecodingConfig` here, before any model is loaded; its error is prefixed with the flag."""
    flags = {name: value for name in ("beam_size", "max_len") if (value := getattr(args, name, None)) is not None}
    for name, value in flags.items():
        try:
            DecodingConfig().replace(**{name: value})
        except CaptionerError as error:
            raise CaptionerError(f"--{name.replace('_', '-')}: {error}") from None
    return flags


def check_decoding_arguments(args: argparse.Namespace) -> None:
    """Raise CaptionerError for a --batch-size below 1 or decoding flags `DecodingConfig` refuses."""
    require_positive(**{"--batch-size": args.batch_size})
    decoding_flags(args)


def report(message: object) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    """Yield `advance()`; draws a bar on stderr only for many images on a terminal."""
    if total < PROGRESS_MIN_IMAGES or not sys.stderr.isatty():
        yield lambda: None
        return
    # Rich may route stdout through the bar only when stdout is that terminal too; when
    # stdout is a pipe or file, captions must go there untouched.
    bar = Progress(console=Console(stderr=True), transient=True, redirect_stdout=sys.stdout.isatty())
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


class CaptionRun:
    """Iterating captions every image named by `inputs` (files, directories, globs) with the
    decoding flags in `args`, yielding a `FileCaption` per readable image, in order, as each
    batch finishes.

    Inputs that name no image and unreadable images are reported on stderr and counted in
    `failed`, and the run goes on. `full_size=False` when the images are not drawn on
    (see `Captioner.caption_files`); `faithfulness` adds each word's deletion test to the results.
    """

    def __init__(
        self,
        captioner: Captioner,
        inputs: Iterable[str | Path],
        args: argparse.Namespace,
        description: str,
        full_size: bool = True,
        faithfulness: bool = False,
    ):
        self.captioner = captioner
        self.full_size = full_size
        self.faithfulness = faithfulness
        self.inputs = inputs
        self.args = args
        self.description = description
        self.failed = 0

    def __iter__(self) -> Iterator[FileCaption]:
        args = self.args
        files, problems = list_image_files(self.inputs)
        for problem in problems:
            report(problem)
        self.failed = len(problems)
        settings = self.captioner.decoding_settings(**decoding_flags(args))
        options = dict(
            settings=settings, batch_size=args.batch_size, full_size=self.full_size, faithfulness=self.faithfulness
        )
        with progress(len(files), self.description) as advance:
            for item in self.captioner.caption_files(files, **options):
                advance()
                if item.error is not None:
                    report(item.error)
                    self.failed += 1
                else:
                    yield item
