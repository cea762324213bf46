"""The Lightning system for dates: a small sibling of `CaptioningModule`.

    captioner dates fit --config configs/dates.yaml

`DatesCLI` is the Lightning CLI over it and `DatesDataModule` (`captioner dates fit|validate|test`).

It shares the captioning system's parts — the objectives (`captioner.training.objectives`,
cross-entropy by default), the decoder and the decoding entry point (`decode_captions`, through
`DatesModel.decode`) — and differs where dates differ: the encoder is a `SequenceEncoder`, and
the metric is exact match of the ISO string (per input format in test), not COCO caption scores.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import lazy_instance
from pytorch_lightning.cli import LightningArgumentParser

from captioner.dates.data import DatesDataModule
from captioner.dates.generate import HELD_OUT
from captioner.dates.model import DatesModel
from captioner.models import DecoderConfig, SequenceEncoderConfig
from captioner.models.search import DecodingConfig
from captioner.training.cli import CaptionerCLI, start_cli
from captioner.training.objectives import CrossEntropy, Objective

# No doubly stochastic term: it asks every input position for a total attention of 1, but most
# characters of "Sunday, the 20th of July 1969" rightly get none.
DEFAULT_OBJECTIVE = lazy_instance(CrossEntropy, attention_lambda=0.0)


# Bahdanau et al.'s translation model: α_t from the previous decoder state s_{t-1}, which
# starts from the encoder's mean (the captioner's own defaults attend from the current state).
TRANSLATION_DECODER = DecoderConfig(attend_from="previous", initial_state="mean")


class DatesModule(pl.LightningModule):
    """Sequence encoder + attention decoder, trained with teacher forcing, judged by free decoding.

    Args:
        input_chars: the input alphabet; linked from the data module by the CLI.
        encoder, decoder: the networks (`SequenceEncoderConfig`, `DecoderConfig`; configs/dates.yaml
            sizes the decoder for dates, far smaller than for images).
        decoding: validation and test decoding, kept in the checkpoint for `translate`
            (beam_size 1 is greedy; max_len is always 11: ten characters and <end>).
        max_input_len: longest input `translate` accepts, in characters.
        objective: what training minimises, by `class_path` (`captioner.training.objectives`);
            by default cross-entropy without the doubly stochastic term (λ = 0).
        lr: Adam learning rate, annealed to 0 over the run (cosine).
    """

    def __init__(
        self,
        input_chars: list[str],
        encoder: SequenceEncoderConfig = SequenceEncoderConfig(),  # noqa: B008 - frozen, so one shared default is safe
        decoder: DecoderConfig = TRANSLATION_DECODER,
        decoding: DecodingConfig = DecodingConfig(),  # noqa: B008
        max_input_len: int = 64,
        objective: Objective = DEFAULT_OBJECTIVE,
        lr: float = 1e-2,
    ) -> None:
        super().__init__()
        # Checkpoints carry plain data only (they are loaded with weights_only=True).
        encoder, decoder = SequenceEncoderConfig.from_dict(encoder), DecoderConfig.from_dict(decoder)
        decoding = DecodingConfig.from_dict(decoding)
        if objective is DEFAULT_OBJECTIVE:  # never one module shared by two systems
            objective = CrossEntropy(attention_lambda=0.0)
        self.save_hyperparameters(ignore=["objective"])
        self.hparams.update(
            input_chars=list(input_chars),
            encoder=encoder.to_dict(),
            decoder=decoder.to_dict(),
            decoding=decoding.to_dict(),
            objective=objective.spec(),
        )
        self.decoding = decoding
        self.model = DatesModel(list(input_chars), encoder, decoder, max_input_len)
        self.objective = objective
        objective.attach(self.model, self.model.target, decoding)
        self._outputs: list[tuple[str, bool]] = []  # (format, exact match) per example

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.objective.start(getattr(self._trainer, "datamodule", None))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """batch: inputs (B, T_x) character ids, targets (B, 12): <start>, the date, <end>."""
        annotations = self.model.encode(batch["inputs"])
        tokens = batch["targets"]
        loss, logs = self.objective(
            self.model, {"features": annotations.features, "mask": annotations.mask, "tokens": tokens}
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=tokens.size(0))
        for name, value in logs.items():
            self.log(f"train/{name}", value, batch_size=tokens.size(0))
        return loss

    def _judge(self, batch: dict[str, Any]) -> None:
        outputs = self.model.decode(batch["inputs"], self.decoding)
        for (output, _, _), date, name in zip(outputs, batch["dates"], batch["formats"]):
            self._outputs.append((name, output == date))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._judge(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._judge(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val", per_format=False)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test", per_format=True)

    def _log_accuracy(self, stage: str, per_format: bool) -> None:
        outputs, self._outputs = self._outputs, []
        if not outputs:
            return
        self.log(f"{stage}/exact_match", sum(ok for _, ok in outputs) / len(outputs), prog_bar=True)
        if not per_format:
            return
        by_format: dict[str, list[bool]] = defaultdict(list)
        for name, ok in outputs:
            by_format[name].append(ok)
        for name, oks in sorted(by_format.items()):
            self.log(f"{stage}/exact_match/{name}", sum(oks) / len(oks))
        for group, names in (("held_out_formats", set(HELD_OUT)), ("training_formats", set(by_format) - set(HELD_OUT))):
            oks = [ok for name, ok in outputs if name in names]
            if oks:
                self.log(f"{stage}/exact_match/{group}", sum(oks) / len(oks))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DatesCLI(CaptionerCLI):
    """CaptionerCLI's atomic best/last checkpoints and metric files, with the date system's
    link (the input alphabet, from data to model) and monitor (val/exact_match)."""

    monitor = "val/exact_match"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.input_chars", "model.input_chars", apply_on="instantiate")
        self.add_checkpoints(parser)


def cli_main(args: list[str] | None = None, *, run: bool = True, prog: str = "captioner dates") -> DatesCLI:
    """The date CLI (`start_cli` over `DatesModule` and `DatesDataModule`)."""
    return start_cli(DatesCLI, DatesModule, DatesDataModule, args, run, prog)
