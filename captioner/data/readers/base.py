"""The shape of a reader, and what the readers of formats without image ids share.

A reader turns one annotation format into `ImageRecord`s. It says whether a path holds its
format (`recognise`, for `data.format auto`), which splits the data has of its own
(`own_splits`), and reads one of them, or the whole pile when there are none (`read`).
Everything after that (held-out splits, vocabulary, batches) is the same for every format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from captioner.data.images import IMAGE_EXTENSIONS
from captioner.data.records import Box, CaptionCleaner, ImageRecord, drop_missing
from captioner.data.splits import Split
from captioner.errors import CaptionerError

# Split names data sets use for the three roles; "restval" (Karpathy's) is training data.
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val", "restval": "train"}


def canonical_split(name: str) -> str:
    """ "validation", "dev", ... -> "val"; "restval" -> "train"; other names unchanged."""
    return SPLIT_ALIASES.get(name.lower(), name)


@dataclass(frozen=True)
class Location:
    """Where a data set is, as the data settings give it.

    Attributes:
        root: `data.data_dir`: the data set's folder, or for formats kept in one file, that file.
        annotations: `data.annotations`: the captions file, when it is not where `root` implies.
        splits: role ("train", "val", "test") -> the `Split` it reads.
        skip_missing: Skip listed images that are not on disk (counted) instead of raising.
    """

    root: Path | None
    annotations: Path | None = None
    splits: dict[str, Split] = field(default_factory=lambda: {r: Split(r) for r in ("train", "val", "test")})
    skip_missing: bool = False


class Reader(ABC):
    """One annotation format. A new format is a subclass in a file of its own plus one line in
    `captioner.data.readers.READERS`."""

    # What `recognise` looks for, for the error when nothing at a path is recognised.
    looks_for: ClassVar[str]
    # The fields of `Split` besides `name` this format takes (a split's own images folder,
    # captions file, boxes file).
    split_paths: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, location: Location):
        self.location = location

    @classmethod
    @abstractmethod
    def recognise(cls, root: Path) -> str | None:
        """What at `root` (a folder or a file) is in this format, in a few words naming the files
        ("captions.txt, columns image and caption"), or None when it is not this format."""

    @abstractmethod
    def own_splits(self) -> tuple[str, ...]:
        """The names of the data's own splits, () when it is one pile."""

    @abstractmethod
    def read(self, split: Split | None) -> list[ImageRecord]:
        """The records of the data's own split `split` (one of `own_splits`), or of the whole pile
        when `split` is None. Their `split` is the data's split name ("" in a pile)."""

    def boxes(self, split: Split) -> dict[int, list[Box]]:
        """Image id -> object boxes of `split`; {} when the format has none."""
        return {}

    def root(self) -> Path:
        """`location.root`, which this format needs."""
        if self.location.root is None:
            raise CaptionerError("data.data_dir is not set; give the folder (or file) of the data set")
        return self.location.root


@dataclass(frozen=True)
class Row:
    """Captions of one image as a text format lists them: the image file, its captions, the
    data's split it is in ("" for none) and the file and line that list it (1-based)."""

    path: Path
    captions: tuple[str, ...]
    split: str
    source: Path
    line: int


class RowReader(Reader):
    """A format read whole, whose images have no ids of their own. Each image gets the id of its
    place in the sorted image paths (1, 2, ...), so re-ordering the rows changes nothing. The
    captions of rows naming the same image are gathered; an image in two splits is an error
    naming both lines."""

    def __init__(self, location: Location):
        super().__init__(location)
        self._records: list[ImageRecord] | None = None

    @abstractmethod
    def rows(self) -> Iterable[Row]:
        """Every (image, captions) row of the data, in file order."""

    def records(self) -> list[ImageRecord]:
        if self._records is None:
            self._records = gather(self.rows(), skip_missing=self.location.skip_missing)
        return self._records

    def own_splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.split for r in self.records() if r.split))

    def read(self, split: Split | None) -> list[ImageRecord]:
        if split is None:
            return self.records()
        return [r for r in self.records() if r.split == split.name]


def gather(rows: Iterable[Row], *, skip_missing: bool) -> list[ImageRecord]:
    """Records of `rows` (see `RowReader`), sorted by path; empty captions dropped and missing
    images raised or skipped, each counted per source file."""
    by_path: dict[Path, list[Row]] = {}
    for row in rows:
        seen = by_path.setdefault(row.path, [])
        if seen and seen[0].split != row.split:
            first = seen[0]
            raise CaptionerError(
                f"image {row.path} is in split {first.split!r} ({first.source} line {first.line}) and in split "
                f"{row.split!r} ({row.source} line {row.line}); an image belongs in one split only"
            )
        seen.append(row)
    cleaners: dict[Path, CaptionCleaner] = {}
    records, first_line, source_of = [], {}, {}
    for image_id, path in enumerate(sorted(by_path), start=1):
        listed = by_path[path]
        captions: list[str] = []
        for row in listed:
            captions.extend(cleaners.setdefault(row.source, CaptionCleaner())(row.captions))
        records.append(ImageRecord(image_id, path, tuple(captions), listed[0].split))
        first_line[image_id], source_of[image_id] = listed[0].line, listed[0].source
    for source, cleaner in cleaners.items():
        cleaner.warn(source)
    kept: list[ImageRecord] = []
    for source in dict.fromkeys(source_of.values()):
        mine = [r for r in records if source_of[r.image_id] == source]
        kept.extend(drop_missing(mine, source, common_folder(r.path for r in mine), skip_missing, first_line))
    return sorted(kept, key=lambda r: r.image_id)


def common_folder(paths: Iterable[Path]) -> Path:
    """The deepest folder holding all of `paths` (for messages)."""
    folders = [p.parent for p in paths]
    if not folders:
        return Path(".")
    common = folders[0]
    for folder in folders[1:]:
        while common != folder and common not in folder.parents:
            common = common.parent
    return common


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_folder(base: Path, candidates: Iterable[str], first: str | None) -> Path:
    """Where the images a file names are: the first of `base/candidate` folders ("" = base itself)
    holding the first image it names (`first`), else `base`."""
    if first is not None:
        for candidate in candidates:
            if (base / candidate / first).is_file():
                return base / candidate
    return base
