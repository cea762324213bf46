"""Lightning callbacks: watch the attention of a few fixed validation images as training goes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger

from captioner.data.images import IMAGENET_MEAN, IMAGENET_STD
from captioner.overlay import draw_attention

__all__ = ["AttentionOverlayCallback"]


class AttentionOverlayCallback(pl.Callback):
    """Log attention overlays of the same validation images after every few validation epochs.

    The images are the first ``num_images`` of the (first) validation dataloader, read once
    and kept, so successive epochs show the same pictures. Only rank 0 draws, never during
    the sanity check, and only with a TensorBoard logger (any other logger: nothing logged).
    Figures go to ``attention/<i>`` at the current global step.

    The module must provide ``caption_images(images (B,3,H,W), beam_size=int) ->
    list[Caption]`` (``.tokens``, ``.alphas`` (L, P)), ``vocab.decode_tokens(tokens)`` and
    ``grid_shape -> (rows, cols)``.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, beam_size: int = 1) -> None:
        if num_images < 1 or every_n_epochs < 1 or beam_size < 1:
            raise ValueError("num_images, every_n_epochs and beam_size must all be at least 1")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.beam_size = beam_size
        self._images: torch.Tensor | None = None  # (N, 3, H, W), normalised, on CPU

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        if self._images is None:
            self._images = self._first_images(trainer.val_dataloaders)
        with torch.no_grad():
            captions = pl_module.caption_images(self._images.to(pl_module.device), beam_size=self.beam_size)
        for index, (image, caption) in enumerate(zip(self._images, captions)):
            words = pl_module.vocab.decode_tokens(caption.tokens)
            figure = draw_attention(
                _to_pil(image), words, caption.alphas, pl_module.grid_shape, title=" ".join(words)
            )
            for logger in loggers:
                # add_figure renders the figure, then closes it.
                logger.experiment.add_figure(f"attention/{index}", figure, global_step=trainer.global_step)

    def _first_images(self, loaders: Any) -> torch.Tensor:
        """The first ``num_images`` images (fewer if the loader is shorter) of the first loader."""
        if isinstance(loaders, Mapping):
            loaders = next(iter(loaders.values()))
        elif isinstance(loaders, Sequence):
            loaders = loaders[0]
        chunks, count = [], 0
        for batch in loaders:
            chunks.append(batch["images"][: self.num_images - count].cpu())
            count += len(chunks[-1])
            if count == self.num_images:
                break
        return torch.cat(chunks)


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor normalised by captioner.data's image transform -> RGB PIL image."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (image.float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())
