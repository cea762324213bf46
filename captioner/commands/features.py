"""`captioner features extract`: run the frozen encoder of a training config once over its
data set and cache the features, so training skips the encoder (and image decoding).

    captioner features extract --config configs/coco_resnet101.yaml --out features/coco
    captioner train fit --config configs/coco_resnet101.yaml --data.features_dir features/coco

Any `--data.*`, `--model.*` or `--trainer.*` override of `captioner train` is accepted;
`--trainer.devices`/`--trainer.num_nodes` spread the work over several processes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.errors import CaptionerError


class _OverridesParser(argparse.ArgumentParser):
    """Keeps the arguments it does not know as `overrides` for the Lightning CLI, which checks them."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, unknown = super().parse_known_args(args, namespace)
        namespace.overrides = unknown
        return namespace, []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_OverridesParser)
    extract = sub.add_parser(
        "extract",
        help="cache the frozen encoder's features of the train, val and test images",
        description=__doc__.splitlines()[0],
        epilog="Other arguments are `captioner train` overrides, e.g. --data.data_dir DIR --trainer.devices 2.",
    )
    extract.add_argument("--config", required=True, help="the training YAML config (as for `captioner train fit`)")
    extract.add_argument("--out", required=True, help="new or empty folder for the features")


def run(args: argparse.Namespace) -> int:
    from captioner.training.cli import cli_main
    from captioner.training.extract import encoder_settings, extract_features, require_frozen

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CaptionerError(f"--out {out} already exists and is not an empty folder; pick a new folder or delete it")
    # No logger: predicting would write hyper-parameters into the config's run folder.
    overrides = ["--config", args.config, *args.overrides, "--trainer.logger", "false"]
    cli = cli_main(overrides, run=False, prog="captioner features extract")
    encoder = cli.model.model.encoder
    require_frozen(
        encoder, "its features change during training and cannot be cached; extract with --model.encoder.fine_tune none"
    )
    meta = {
        **encoder_settings(encoder, cli.model.hparams.image_size),
        "positions": encoder.config.grid_size**2,
        "feature_dim": encoder.out_channels,
    }
    counts = extract_features(cli.trainer, encoder, cli.datamodule, out, meta)
    if cli.trainer.is_global_zero:
        summary = ", ".join(f"{n} {name}" for name, n in counts.items())
        print(f"wrote features of {summary} images to {out}\n  train with: --data.features_dir {out}")
    return 0
