"""COCO format: official captions files (`captions_<split>.json`), read with pycocotools.

    DIR/<split>/...                          the split's images
    DIR/annotations/captions_<split>.json    {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}
    DIR/annotations/instances_<split>.json   optional: object boxes, for the grounding scores

Each split's images folder, captions file and instances file can be given apart from DIR
(`data.train.images`, `data.train.captions`, `data.train.instances`, ...). The synthetic
families write this layout.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from captioner.data.readers.base import Reader
from captioner.data.records import (
    Box,
    CaptionCleaner,
    ImageRecord,
    check_image_dir,
    drop_missing,
    load_json,
    require,
)
from captioner.data.splits import Split
from captioner.errors import CaptionerError


def _coco_index(data: dict) -> COCO:
    """A pycocotools COCO object over already-validated `data` (without its stdout chatter)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _validate_images(data: Any, path: Path, what: str) -> None:
    require(isinstance(data, dict), path, what, "the top level must be a JSON object")
    images = data.get("images")
    require(isinstance(images, list), path, what, 'it needs an "images" list')
    seen: set[int] = set()
    for i, image in enumerate(images):
        ok = isinstance(image, dict) and isinstance(image.get("id"), int) and isinstance(image.get("file_name"), str)
        require(ok, path, what, f'images[{i}] needs an integer "id" and a string "file_name"')
        require(image["id"] not in seen, path, what, f"image id {image['id']} appears twice")
        seen.add(image["id"])


def read_coco(
    image_dir: str | Path, captions_json: str | Path, split: str, *, skip_missing: bool = False
) -> list[ImageRecord]:
    """Records of an official COCO captions file (`captions_<split>.json`), sorted by image id.

    `image_dir` holds the files named by `images[].file_name`. Raises CaptionerError for a
    missing/malformed file, a missing folder, or missing images unless `skip_missing`.
    """
    image_dir, captions_json = Path(image_dir), Path(captions_json)
    what = "COCO captions file"
    data = load_json(captions_json, what)
    _validate_images(data, captions_json, what)
    # Image-info files (e.g. COCO test2014) have no "annotations": every image gets no caption.
    annotations = data.setdefault("annotations", [])
    require(isinstance(annotations, list), captions_json, what, '"annotations" must be a list')
    image_ids = {image["id"] for image in data["images"]}
    for i, ann in enumerate(annotations):
        ok = isinstance(ann, dict) and isinstance(ann.get("caption"), str) and isinstance(ann.get("image_id"), int)
        require(ok, captions_json, what, f'annotations[{i}] needs an integer "image_id" and a string "caption"')
        require(
            ann["image_id"] in image_ids,
            captions_json,
            what,
            f"annotations[{i}] names unknown image id {ann['image_id']}",
        )
    check_image_dir(image_dir)

    coco = _coco_index(data)
    clean = CaptionCleaner()
    records = [
        ImageRecord(
            image_id=image_id,
            path=image_dir / coco.imgs[image_id]["file_name"],
            captions=clean(a["caption"] for a in coco.imgToAnns[image_id]),
            split=split,
        )
        for image_id in sorted(coco.getImgIds())
    ]
    clean.warn(captions_json)
    return drop_missing(records, captions_json, image_dir, skip_missing)


def read_boxes(instances_json: str | Path) -> dict[int, list[Box]]:
    """Image id -> object boxes (category names, COCO xywh pixels) of a COCO instances file.

    Every image listed in the file gets an entry, possibly an empty list.
    """
    path = Path(instances_json)
    what = "COCO instances file"
    data = load_json(path, what)
    _validate_images(data, path, what)
    categories = data.get("categories")
    require(isinstance(categories, list), path, what, 'it needs a "categories" list')
    names = {}
    for i, cat in enumerate(categories):
        ok = isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str)
        require(ok, path, what, f'categories[{i}] needs an integer "id" and a string "name"')
        names[cat["id"]] = cat["name"]
    annotations = data.get("annotations")
    require(isinstance(annotations, list), path, what, 'it needs an "annotations" list')
    image_ids = {image["id"] for image in data["images"]}
    for i, ann in enumerate(annotations):
        ok = (
            isinstance(ann, dict)
            and isinstance(ann.get("image_id"), int)
            and ann["image_id"] in image_ids
            and isinstance(ann.get("category_id"), int)
            and ann["category_id"] in names
            and isinstance(ann.get("bbox"), list)
            and len(ann["bbox"]) == 4
            and all(isinstance(v, (int, float)) for v in ann["bbox"])
        )
        require(
            ok, path, what, f'annotations[{i}] needs a known "image_id", a known "category_id" and a 4-number "bbox"'
        )

    coco = _coco_index(data)
    return {
        image_id: [Box(names[a["category_id"]], *map(float, a["bbox"])) for a in coco.imgToAnns[image_id]]
        for image_id in sorted(coco.getImgIds())
    }


def coco_layout(data_dir: str | Path, split: str) -> dict[str, Path]:
    """Where the official COCO layout keeps split `split` under `data_dir`: its "images"
    folder, its "captions" file and its "instances" file."""
    data_dir = Path(data_dir)
    return {
        "images": data_dir / split,
        "captions": data_dir / "annotations" / f"captions_{split}.json",
        "instances": data_dir / "annotations" / f"instances_{split}.json",
    }


class CocoReader(Reader):
    looks_for = "annotations/captions_<split>.json (COCO)"
    split_paths = frozenset({"images", "captions", "instances"})

    @classmethod
    def recognise(cls, root: Path) -> str | None:
        found = sorted(root.glob("annotations/captions_*.json")) if root.is_dir() else []
        return f"COCO captions files {', '.join('annotations/' + p.name for p in found)}" if found else None

    def own_splits(self) -> tuple[str, ...]:
        named = [s.name for s in self.location.splits.values() if s.captions]
        root = self.location.root
        if root is not None:
            found = sorted(root.glob("annotations/captions_*.json"))
            named += [p.stem.removeprefix("captions_") for p in found]
        return tuple(dict.fromkeys(named))

    def path(self, split: Split, kind: str) -> Path:
        """Where the "images" folder, "captions" file or "instances" file of `split` is: the one
        given for it (which must exist), else its place under data_dir (COCO layout)."""
        given = getattr(split, kind)
        if given is not None:
            if not Path(given).exists():
                role = next((r for r, s in self.location.splits.items() if s == split), "<role>")
                raise CaptionerError(f"data.{role}.{kind} {given} does not exist; check the path or leave it unset")
            return Path(given)
        if self.location.root is None:
            raise CaptionerError(f"no {kind} for split {split.name!r}: set data.<role>.{kind} or data.data_dir")
        return coco_layout(self.location.root, split.name)[kind]

    def read(self, split: Split | None) -> list[ImageRecord]:
        if split is None:
            raise CaptionerError(
                f"no COCO captions files under {self.location.root}/annotations (captions_<split>.json); "
                "check data.data_dir, or pick the format that the data is in (data.format)"
            )
        images, captions = self.path(split, "images"), self.path(split, "captions")
        return read_coco(images, captions, split.name, skip_missing=self.location.skip_missing)

    def boxes(self, split: Split) -> dict[int, list[Box]]:
        """From the split's instances file; {} when that is the data_dir convention's file and it is absent."""
        path = self.path(split, "instances")
        return read_boxes(path) if path.exists() else {}
