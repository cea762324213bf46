"""Readers for caption annotations: official COCO files and Karpathy-split files.

Both return the same `ImageRecord`s, so everything downstream has one code path.

Problems a user can cause are reported as one `CaptionerError` naming the file and what is
wrong: a missing or malformed annotation file, a missing image folder, annotations that point
at images not on disk. With `skip_missing=True` the missing images are dropped instead and a
single `DataWarning` states how many. Captions that are empty or only punctuation are dropped
with one counted `DataWarning` per file. Images that end up with no caption are kept (with
`captions=()`), e.g. for COCO test image-info files; callers decide what to do with them.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from captioner.errors import CaptionerError
from captioner.vocab import has_words


class DataWarning(UserWarning):
    """Data was skipped or changed on the way in (missing images, empty or over-long captions)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its reference captions (raw text, as written by the annotators)."""

    image_id: int
    path: Path
    captions: tuple[str, ...]
    split: str


@dataclass(frozen=True)
class Box:
    """One object box in pixels, COCO xywh (top-left corner, width, height)."""

    category: str
    x: float
    y: float
    w: float
    h: float


def load_json(path: str | Path, what: str) -> Any:
    """Parse the JSON file `path`; `what` names it in errors ("COCO captions file", ...)."""
    path = Path(path)
    if not path.exists():
        raise CaptionerError(f"{what} {path} does not exist; check the path")
    if not path.is_file():
        raise CaptionerError(f"{what} {path} is not a file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CaptionerError(f"{what} {path} is not valid JSON ({error}); re-download or regenerate it") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionerError(f"cannot read {what} {path}: {error}") from None


def _require(ok: bool, path: Path, what: str, problem: str) -> None:
    if not ok:
        raise CaptionerError(f"{what} {path} is malformed: {problem}")


def _coco_index(data: dict) -> COCO:
    """A pycocotools COCO object over already-validated `data` (without its stdout chatter)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _validate_images(data: Any, path: Path, what: str) -> None:
    _require(isinstance(data, dict), path, what, "the top level must be a JSON object")
    images = data.get("images")
    _require(isinstance(images, list), path, what, 'it needs an "images" list')
    seen: set[int] = set()
    for i, image in enumerate(images):
        ok = isinstance(image, dict) and isinstance(image.get("id"), int) and isinstance(image.get("file_name"), str)
        _require(ok, path, what, f'images[{i}] needs an integer "id" and a string "file_name"')
        _require(image["id"] not in seen, path, what, f"image id {image['id']} appears twice")
        seen.add(image["id"])


def _clean_captions(captions: list[str], counter: list[int]) -> tuple[str, ...]:
    """Stripped captions that contain a word; counts the dropped ones in `counter[0]`."""
    kept = tuple(c.strip() for c in captions if has_words(c))
    counter[0] += len(captions) - len(kept)
    return kept


def _warn_dropped_captions(count: int, path: Path) -> None:
    if count:
        warnings.warn(f"skipped {count} empty or punctuation-only captions in {path}", DataWarning, stacklevel=3)


def _drop_missing(records: list[ImageRecord], source: Path, image_dir: Path, skip_missing: bool) -> list[ImageRecord]:
    """Records whose image file exists; missing files raise, or are skipped with a counted warning."""
    missing = [r for r in records if not r.path.is_file()]
    if not missing:
        return records
    if not skip_missing:
        examples = ", ".join(str(r.path) for r in missing[:3])
        raise CaptionerError(
            f"{len(missing)} of {len(records)} images listed in {source} are missing under {image_dir} "
            f"(e.g. {examples}); fix the image folder or pass skip_missing_images=True to skip them"
        )
    warnings.warn(
        f"skipping {len(missing)} of {len(records)} images listed in {source}: not found under {image_dir}",
        DataWarning,
        stacklevel=3,
    )
    gone = {r.image_id for r in missing}
    return [r for r in records if r.image_id not in gone]


def _check_image_dir(image_dir: Path) -> None:
    if not image_dir.is_dir():
        problem = "is not a directory" if image_dir.exists() else "does not exist"
        raise CaptionerError(f"image folder {image_dir} {problem}; point data_dir / image_root at the images")


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
    _require(isinstance(annotations, list), captions_json, what, '"annotations" must be a list')
    image_ids = {image["id"] for image in data["images"]}
    for i, ann in enumerate(annotations):
        ok = isinstance(ann, dict) and isinstance(ann.get("caption"), str) and isinstance(ann.get("image_id"), int)
        _require(ok, captions_json, what, f'annotations[{i}] needs an integer "image_id" and a string "caption"')
        _require(
            ann["image_id"] in image_ids,
            captions_json,
            what,
            f"annotations[{i}] names unknown image id {ann['image_id']}",
        )
    _check_image_dir(image_dir)

    coco = _coco_index(data)
    dropped = [0]
    records = [
        ImageRecord(
            image_id=image_id,
            path=image_dir / coco.imgs[image_id]["file_name"],
            captions=_clean_captions([a["caption"] for a in coco.imgToAnns[image_id]], dropped),
            split=split,
        )
        for image_id in sorted(coco.getImgIds())
    ]
    _warn_dropped_captions(dropped[0], captions_json)
    return _drop_missing(records, captions_json, image_dir, skip_missing)


