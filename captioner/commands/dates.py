"""`captioner dates`: the attention decoder over a character sequence, normalising dates.

    captioner dates fit                   (the `dates` recipe; --config names another or a file)
    captioner dates test --config configs/dates.yaml --ckpt_path runs/dates/checkpoints/best.ckpt
    captioner dates translate "July 20th 1969" --ckpt runs/dates/checkpoints/best.ckpt --attention moon.png

fit / validate / test run the Lightning CLI over `DatesModule` and `DatesDataModule`
(best.ckpt is the highest val/exact_match; test writes metrics.json beside the checkpoint,
with the exact-match accuracy per input format). translate prints one ISO date per input
date; with --attention it also writes the attention matrix, output characters × input
characters, as a PNG (one file per date: OUT.png, or OUT_1.png, OUT_2.png, ... for several).

Every subcommand runs torch on one CPU thread (the model is too small to gain from a second;
README: dates); `--threads N` (anywhere in the arguments) chooses another count.

Bad input is one `error:` line and exit status 2: an empty date, one longer than the model
reads (64 characters by default), characters the model never saw in training. A date that
does not exist ("31 February 2001") is still translated — the model copies the day and
month it reads, giving "2001-02-31" — and then a `warning:` line says the output is not a
calendar date, with exit status 1. The same check catches any output that is not a date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.errors import CaptionerError, require_positive
from captioner.recipes import with_default_recipe

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
DEFAULT_RECIPE = "dates"  # what `captioner dates fit` trains with when no --config is given
# torch's CPU threads for every dates subcommand unless --threads says otherwise: the model is
# too small for a second thread to pay for its synchronisation (README: dates).
DEFAULT_THREADS = 1


def main(argv: list[str]) -> int:
    """`captioner dates ...`: translate through argparse, the rest through the Lightning CLI."""
    threads, argv = take_threads(argv)
    use_threads(threads)
    if argv[:1] == ["translate"]:
        return translate(translate_parser().parse_args(argv[1:]))
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in LIGHTNING_SUBCOMMANDS:
        print(
            f"usage: captioner dates {{{','.join(LIGHTNING_SUBCOMMANDS)},translate}} ...\n"
            "error: name a subcommand, e.g. `captioner dates fit --config configs/dates.yaml`",
            file=sys.stderr,
        )
        return 2
    from captioner.dates.system import cli_main
    from captioner.training.cli import run_cli

    return run_cli(lambda: cli_main(with_default_recipe(argv, "fit", DEFAULT_RECIPE)))


def take_threads(argv: list[str]) -> tuple[int, list[str]]:
    """(--threads N, or DEFAULT_THREADS; `argv` without it). The Lightning CLI does not know the flag."""
    threads, rest = DEFAULT_THREADS, []
    args = iter(argv)
    for arg in args:
        if arg == "--threads" or arg.startswith("--threads="):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            try:
                threads = int(value)
            except ValueError:
                raise CaptionerError(f"--threads must be an integer >= 1, got {value!r}") from None
            require_positive(**{"--threads": threads})
        else:
            rest.append(arg)
    return threads, rest


def use_threads(threads: int) -> None:
    """Run torch's CPU operators on `threads` threads."""
    import torch

    torch.set_num_threads(threads)


def translate_parser() -> argparse.ArgumentParser:
    """The argument parser of `captioner dates translate`."""
    parser = argparse.ArgumentParser(
        prog="captioner dates translate",
        description=translate.__doc__,
        epilog=f"--threads N: torch CPU threads (default {DEFAULT_THREADS})",
    )
    parser.add_argument("dates", nargs="+", metavar="DATE", help='dates as people write them, e.g. "July 20th 1969"')
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by `captioner dates fit`")
    parser.add_argument("--beam-size", type=int, help="beam width; 1 decodes greedily (default: the checkpoint's)")
    parser.add_argument("--attention", type=Path, metavar="OUT.png", help="write the attention matrix as a PNG")
    return parser


def translate(args: argparse.Namespace) -> int:
    """Print the ISO date (YYYY-MM-DD) of each DATE; optionally draw its attention matrix."""
    from captioner.commands.common import decoding_flags
    from captioner.dates.model import load_dates_model
    from captioner.dates.plot import save_attention_matrix

    flags = decoding_flags(args)
    if args.attention is not None and args.attention.suffix.lower() != ".png":
        raise CaptionerError(f"--attention {args.attention} must name a .png file")
    loaded = load_dates_model(args.ckpt)
    settings = loaded.decoding.replace(**flags)
    results = loaded.model.translate(args.dates, settings)
    status = 0
    for i, result in enumerate(results, start=1):
        print(result.output, flush=True)
        if not result.valid:
            print(
                f"warning: {result.output!r} (from {result.text!r}) is not a calendar date; the input may name a "
                "day that does not exist, such as 31 February",
                file=sys.stderr,
            )
            status = 1
        if args.attention is not None:
            out = args.attention if len(results) == 1 else args.attention.with_stem(f"{args.attention.stem}_{i}")
            save_attention_matrix(result, out)
            print(f"wrote {out}", file=sys.stderr)
    return status
