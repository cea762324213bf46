"""A static HTML page of captioned images, to browse results from disk (no server).

``write_gallery`` copies every image and overlay into the output folder and links them
relatively, so the folder can be moved, zipped or opened straight from a file manager.
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from captioner.errors import CaptionerError

__all__ = ["GalleryItem", "write_gallery"]


@dataclass(frozen=True)
class GalleryItem:
    """One image on the page.

    image_path: the image file. caption: the generated caption. references: the
    ground-truth captions. cider: this image's CIDEr (None when not scored).
    overlay_path: its attention overlay PNG (None when not drawn).
    """

    image_path: Path
    caption: str
    references: Sequence[str] = ()
    cider: float | None = None
    overlay_path: Path | None = None


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       background: #f4f5f7; color: #1f2328; }
header { padding: 1.2rem 2rem; background: #fff; border-bottom: 1px solid #d8dde3; }
h1 { font-size: 1.4rem; margin: 0; }
header p { margin: .3rem 0 0; color: #59636e; }
main { display: grid; gap: 1.2rem; padding: 1.5rem 2rem;
       grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); }
article { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; padding: 1rem; }
article img { display: block; max-width: 100%; height: auto; border-radius: 4px; }
article > img { width: 100%; }
.caption { font-size: 1.1rem; font-weight: 600; margin: .7rem 0 .3rem; }
.cider { display: inline-block; font-size: .8rem; color: #0b5394; background: #e7f0fb;
         border-radius: 999px; padding: .05rem .6rem; }
ul { margin: .5rem 0; padding-left: 1.2rem; color: #3d444d; }
details summary { cursor: pointer; color: #0b5394; margin-top: .4rem; }
details img { margin-top: .5rem; }
"""

# Records how many <img> elements loaded (naturalWidth > 0) once the page has finished
# loading, as data attributes on <body>: lets a headless browser check the page.
_LOAD_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.length - broken.length;
  document.body.dataset.imagesBroken = broken.map(function (img) { return img.getAttribute("src"); }).join(" ");
});
"""


def write_gallery(items: Sequence[GalleryItem], out_dir: str | Path, *, title: str) -> Path:
    """Write ``out_dir/index.html`` with its images under ``out_dir/images``; returns the page path."""
    out_dir = Path(out_dir)
    media = out_dir / "images"
    media.mkdir(parents=True, exist_ok=True)
    width = max(4, math.ceil(math.log10(len(items) + 1)))
    cards = []
    for number, item in enumerate(items):
        image = _copy_in(Path(item.image_path), media, f"{number:0{width}d}")
        overlay = (
            _copy_in(Path(item.overlay_path), media, f"{number:0{width}d}_attention") if item.overlay_path else None
        )
        cards.append(_card(item, image.relative_to(out_dir), overlay and overlay.relative_to(out_dir)))
    page = out_dir / "index.html"
    page.write_text(
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n<script>{_LOAD_CHECK}</script>\n</head>\n"
        f"<body>\n<header><h1>{_e(title)}</h1><p>{len(items)} images</p></header>\n"
        "<main>\n" + "\n".join(cards) + "\n</main>\n</body>\n</html>\n",
        encoding="utf-8",
    )
    return page


def _card(item: GalleryItem, image: Path, overlay: Path | None) -> str:
    parts = [
        "<article>",
        f'<img src="{_href(image)}" alt="{_e(item.caption)}">',
        f'<p class="caption">{_e(item.caption)}</p>',
    ]
    if item.cider is not None:
        parts.append(f'<span class="cider">CIDEr {item.cider:.3f}</span>')
    if item.references:
        parts.append("<ul>" + "".join(f"<li>{_e(ref)}</li>" for ref in item.references) + "</ul>")
    if overlay is not None:
        parts.append(
            f'<details open><summary>attention</summary><img src="{_href(overlay)}" '
            f'alt="attention for: {_e(item.caption)}"></details>'
        )
    parts.append("</article>")
    return "\n".join(parts)


def _copy_in(source: Path, media: Path, stem: str) -> Path:
    """Copy ``source`` into the gallery as ``<stem><suffix>`` (numbered: names never collide)."""
    if not source.is_file():
        raise CaptionerError(f"gallery image not found: {source}; check the path or regenerate it")
    target = media / f"{stem}{source.suffix.lower()}"
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def _href(path: Path) -> str:
    return quote(path.as_posix())


def _e(text: str) -> str:
    return html.escape(text, quote=True)
