"""Reading the text files people keep captions in: encodings, BOMs, CSV dialects, column names.

A file is UTF-8, with or without a byte-order mark, or UTF-16 with one (Excel's "Unicode
text"). A file that is neither (one saved in Latin-1 or Windows-1252, or mixed: some lines in
one, some in the other) is an error naming the first line that is not UTF-8 and how many are
not; guessing would put wrong letters into the vocabulary without a word.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from captioner.errors import CaptionerError

# Column names that hold the image, and the caption, in the order they are preferred.
IMAGE_COLUMNS = ("image", "file_name", "filename", "image_name", "image_path", "image_file", "file", "path", "img")
CAPTION_COLUMNS = ("caption", "text", "comment", "sentence", "description", "captions", "raw")
SPLIT_COLUMN = "split"
DELIMITERS = (",", "\t", "|", ";")


def first_line(path: Path) -> str:
    """The first line of a text file, for telling its format (undecodable bytes replaced)."""
    with open(path, "rb") as file:
        head = file.read(65536)
    encoding = "utf-16" if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    return head.decode(encoding, errors="replace").splitlines()[0] if head else ""


def read_text(path: Path, what: str) -> str:
    """The text of `path` (module docstring); a CaptionerError naming `what` and the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CaptionerError(f"cannot read {what} {path}: {error}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise CaptionerError(f"{what} {path} starts as UTF-16 but is not ({error}); save it as UTF-8") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        bad = 0
        for raw in data.split(b"\n"):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                bad += 1
        raise CaptionerError(
            f"{what} {path} line {line} is not UTF-8 (byte 0x{data[error.start]:02x}); {bad} line(s) are not, "
            "perhaps saved in another encoding; save the file as UTF-8"
        ) from None


def pick(columns: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first name of `wanted` among `columns` (compared lower-cased and stripped)."""
    names = {c.strip().lower(): c for c in columns}
    return next((names[w] for w in wanted if w in names), None)


def delimiter_of(header: str, path: Path) -> str:
    """The delimiter of a table whose first line is `header`: tab for .tsv, else the first of
    `DELIMITERS` that splits the header into columns naming an image."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    for delimiter in DELIMITERS:
        if pick(next(csv.reader([header], delimiter=delimiter)), IMAGE_COLUMNS):
            return delimiter
    return ","


def table_rows(text: str, path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, its fields) of every non-blank row of a delimited text,
    the header included; quoted fields may hold the delimiter and line breaks."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                yield start, fields
            start = reader.line_num + 1
    except csv.Error as error:
        raise CaptionerError(f"{path} line {start}: {error}; check its quotes") from None


def header_problem(
    path: Path, columns: Sequence[str], what: str, wanted: Sequence[str], line: int = 1
) -> CaptionerError:
    """The error for a table (or JSON line) without a column for `what` ("image", "caption"):
    the columns it has and the names taken."""
    has = ", ".join(repr(c.strip()) for c in columns) or "none"
    return CaptionerError(
        f"{path} line {line} has no {what} column (its columns: {has}); name the {what} column one of "
        f"{', '.join(wanted)}"
    )
