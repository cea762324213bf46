"""A data set as the data settings name it: its reader (by name, or recognised at the path),
and the records and boxes of each role (train, val, test), from the data's own splits or from
a split made for it (`captioner.data.splits`). No Lightning here: the data module, `captioner
data check` and the gallery read data through this one class.
"""

from __future__ import annotations

from pathlib import Path

from captioner.data.readers import READERS, Location, reader_class, recognise
from captioner.data.readers.base import common_folder
from captioner.data.records import Box, ImageRecord
from captioner.data.splits import HELD_OUT, ROLES, Holdout, MadeSplit, Split, SplitFile
from captioner.errors import CaptionerError, require_choice

SPLIT_PATHS = ("images", "captions", "instances")


def default_splits() -> dict[str, Split]:
    return {role: Split(role) for role in ROLES}


def showing(data_dir: str | Path, split: str, **settings) -> CaptionCollection:
    """A collection whose "test" role reads the split named `split`, for commands that show
    one split (`captioner gallery`); `settings` as `CaptionCollection` takes them."""
    return CaptionCollection(data_dir, splits={**default_splits(), "test": Split(split)}, **settings)


class CaptionCollection:
    """The records of each role of one data set.

    Args:
        data_dir: The data set's folder, or its file for formats kept in one (a CSV, a token
            file, a Karpathy file). None only when every split's images and captions are given.
        format: A name in `captioner.data.readers.READERS`, or "auto": the first format that
            recognises what is at `data_dir`.
        annotations: The captions file, when it is not where `data_dir` implies (e.g. a
            Karpathy file kept apart from the images).
        splits: Role -> the `Split` it reads (default: the splits named "train", "val", "test").
        holdout: How splits are made where the data lacks them.
        split_path: A split file (`SplitFile`) to use if it exists, else to write the split made.
        skip_missing: Skip listed images that are not on disk (counted) instead of raising.
    """

    def __init__(
        self,
        data_dir: str | Path | None,
        *,
        format: str = "auto",
        annotations: str | Path | None = None,
        splits: dict[str, Split] | None = None,
        holdout: Holdout = Holdout(),
        split_path: str | Path | None = None,
        skip_missing: bool = False,
    ):
        splits = splits or default_splits()
        root = None if data_dir is None else Path(data_dir)
        if format == "auto":
            if root is None:
                format, found = "coco", "every split's images and captions given"
            else:
                format, found = recognise(root)
        else:
            require_choice("data.format", format, ("auto", *READERS))
            found = "as data.format says"
        self.format = format
        reader = reader_class(format)
        self._check_split_paths(reader.split_paths, splits)
        if root is None and not all(s.images and s.captions for s in splits.values()):
            raise CaptionerError(
                "data_dir is not set; give the data set folder (data.data_dir), or for format coco every "
                "split's images and captions (data.train.images, data.train.captions, ...)"
            )
        self.found = f"{root if root is not None else 'data'}: {format} ({found})"
        self.root = root
        self.splits = splits
        self.holdout = holdout
        self.split_file = None if split_path is None else SplitFile(split_path)
        self.reader = reader(Location(root, None if annotations is None else Path(annotations), splits, skip_missing))
        self._records: dict[str, list[ImageRecord]] = {}
        self.made: MadeSplit | None = None

    @staticmethod
    def _check_split_paths(taken: frozenset[str], splits: dict[str, Split]) -> None:
        given = [f"data.{role}.{kind}" for role, s in splits.items() for kind in SPLIT_PATHS if getattr(s, kind)]
        refused = [name for name in given if name.rsplit(".", 1)[1] not in taken]
        if refused:
            kinds = {name.rsplit(".", 1)[1] for name in refused}
            takers = " or ".join(f'"{f}"' for f in READERS if kinds <= reader_class(f).split_paths) or "none"
            raise CaptionerError(
                f"{', '.join(refused)} only apply to format {takers}; the other formats find a split's files themselves"
            )

    def split(self, role: str) -> Split:
        """The split that `role` ("train", "val" or "test") reads."""
        require_choice("role", role, ROLES)
        return self.splits[role]

    def held_out(self) -> tuple[str, ...]:
        """The roles whose images are drawn by the holdout rule: all three for data in one pile,
        else "val" / "test" when the data lacks a split of that name."""
        own = self.reader.own_splits()
        if not own:
            named = [f"data.{role}.name" for role, split in self.splits.items() if split.name != role]
            if named:
                raise CaptionerError(
                    f"{', '.join(named)}: the data at {self.root} has no splits of its own (data.holdout makes "
                    "train, val and test); leave the split names unset"
                )
            return ROLES
        return tuple(role for role in HELD_OUT if self.splits[role].name == role and role not in own)

    def records(self, role: str) -> list[ImageRecord]:
        """Records of the split that `role` ("train", "val" or "test") reads, cached."""
        split = self.split(role)
        if role in self._records:
            return self._records[role]
        held = self.held_out()
        if role in held or (held and role == "train"):
            self._records.update(self._made(held))
        else:
            own = self.reader.own_splits()
            if split.name not in own:
                raise CaptionerError(
                    f"split {split.name!r} is not in {self.root} (it has {sorted(own)}); pick one of those "
                    f"for data.{role}.name"
                )
            # Roles may share a split (COCO 2014 tests on val2014): read it once.
            shared = next((r for r in self._records if r in ROLES and self.splits[r] == split), None)
            self._records[role] = self._records[shared] if shared else self.reader.read(split)
        return self._records[role]

    def _made(self, held: tuple[str, ...]) -> dict[str, list[ImageRecord]]:
        """Records of train and the `held` roles, by the split file or by drawing."""
        pile = held == ROLES
        records = self.reader.read(None if pile else self.splits["train"])
        drawn_from = None if pile else self.splits["train"].name
        # An image's name in the split: its path under the folder holding all the images, the
        # same whichever form the data is kept in.
        base = common_folder(r.path for r in records)
        key = lambda record: record.path.relative_to(base).as_posix()
        if self.split_file is not None and self.split_file.path.exists():
            self.made = self.split_file.read(self.holdout)
            source = f"split file {self.split_file.path}"
        else:
            keys = [key(r) for r in records]
            self.made = MadeSplit(self.holdout.draw(keys, [r for r in HELD_OUT if r in held]), self.holdout, drawn_from)
            if self.split_file is not None:
                self.split_file.write(self.made)
            source = "the split made"
        made = self.made.apply(records, key, source)
        return {role: made[role] for role in ("train", *held)}

    def boxes(self, role: str) -> dict[int, list[Box]]:
        """Image id -> boxes of the images of `role`; {} when the data has none."""
        held = self.held_out()
        if held == ROLES:
            return {}
        source = self.splits["train"] if role in held else self.split(role)
        boxes = self.reader.boxes(source)
        if role in held or (held and role == "train"):
            ids = {r.image_id for r in self.records(role)}
            return {i: b for i, b in boxes.items() if i in ids}
        return boxes
