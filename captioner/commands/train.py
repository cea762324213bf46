"""`captioner train` (and `python train.py`): train, validate, test or predict through the Lightning CLI.

captioner train fit --config configs/shapes.yaml
captioner train test --config configs/shapes.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
"""

from __future__ import annotations

from captioner.training.cli import cli_main, run_cli


def main(args: list[str] | None = None) -> int:
    return run_cli(lambda: cli_main(args))
