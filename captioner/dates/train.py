"""The Lightning CLI over `DatesModule` and `DatesDataModule` (`captioner dates fit|validate|test`)."""

from __future__ import annotations

from pytorch_lightning.cli import LightningArgumentParser

from captioner.commands.train import CaptionerCLI, start_cli
from captioner.dates.data import DatesDataModule
from captioner.dates.system import DatesModule


class DatesCLI(CaptionerCLI):
    """CaptionerCLI's atomic best/last checkpoints and metric files, with the date system's
    link (the input alphabet, from data to model) and monitor (val/exact_match)."""

    monitor = "val/exact_match"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.input_chars", "model.input_chars", apply_on="instantiate")
        self.add_checkpoints(parser)


def cli_main(args: list[str] | None = None, *, run: bool = True) -> DatesCLI:
    """The date CLI (`start_cli` over `DatesModule` and `DatesDataModule`)."""
    return start_cli(DatesCLI, DatesModule, DatesDataModule, args, run)
