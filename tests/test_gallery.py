"""The gallery page, checked in a real headless Chromium (skipped only if none is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from captioner.errors import CaptionerError
from captioner.viz.gallery import GalleryItem, write_gallery

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (the Makefile's test target installs Debian's `chromium`)"
)


def _items(tmp_path: Path) -> list[GalleryItem]:
    sources = tmp_path / "source images"  # a space in the path: links must be URL-quoted
    sources.mkdir()
    Image.new("RGB", (64, 48), (220, 30, 30)).save(sources / "red box.png")
    Image.new("RGB", (40, 60), (30, 30, 220)).save(sources / "blue.JPG", format="JPEG")
    Image.new("RGB", (90, 30), (30, 160, 30)).save(sources / "overlay.png")
    return [
        GalleryItem(
            sources / "red box.png",
            "a <b>red</b> & box",
            ["a red square", 'the "red" one'],
            1.234,
            sources / "overlay.png",
        ),
        GalleryItem(sources / "blue.JPG", "a blue rectangle", ["a tall blue box"], None, sources / "overlay.png"),
        GalleryItem(sources / "red box.png", "the same red box again", [], 0.5, None),
    ]


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *extra, page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    )


def _load_report(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return dict(re.findall(r'data-images-(\w+)="([^"]*)"', body))


@needs_chromium
def test_gallery_renders_every_image_and_caption_in_chromium(tmp_path):
    page = write_gallery(_items(tmp_path), tmp_path / "gallery", title="Val <set> & co")

    dom = _chromium(page, tmp_path / "profile", "--dump-dom").stdout

    assert _load_report(dom) == {"total": "5", "loaded": "5", "broken": ""}  # 3 images + 2 overlays
    assert "a &lt;b&gt;red&lt;/b&gt; &amp; box" in dom and "<b>red</b>" not in dom
    assert "a blue rectangle" in dom and "the same red box again" in dom
    assert "a red square" in dom and 'the "red" one' in dom
    assert "CIDEr 1.234" in dom and "CIDEr 0.500" in dom
    assert "<title>Val &lt;set&gt; &amp; co</title>" in dom

    screenshot = tmp_path / "gallery.png"
    _chromium(page, tmp_path / "profile", "--window-size=1200,900", f"--screenshot={screenshot}")
    with Image.open(screenshot) as shot:
        assert shot.size == (1200, 900)
        assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # not a blank page


@needs_chromium
def test_load_check_reports_a_missing_image(tmp_path):
    out = tmp_path / "gallery"
    page = write_gallery(_items(tmp_path), out, title="t")
    (out / "images" / "0001.jpg").unlink()

    report = _load_report(_chromium(page, tmp_path / "profile", "--dump-dom").stdout)

    assert report == {"total": "5", "loaded": "4", "broken": "images/0001.jpg"}


def test_gallery_is_self_contained_with_relative_links(tmp_path):
    out = tmp_path / "gallery"
    page = write_gallery(_items(tmp_path), out, title="t")

    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert sources == [
        "images/0000.png",
        "images/0000_attention.png",
        "images/0001.jpg",
        "images/0001_attention.png",
        "images/0002.png",
    ]
    assert all((out / s).is_file() for s in sources)


def test_missing_source_image_is_a_clear_error(tmp_path):
    with pytest.raises(CaptionerError, match="gallery image not found"):
        write_gallery([GalleryItem(tmp_path / "nope.png", "x")], tmp_path / "g", title="t")
