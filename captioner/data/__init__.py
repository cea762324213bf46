"""Data: annotation readers, robust image loading, the synthetic shapes set, datasets and the
DataModule.

`CaptionDataModule` and its `Split` are imported on first use, so code that only needs to read records or
load images (e.g. `captioner caption`) does not pay for importing Lightning.
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
from captioner.data.records import Box, DataWarning, ImageRecord, read_boxes, read_coco, read_karpathy

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "Box",
    "CaptionDataModule",
    "DataWarning",
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
    if name in ("CaptionDataModule", "Split"):
        from captioner.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'captioner.data' has no attribute {name!r}")
