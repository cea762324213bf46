"""Which images train, validate and test: the data's own splits, or splits made by a seeded rule.

A data set that is one pile (a CSV of captions, a folder of images with caption files) is
split by `Holdout`: every image gets a rank from a hash of (seed, its path under the data
folder), the lowest ranks are the test images, the next the validation images, the rest train.
The rule is over images, so all the captions of an image land in one split; it depends on
nothing but the seed and the paths, so the same data and settings give the same split on any
machine, in any row order. A data set with splits of its own uses them; one that has a train
split but no "val" (or "test") split gets that one held out of its train split the same way.

The split made is written as JSON (`SplitFile`) beside the run, to audit it and to train or
test again on exactly those images (`data.split_path`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from captioner.data.records import DataWarning, ImageRecord
from captioner.errors import CaptionerError
from captioner.files import write_text_atomic

ROLES = ("train", "val", "test")
HELD_OUT = ("test", "val")  # in the order they take the lowest ranks


@dataclass(frozen=True)
class Split:
    """The split of the data set that one role (train, val or test) reads.

    Args:
        name: The data's own split of that name: in the COCO layout, images in
            `data_dir/<name>/`, captions in `data_dir/annotations/captions_<name>.json` and boxes
            (optional, for the grounding scores) in `data_dir/annotations/instances_<name>.json`;
            in a Karpathy file, its `split` value ("train", "val", "test", "restval"); in the
            other formats, a split column's value or a split subfolder ("validation" and "dev"
            count as "val"). Roles may share a split. Data without splits of its own is split
            by `Holdout` into "train", "val" and "test".
        images: COCO format: the split's image folder, in place of `data_dir/<name>/` (splits may
            share one folder). Must exist if given.
        captions: COCO format: the split's captions file, in place of the data_dir one. Must
            exist if given.
        instances: The split's COCO instances file, in place of the data_dir one. Must exist if
            given.
    """

    name: str
    images: str | None = None
    captions: str | None = None
    instances: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise CaptionerError("a data split needs a name (e.g. data.train.name: train2014)")


@dataclass(frozen=True)
class Holdout:
    """How validation and test images are drawn from data without those splits (module docstring).

    Args:
        val: Validation images: a fraction of the images below 1 (0.1 = a tenth), or a number
            of images (a whole number >= 1). A fraction of a small set rounds to at least one image.
        test: Test images, the same way.
        seed: Seed of the rule; another seed, another split.
    """

    val: float = 0.1
    test: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for role in HELD_OUT:
            size = getattr(self, role)
            if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0 or (size >= 1 and size % 1):
                raise CaptionerError(
                    f"data.holdout.{role} must be a fraction in [0, 1) or a whole number of images, got {size!r}"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CaptionerError(f"data.holdout.seed must be an integer, got {self.seed!r}")

    def count(self, role: str, images: int) -> int:
        """How many of `images` images `role` ("val" or "test") takes."""
        size = getattr(self, role)
        if size >= 1:
            return int(size)
        return max(1, round(size * images)) if size > 0 else 0

    def rank(self, key: str) -> bytes:
        """The image's place in the draw: a hash of the seed and its key."""
        return hashlib.sha256(f"{self.seed}\0{key}".encode()).digest()

    def draw(self, keys: Sequence[str], roles: Sequence[str] = HELD_OUT) -> dict[str, str]:
        """Key -> role for every key: `roles` (some of "test", "val") take the lowest ranks, by
        their sizes; the rest is "train". Raises CaptionerError when nothing is left to train on."""
        ranked = sorted(keys, key=lambda key: (self.rank(key), key))
        sizes = {role: self.count(role, len(ranked)) for role in HELD_OUT if role in roles}
        if sum(sizes.values()) >= len(ranked):
            wanted = ", ".join(f"{size} {role}" for role, size in sizes.items())
            raise CaptionerError(
                f"cannot hold out {wanted} images from {len(ranked)}: none would be left to train on; "
                "lower data.holdout.val / data.holdout.test or add images"
            )
        assigned, start = {}, 0
        for role, size in sizes.items():
            assigned.update(dict.fromkeys(ranked[start : start + size], role))
            start += size
        assigned.update(dict.fromkeys(ranked[start:], "train"))
        return assigned


@dataclass(frozen=True)
class MadeSplit:
    """A split made by `Holdout`: image key -> role, the settings that made it, and the split
    of the data it was drawn from (None: the whole pile)."""

    roles: dict[str, str]
    holdout: Holdout
    drawn_from: str | None

    def counts(self) -> dict[str, int]:
        return {role: sum(1 for r in self.roles.values() if r == role) for role in ROLES}

    def summary(self) -> str:
        counts = self.counts()
        source = f"the {self.drawn_from!r} split" if self.drawn_from else "one pile"
        return (
            f"{counts['train']} train / {counts['val']} val / {counts['test']} test images, held out of {source} "
            f"(data.holdout seed {self.holdout.seed})"
        )

    def apply(self, records: list[ImageRecord], key: Callable[[ImageRecord], str], source: str) -> dict[str, list]:
        """Role -> records of `records` by this split, each record's `split` set to its role.
        Records the split does not list are left out with a counted warning naming `source`."""
        out: dict[str, list[ImageRecord]] = {role: [] for role in ROLES}
        unlisted = []
        for record in records:
            role = self.roles.get(key(record))
            if role is None:
                unlisted.append(record)
            else:
                out[role].append(ImageRecord(record.image_id, record.path, record.captions, role))
        if unlisted:
            warnings.warn(
                f"leaving out {len(unlisted)} images that {source} does not list (e.g. {unlisted[0].path}): added "
                "since the split was made; delete the split file to split again",
                DataWarning,
                stacklevel=2,
            )
        return out


class SplitFile:
    """The JSON file of a made split: `{"holdout": {...}, "drawn_from": ..., "images": {role: [key, ...]}}`.

    It is trusted only if it records the `Holdout` settings in force (all of them, as the
    dataclass has them) and is complete: it is written atomically.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, split: MadeSplit) -> Path:
        images = {role: sorted(k for k, r in split.roles.items() if r == role) for role in ROLES}
        data = {"holdout": asdict(split.holdout), "drawn_from": split.drawn_from, "images": images}
        return write_text_atomic(self.path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    def read(self, holdout: Holdout) -> MadeSplit:
        """The split recorded, checked against the `holdout` settings in force."""
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CaptionerError(f"cannot read split file {self.path}: {error}; delete it to split again") from None
        images = data.get("images") if isinstance(data, dict) else None
        ok = (
            isinstance(images, dict)
            and isinstance(data.get("holdout"), dict)
            and all(isinstance(images.get(role), list) for role in ROLES)
        )
        if not ok:
            raise CaptionerError(f"split file {self.path} is not one this program wrote; delete it to split again")
        recorded, current = data["holdout"], asdict(holdout)
        changed = [f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in current.items() if recorded.get(k) != v]
        if changed:
            raise CaptionerError(
                f"split file {self.path} was made with other data.holdout settings ({', '.join(changed)}); "
                "delete it to split again, or point data.split_path elsewhere"
            )
        roles: dict[str, str] = {}
        for role in ROLES:
            for key in images[role]:
                if roles.setdefault(key, role) != role:
                    raise CaptionerError(
                        f"split file {self.path} puts image {key} in both {roles[key]!r} and {role!r}; "
                        "an image belongs in one split only"
                    )
        return MadeSplit(roles, holdout, data.get("drawn_from"))
