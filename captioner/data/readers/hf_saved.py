"""A Hugging Face `datasets.Dataset` or `DatasetDict` saved with `save_to_disk` (needs the
optional `datasets` extra: `pip install 'captioner[datasets]'`).

    ds = Dataset.from_dict({"image": paths, "text": captions}).cast_column("image", Image())
    ds.save_to_disk("DIR")            # or a DatasetDict({"train": ..., "validation": ...})

The image column is the one of `Image()` type, else one named as in `IMAGE_COLUMNS` holding
paths; the caption column is named as in `CAPTION_COLUMNS` (a string or a list of strings). A
DatasetDict's splits are the data's own ("validation" is "val"). `save_to_disk` keeps the
image bytes inside the data set, and training reads image files, so the images are written
once to `DIR/captioner_images/<split>/` and kept while the data set's fingerprint is the same
(each file, and last the `done.json` that vouches for them, written atomically).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from captioner.data.readers.base import Row, RowReader, canonical_split
from captioner.data.readers.text import CAPTION_COLUMNS, IMAGE_COLUMNS, header_problem, pick
from captioner.errors import CaptionerError
from captioner.files import write_text_atomic

EXTRACTED = "captioner_images"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise CaptionerError(
            "format hf_saved needs the datasets library: pip install 'captioner[datasets]' (or datasets)"
        ) from None
    return datasets


def _kind(root: Path) -> str | None:
    if (root / "dataset_dict.json").is_file():
        return "DatasetDict"
    if (root / "state.json").is_file() and (root / "dataset_info.json").is_file():
        return "Dataset"
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class SavedDatasetReader(RowReader):
    looks_for = "dataset_dict.json or state.json + dataset_info.json (datasets save_to_disk)"

    @classmethod
    def recognise(cls, root: Path) -> str | None:
        kind = _kind(root) if root.is_dir() else None
        return f"a datasets {kind} saved with save_to_disk" if kind else None

    def rows(self) -> Iterator[Row]:
        root = self.root()
        datasets = _datasets()
        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as error:  # the library raises many kinds for a damaged folder
            raise CaptionerError(f"cannot load the saved data set {root}: {error}") from None
        parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
        for name, part in parts:
            yield from self._rows(datasets, root, name, part)

    def _rows(self, datasets, root: Path, name: str, part) -> Iterator[Row]:
        features = part.features
        image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
        image_col = image_col or pick(list(features), IMAGE_COLUMNS)
        source = root / name if name else root
        if image_col is None:
            raise header_problem(source, list(features), "image", ("an Image() column", *IMAGE_COLUMNS))
        text_col = pick([c for c in features if c != image_col], CAPTION_COLUMNS)
        if text_col is None:
            raise header_problem(source, list(features), "caption", CAPTION_COLUMNS)
        split = canonical_split(name) if name else ""
        if isinstance(features[image_col], datasets.Image):
            part = part.cast_column(image_col, datasets.Image(decode=False))
            paths = self._extract(root / EXTRACTED / (name or "all"), part, image_col)
        else:
            paths = [root / str(p) for p in part[image_col]]
        for index, (path, captions) in enumerate(zip(paths, part[text_col])):
            captions = [captions] if isinstance(captions, str) else list(captions or [])
            yield Row(path, tuple(str(c) for c in captions), split, source, index + 1)

    @staticmethod
    def _extract(folder: Path, part, column: str) -> list[Path]:
        """The image files of `part`'s `column`: the path of an image kept as a path, else a file
        in `folder` written from its bytes, unless `folder/done.json` vouches for this very data
        set (its fingerprint) already."""
        images = part[column]
        paths, held = [], []
        for index, image in enumerate(images):
            if image.get("bytes") is None:
                if not image.get("path"):
                    raise CaptionerError(f"saved data set {folder.parent.parent}: row {index + 1} has no image")
                paths.append(Path(image["path"]))
            else:
                paths.append(folder / f"{index:08d}{Path(image.get('path') or '').suffix or '.img'}")
                held.append(index)
        done = folder / "done.json"
        stamp = {"fingerprint": getattr(part, "_fingerprint", None), "count": len(held)}
        try:
            if json.loads(done.read_text(encoding="utf-8")) == stamp:
                return paths
        except (OSError, ValueError):
            pass
        folder.mkdir(parents=True, exist_ok=True)
        for index in held:
            _write_atomic(paths[index], images[index]["bytes"])
        write_text_atomic(done, json.dumps(stamp))
        return paths
