"""Lightning callbacks: watch the attention of a few fixed validation images as training goes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger

from captioner.data.images import IMAGENET_MEAN, IMAGENET_STD, load_image
from captioner.errors import require_positive
from captioner.models.search import DecodingConfig
from captioner.training.objectives.base import batch_annotations
from captioner.viz.overlay import draw_attention

__all__ = ["AttentionOverlayCallback"]


class AttentionOverlayCallback(pl.Callback):
    """Log attention overlays of the same validation images after every few validation epochs.

    The images are the first ``num_images`` of the (first) validation dataloader, read once
    and kept, so successive epochs show the same pictures. Only rank 0 draws, never during
    the sanity check, and only with a TensorBoard logger (any other logger: nothing logged).
    Figures go to ``attention/<i>`` at the current global step.

    The module must provide ``model`` (a `ShowAttendTell` over an image grid), ``vocab`` and
    ``decoding``. When the batches carry cached ``features`` (B, P, D) instead of images, it
    captions those and draws over the image files named by the batches' ``paths``.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, beam_size: int = 1) -> None:
        require_positive(num_images=num_images, every_n_epochs=every_n_epochs)
        DecodingConfig().replace(beam_size=beam_size)  # checked as every decoding setting is
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.beam_size = beam_size
        self._inputs: dict[str, Any] | None = None  # images (N, 3, H, W) or features (N, P, D) on CPU, paths

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        if self._inputs is None:
            self._inputs = self._first_inputs(trainer.val_dataloaders)
        settings = pl_module.decoding.replace(beam_size=self.beam_size)
        model = pl_module.model
        key = "features" if "features" in self._inputs else "images"
        with torch.inference_mode():
            annotations = batch_annotations(model, {key: self._inputs[key].to(pl_module.device)})
            captions = model.caption(annotations, pl_module.vocab, settings)
        if key == "features":
            pictures = [load_image(path) for path in self._inputs["paths"]]
        else:
            pictures = [_to_pil(image) for image in self._inputs["images"]]
        grid = model.encoder.config.grid_shape
        for index, (picture, caption) in enumerate(zip(pictures, captions)):
            words = pl_module.vocab.decode_tokens(caption.tokens)
            figure = draw_attention(picture, words, caption.alphas, grid, title=" ".join(words))
            for logger in loggers:
                # add_figure renders the figure, then closes it.
                logger.experiment.add_figure(f"attention/{index}", figure, global_step=trainer.global_step)

    def _first_inputs(self, loaders: Any) -> dict[str, Any]:
        """The first ``num_images`` images or features (fewer if the loader is shorter) of the
        first loader, under their batch key, with their ``paths`` when the batches have them."""
        if isinstance(loaders, Mapping):
            loaders = next(iter(loaders.values()))
        elif isinstance(loaders, Sequence):
            loaders = loaders[0]
        chunks, paths, count = [], [], 0
        for batch in loaders:
            key = "features" if "features" in batch else "images"
            chunks.append(batch[key][: self.num_images - count].cpu())
            paths.extend(batch.get("paths", [])[: len(chunks[-1])])
            count += len(chunks[-1])
            if count == self.num_images:
                break
        return {key: torch.cat(chunks), "paths": paths}


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor normalised by captioner.data's image transform -> RGB PIL image."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (image.float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())
