"""A caption file beside each image, the form image-generation training sets use.

    DIR/cat.jpg   DIR/cat.txt      one caption per line of cat.txt
    DIR/sub/dog.png   DIR/sub/dog.txt

Images are found in DIR and its folders, at any depth. An image without a `.txt` of the same
name is left out, counted. Images under a top folder named train, val / validation / dev or
test are in that split.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

from captioner.data.readers.base import Row, RowReader, canonical_split, is_image
from captioner.data.readers.text import read_text
from captioner.data.records import DataWarning

SPLITS = ("train", "val", "test")


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_image(p) and p.is_file()) if root.is_dir() else []


class SidecarReader(RowReader):
    looks_for = "images with a caption file beside each (cat.jpg + cat.txt)"

    @classmethod
    def recognise(cls, root: Path) -> str | None:
        if not root.is_dir():
            return None
        texts = {p.with_suffix("") for p in root.rglob("*.txt")}
        paired = sum(1 for p in _images(root) if p.with_suffix("") in texts)
        return f"{paired} images with a .txt caption file beside them" if paired else None

    def rows(self) -> Iterator[Row]:
        root = self.root()
        bare = []
        for image in _images(root):
            text = image.with_suffix(".txt")
            if not text.is_file():
                bare.append(image)
                continue
            top = image.relative_to(root).parts[0]
            split = canonical_split(top) if canonical_split(top) in SPLITS and top != image.name else ""
            lines = [line for line in read_text(text, "caption file").splitlines() if line.strip()]
            yield Row(image, tuple(lines) or ("",), split, text, 1)  # an empty file: one blank caption, counted
        if bare:
            warnings.warn(
                f"leaving out {len(bare)} images under {root} without a caption file beside them (e.g. {bare[0]})",
                DataWarning,
                stacklevel=2,
            )
