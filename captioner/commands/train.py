"""`captioner train` (and `python train.py`): train, validate, test or predict through the Lightning CLI.

captioner train fit --config shapes            (a recipe by name; `captioner recipes` lists them)
captioner train fit                            (the same: `shapes` is the default recipe of fit)
captioner train test --config configs/shapes.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
"""

from __future__ import annotations

import sys

from captioner.recipes import with_default_recipe
from captioner.training.cli import cli_main, run_cli

DEFAULT_RECIPE = "shapes"


def main(args: list[str] | None = None, prog: str = "captioner train") -> int:
    """Run the training CLI on `args` (default: sys.argv); `prog` is how the user typed the command."""
    args = sys.argv[1:] if args is None else args
    return run_cli(lambda: cli_main(with_default_recipe(args, "fit", DEFAULT_RECIPE), prog=prog))
