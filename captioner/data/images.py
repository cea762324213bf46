"""Loading images robustly, turning them into model input, and finding image files.

`load_image` is the only way the package opens an image. It always returns a fully decoded
8-bit RGB image the right way up, or raises `ImageLoadError` naming the file and the reason.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import stat
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import CaptionerError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Refuse to decode anything bigger: 100 megapixels of RGB is already 300 MB of memory.
MAX_PIXELS = 100_000_000
# Reduced-scale JPEG decoding may leave a side this much shorter than the model input (see `draft_scale`).
DRAFT_MIN_FRACTION = 0.9
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageLoadError(CaptionerError):
    """An image file that cannot be used; `.path` and `.reason` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load image {path}: {reason}")


def _to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Rescale a one-channel 16-bit, 32-bit int or float image to 0..255 (never clip)."""
    pixels = pixels.astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and low >= 0 and high <= 65535):
        # 16-bit data (PNG/TIFF decode 16-bit grey to I;16 or I): full range maps to full range.
        scaled = pixels / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = pixels * 255.0
    else:
        # Unknown range (negative or huge values): stretch what is there.
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return np.round(scaled).astype(np.uint8)


def to_upright_rgb(image: Image.Image) -> Image.Image:
    """An open image as 8-bit RGB, rotated by its EXIF orientation (see `_to_rgb`)."""
    return _to_rgb(ImageOps.exif_transpose(image))


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency is composited on white; 16-bit/float grey is rescaled, not clipped."""
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open `path` as an 8-bit RGB image, rotated by its EXIF orientation and fully decoded.

    Grey, palette, CMYK and 16-bit images are converted; transparent pixels (RGBA, LA, palette
    or tRNS transparency) are composited onto a white background. The whole file is decoded
    here, so a truncated or corrupt file fails now rather than later in a batch.

    Raises:
        ImageLoadError: the file is missing, a directory, empty, not an image, truncated or
            corrupt, or larger than `max_pixels` (checked from the header, before decoding).
    """
    return load_image_for(path, None, max_pixels)[0]


def load_image_for(
    path: str | Path, target: int | None, max_pixels: int = MAX_PIXELS
) -> tuple[Image.Image, tuple[int, int]]:
    """`load_image`, for a model that resizes it to `target` x `target` pixels: a JPEG whose
    sides are at least twice `target` (to within DRAFT_MIN_FRACTION) is decoded at 1/2, 1/4
    or 1/8 scale (see `draft_scale`). Returns the image and its full upright size (W, H),
    the size its boxes and overlays refer to. `target=None` decodes at full size.
    """
    path = Path(path)
    problem = not_a_file(path)
    if problem is not None:
        raise ImageLoadError(path, problem)
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    return _decode(path, path, max_pixels, target)


def decode_image(
    data: bytes, name: str, max_pixels: int = MAX_PIXELS, target: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """`load_image_for` for image bytes already in memory (an upload); `name` labels its errors.

    With a `target`, every format is brought down to the scale the model needs as early as it
    can be: a JPEG by a reduced decode, any other by `Image.reduce` (the same 2, 4 or 8 as
    `draft_scale`) before its conversion to RGB, so a large upload never exists as full-size
    RGB. Returns the image and its full upright size (W, H).
    """
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, target, reduce=True)


def header_pixels(data: bytes) -> int:
    """Width x height of the image in `data` as its header states (nothing is decoded), or 0 when
    the header cannot be read (decoding it then fails at once, saying why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.width * image.height
    except Exception:  # any unreadable header: decode_image says why
        return 0


def _decode(
    source: Path | io.BytesIO, name: str | Path, max_pixels: int, target: int | None, reduce: bool = False
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode `source` to upright RGB (see `load_image_for`), refusing more than `max_pixels`
    before decoding, and with `reduce` shrinking any format (see `decode_image`); -> (image,
    full upright size)."""
    try:
        with warnings.catch_warnings():
            # max_pixels below is our own, stricter guard; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(name, f"image is too large ({width}x{height} > {max_pixels} pixels)")
                scale = draft_scale((width, height), target)
                if scale > 1 and image.format == "JPEG":
                    image.draft(image.mode, (max(1, width // scale), max(1, height // scale)))
                    scale = 1  # libjpeg did it
                image.load()
                upright = ImageOps.exif_transpose(image)
                turned = (upright.width > upright.height) != (image.width > image.height)
                upright = _to_rgb(_reduced(upright, scale) if reduce and scale > 1 else upright)
    except ImageLoadError:
        raise  # our own size guard; it is a ValueError, so let it pass the handlers below
    except Image.DecompressionBombError as error:
        raise ImageLoadError(name, f"image is too large ({error})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file (unrecognised format)") from None
    except PermissionError:
        raise ImageLoadError(name, "permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(name, f"truncated or corrupt image data ({error})") from None
    # EXIF orientations 5-8 turn the image by 90 degrees.
    return upright, (height, width) if turned else (width, height)


def _reduced(image: Image.Image, scale: int) -> Image.Image:
    """`image` shrunk `scale` times by box averaging, in its own mode when Pillow can (1 byte a
    pixel for grey), else after conversion to RGB (palette and 16-bit modes)."""
    try:
        return image.reduce(scale)
    except ValueError:
        return _to_rgb(image).reduce(scale)


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as an image file (missing, a directory, a link loop, a FIFO...),
    or None for a regular file. Only stats the path: a FIFO is never opened, so nothing blocks."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link loop (it leads back to itself); point the link at an image file"
        if error.errno == errno.EACCES:
            return "permission denied"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        return "no such file or directory"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"is {kind}, not a regular file; it is not read: pass image files"


def draft_scale(size: tuple[int, int], target: int | None) -> int:
    """The JPEG decoding scale (1, 2, 4 or 8) for an image of `size` (W, H) resized to `target`².

    libjpeg can decode at 1/2, 1/4 and 1/8 scale from the DCT coefficients directly: less work
    in the decoder, and a smaller image to resize. The largest scale is taken that keeps both
    sides at least DRAFT_MIN_FRACTION of `target`, so a 640x480 photo decodes at 320x240 for
    a 256x256 model input (its last 6% of rows then come from resizing up, about as fine as
    what JPEG compression itself keeps; see tests/test_images.py), and at full size for 512².
    """
    if target is None:
        return 1
    fits = min(size) / (DRAFT_MIN_FRACTION * target)
    return next((scale for scale in (8, 4, 2) if scale <= fits), 1)


def image_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> (3, S, S) float tensor: resized to S x S, ImageNet-normalised. No flips."""
    if image_size < 1:
        raise CaptionerError(f"image_size must be a positive number of pixels, got {image_size}")
    return ImageToTensor(image_size)


class ImageToTensor:
    """`image_transform`'s callable (a class, so DataLoader workers can pickle it).

    The bilinear, antialiased resize runs on the uint8 pixels with torch's vectorised kernel,
    faster than Pillow's on a 640x480 photo (the two differ by under 0.001 in normalised
    units, mean absolute); the rest is torchvision's ToTensor and Normalize, op for op, so an
    image already S x S gives the same floats bit for bit. Torch is imported here, not with the
    module, so that reading data (`captioner data check`) does not pay for it."""

    def __init__(self, image_size: int) -> None:
        import torch

        self.size = [image_size, image_size]
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch
        from torchvision.transforms.v2.functional import resize

        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W), HWC in memory
        if list(pixels.shape[1:]) != self.size:
            pixels = resize(pixels, self.size, antialias=True)  # fastest on HWC memory; keeps it
        # Planar before the float work: the three passes below run faster on it.
        return pixels.contiguous().float().div_(255).sub_(self.mean).div_(self.std)


def _is_image_file(path: Path) -> bool:
    # Hidden files (".DS_Store", macOS "._x.jpg" forks) are never images worth captioning.
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _walk(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if _is_image_file(p))


def list_image_files(inputs: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand files, directories and glob patterns into image files; report what matched nothing.

    A file named explicitly is kept whatever its extension (`load_image` will judge it); a
    directory is walked recursively for image extensions, sorted; a glob pattern (`*`, `?`,
    `[`) keeps its matching image files and walks matching directories. Duplicates are dropped,
    first occurrence wins.

    Returns:
        (files, problems): the image paths in input order, and one message per input that
        yielded no image (missing path, empty directory, pattern without matches). Callers
        decide whether a problem is fatal.
    """
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = _walk(path)
            if not found:
                problems.append(f"{text}: no image files in this directory")
        elif any(ch in text for ch in "*?["):
            found = []
            for match in map(Path, sorted(glob.glob(text, recursive=True))):
                found.extend(_walk(match) if match.is_dir() else [match] if _is_image_file(match) else [])
            if not found:
                problems.append(f"{text}: pattern matched no image files")
        else:
            found = []
            problems.append(f"{text}: {not_a_file(path) or 'no such file or directory'}")
        files.extend(found)
    return list(dict.fromkeys(files)), problems
