"""The optimiser and learning-rate schedule of captioning runs (`model.optimizer.*`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from captioner.errors import CaptionerError
from captioner.models.config import PlainConfig

SCHEDULES = ("plateau", "cosine", "constant")


@dataclass(frozen=True)
class OptimizerConfig(PlainConfig):
    """Adam over two parameter groups, and how its learning rate changes.

    decoder_lr, encoder_lr: learning rates; the encoder's is used only when fine-tuning.
    weight_decay: Adam weight decay for both groups.
    lr_schedule: "plateau" (× `lr_decay` when val/CIDEr stops improving for `lr_patience`
        epochs, as in common SAT recipes), "cosine" (to 0 over the run) or "constant".
    """

    decoder_lr: float = 4e-4
    encoder_lr: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: Literal["plateau", "cosine", "constant"] = "plateau"
    lr_decay: float = 0.8
    lr_patience: int = 8

    def __post_init__(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise CaptionerError(
                f"model.optimizer.lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}"
            )


def configure_optimizer(
    config: OptimizerConfig, encoder: nn.Module, decoder: nn.Module, total_steps: int, monitor: str
) -> dict[str, Any]:
    """Lightning's `configure_optimizers` answer: Adam over the decoder and the trainable
    encoder parameters, with the schedule; `total_steps` sizes the cosine, `monitor` is the
    metric the plateau schedule watches (higher is better)."""
    groups = [{"params": decoder.parameters(), "lr": config.decoder_lr}]
    encoder_params = [p for p in encoder.parameters() if p.requires_grad]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.encoder_lr})
    # fused: one kernel updates all parameters, on CPU too.
    optimizer = torch.optim.Adam(groups, weight_decay=config.weight_decay, fused=True)
    if config.lr_schedule == "constant":
        return {"optimizer": optimizer}
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.lr_decay, patience=config.lr_patience
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": monitor, "strict": False}}
