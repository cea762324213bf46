"""AttentionOverlayCallback in a real Trainer with a tiny fake captioning module."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from captioner.models.captioner import Annotations
from captioner.models.search import Caption, DecodingConfig
from captioner.training.callbacks import AttentionOverlayCallback
from captioner.vocab import Vocabulary

GRID = (2, 3)
WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "circle"]


class Images(Dataset):
    """Image i is filled with the value i, so the test can tell which images were captioned."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        return {"images": torch.full((3, 24, 36), float(i))}


class FakeCaptioner(pl.LightningModule):
    """Implements the module contract the callback relies on, with hand-made attention."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.vocab = Vocabulary(WORDS)
        self.decoding = DecodingConfig(beam_size=1)
        self.model = FakeModel()

    def training_step(self, batch, batch_idx):
        return self.layer(batch["images"].mean(dim=(2, 3))).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch["images"].mean(dim=(2, 3))).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(Images(4), batch_size=2)

    def val_dataloader(self):
        return DataLoader(Images(5), batch_size=2)


class FakeModel(torch.nn.Module):
    """The `ShowAttendTell` surface the callback uses, with hand-made attention."""

    def __init__(self):
        super().__init__()
        self.encoder = SimpleNamespace(config=SimpleNamespace(grid_shape=GRID))
        self.captioned: list[list[float]] = []  # image ids seen by each caption call
        self.beam_sizes: list[int] = []

    def encode(self, images):
        return Annotations(images)

    def caption(self, annotations, vocab, settings):
        images = annotations.features
        self.captioned.append([float(v) for v in images[:, 0, 0, 0]])
        self.beam_sizes.append(settings.beam_size)
        alphas = torch.eye(6)[[0, 5]]  # "a" looks top-left, "circle" bottom-right
        return [Caption([4, 5], -1.0, alphas) for _ in images]


def _fit(module, logger, callback, epochs):
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        accelerator="cpu",
        callbacks=[callback],
    )
    trainer.fit(module)
    return trainer


def test_logs_overlays_of_the_same_images_each_epoch_to_tensorboard(tmp_path):
    module = FakeCaptioner()
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = _fit(module, logger, AttentionOverlayCallback(num_images=3, beam_size=2), epochs=2)

    # Not during the sanity check; the first 3 val images (across two batches) each epoch.
    assert module.model.captioned == [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]
    assert module.model.beam_sizes == [2, 2]

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["attention/0", "attention/1", "attention/2"]
    for tag in events.Tags()["images"]:
        images = events.Images(tag)
        assert [image.step for image in images] == [2, trainer.global_step]  # 2 train batches per epoch
        assert all(image.width > 100 and image.height > 50 for image in images)


def test_every_n_epochs(tmp_path):
    module = FakeCaptioner()
    logger = TensorBoardLogger(tmp_path, name="run")
    _fit(module, logger, AttentionOverlayCallback(num_images=1, every_n_epochs=2), epochs=3)

    assert module.model.captioned == [[0.0]]  # epoch 2 of 3 only
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [image.step for image in events.Images("attention/0")] == [4]


def test_other_loggers_are_skipped_quietly(tmp_path):
    module = FakeCaptioner()
    _fit(module, CSVLogger(tmp_path), AttentionOverlayCallback(), epochs=1)
    assert module.model.captioned == []


def test_rejects_non_positive_settings():
    with pytest.raises(ValueError, match="num_images must be an integer >= 1"):
        AttentionOverlayCallback(num_images=0)
