"""How a training process runs, apart from what it trains: the trainer's precision, TF32 on
CUDA and `torch.compile` (the CLI adds `Runtime` to every run, `--runtime.*`), and the random
state each epoch starts from."""

from __future__ import annotations

import os

import numpy as np
import pytorch_lightning as pl
import torch

from captioner.errors import CaptionerError

# Trainer precisions that cast the weights, not just the matmuls, to 16 bits.
HALF_WEIGHTS = {"bf16-true": "bfloat16", "16-true": "float16"}


class Runtime(pl.Callback):
    """Args:
    tf32: on CUDA, float32 matmuls and cuDNN convolutions use TensorFloat-32 (GPUs from Ampere
        on; several times faster, about 3 significant digits per product, as PyTorch advises for
        training); false keeps full float32. Applies to the whole process.
    compile: `torch.compile` the encoder and the decoder's per-step core when the trainer sets
        the model up (the first step then pays for compiling).
    """

    def __init__(self, tf32: bool = True, compile: bool = False) -> None:
        self.tf32, self.compile = tf32, compile
        self._compiled = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_half_weights(str(trainer.precision))
        if trainer.strategy.root_device.type == "cuda":
            use_tf32(self.tf32)
        if self.compile and not self._compiled:
            # In place (no `_orig_mod.` wrapper), so state-dict keys do not change.
            pl_module.model.encoder.compile()
            pl_module.model.decoder.compile_step()
            self._compiled = True


def refuse_half_weights(precision: str) -> None:
    """Raise CaptionerError for a trainer precision that keeps the weights in 16 bits."""
    if precision in HALF_WEIGHTS:
        raise CaptionerError(
            f"trainer.precision={precision} keeps the weights themselves in {HALF_WEIGHTS[precision]}, which "
            "captioner does not support (Adam's small updates would round away, and the decoder's "
            f"hand-written time loop is float32); use trainer.precision={precision.split('-')[0]}-mixed, "
            "and `captioner caption --precision bf16` for fast inference"
        )


def use_tf32(enabled: bool) -> None:
    """TensorFloat-32 (True) or full IEEE float32 (False) for CUDA float32 matmuls and cuDNN
    convolutions, process-wide."""
    mode = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


def reseed_for_epoch(epoch: int) -> None:
    """Re-seed torch's global RNG (which dropout draws from) from (seed, epoch), so an epoch's
    randomness does not depend on whatever ran before it, and a run resumed from an end-of-epoch
    checkpoint continues exactly as one that never stopped. The seed is the one `seed_everything`
    set (the CLI's `seed_everything`, 0 by default); unseeded runs are left alone."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        torch.manual_seed(int(np.random.SeedSequence([int(seed), epoch]).generate_state(1)[0]))
