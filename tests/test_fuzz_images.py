"""Fuzzing image input: random bytes and damaged PNG/JPEG files are captioned or reported,
never a crash or a hang (`load_image` and `captioner caption`, in-process).

`pytest --hypothesis-show-statistics tests/test_fuzz_images.py` shows how many inputs of
each kind were read and how many were reported."""

from __future__ import annotations

import contextlib
import io
import itertools
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from captioner.cli import main
from captioner.data import ImageLoadError, load_image


def _encoded(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


VALID = {"png": _encoded("PNG"), "jpeg": _encoded("JPEG")}
_names = itertools.count()


@st.composite
def damaged_files(draw) -> tuple[str, bytes]:
    """(kind, bytes): random bytes, or a valid PNG/JPEG truncated, with flipped bytes, or with
    its first 32 bytes (signature and header) overwritten."""
    kind = draw(st.sampled_from(["random", "truncate", "flip", "header"]))
    if kind == "random":
        return kind, draw(st.binary(max_size=4096))
    fmt = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[fmt])
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[position] ^= draw(st.integers(1, 255))
    else:
        start = draw(st.integers(0, 31))
        patch = draw(st.binary(min_size=1, max_size=32 - start))
        data[start : start + len(patch)] = patch
    return f"{fmt}-{kind}", bytes(data)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(directory: Path, data: bytes) -> Path:
    path = directory / f"{next(_names)}.png"
    path.write_bytes(data)
    return path


def _load_outcome(path: Path) -> bool:
    """True if `load_image` reads it (as RGB); False if it reports ImageLoadError naming it.
    Anything else propagates and fails the test."""
    try:
        image = load_image(path)
    except ImageLoadError as error:
        assert error.path == path and str(path) in str(error)
        return False
    assert image.mode == "RGB" and image.width > 0 and image.height > 0
    return True


@settings(max_examples=100, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
@given(case=damaged_files())
def test_load_image_reads_or_reports(fuzz_dir, case):
    kind, data = case
    readable = _load_outcome(_write(fuzz_dir, data))
    event(f"load_image {kind}/{'read' if readable else 'ImageLoadError'}")


@settings(max_examples=30, deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(damaged_files(), min_size=1, max_size=3))
def test_caption_command_captions_or_reports(fuzz_dir, tiny_checkpoint, cases):
    paths = [_write(fuzz_dir, data) for _, data in cases]
    readable = [_load_outcome(path) for path in paths]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            ["caption", "--ckpt", str(tiny_checkpoint), "--beam-size", "2", "--device", "cpu", *map(str, paths)]
        )
    assert code == (0 if all(readable) else 1)
    assert [line.split("\t")[0] for line in out.getvalue().splitlines()] == [
        str(p) for p, ok in zip(paths, readable) if ok
    ]
    prefix = "error: cannot load image "
    errors = err.getvalue().splitlines()
    assert all(line.startswith(prefix) for line in errors), errors
    named = [line[len(prefix) :].split(": ")[0] for line in errors]
    assert named == [str(p) for p, ok in zip(paths, readable) if not ok]
    for (kind, _), ok in zip(cases, readable):
        event(f"caption {kind}/{'captioned' if ok else 'reported'}")
