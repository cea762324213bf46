"""The date data module: generated in memory from a seed, nothing on disk.

train: `train_size` examples in the training formats, over dates outside the val and test pools.
val: `val_size` dates of their own, each once, in the training formats (checkpoint selection).
test: `test_size` dates of their own, each once, in every format, held-out ones included.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from captioner.dates.generate import FORMATS, TRAINING_FORMATS, Example, examples, split_dates
from captioner.dates.model import encode_targets, encode_texts, source_vocabulary
from captioner.errors import CaptionerError


class DatesDataModule(pl.LightningDataModule):
    """Batches: inputs (B, T_x) character ids padded with <pad>, targets (B, 12) = <start>
    YYYY-MM-DD <end>, texts and formats (lists of B strings).

    `input_chars` (the input alphabet, from the training examples) is linked to the model by
    the CLI, as `vocab_words` is for captions.
    """

    def __init__(
        self,
        seed: int = 0,
        train_size: int = 100_000,
        val_size: int = 1_000,
        test_size: int = 1_000,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value < 1:
                raise CaptionerError(f"data.{name} must be at least 1, got {value}")
        if batch_size < 1:
            raise CaptionerError(f"data.batch_size must be at least 1, got {batch_size}")
        self.save_hyperparameters()
        train_pool, val_pool, test_pool = split_dates(seed, val_size, test_size)
        self.splits: dict[str, list[Example]] = {
            "train": examples(train_pool, train_size, list(TRAINING_FORMATS), seed + 1),
            "val": examples(val_pool, val_size, list(TRAINING_FORMATS), seed + 2, each_once=True),
            "test": examples(test_pool, test_size, list(FORMATS), seed + 3, each_once=True),
        }
        self.input_chars = sorted({ch for e in self.splits["train"] for ch in e.text})
        self._source = source_vocabulary(self.input_chars)

    def collate(self, batch: list[Example]) -> dict[str, Any]:
        return {
            "inputs": encode_texts(self._source, [e.text for e in batch]),
            "targets": encode_targets([e.target for e in batch]),
            "texts": [e.text for e in batch],
            "dates": [e.target for e in batch],
            "formats": [e.format for e in batch],
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
