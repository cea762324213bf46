"""Data: one reader per annotation format (`captioner.data.readers`), splits, robust image
loading, the synthetic families, datasets and the DataModule.

`CaptionDataModule` is imported on first use, so code that only needs to read records or load
images (e.g. `captioner caption`) does not pay for importing Lightning.
"""

from captioner.data.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    ImageLoadError,
    image_transform,
    list_image_files,
    load_image,
    load_image_for,
)
from captioner.data.readers.coco import read_boxes, read_coco
from captioner.data.readers.karpathy import read_karpathy
from captioner.data.records import Box, DataWarning, ImageRecord
from captioner.data.splits import Holdout, Split

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "Box",
    "CaptionDataModule",
    "DataWarning",
    "Holdout",
    "ImageLoadError",
    "ImageRecord",
    "Split",
    "image_transform",
    "list_image_files",
    "load_image",
    "load_image_for",
    "read_boxes",
    "read_coco",
    "read_karpathy",
]


def __getattr__(name: str):
    if name == "CaptionDataModule":
        from captioner.data import datamodule

        return datamodule.CaptionDataModule
    raise AttributeError(f"module 'captioner.data' has no attribute {name!r}")
