import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.jpeg import photo_like
from captioner.data import MAX_PIXELS, ImageLoadError, image_transform, list_image_files, load_image
from captioner.data.images import DRAFT_MIN_FRACTION, IMAGENET_MEAN, IMAGENET_STD, draft_scale, load_image_for
from captioner.errors import CaptionerError


def noisy_image(size: int = 64) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but holds almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )
    return path


def truncated(path: Path, fmt: str) -> Path:
    buffer = io.BytesIO()
    noisy_image().save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BROKEN = {
    "missing": (lambda p: p / "nope.png", "no such file or directory"),
    "directory": (lambda p: p, "is a directory"),
    "zero bytes": (lambda p: write(p / "empty.png", b""), r"empty \(0 bytes\)"),
    "not an image": (lambda p: write(p / "notes.png", b"hello, not pixels"), "not an image"),
    "truncated png": (lambda p: truncated(p / "cut.png", "PNG"), "truncated or corrupt"),
    "truncated jpeg": (lambda p: truncated(p / "cut.jpg", "JPEG"), "truncated or corrupt"),
    "over our pixel limit": (lambda p: png_header_only(p / "big.png", 12_000, 12_000), "too large"),
    "decompression bomb": (lambda p: png_header_only(p / "bomb.png", 40_000, 40_000), "too large"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_files_raise_image_load_error_with_path_and_reason(tmp_path, kind):
    make, reason = BROKEN[kind]
    path = make(tmp_path)
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(path)
    assert info.value.path == path and str(path) in str(info.value)
    assert isinstance(info.value, CaptionerError)


def test_pixel_limit_sits_between_real_images_and_bombs():
    assert 12_000 * 12_000 > MAX_PIXELS > 8_000 * 8_000


def save_and_load(tmp_path: Path, image: Image.Image, name: str, **kwargs) -> np.ndarray:
    path = tmp_path / name
    image.save(path, **kwargs)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    return np.asarray(loaded).astype(int)


def test_grey_and_palette_become_rgb(tmp_path):
    assert save_and_load(tmp_path, Image.new("L", (4, 4), 100), "l.png")[0, 0].tolist() == [100] * 3
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    assert save_and_load(tmp_path, palette, "p.png")[0, 0].tolist() == [200, 30, 40]


def test_palette_transparency_composites_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    image.putpixel((3, 3), 1)
    pixels = save_and_load(tmp_path, image, "pt.png", transparency=0)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[3, 3].tolist() == [200, 30, 40]


def test_alpha_composites_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 0), (200, 30, 40, 255), (0, 0, 0, 128)])
    pixels = save_and_load(tmp_path, rgba, "rgba.png")[0]
    assert pixels[0].tolist() == [255, 255, 255] and pixels[1].tolist() == [200, 30, 40]
    assert np.all(np.abs(pixels[2] - 127) <= 1)  # half-transparent black over white is mid grey
    la = Image.new("LA", (1, 1), (0, 0))
    assert save_and_load(tmp_path, la, "la.png")[0, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 32_896, 65_535]], dtype=np.uint16)
    pixels = save_and_load(tmp_path, Image.fromarray(values), "grey16.png")
    assert pixels[0, :, 0].tolist() == [0, 100, 128, 255]
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_32_bit_int_and_float_grey(tmp_path):
    ints = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert save_and_load(tmp_path, ints, "int32.tif")[0, :, 0].tolist() == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert save_and_load(tmp_path, floats, "float.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    assert save_and_load(tmp_path, cmyk, "cmyk.tif")[0, 0].tolist() == [255, 0, 0]
    red = save_and_load(tmp_path, cmyk, "cmyk.jpg", quality=95)[4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    pixels = save_and_load(tmp_path, image, "rotated.png", exif=exif)
    assert pixels.shape == (20, 10, 3)
    assert pixels[0, 5].tolist() == [255, 0, 0] and pixels[19, 5].tolist() == [0, 0, 255]


def test_image_transform_resizes_normalises_and_never_flips():
    image = Image.new("RGB", (40, 30), (255, 255, 255))
    image.paste((0, 0, 0), (20, 0, 40, 30))  # right half black
    tensor = image_transform(16)(image)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(tensor[:, 0, 0], white, atol=1e-5)
    assert all(torch.equal(image_transform(16)(image), tensor) for _ in range(5))
    assert (tensor[:, :, 0] > tensor[:, :, -1]).all()
    with pytest.raises(CaptionerError):
        image_transform(0)


def _normalised(image):
    """An RGB image as the model sees it, computed from scratch: (3, H, W), ImageNet-normalised."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255
    return (pixels - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_image_transform_resizes_like_pillow_and_keeps_an_image_of_its_size_exact():
    # The resize runs on torch's uint8 kernel: it must agree with Pillow's antialiased bilinear
    # resize (a swapped axis, no antialiasing or a wrong scale would not), and an image already
    # S x S must only be normalised.
    photo = photo_like(120, 90, seed=0)
    pillow = photo.resize((48, 48), Image.BILINEAR, reducing_gap=None)
    assert (image_transform(48)(photo) - _normalised(pillow)).abs().mean() < 0.01
    square = photo.crop((0, 0, 48, 48))
    assert torch.allclose(image_transform(48)(square), _normalised(square), atol=1e-6)


def test_list_image_files_walks_globs_and_reports_what_matched_nothing(tmp_path):
    for name in ("b/2.JPG", "b/sub/1.png", "a.png", "b/.hidden.png", "b/readme.txt", "c.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    files, problems = list_image_files(
        [
            tmp_path / "b",
            str(tmp_path / "*.png"),
            tmp_path / "c.txt",
            tmp_path / "a.png",
            tmp_path / "gone.jpg",
            tmp_path / "empty",
            str(tmp_path / "*.gif"),
        ]
    )
    assert files == [tmp_path / "b/2.JPG", tmp_path / "b/sub/1.png", tmp_path / "a.png", tmp_path / "c.txt"]
    assert problems == [
        f"{tmp_path / 'gone.jpg'}: no such file or directory",
        f"{tmp_path / 'empty'}: no image files in this directory",
        f"{tmp_path / '*.gif'}: pattern matched no image files",
    ]


@pytest.mark.parametrize(
    ("size", "target", "scale"),
    [
        ((640, 480), 256, 2),  # 240 rows: 94% of 256, within DRAFT_MIN_FRACTION
        ((640, 480), 224, 2),
        ((640, 480), 512, 1),
        ((640, 480), 270, 1),  # 240 < 0.9 * 270
        ((4000, 3000), 256, 8),
        ((4000, 3000), 448, 4),
        ((640, 480), None, 1),
    ],
)
def test_draft_scale_keeps_both_sides_near_the_target(size, target, scale):
    assert draft_scale(size, target) == scale
    if scale > 1:
        assert min(size) // scale >= DRAFT_MIN_FRACTION * target


def test_large_jpeg_decodes_at_reduced_scale_with_its_full_upright_size(tmp_path):
    photo = photo_like(640, 480, seed=0)
    photo.save(tmp_path / "photo.jpg", quality=90)
    photo.save(tmp_path / "photo.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated 90° clockwise
    photo.save(tmp_path / "sideways.jpg", quality=90, exif=exif)

    image, size = load_image_for(tmp_path / "photo.jpg", 256)
    assert image.size == (320, 240) and size == (640, 480) and image.mode == "RGB"
    image, size = load_image_for(tmp_path / "sideways.jpg", 256)
    assert image.size == (240, 320) and size == (480, 640)
    image, size = load_image_for(tmp_path / "photo.png", 256)  # only JPEGs have a reduced decode
    assert image.size == size == (640, 480)
    image, size = load_image_for(tmp_path / "photo.jpg", None)
    assert image.size == size == (640, 480)


def test_reduced_scale_tensors_stay_within_what_jpeg_already_loses(tmp_path):
    # The tolerance: the draft may move the model input no further from the full decode than
    # quality-90 JPEG compression moved the full decode from the lossless original, and may
    # add at most a sixth to that compression error.
    transform = image_transform(256)
    for seed in range(3):
        photo = photo_like(640, 480, seed=seed)
        photo.save(tmp_path / "photo.jpg", quality=90)
        photo.save(tmp_path / "photo.png")
        lossless = transform(load_image(tmp_path / "photo.png"))
        full = transform(load_image(tmp_path / "photo.jpg"))
        draft = transform(load_image_for(tmp_path / "photo.jpg", 256)[0])
        compression = (full - lossless).abs().mean()
        assert (draft - full).abs().mean() < 0.7 * compression
        assert (draft - lossless).abs().mean() < 7 / 6 * compression
