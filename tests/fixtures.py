"""Shared test helpers: a tiny checkpoint trained through the real command line."""

from __future__ import annotations

import pathlib
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captioner.training.cli import cli_main

# No progress bar or model summary in test output.
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# Training without validation: no validation batches, no metric to monitor (best.ckpt is the
# last one), no logger.
NO_VALIDATION = ["--trainer.limit_val_batches", "0", "--checkpoint.monitor", "null", "--trainer.logger", "false"]

# A model and data small enough to train for a few dozen steps in seconds on CPU.
TINY_SETTINGS = {
    "model.encoder.backbone": "resnet18",
    "model.encoder.stages": 2,
    "model.encoder.grid_size": 4,
    "model.decoder.embed_dim": 32,
    "model.decoder.hidden_dim": 32,
    "model.decoder.attention_dim": 32,
    "model.decoder.dropout": 0.0,
    "model.optimizer.lr_schedule": "constant",
    "data.image_size": 64,
    "data.batch_size": 8,
    "trainer.accelerator": "cpu",
}


def tiny_model(**changes: object) -> list[str]:
    """Command-line arguments for the tiny model and data, quiet; `changes` set or override
    settings by their dotted name with "__" for ".", e.g. tiny_model(model__encoder__stages=1)."""
    settings = TINY_SETTINGS | {name.replace("__", "."): value for name, value in changes.items()}
    args = [part for name, value in settings.items() for part in (f"--{name}", _cli_value(value))]
    return [*args, *QUIET]


def _cli_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


TINY_MODEL = tiny_model()

TINY_TRAINING = [
    *TINY_MODEL,
    "--model.encoder.fine_tune",
    "none",
    "--model.optimizer.decoder_lr",
    "0.005",
    "--model.optimizer.encoder_lr",
    "0.001",
    # ~45 steps on the 24-image conftest set. No validation (scoring it would take longer than
    # training: METEOR starts Java), so best.ckpt is simply the final one.
    "--trainer.max_epochs",
    "3",
    "--trainer.limit_train_batches",
    "15",
    *NO_VALIDATION,
]


def train_tiny_checkpoint(data_dir: str | Path, out_dir: str | Path, *extra: str) -> Path:
    """Train the tiny model on the COCO-format set at `data_dir` (`captioner train fit`,
    in-process; `extra` arguments last); returns the path of its `best.ckpt` under `out_dir`."""
    out_dir = Path(out_dir)
    cli_main(
        [
            "fit",
            "--data.data_dir",
            str(data_dir),
            *TINY_TRAINING,
            "--trainer.default_root_dir",
            str(out_dir),
            "--checkpoint.dirpath",
            str(out_dir / "checkpoints"),
            *extra,
        ]
    )
    return out_dir / "checkpoints" / "best.ckpt"


def write_odd_images(source: Path, out_dir: Path) -> dict[str, Path]:
    """The RGB image `source` saved in the formats cameras and editors produce: grey, palette,
    RGBA, 16-bit grey, CMYK JPEG, and an EXIF-rotated JPEG (stored sideways, tagged to show
    upright). Name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(source).convert("RGB")
    grey = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    paths = {
        "grey": out_dir / "grey.png",
        "palette": out_dir / "palette.png",
        "rgba": out_dir / "rgba.png",
        "grey16": out_dir / "grey16.png",
        "cmyk": out_dir / "cmyk.jpg",
        "exif_rotated": out_dir / "exif_rotated.jpg",
    }
    grey.save(paths["grey"])
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(paths["palette"])
    rgba.save(paths["rgba"])
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257).save(paths["grey16"])
    rgb.convert("CMYK").save(paths["cmyk"], quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    rgb.transpose(Image.Transpose.ROTATE_90).save(paths["exif_rotated"], exif=exif, quality=95)
    return paths


def write_bad_images(out_dir: Path, good_png: Path) -> dict[str, Path]:
    """Files that are not usable images: missing, text, truncated, empty, absurdly large
    (a valid header claiming 40000 x 40000 pixels), and an empty folder. Name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "missing": out_dir / "missing.png",
        "text": out_dir / "notes.png",
        "truncated": out_dir / "truncated.png",
        "empty": out_dir / "empty.jpg",
        "huge": out_dir / "huge.png",
        "empty_dir": out_dir / "no_images_here",
    }
    paths["text"].write_text("this is not an image\n")
    data = good_png.read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["empty"].write_bytes(b"")
    paths["huge"].write_bytes(_png_claiming_size(data, 40_000, 40_000))
    paths["empty_dir"].mkdir()
    return paths


def _png_claiming_size(png: bytes, width: int, height: int) -> bytes:
    """`png` with its IHDR chunk (bytes 8..33) rewritten to claim width x height."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


class _WritesAFile:
    """Unpickling this creates `target`: the kind of payload a malicious checkpoint carries."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def write_malicious_checkpoint(path: Path, target: Path, genuine: Path) -> Path:
    """A copy of the `genuine` checkpoint whose pickle also creates `target` when loaded unsafely."""
    checkpoint = torch.load(genuine, map_location="cpu", weights_only=True)
    checkpoint["callbacks"] = {"innocent": _WritesAFile(target)}
    torch.save(checkpoint, path)
    return path
