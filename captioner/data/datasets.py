"""Datasets, the training shuffle and the collate functions behind `CaptionDataModule`.

    train batch (`CaptionPairs` + `collate_pairs`): images (B, 3, S, S) float, tokens (B, T)
        long (<start> ... <end>, padded with <pad>), image_ids (B,) long
    eval batch (`CaptionImages` + `collate_images`): images (B, 3, S, S), image_ids (B,) long,
        references list[list[str]], paths list[str], sizes (B, 2) long: each image's (W, H)
        before resizing, the pixels its boxes use
With cached encoder features as the `Source` (see `captioner.data.features`) every batch
carries `features` (B, P, D) float32 in place of `images`, and no image is decoded.

A file that exists but cannot be decoded is found only when its batch is built. In training
its pairs are then left out of their batch, with a `DataWarning` naming the file and counting
the unreadable files met so far (per loader process), so one bad file among thousands does not
end a long run; a batch with no readable image left raises `CaptionerError`. In validation,
test and predict it raises `ImageLoadError` naming the file: scores over a silently smaller
set would mislead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset, RandomSampler

from captioner.data.images import ImageLoadError, image_transform, load_image_for
from captioner.data.records import DataWarning, ImageRecord
from captioner.errors import CaptionerError

# record -> (model input: image (3, S, S) or features (P, D), the image's (W, H) before resizing)
Source = Callable[[ImageRecord], tuple[torch.Tensor, tuple[int, int]]]


class ImageSource:
    """The `Source` that decodes the image file (a large JPEG at reduced scale, see
    `load_image_for`) and resizes and normalises it to `image_size`²."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.transform = image_transform(image_size)

    def __call__(self, record: ImageRecord) -> tuple[torch.Tensor, tuple[int, int]]:
        image, size = load_image_for(record.path, self.image_size)
        return self.transform(image), size


class CaptionPairs(Dataset):
    """One item per (image, caption): `(input, token ids (L,) long, image_id)`; input from `source`."""

    def __init__(self, records: list[ImageRecord], encoded: list[tuple[int, list[int]]], source: Source):
        self.records = records
        self.encoded = encoded  # (index into records, token ids incl. <start>/<end>)
        self.source = source
        self.unreadable: set[Path] = set()  # image files that failed to load, in this process

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """The pair, or None when its image cannot be loaded (warned once per file; see module doc)."""
        index, ids = self.encoded[i]
        record = self.records[index]
        try:
            inputs = self.source(record)[0]
        except ImageLoadError as error:
            if error.path not in self.unreadable:
                self.unreadable.add(error.path)
                warnings.warn(
                    f"skipping training image {error.path} ({error.reason}); {len(self.unreadable)} "
                    "unreadable training image(s) so far; replace or remove it from the annotations",
                    DataWarning,
                    stacklevel=2,
                )
            return None
        return inputs, torch.tensor(ids, dtype=torch.long), record.image_id


class EpochShuffle(RandomSampler):
    """A random order that depends only on (seed, epoch), so a run resumed at epoch e sees the
    same order as one that never stopped. Lightning calls `set_epoch` before every epoch, as it
    does on a DistributedSampler (which replaces this one under DDP, shuffling by its own seed
    and the epoch)."""

    def __init__(self, data_source: Dataset, seed: int):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class CaptionImages(Dataset):
    """One item per image: `(input, image_id, references, path, (W, H) before resizing)`; input from `source`."""

    def __init__(self, records: list[ImageRecord], source: Source):
        self.records = records
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, list[str], str, tuple[int, int]]:
        record = self.records[i]
        inputs, size = self.source(record)
        return inputs, record.image_id, list(record.captions), str(record.path), size


def collate_pairs(
    items: list[tuple[torch.Tensor, torch.Tensor, int]], pad_id: int, key: str = "images"
) -> dict[str, torch.Tensor]:
    """Stack the inputs under `key` and right-pad token ids with `pad_id` to the longest caption.
    Items that are None (unreadable images, see `CaptionPairs`) are left out."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise CaptionerError(
            f"none of the {len(items)} training images of a batch could be loaded (see the warnings above); "
            "check the image files"
        )
    inputs, tokens, image_ids = zip(*kept)
    padded = torch.nn.utils.rnn.pad_sequence(list(tokens), batch_first=True, padding_value=pad_id)
    return {
        key: torch.stack(inputs),
        "tokens": padded,
        "image_ids": torch.tensor(image_ids, dtype=torch.long),
    }


def collate_images(items: list[tuple[torch.Tensor, int, list[str], str, tuple[int, int]]], key: str = "images") -> dict:
    inputs, image_ids, references, paths, sizes = zip(*items)
    return {
        key: torch.stack(inputs),
        "image_ids": torch.tensor(image_ids, dtype=torch.long),
        "references": list(references),
        "paths": list(paths),
        "sizes": torch.tensor(sizes, dtype=torch.long),
    }
