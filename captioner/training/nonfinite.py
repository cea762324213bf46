"""What a NaN or infinite training loss does: stop the run with one line naming the step, or,
with `model.skip_nonfinite_loss`, skip the batch and count it. Either way nothing is
back-propagated, so the weights never see the bad loss."""

from __future__ import annotations

from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from captioner.errors import CaptionerError


class NonFiniteLosses:
    """skip: skip such batches (warn, count) instead of stopping the run."""

    def __init__(self, skip: bool) -> None:
        self.skip, self.skipped = skip, 0

    def check_processes(self, world_size: int) -> None:
        """Raise CaptionerError when skipping is asked for with several processes."""
        if self.skip and world_size > 1:
            raise CaptionerError(
                "model.skip_nonfinite_loss works with one process only (Lightning cannot skip a step on "
                "one rank of several); set it to false or train on one device"
            )

    def handle(self, loss: Tensor, where: str) -> int:
        """Stop (CaptionerError), or warn and return how many batches were skipped so far."""
        if not self.skip:
            raise CaptionerError(
                f"the training loss is {loss.item()} at {where}; the weights were not updated with it and "
                "the last checkpoint is intact. Lower model.optimizer.decoder_lr / model.optimizer.encoder_lr, set "
                "trainer.gradient_clip_val, or set model.skip_nonfinite_loss=true to skip such batches"
            )
        self.skipped += 1
        rank_zero_warn(
            f"skipped the batch at {where}: the training loss is {loss.item()} ({self.skipped} skipped so far)"
        )
        return self.skipped
