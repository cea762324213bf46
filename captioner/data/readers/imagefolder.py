"""A folder of images with a `metadata.jsonl` or `metadata.csv`: the Hugging Face `imagefolder` form.

    DIR/metadata.jsonl       {"file_name": "cat.jpg", "text": "a cat on a mat"}   one image a line
    DIR/cat.jpg
or one metadata file per split folder: DIR/train/metadata.jsonl, DIR/validation/..., DIR/test/...

`file_name` is relative to the metadata file's folder; the caption column is one of
`CAPTION_COLUMNS` (text, caption, ...), a string or (JSON lines) a list of captions. The top
folder an image is in, when it is named train, val / validation / dev or test, is its split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from captioner.data.readers.base import Row, RowReader, canonical_split
from captioner.data.readers.text import (
    CAPTION_COLUMNS,
    delimiter_of,
    header_problem,
    pick,
    read_text,
    table_rows,
)
from captioner.errors import CaptionerError

NAMES = ("metadata.jsonl", "metadata.csv")
SPLITS = ("train", "val", "test")


def _metadata_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return [folder / name for folder in folders for name in NAMES if (folder / name).is_file()]


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for line, text in enumerate(read_text(path, "metadata file").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            raise CaptionerError(f"{path} line {line} is not valid JSON ({error})") from None
        if not isinstance(entry, dict):
            raise CaptionerError(f"{path} line {line} must be a JSON object with file_name and a caption")
        yield line, entry


def _csv(path: Path) -> Iterator[tuple[int, dict]]:
    text = read_text(path, "metadata file")
    rows = table_rows(text, path, delimiter_of(text.split("\n", 1)[0], path))
    _, header = next(rows, (1, []))
    for line, fields in rows:
        if len(fields) != len(header):
            raise CaptionerError(
                f"{path} line {line} has {len(fields)} fields, the header {len(header)}; quote fields with commas"
            )
        yield line, dict(zip(header, fields))


class ImageFolderReader(RowReader):
    looks_for = "metadata.jsonl or metadata.csv with file_name (imagefolder)"

    @classmethod
    def recognise(cls, root: Path) -> str | None:
        found = _metadata_files(root)
        return ", ".join(str(p.relative_to(root)) for p in found) if found else None

    def rows(self) -> Iterator[Row]:
        root = self.root()
        files = _metadata_files(root)
        if not files:
            raise CaptionerError(f"format imagefolder: no metadata.jsonl or metadata.csv in {root} or its folders")
        for path in files:
            for line, entry in (_jsonl if path.suffix == ".jsonl" else _csv)(path):
                columns = list(entry)
                name_col, text_col = pick(columns, ("file_name",)), pick(columns, CAPTION_COLUMNS)
                if name_col is None:
                    raise header_problem(path, columns, "file_name", ("file_name",), line)
                if text_col is None:
                    raise header_problem(path, columns, "caption", CAPTION_COLUMNS, line)
                name, captions = entry[name_col], entry[text_col]
                captions = [captions] if isinstance(captions, str) else captions
                ok = isinstance(name, str) and name.strip() and isinstance(captions, list)
                if not ok or not all(isinstance(c, str) for c in captions):
                    raise CaptionerError(f"{path} line {line}: file_name must be a path and {text_col} text")
                image = path.parent / name.strip()
                top = image.relative_to(root).parts[0] if image.is_relative_to(root) else ""
                split = canonical_split(top) if canonical_split(top) in SPLITS and top != image.name else ""
                yield Row(image, tuple(captions), split, path, line)
