"""The grounding gate: a stage that starts from a trained model keeps a checkpoint only where
the model still points at what its words name, and leaves the model it started from when it
never does.

    trainer:
      callbacks:
        - class_path: captioner.training.grounding_gate.GroundingGate
          init_args: {max_drop: 0.02}
    checkpoint:
      monitor: val/grounded_CIDEr
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from captioner.errors import CaptionerError
from captioner.evaluation.scores import DecodedImage, grounding_of
from captioner.inference.checkpoint import load_weights

MONITOR = "val/grounded_CIDEr"


class GroundingGate(pl.Callback):
    """For a second stage (`model.init_from`, e.g. self-critical training) on data with boxes.

    When fitting starts, the starting model's val pointing game is measured. After each
    validation, `val/grounded_CIDEr` is the val CIDEr where the pointing game is at most
    `max_drop` below the start's, and 0 where it fell further; the checkpoint callback keeps
    `best.ckpt` by it. If no validation holds, `best.ckpt` is overwritten, when training ends,
    with the model the stage started from (weights only), and one line says so: the stage's
    `best.ckpt` is always the model to use. Without boxes in the val split, or without
    `init_from`, there is nothing to hold to: `val/grounded_CIDEr` is the CIDEr (with a warning).
    The start's score travels in checkpoints, so a resumed stage keeps its gate.

    Args:
        max_drop: the largest drop of the val pointing game below the starting model's that a
            validation may have and still hold.
    """

    def __init__(self, max_drop: float = 0.02) -> None:
        self.max_drop = max_drop
        self.start: float | None = None  # the starting model's val pointing game; None: nothing to hold to
        self.held = False  # whether any validation of this stage held

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        checkpoint = trainer.checkpoint_callback
        if stage == "fit" and (checkpoint is None or checkpoint.monitor != MONITOR):
            raise CaptionerError(
                f"the GroundingGate callback keeps checkpoints by {MONITOR}: set checkpoint.monitor {MONITOR}"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path:  # resuming: the state came with the checkpoint
            return
        self.start, self.held = None, False
        if not pl_module.hparams.init_from:
            rank_zero_warn(
                "the GroundingGate guards a stage that starts from model.init_from; without one, all validations hold"
            )
        elif not pl_module.boxes("val"):
            rank_zero_warn(
                "the GroundingGate needs boxes (instances_*.json) in the val split; without them every checkpoint "
                "is kept on CIDEr alone: check the erasure score of the result instead"
            )
        else:
            self.start = _val_pointing_game(trainer, pl_module)
            rank_zero_info(f"the starting model points at the named object in {self.start:.3f} of val words")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or trainer.state.fn != "fit" or "val/CIDEr" not in metrics:
            return
        pointing = metrics.get("val/pointing_game")
        holds = self.start is None or pointing is None or float(pointing) >= self.start - self.max_drop
        self.held |= holds
        grounded = metrics["val/CIDEr"] if holds else torch.zeros_like(metrics["val/CIDEr"])
        metrics[MONITOR] = grounded  # the checkpoint callbacks run after every other callback
        for logger in trainer.loggers:
            logger.log_metrics({MONITOR: float(grounded)}, step=trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is None or self.held:
            return
        start, best = pl_module.hparams.init_from, trainer.checkpoint_callback.best_model_path
        why = f"the val pointing game fell over {self.max_drop} below the start's {self.start:.3f} at each validation"
        if not best:
            rank_zero_warn(f"{why}, and no best.ckpt was written: the model to use is the one it started from, {start}")
            return
        load_weights(start, pl_module.model, pl_module.vocab)
        trainer.save_checkpoint(best, weights_only=True)
        rank_zero_warn(f"{why}: {best} is the model this stage started from, {start}")

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "held": self.held}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start, self.held = state_dict["start"], state_dict["held"]


def _val_pointing_game(trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
    """The val pointing game of the model as it is, every process decoding the whole val split."""
    training = pl_module.model.training
    pl_module.model.eval()
    images: list[DecodedImage] = []
    for batch in trainer.datamodule.val_dataloader():
        images.extend(pl_module.decode_batch(pl_module.transfer_batch_to_device(batch, pl_module.device, 0)))
    pl_module.model.train(training)
    return grounding_of(images, pl_module.boxes("val"), pl_module.grid_shape)["pointing_game"]
