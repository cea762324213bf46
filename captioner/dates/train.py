"""The Lightning CLI over `DatesModule` and `DatesDataModule` (`captioner dates fit|validate|test`)."""

from __future__ import annotations

import warnings

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, SaveConfigCallback

from captioner.commands.train import CaptionerCLI
from captioner.dates.data import DatesDataModule
from captioner.dates.system import DatesModule


class DatesCLI(CaptionerCLI):
    """CaptionerCLI's atomic best/last checkpoints and metric files, with the date system's
    link (the input alphabet, from data to model) and monitor (val/exact_match)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.input_chars", "model.input_chars", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/exact_match",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_top_k": 1,
                "checkpoint.enable_version_counter": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
            }
        )


def cli_main(args: list[str] | None = None, *, run: bool = True) -> DatesCLI:
    """Run the date CLI; `args=None` reads sys.argv (tests pass a list). With `run=False` it
    only parses `args` (no subcommand) and instantiates data, model and trainer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        return DatesCLI(
            DatesModule,
            DatesDataModule,
            args=args,
            run=run,
            save_config_callback=SaveConfigCallback if run else None,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )
