"""What every reader returns (`ImageRecord`, `Box`) and the checks they share.

The readers themselves, one per annotation format, are in `captioner.data.readers`.

Problems a user can cause are one `CaptionerError` naming the file and what is wrong (and the
line or row where there is one). What can be skipped is skipped with one counted `DataWarning`:
captions that are empty or only punctuation, and (with `skip_missing`) listed images that are
not on disk. Images that end up with no caption are kept (with `captions=()`), e.g. for COCO
test image-info files; callers decide what to do with them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError
from captioner.vocab import has_words


class DataWarning(UserWarning):
    """Data was skipped or changed on the way in (missing images, empty or over-long captions).

    `missing` holds the image files a warning about missing images is about, for
    `captioner data check` to count and name them.
    """

    def __init__(self, message: str, *, missing: tuple[Path, ...] = ()):
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class ImageRecord:
    """One image and its reference captions (raw text, as written by the annotators).

    `split` is the data's own split the image is in ("" when the data is one pile), or the
    split made for it (`captioner.data.splits`).
    """

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
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except json.JSONDecodeError as error:
        raise CaptionerError(f"{what} {path} is not valid JSON ({error}); re-download or regenerate it") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionerError(f"cannot read {what} {path}: {error}") from None


def require(ok: bool, path: Path, what: str, problem: str) -> None:
    """Raise "`what` `path` is malformed: `problem`" unless `ok`."""
    if not ok:
        raise CaptionerError(f"{what} {path} is malformed: {problem}")


class CaptionCleaner:
    """Strips captions and drops the ones without a word, counting them, for one warning per file."""

    def __init__(self) -> None:
        self.dropped = 0

    def __call__(self, captions: Iterable[str]) -> tuple[str, ...]:
        captions = list(captions)
        kept = tuple(c.strip() for c in captions if has_words(c))
        self.dropped += len(captions) - len(kept)
        return kept

    def warn(self, source: Path) -> None:
        if self.dropped:
            warnings.warn(
                f"skipped {self.dropped} empty or punctuation-only captions in {source}", DataWarning, stacklevel=3
            )


def drop_missing(
    records: list[ImageRecord],
    source: Path,
    image_dir: Path,
    skip_missing: bool,
    lines: dict[int, int] | None = None,
) -> list[ImageRecord]:
    """Records whose image file exists; missing files raise, or are skipped with a counted warning.
    `lines` (image id -> line of `source` that first names it) puts the line in the error."""
    missing = [r for r in records if not r.path.is_file()]
    if not missing:
        return records
    at = (lambda r: f" ({source.name} line {lines[r.image_id]})") if lines else (lambda r: "")
    examples = ", ".join(f"{r.path}{at(r)}" for r in missing[:3])
    if not skip_missing:
        raise CaptionerError(
            f"{len(missing)} of {len(records)} images listed in {source} are missing under {image_dir} "
            f"(e.g. {examples}); fix the image folder or pass skip_missing_images=True to skip them"
        )
    message = f"skipping {len(missing)} of {len(records)} images listed in {source}: not found under {image_dir}"
    warnings.warn(DataWarning(f"{message} (e.g. {examples})", missing=tuple(r.path for r in missing)), stacklevel=3)
    gone = {r.image_id for r in missing}
    return [r for r in records if r.image_id not in gone]


def check_image_dir(image_dir: Path) -> None:
    if not image_dir.is_dir():
        problem = "is not a directory" if image_dir.exists() else "does not exist"
        raise CaptionerError(f"image folder {image_dir} {problem}; point data_dir / image_root at the images")
