"""A table of captions, one row per caption: CSV, TSV, or Kaggle Flickr8k's `captions.txt`.

    image,caption                                  DIR/captions.txt (or any .csv / .tsv)
    1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs .
    1000268201_693b08cb0e.jpg,"A girl, going into a wooden building ."

The image column is named one of `IMAGE_COLUMNS` (image, file_name, filename, image_name, ...),
the caption column one of `CAPTION_COLUMNS` (caption, text, comment, ...); an optional `split`
column gives the data's own splits (train / val or validation or dev / test). The delimiter is
a tab for .tsv, else the one of , TAB | ; that splits the header into known columns. Quoted
fields may hold commas and line breaks; when the caption is the last column, a row with
unquoted commas in it is read whole. Image paths are relative to the table's folder, or to its
`Images/` or `images/` subfolder when that is where the first image is. `data_dir` is the
table itself, or a folder holding exactly one.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from captioner.data.readers.base import Row, RowReader, canonical_split, image_folder
from captioner.data.readers.text import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    SPLIT_COLUMN,
    delimiter_of,
    first_line,
    header_problem,
    pick,
    read_text,
    table_rows,
)
from captioner.errors import CaptionerError

SUFFIXES = (".csv", ".tsv")
WHAT = "caption table"


def _columns(path: Path) -> tuple[str, str] | None:
    """(image column, caption column) named by the header of `path`, or None."""
    header = first_line(path)
    columns = next(csv.reader([header], delimiter=delimiter_of(header, path)), [])
    image, caption = pick(columns, IMAGE_COLUMNS), pick(columns, CAPTION_COLUMNS)
    return (image, caption) if image and caption else None


def _tables(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.suffix.lower() in (*SUFFIXES, ".txt") else []
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES or p.name == "captions.txt")


class TableReader(RowReader):
    looks_for = "a .csv / .tsv / captions.txt with an image and a caption column"

    @classmethod
    def recognise(cls, root: Path) -> str | None:
        tables = [t for t in _tables(root) if _columns(t)]
        if len(tables) != 1:
            return None
        image, caption = _columns(tables[0])
        return f"{tables[0].name}, columns {image.strip()!r} and {caption.strip()!r}"

    def table(self) -> Path:
        if self.location.annotations is not None:
            return self.location.annotations
        tables = _tables(self.root())
        if len(tables) != 1:
            found = ", ".join(t.name for t in tables) or "none"
            raise CaptionerError(
                f"format csv: {self.root()} needs exactly one .csv, .tsv or captions.txt (found {found}); "
                "point data.data_dir at the table"
            )
        return tables[0]

    def rows(self) -> Iterator[Row]:
        path = self.table()
        text = read_text(path, WHAT)
        delimiter = delimiter_of(text.split("\n", 1)[0], path)
        lines = table_rows(text, path, delimiter)
        _, header = next(lines, (1, []))
        image_col, caption_col = pick(header, IMAGE_COLUMNS), pick(header, CAPTION_COLUMNS)
        if image_col is None:
            raise header_problem(path, header, "image", IMAGE_COLUMNS)
        if caption_col is None:
            raise header_problem(path, header, "caption", CAPTION_COLUMNS)
        split_col = pick(header, (SPLIT_COLUMN,))
        image_at, caption_at = header.index(image_col), header.index(caption_col)
        split_at = None if split_col is None else header.index(split_col)
        last = caption_at == len(header) - 1
        rows = list(lines)
        first = next((fields[image_at].strip() for _, fields in rows if len(fields) > image_at), None)
        images = image_folder(path.parent, ("", "Images", "images"), first)
        for line, fields in rows:
            if len(fields) < len(header):
                raise CaptionerError(
                    f"{path} line {line} has {len(fields)} field(s), the header {len(header)}; "
                    "quote fields that hold the delimiter"
                )
            if len(fields) > len(header) and not last:
                raise CaptionerError(
                    f"{path} line {line} has {len(fields)} fields, the header {len(header)}; "
                    "quote fields that hold the delimiter"
                )
            name = fields[image_at].strip()
            if not name:
                raise CaptionerError(f"{path} line {line} names no image (column {image_col.strip()!r} is empty)")
            caption = delimiter.join(fields[caption_at:]) if last else fields[caption_at]
            split = canonical_split(fields[split_at].strip()) if split_at is not None else ""
            yield Row(images / name, (caption,), split, path, line)
