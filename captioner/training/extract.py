"""Running a frozen encoder once over a data set and caching its features (see
`captioner.data.features` for the layout), through `Trainer.predict`: under several
processes (GPUs, nodes) each takes its share of the images and writes its own shard.

    counts = extract_features(trainer, encoder, datamodule, "features/coco", meta)
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import nn

from captioner.data.datamodule import ROLES, CaptionDataModule
from captioner.data.features import ShardWriter, write_meta
from captioner.errors import CaptionerError
from captioner.models import Encoder


def encoder_settings(encoder: Encoder, image_size: int) -> dict[str, Any]:
    """What decides the encoder's output, as plain data: its config's `feature_settings`, the
    image size, and the SHA-256 of its weights (which also tells two randomly initialised
    encoders, weights null and another seed, apart). Cached features made with other settings
    do not fit a model (`captioner.data.features.check_meta`)."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {**encoder.config.feature_settings(), "image_size": image_size, "encoder_sha256": digest.hexdigest()}


def require_frozen(encoder: Encoder, why: str) -> None:
    """Raise CaptionerError when fine-tuning trains the encoder; `why` says what needs it frozen."""
    if any(p.requires_grad for p in encoder.parameters()):
        raise CaptionerError(f"model.encoder.fine_tune={encoder.config.fine_tune!r} trains the encoder, but {why}")


def check_cached_features(data: Any, encoder: Encoder, image_size: int) -> None:
    """When the data module reads cached features (`features_dir`), raise CaptionerError unless
    they fit `encoder` at `image_size` and the encoder is frozen."""
    features_dir = getattr(data, "features_dir", None)
    if features_dir is None:
        return
    require_frozen(
        encoder,
        f"data.features_dir={features_dir} holds features of a frozen one; "
        "set model.encoder.fine_tune to none or drop data.features_dir",
    )
    data.check_features(encoder_settings(encoder, image_size))


class EncoderPredictor(pl.LightningModule):
    """`predict_step`: an eval batch -> {features (B, P, D), image_ids (B,), sizes (B, 2)}."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"features": self.encoder(batch["images"]), "image_ids": batch["image_ids"], "sizes": batch["sizes"]}


class FeatureWriter(BasePredictionWriter):
    """Writes each batch's features into this process's shard of `split_dir`, and its index
    when the pass ends. `num_images` is the size of the whole split."""

    def __init__(self, split_dir: str | Path, num_images: int) -> None:
        super().__init__(write_interval="batch")
        self.split_dir, self.num_images = Path(split_dir), num_images
        self._shard: ShardWriter | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's predict sampler does not repeat images, so no process gets more than its share.
        capacity = math.ceil(self.num_images / trainer.world_size)
        self._shard = ShardWriter(self.split_dir, trainer.global_rank, capacity)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self._shard.write(prediction["features"], prediction["image_ids"], prediction["sizes"])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._shard.close()


def extract_features(
    trainer: pl.Trainer, encoder: nn.Module, datamodule: CaptionDataModule, out_dir: str | Path, meta: dict[str, Any]
) -> dict[str, int]:
    """Features of every image of the data module's train, val and test splits (a split named
    twice is done once) into `out_dir`; then rank 0 writes `meta.json` (`meta` plus the split
    sizes), last. Returns split name -> number of images."""
    out_dir = Path(out_dir)
    predictor = EncoderPredictor(encoder.eval())
    # The trainer predicts features here: a writer of caption predictions (the CLI's
    # `CaptionWriter`) must not see them.
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, BasePredictionWriter)]
    counts: dict[str, int] = {}
    for role in ROLES:
        name = datamodule.split(role).name
        if name in counts:
            continue
        loader = datamodule.image_dataloader(role)
        writer = FeatureWriter(out_dir / name, len(loader.dataset))
        trainer.callbacks.append(writer)
        try:
            trainer.predict(predictor, dataloaders=loader, return_predictions=False)
        finally:
            trainer.callbacks.remove(writer)
        counts[name] = len(loader.dataset)
    trainer.strategy.barrier()  # every process's shards and indexes are on disk
    if trainer.is_global_zero:
        write_meta(out_dir, {**meta, "splits": counts, "dtype": "float16"})
    return counts