def _karpathy_image(entry: Any, i: int, path: Path, image_root: Path, dropped: list[int]) -> ImageRecord:
    what = "Karpathy split file"
    _require(isinstance(entry, dict), path, what, f"images[{i}] must be an object")
    image_id = entry.get("cocoid", entry.get("imgid"))
    ok = isinstance(image_id, int) and isinstance(entry.get("filename"), str) and isinstance(entry.get("split"), str)
    _require(ok, path, what, f'images[{i}] needs "filename", "split" and an integer "cocoid" or "imgid"')
    sentences = entry.get("sentences", [])
    _require(isinstance(sentences, list), path, what, f'images[{i}]["sentences"] must be a list')
    raws = []
    for sentence in sentences:
        # "raw" is the caption as written; older files may only carry the token list.
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
            raw = " ".join(map(str, sentence["tokens"]))
        _require(isinstance(raw, str), path, what, f'images[{i}] has a sentence without "raw" text')
        raws.append(raw)
    split = "train" if entry["split"] == "restval" else entry["split"]
    return ImageRecord(
        image_id=image_id,
        path=image_root / entry.get("filepath", "") / entry["filename"],
        captions=_clean_captions(raws, dropped),
        split=split,
    )


def read_karpathy(
    dataset_json: str | Path, image_root: str | Path, *, skip_missing: bool = False
) -> dict[str, list[ImageRecord]]:
    """Split name -> records of a Karpathy-split file (`dataset_coco.json`, Flickr8k/30k).

    Image paths are `image_root / filepath / filename` (`filepath` is absent in the Flickr
    files); the id is `cocoid`, else `imgid`; `restval` images join `train`. Records in each
    split keep the file's order. Errors and `skip_missing` as for `read_coco`.
    """
    dataset_json, image_root = Path(dataset_json), Path(image_root)
    what = "Karpathy split file"
    data = load_json(dataset_json, what)
    _require(
        isinstance(data, dict) and isinstance(data.get("images"), list), dataset_json, what, 'it needs an "images" list'
    )
    _check_image_dir(image_root)

    dropped = [0]
    records = [_karpathy_image(entry, i, dataset_json, image_root, dropped) for i, entry in enumerate(data["images"])]
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise CaptionerError(f"{what} {dataset_json} is malformed: image id {duplicate} appears twice")
    _warn_dropped_captions(dropped[0], dataset_json)
    records = _drop_missing(records, dataset_json, image_root, skip_missing)
    splits: dict[str, list[ImageRecord]] = {}
    for record in records:
        splits.setdefault(record.split, []).append(record)
    return splits


def read_boxes(instances_json: str | Path) -> dict[int, list[Box]]:
    """Image id -> object boxes (category names, COCO xywh pixels) of a COCO instances file.

    Every image listed in the file gets an entry, possibly an empty list.
    """
    path = Path(instances_json)
    what = "COCO instances file"
    data = load_json(path, what)
    _validate_images(data, path, what)
    categories = data.get("categories")
    _require(isinstance(categories, list), path, what, 'it needs a "categories" list')
    names = {}
    for i, cat in enumerate(categories):
        ok = isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str)
        _require(ok, path, what, f'categories[{i}] needs an integer "id" and a string "name"')
        names[cat["id"]] = cat["name"]
    annotations = data.get("annotations")
    _require(isinstance(annotations, list), path, what, 'it needs an "annotations" list')
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
        _require(
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


def karpathy_split(splits: dict[str, list[ImageRecord]], split: str, source: str | Path) -> list[ImageRecord]:
    """The records of `split` from `read_karpathy`'s result, or an error naming the splits it has."""
    if split not in splits:
        raise CaptionerError(f"split {split!r} is not in {source} (it has {sorted(splits)}); pick one of those")
    return splits[split]


def read_split(
    data_dir: str | Path, split: str, *, format: str = "coco", karpathy_json: str | Path | None = None
) -> list[ImageRecord]:
    """Records of one split of a data set in the COCO layout under `data_dir`, or (format
    "karpathy") of the Karpathy file `karpathy_json` whose image paths are under `data_dir`."""
    if format == "coco":
        paths = coco_layout(data_dir, split)
        return read_coco(paths["images"], paths["captions"], split)
    if karpathy_json is None:
        raise CaptionerError('format "karpathy" needs the path of the dataset_*.json file')
    return karpathy_split(read_karpathy(karpathy_json, data_dir), split, karpathy_json)
