"""How a training process runs, apart from what it trains: the trainer's precision, TF32 on
CUDA and `torch.compile` (the CLI adds `Runtime` to every run, `--runtime.*`), and the random
state each epoch starts from.

Mixed precision needs nothing here: under `bf16-mixed` (or `16-mixed` on CUDA) Lightning runs
each step's forward under autocast, and the decoder, seeing autocast, runs its fast path with
its products in 16 bits and its state in float32 (`captioner.models.fused`).
"""

from __future__ import annotations

import os

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.utilities import rank_zero_warn

from captioner.errors import CaptionerError
from captioner.inference.precision import bf16_supported

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
        if str(trainer.precision) == "bf16-mixed" and not bf16_supported(trainer.strategy.root_device):
            rank_zero_warn(
                f"trainer.precision=bf16-mixed on {trainer.strategy.root_device.type}, which has no bfloat16 "
                "arithmetic (CPUs: AVX512-BF16 or AMX; GPUs: compute capability 8.0 or newer): its bfloat16 "
                "products are emulated, likely slower than float32 (trainer.precision=32-true)"
            )
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
            "captioner does not support (Adam's small updates would round away, and the decoder keeps its "
            f"state in float32); use trainer.precision={precision.split('-')[0]}-mixed, "
            "and `captioner caption --precision bf16` for fast inference"
        )


def clip_fused(
    trainer: pl.Trainer, optimizer: torch.optim.Optimizer, value: float | None, algorithm: str | None
) -> bool:
    """Clip the gradients of a fused optimizer (captioner's Adam) under mixed precision, which
    Lightning refuses to do: True when clipped here, False to leave clipping to Lightning.

    Lightning refuses because such an optimizer unscales 16-mixed's scaled gradients inside its
    step, after clipping would have seen them scaled. They are unscaled first here, as Lightning
    does for other optimizers (the scaler's step then knows); bf16-mixed scales nothing."""
    plugin = trainer.precision_plugin
    if (
        not value
        or not isinstance(plugin, MixedPrecision)
        or not getattr(optimizer, "_step_supports_amp_scaling", False)
    ):
        return False
    parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not parameters:  # a skipped batch: nothing to unscale (nor will the scaler step)
        return True
    if plugin.scaler is not None:
        plugin.scaler.unscale_(optimizer)
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(parameters, value)
    else:
        torch.nn.utils.clip_grad_norm_(parameters, value)
    return True


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
