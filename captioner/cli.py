"""Caption images with Show, Attend and Tell, see where each word looked, and train models.

  captioner data synth --out data/shapes                       make a small data set
  captioner data check my_photos/                             what training would see in your data
  captioner train fit --config shapes                         train (the Lightning CLI)
  captioner recipes                                            the recipes --config can name
  captioner caption --ckpt best.ckpt photos/                   caption images
  captioner attend --ckpt best.ckpt photo.jpg --out overlays/  draw where each word looked
  captioner serve --ckpt best.ckpt --port 8000                 an HTTP service with a page
  captioner export --ckpt best.ckpt --out exports/mine         safetensors + config + model card (--model DIR)
  captioner dates translate "July 20th 1969" --ckpt dates.ckpt  the same decoder, on written dates

`captioner COMMAND --help` tells more about each.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType

from captioner.errors import CaptionerError

# subcommand -> (module under captioner.commands, one-line help). Modules are imported only
# when their subcommand runs, so `captioner caption` does not pay for Lightning's import.
COMMANDS = {
    "train": ("train", "train / validate / test / predict through the Lightning CLI"),
    "data": ("data", "make or check data sets (data synth, data check)"),
    "caption": ("caption", "caption images with a trained checkpoint"),
    "attend": ("attend", "draw where each word looked, one PNG per image"),
    "gallery": ("gallery", "write a static HTML gallery of captions and attention"),
    "features": ("features", "extract and cache encoder features"),
    "export": ("export", "write a checkpoint as model.safetensors + config.json + a model card"),
    "serve": ("serve", "serve captions and attention over HTTP, with a page at /"),
    "recipes": ("recipes", "list the training recipes shipped with the package (--config NAME)"),
    "dates": ("dates", "normalise written dates with the same attention decoder (fit, test, translate)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("train", "dates"):
        # These run a LightningCLI, which owns its own argument parsing.
        module = _command_module(argv[0])
        return _run(lambda: module.main(argv[1:]))

    parser = argparse.ArgumentParser(
        prog="captioner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module_name, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage and exits 2
    name, rest = argv[0], argv[1:]
    args = command_parser(name).parse_args(rest)
    return _run(lambda: _command_module(name).run(args))


def command_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of subcommand `name` (all but `train` and `dates`, whose Lightning CLIs
    parse their own arguments)."""
    parser = argparse.ArgumentParser(prog=f"captioner {name}", description=COMMANDS[name][1])
    _command_module(name).add_arguments(parser)
    return parser


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(f"captioner.commands.{COMMANDS[name][0]}")


def _run(command: Callable[[], int | None]) -> int:
    """Run a command; its exit status, with user errors, Ctrl-C and a closed pipe handled."""
    try:
        return int(command() or 0)
    except CaptionerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`captioner caption ... | head -1`): stop quietly, as shell tools
        # do. Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
