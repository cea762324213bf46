"""Karpathy-split files: `dataset_coco.json`, Flickr8k/30k's `dataset_flickr8k.json`, ...

    {"images": [{"filepath": "val2014", "filename": "...jpg", "cocoid": 42, "split": "restval",
                 "sentences": [{"raw": "A man ...", "tokens": [...]}, ...]}, ...]}

Image paths are `data_dir / filepath / filename` (`filepath` is absent in the Flickr files);
the id is `cocoid`, else `imgid`; `restval` images join `train`. The file is `data.annotations`,
or the one `dataset_*.json` in `data_dir`, or `data_dir` itself when that is the file (its
folder is then the image root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captioner.data.readers.base import Reader, canonical_split
from captioner.data.readers.coco import coco_layout, read_boxes
from captioner.data.records import Box, CaptionCleaner, ImageRecord, check_image_dir, drop_missing, load_json, require
from captioner.data.splits import Split
from captioner.errors import CaptionerError

WHAT = "Karpathy split file"


def _karpathy_image(entry: Any, i: int, path: Path, image_root: Path, clean: CaptionCleaner) -> ImageRecord:
    require(isinstance(entry, dict), path, WHAT, f"images[{i}] must be an object")
    image_id = entry.get("cocoid", entry.get("imgid"))
    ok = isinstance(image_id, int) and isinstance(entry.get("filename"), str) and isinstance(entry.get("split"), str)
    require(ok, path, WHAT, f'images[{i}] needs "filename", "split" and an integer "cocoid" or "imgid"')
    sentences = entry.get("sentences", [])
    require(isinstance(sentences, list), path, WHAT, f'images[{i}]["sentences"] must be a list')
    raws = []
    for sentence in sentences:
        # "raw" is the caption as written; older files may only carry the token list.
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
            raw = " ".join(map(str, sentence["tokens"]))
        require(isinstance(raw, str), path, WHAT, f'images[{i}] has a sentence without "raw" text')
        raws.append(raw)
    return ImageRecord(
        image_id=image_id,
        path=image_root / entry.get("filepath", "") / entry["filename"],
        captions=clean(raws),
        split=canonical_split(entry["split"]),
    )


def read_karpathy(
    dataset_json: str | Path, image_root: str | Path, *, skip_missing: bool = False
) -> dict[str, list[ImageRecord]]:
    """Split name -> records of a Karpathy-split file (module docstring). Records in each split
    keep the file's order. Raises CaptionerError for a missing/malformed file, a missing folder,
    or missing images unless `skip_missing` (then they are skipped, counted)."""
    dataset_json, image_root = Path(dataset_json), Path(image_root)
    data = load_json(dataset_json, WHAT)
    require(
        isinstance(data, dict) and isinstance(data.get("images"), list), dataset_json, WHAT, 'it needs an "images" list'
    )
    check_image_dir(image_root)

    clean = CaptionCleaner()
    records = [_karpathy_image(entry, i, dataset_json, image_root, clean) for i, entry in enumerate(data["images"])]
    seen: set[int] = set()
    where: dict[Path, int] = {}
    for i, record in enumerate(records):
        if record.image_id in seen:
            raise CaptionerError(f"{WHAT} {dataset_json} is malformed: image id {record.image_id} appears twice")
        seen.add(record.image_id)
        first = where.setdefault(record.path, i)
        if first != i and records[first].split != record.split:
            raise CaptionerError(
                f"{WHAT} {dataset_json}: image {record.path} is in split {records[first].split!r} (images[{first}]) "
                f"and in split {record.split!r} (images[{i}]); an image belongs in one split only"
            )
    clean.warn(dataset_json)
    records = drop_missing(records, dataset_json, image_root, skip_missing)
    splits: dict[str, list[ImageRecord]] = {}
    for record in records:
        splits.setdefault(record.split, []).append(record)
    return splits


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.name.startswith("dataset_") and root.suffix == ".json" else []
    return sorted(root.glob("dataset_*.json")) if root.is_dir() else []


class KarpathyReader(Reader):
    looks_for = "dataset_<name>.json (Karpathy split file)"

    def __init__(self, location):
        super().__init__(location)
        self._splits: dict[str, list[ImageRecord]] | None = None

    @classmethod
    def recognise(cls, root: Path) -> str | None:
        found = _files(root)
        return f"Karpathy split file {found[0].name}" if len(found) == 1 else None

    def file(self) -> Path:
        if self.location.annotations is not None:
            return self.location.annotations
        found = _files(self.root())
        if len(found) != 1:
            problem = f"{len(found)} files dataset_*.json" if found else "no file dataset_*.json"
            raise CaptionerError(f"format karpathy: {problem} in {self.root()}; name the file with data.annotations")
        return found[0]

    def image_root(self) -> Path:
        root = self.root()
        return root.parent if root.is_file() else root

    def splits(self) -> dict[str, list[ImageRecord]]:
        if self._splits is None:
            self._splits = read_karpathy(self.file(), self.image_root(), skip_missing=self.location.skip_missing)
        return self._splits

    def own_splits(self) -> tuple[str, ...]:
        return tuple(self.splits())

    def read(self, split: Split | None) -> list[ImageRecord]:
        if split is None:  # a file whose images are all in one split value
            return [r for records in self.splits().values() for r in records]
        return self.splits()[split.name]

    def boxes(self, split: Split) -> dict[int, list[Box]]:
        """The COCO instances file of the split's name under data_dir, if there is one (ids are COCO's)."""
        path = coco_layout(self.image_root(), split.name)["instances"]
        return read_boxes(path) if path.exists() else {}
