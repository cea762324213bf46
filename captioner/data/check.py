"""What training would see in a data set, before any training: `captioner data check PATH`.

The format found; per split, images and captions; images missing (and, with `decode`,
unreadable), the first few named; captions per image; empty and over-long captions; the
vocabulary at the minimum word count and the share of caption words it covers; caption
lengths; duplicate images; and the split training would use or make. Without `decode` no
image is opened but to tell files of the same size apart, so a COCO-sized folder takes seconds.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from captioner.data.collection import CaptionCollection
from captioner.data.records import DataWarning, ImageRecord
from captioner.data.splits import ROLES
from captioner.vocab import MAX_CAPTION_LEN, MIN_WORD_COUNT, SPECIALS, tokenize

EXAMPLES = 5  # files named per problem
HEAD = 65536  # bytes read of same-size files to tell them apart before hashing them whole


@dataclass(frozen=True)
class CheckSettings:
    """The data settings the check applies as training would (`data.min_word_count`, ...)."""

    min_word_count: int = MIN_WORD_COUNT
    max_caption_len: int = MAX_CAPTION_LEN
    decode: bool = False


def _digest(path: Path, size: int | None = None) -> bytes:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        if size is not None:
            hasher.update(file.read(size))
        else:
            for block in iter(lambda: file.read(1 << 20), b""):
                hasher.update(block)
    return hasher.digest()


def duplicate_groups(paths: list[Path], sizes: dict[Path, int]) -> list[list[Path]]:
    """Groups of distinct files with the same bytes: files of one size, then of one head, then hashed whole."""
    by_size: dict[int, list[Path]] = {}
    for path in paths:
        by_size.setdefault(sizes[path], []).append(path)
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_head: dict[bytes, list[Path]] = {}
        for path in same_size:
            by_head.setdefault(_digest(path, HEAD), []).append(path)
        for same_head in by_head.values():
            if len(same_head) < 2:
                continue
            if sizes[same_head[0]] <= HEAD:  # the head was the whole file
                groups.append(same_head)
                continue
            by_whole: dict[bytes, list[Path]] = {}
            for path in same_head:
                by_whole.setdefault(_digest(path), []).append(path)
            groups += [g for g in by_whole.values() if len(g) > 1]
    return sorted(sorted(g) for g in groups)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 90, 99)} | {"max": int(array.max())}


def check(collection: CaptionCollection, settings: CheckSettings) -> dict[str, Any]:
    """The report (module docstring) as plain data. Read errors raise CaptionerError as in training."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        records = {role: collection.records(role) for role in ROLES}
    skipped = [w.message for w in caught if issubclass(w.category, DataWarning)]
    missing = sorted({p for w in skipped for p in w.missing})

    listed: dict[Path, list[str]] = {}  # every file, with the roles listing it
    for role, role_records in records.items():
        for record in role_records:
            listed.setdefault(record.path, []).append(role)
    sizes = {path: os.stat(path).st_size for path in listed}
    unreadable = {path: "empty file" for path, size in sizes.items() if size == 0}
    if settings.decode:
        from captioner.data.images import ImageLoadError, load_image

        for path in listed:
            if path not in unreadable:
                try:
                    load_image(path).close()
                except ImageLoadError as error:
                    unreadable[path] = error.reason
    shared = _shared_images(collection, records)

    report: dict[str, Any] = {
        "format": collection.format,
        "found": collection.found,
        "images": {
            "found": len(listed),
            "missing": len(missing),
            "missing_examples": [str(p) for p in missing[:EXAMPLES]],
            "unreadable": len(unreadable),
            "unreadable_examples": [f"{p}: {why}" for p, why in sorted(unreadable.items())[:EXAMPLES]],
            "decoded": settings.decode,
        },
        "splits": {role: _split_report(collection, role, records[role]) for role in ROLES},
        "split_made": collection.made.summary() if collection.made else None,
        "images_in_two_splits": len(shared),
        "images_in_two_splits_examples": shared[:EXAMPLES],
        "skipped": [str(w) for w in skipped],
    }
    report["captions"] = _caption_report(records["train"], settings)
    groups = duplicate_groups(sorted(listed), sizes)
    report["duplicate_images"] = {
        "groups": len(groups),
        "files": sum(len(g) for g in groups),
        "examples": [[str(p) for p in g] for g in groups[:EXAMPLES]],
    }
    return report


def _shared_images(collection: CaptionCollection, records: dict[str, list[ImageRecord]]) -> list[str]:
    """Files in two different splits (roles that read the same split do not count)."""
    split_of: dict[str, set[str]] = {}
    names = {role: role if role in _held(collection) else collection.split(role).name for role in records}
    for role, role_records in records.items():
        if names[role] in [names[r] for r in ROLES[: ROLES.index(role)]]:
            continue  # the same split as an earlier role
        for record in role_records:
            split_of.setdefault(os.path.normpath(record.path), set()).add(names[role])
    return sorted(p for p, names in split_of.items() if len(names) > 1)


def _held(collection: CaptionCollection) -> tuple[str, ...]:
    held = collection.held_out()
    return ("train", *held) if held else ()


def _split_report(collection: CaptionCollection, role: str, records: list[ImageRecord]) -> dict[str, Any]:
    per_image = [len(r.captions) for r in records]
    spread = (
        {"min": min(per_image), "mean": round(float(np.mean(per_image)), 2), "max": max(per_image)} if per_image else {}
    )
    source = "made" if role in _held(collection) else f"the data's split {collection.split(role).name!r}"
    return {
        "source": source,
        "images": len(records),
        "captions": sum(per_image),
        "images_without_captions": sum(1 for n in per_image if n == 0),
        "captions_per_image": spread,
    }


def _caption_report(train: list[ImageRecord], settings: CheckSettings) -> dict[str, Any]:
    """Training captions as the vocabulary and the length limit see them."""
    counts: Counter[str] = Counter()
    lengths = []
    for record in train:
        for caption in record.captions:
            tokens = tokenize(caption)
            counts.update(tokens)
            lengths.append(len(tokens))
    kept = [word for word, n in counts.items() if n >= settings.min_word_count and word not in SPECIALS]
    total = sum(counts.values())
    covered = sum(counts[w] for w in kept)
    too_long = sum(1 for n in lengths if n > settings.max_caption_len)
    return {
        "train_captions": len(lengths),
        "over_long": too_long,
        "over_long_share": round(too_long / len(lengths), 4) if lengths else 0.0,
        "max_caption_len": settings.max_caption_len,
        "length_words": _percentiles(lengths),
        "vocabulary": len(kept) + len(SPECIALS),
        "min_word_count": settings.min_word_count,
        "token_coverage": round(covered / total, 4) if total else 0.0,
    }


def problems(report: dict[str, Any]) -> list[str]:
    """The findings that would stop training, one line each ([] when it can start)."""
    out = []
    if report["splits"]["train"]["captions"] == 0:
        out.append("the train split has no captions to train on")
    if report["images_in_two_splits"]:
        out.append(f"{report['images_in_two_splits']} images are in two splits")
    return out
