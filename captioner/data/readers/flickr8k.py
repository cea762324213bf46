"""Flickr8k as released: `Flickr8k.token.txt` and its split lists.

    1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress is climbing up a set of stairs .
    Flickr_8k.trainImages.txt / Flickr_8k.devImages.txt / Flickr_8k.testImages.txt: one image name a line

`data_dir` is the token file, or a folder holding it (or holding `Flickr8k_text/` with it).
The split lists beside the token file are the data's own splits (dev is "val"); images the
token file names but no list does are left out, counted. Without the lists the data is one
pile. The images are in `Flicker8k_Dataset/` (the release's spelling), `Flickr8k_Dataset/`,
`Images/` or `images/` beside the token file or one folder up, or beside the token file itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

from captioner.data.readers.base import Row, RowReader, image_folder
from captioner.data.readers.text import read_text
from captioner.data.records import DataWarning
from captioner.errors import CaptionerError

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_LISTS = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_FOLDERS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images", "")


def _token_file(root: Path) -> Path | None:
    if root.is_file():
        return root if root.name.endswith(".token.txt") else None
    for candidate in (root / TOKEN_FILE, root / "Flickr8k_text" / TOKEN_FILE):
        if candidate.is_file():
            return candidate
    return None


class Flickr8kReader(RowReader):
    looks_for = f"{TOKEN_FILE} (Flickr8k)"

    @classmethod
    def recognise(cls, root: Path) -> str | None:
        token = _token_file(root)
        if token is None:
            return None
        lists = [name for name in SPLIT_LISTS.values() if (token.parent / name).is_file()]
        return f"{token.name}" + (f" with split lists {', '.join(lists)}" if lists else ", no split lists")

    def token_file(self) -> Path:
        token = self.location.annotations or _token_file(self.root())
        if token is None:
            raise CaptionerError(f"format flickr8k: no {TOKEN_FILE} at {self.root()}; point data.data_dir at it")
        return token

    def _split_of(self, folder: Path) -> dict[str, str] | None:
        """Image name -> split by the split lists beside the token file; None without lists."""
        lists = {split: folder / name for split, name in SPLIT_LISTS.items() if (folder / name).is_file()}
        if not lists:
            return None
        split_of: dict[str, str] = {}
        for split, path in lists.items():
            for line, name in enumerate(read_text(path, "Flickr8k split list").splitlines(), start=1):
                name = name.strip()
                if name and split_of.setdefault(name, split) != split:
                    raise CaptionerError(
                        f"{path} line {line}: image {name} is also in the {split_of[name]!r} split list; "
                        "an image belongs in one split only"
                    )
        return split_of

    def rows(self) -> Iterator[Row]:
        token = self.token_file()
        split_of = self._split_of(token.parent)
        entries = []
        for line, text in enumerate(read_text(token, "Flickr8k token file").splitlines(), start=1):
            if not text.strip():
                continue
            key, tab, caption = text.partition("\t")
            name, hash_, _ = key.rpartition("#")
            if not tab or not hash_ or not name.strip():
                raise CaptionerError(f"{token} line {line} is not 'NAME.jpg#N<TAB>caption' (it starts {text[:40]!r})")
            entries.append((line, name.strip(), caption))
        first = entries[0][1] if entries else None
        images = token.parent
        for base in (token.parent, token.parent.parent):
            found = image_folder(base, IMAGE_FOLDERS, first)
            if first and (found / first).is_file():
                images = found
                break
        unlisted: set[str] = set()
        for line, name, caption in entries:
            split = "" if split_of is None else split_of.get(name)
            if split is None:
                unlisted.add(name)
                continue
            yield Row(images / name, (caption,), split, token, line)
        if unlisted:
            warnings.warn(
                f"leaving out {len(unlisted)} images of {token} that no split list names (e.g. {min(unlisted)})",
                DataWarning,
                stacklevel=2,
            )
