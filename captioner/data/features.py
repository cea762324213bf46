"""Cached encoder features on disk: float16 memory-mapped shards, indexed by image id.

    DIR/meta.json                     the encoder settings and feature shape; written last
    DIR/<split>/shard_<rank>.npy      (N, P, D) float16, one file per extracting process
    DIR/<split>/index_<rank>.json     {"shard": "shard_<rank>.npy", "images": {id: [row, W, H]}}

`<split>` is the split's name in the data set ("train2014", "val", ...). Every process of an
extraction writes only its own shard and index, so none waits for another; a reader takes
the union of the indexes. (W, H) is the image's size before resizing, which the grounding
scores need, so training from features never opens an image. Rows are read through numpy
memory maps: a batch pages in only its own rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioner.data.records import ImageRecord
from captioner.errors import CaptionerError

META_FILE = "meta.json"


def write_meta(root: str | Path, meta: dict[str, Any]) -> Path:
    """Write `root/meta.json`: plain data, by convention the last file an extraction writes."""
    path = Path(root) / META_FILE
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_meta(root: str | Path) -> dict[str, Any]:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise CaptionerError(
            f"features_dir {root} has no {META_FILE}: extract the features first with "
            f"`captioner features extract --config CONFIG --out {root}` (an unfinished extraction has none)"
        )
    return json.loads(path.read_text())


def check_meta(root: str | Path, settings: dict[str, Any]) -> None:
    """Raise CaptionerError unless the features in `root` were made with these encoder `settings`
    (every key: `captioner.training.extract.encoder_settings` decides which). A setting the
    extraction did not record counts as different: it was made by an older captioner."""
    meta = read_meta(root)
    wrong = [key for key in settings if key not in meta or meta[key] != settings[key]]
    if wrong:
        have = ", ".join(f"{key}={meta[key]!r}" if key in meta else f"{key} not recorded" for key in wrong)
        want = ", ".join(f"{key}={settings[key]!r}" for key in wrong)
        raise CaptionerError(
            f"the cached features in {root} were extracted with {have}, but the model has {want}; "
            "re-run `captioner features extract` with this config into a new folder, or point "
            "data.features_dir at features made with these settings"
        )


class ShardWriter:
    """Rows of one process for one split: `write` batches, then `close` writes the index.

    `capacity` bounds the rows this process can receive (its share of the split); the shard
    is created on the first batch, when (P, D) is known.
    """

    def __init__(self, split_dir: str | Path, rank: int, capacity: int) -> None:
        self.split_dir = Path(split_dir)
        self.shard_name = f"shard_{rank}.npy"
        self.index_path = self.split_dir / f"index_{rank}.json"
        self.capacity = capacity
        self.images: dict[str, list[int]] = {}
        self._rows: np.memmap | None = None

    def write(self, features: torch.Tensor, image_ids: torch.Tensor, sizes: torch.Tensor) -> None:
        """features (B, P, D), image_ids (B,), sizes (B, 2) as (W, H)."""
        if self._rows is None:
            self.split_dir.mkdir(parents=True, exist_ok=True)
            self._rows = np.lib.format.open_memmap(
                self.split_dir / self.shard_name,
                mode="w+",
                dtype=np.float16,
                shape=(self.capacity, *features.shape[1:]),
            )
        start = len(self.images)
        if start + len(features) > self.capacity:
            raise RuntimeError(f"{self.shard_name}: more than the {self.capacity} rows planned for this process")
        self._rows[start : start + len(features)] = features.detach().to("cpu", torch.float16).numpy()
        for offset, (image_id, (width, height)) in enumerate(zip(image_ids.tolist(), sizes.tolist())):
            self.images[str(image_id)] = [start + offset, width, height]

    def close(self) -> None:
        if self._rows is not None:
            self._rows.flush()
            self._rows = None
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.index_path.write_text(json.dumps({"shard": self.shard_name, "images": self.images}))


class SplitFeatures:
    """The cached features of one split; called with a record it returns what the datasets
    need: `(features (P, D) float32, (W, H))`, without opening the image.

    Memory maps are opened on first use in each process (DataLoader workers included) and
    never pickled.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        read_meta(root)  # no meta.json: nothing, or an unfinished extraction, is there
        self.root, self.split = Path(root), split
        split_dir = self.root / split
        self._index: dict[int, tuple[str, int, int, int]] = {}
        for index_file in sorted(split_dir.glob("index_*.json")):
            index = json.loads(index_file.read_text())
            for image_id, (row, width, height) in index["images"].items():
                self._index[int(image_id)] = (index["shard"], row, width, height)
        self._shards: dict[str, np.ndarray] = {}

    def require(self, records: list[ImageRecord]) -> None:
        """Raise CaptionerError naming the images of `records` that have no cached features."""
        missing = [r.image_id for r in records if r.image_id not in self._index]
        if missing:
            raise CaptionerError(
                f"{len(missing)} of {len(records)} images of split {self.split!r} have no cached features in "
                f"{self.root} (e.g. image ids {missing[:5]}); the data changed since extraction — "
                "re-run `captioner features extract` into a new folder"
            )

    def __call__(self, record: ImageRecord) -> tuple[torch.Tensor, tuple[int, int]]:
        shard, row, width, height = self._index[record.image_id]
        if shard not in self._shards:
            self._shards[shard] = np.load(self.root / self.split / shard, mmap_mode="r")
        return torch.from_numpy(self._shards[shard][row].astype(np.float32)), (width, height)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shards": {}}
