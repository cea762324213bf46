"""The annotation formats, by the name `data.format` takes, each a `Reader` in a file of its own.

A new format is one file with a `Reader` subclass and one line below. `data.format auto`
tries them in this order (the most specific first) and takes the first that recognises
what is at the path.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from captioner.data.readers.base import Location, Reader
from captioner.errors import CaptionerError

READERS = {
    "hf_saved": "captioner.data.readers.hf_saved:SavedDatasetReader",
    "coco": "captioner.data.readers.coco:CocoReader",
    "karpathy": "captioner.data.readers.karpathy:KarpathyReader",
    "flickr8k": "captioner.data.readers.flickr8k:Flickr8kReader",
    "imagefolder": "captioner.data.readers.imagefolder:ImageFolderReader",
    "csv": "captioner.data.readers.csv:TableReader",
    "sidecar": "captioner.data.readers.sidecar:SidecarReader",
}
FORMATS = ("auto", *READERS)


def reader_class(format: str) -> type[Reader]:
    """The reader of the format named `format` (a key of `READERS`)."""
    if format not in READERS:
        raise CaptionerError(f"data.format must be one of {', '.join(map(repr, FORMATS))}; got {format!r}")
    module, name = READERS[format].split(":")
    return getattr(importlib.import_module(module), name)


def recognise(root: Path) -> tuple[str, str]:
    """(format name, what was found) of the first format that recognises `root`; a
    CaptionerError saying what each format looks for when none does."""
    if not root.exists():
        raise CaptionerError(f"data.data_dir {root} does not exist; check the path")
    for format in READERS:
        found = reader_class(format).recognise(root)
        if found:
            return format, found
    looked = "; ".join(f"{format}: {reader_class(format).looks_for}" for format in READERS)
    raise CaptionerError(f"no caption data recognised at {root}; looked for {looked}. Or set data.format")


__all__ = ["FORMATS", "READERS", "Location", "Reader", "reader_class", "recognise"]
