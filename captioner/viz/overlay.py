"""Attention overlays: where the decoder looked while emitting each word.

Figures are built on matplotlib's ``Figure`` with an Agg canvas (never pyplot), so no
display is needed and nothing stays registered in pyplot's global figure list.

``HEATMAP`` holds the drawing rules (smoothing, colour map, opacity). The service's page
draws in the browser from ``HEATMAP.as_json()`` (served at ``GET /v1/overlay``), so a heat
map looks the same in ``captioner attend``/``gallery`` and on the page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from captioner.arrays import to_numpy

__all__ = ["HEATMAP", "HeatmapStyle", "attention_map", "draw_attention", "save_attention"]


@dataclass(frozen=True)
class HeatmapStyle:
    """How one word's attention is drawn over its image.

    A map is upsampled bilinearly (pixel centres, edges clamped), blurred with a Gaussian of
    ``smooth_sigma_cells`` grid cells when smoothing, stretched to its own min..max, coloured
    through the ``lut_size``-entry ``colormap`` (entry ⌊x·lut_size⌋, the top one for x = 1),
    and laid over the image at ``opacity``.
    """

    # Softens the blocky grid as the paper's figures do, while a single attended cell still
    # stays in its own neighbourhood.
    smooth_sigma_cells: float = 0.5
    colormap: str = "jet"
    opacity: float = 0.55
    lut_size: int = 256

    @cached_property
    def lut(self) -> np.ndarray:
        """(lut_size, 3) uint8 RGB colours of ``colormap``, low to high."""
        rgba = colormaps[self.colormap].resampled(self.lut_size)(np.arange(self.lut_size))
        return np.round(rgba[:, :3] * 255).astype(np.uint8)

    def colorize(self, heat: np.ndarray) -> np.ndarray:
        """(H, W) attention map -> (H, W, 3) uint8 colours, stretched to the map's own range."""
        low, high = float(heat.min()), float(heat.max())
        scaled = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
        return self.lut[np.clip((scaled * self.lut_size).astype(np.int64), 0, self.lut_size - 1)]

    def as_json(self) -> dict[str, Any]:
        """The rules as plain data, for drawing elsewhere (the service's page)."""
        return {
            "smooth_sigma_cells": self.smooth_sigma_cells,
            "colormap": self.colormap,
            "opacity": self.opacity,
            "lut": self.lut.tolist(),
        }


HEATMAP = HeatmapStyle()


def attention_map(alpha: Any, grid: tuple[int, int], image_size: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """Upsample one word's attention to the image.

    Args:
        alpha: (P,) attention weights (tensor or array), P = rows·cols, row-major with
            row 0 at the top of the image.
        grid: (rows, cols).
        image_size: (W, H) of the image, as PIL reports it.
        smooth: blur with a Gaussian of σ = ``HEATMAP.smooth_sigma_cells`` cells.

    Returns:
        (H, W) float32 map. Cell (r, c) sits over pixels [r·H/rows, (r+1)·H/rows) ×
        [c·W/cols, (c+1)·W/cols); values are interpolated α (bilinear between cell
        centres), not rescaled.
    """
    rows, cols = grid
    width, height = image_size
    cells = to_numpy(alpha).astype(np.float32)
    if cells.size != rows * cols:
        raise ValueError(f"alpha has {cells.size} weights but grid {grid} has {rows * cols} cells")
    # PIL's resize samples at pixel centres, so each cell centre lands at the centre of
    # its own image region (no half-cell shift as with align_corners=True).
    small = Image.fromarray(cells.reshape(rows, cols))  # float32 -> mode "F"
    upsampled = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    if smooth:
        sigma = HEATMAP.smooth_sigma_cells * min(height / rows, width / cols)
        upsampled = _gaussian_blur(upsampled, sigma)
    return upsampled


def draw_attention(
    image: Image.Image,
    words: Sequence[str],
    alphas: Any,
    grid: tuple[int, int],
    *,
    cols: int = 5,
    smooth: bool = False,
    title: str | None = None,
) -> Figure:
    """The image, then one panel per word with that word's attention over the image.

    Args:
        image: the RGB image (any size; boxes and grid are relative to it).
        words: the caption's words; panel t shows ``alphas[t]`` titled ``words[t]``.
        alphas: (L, P) attention, L >= len(words) (extra trailing rows are not drawn).
        grid: (rows, cols) of the attention grid, rows·cols = P.
        cols: panels per figure row.
        title: the first panel's title (e.g. the whole caption).
    """
    return _figure(image, words, _heat_maps(image, words, to_numpy(alphas), grid, smooth), cols=cols, title=title)


def _heat_maps(
    image: Image.Image, words: Sequence[str], weights: np.ndarray, grid: tuple[int, int], smooth: bool
) -> list[np.ndarray]:
    """One (H, W) attention map per word from weights (L >= len(words), P)."""
    if weights.ndim != 2 or weights.shape[0] < len(words):
        raise ValueError(f"alphas must be (L >= {len(words)}, P), got {weights.shape}")
    return [attention_map(weights[t], grid, image.size, smooth) for t in range(len(words))]


def _figure(
    image: Image.Image, words: Sequence[str], heats: list[np.ndarray], *, cols: int, title: str | None
) -> Figure:
    """The image, then one panel per word with its heat map (H, W) over the image."""
    panels = 1 + len(words)
    fig_cols = min(cols, panels)
    fig_rows = math.ceil(panels / fig_cols)
    figure = Figure(figsize=(2.6 * fig_cols, 2.6 * fig_rows * image.height / image.width + 0.4 * fig_rows))
    FigureCanvasAgg(figure)
    axes = figure.subplots(fig_rows, fig_cols, squeeze=False).ravel()
    axes[0].imshow(image)
    axes[0].set_title(title or "", fontsize=9, wrap=True)
    for ax, word, heat in zip(axes[1:], words, heats):
        _draw_word(ax, image, word, heat)
    for ax in axes[:panels]:
        ax.set_axis_off()
    for ax in axes[panels:]:
        figure.delaxes(ax)
    figure.tight_layout()
    return figure


def save_attention(
    image: Image.Image,
    words: Sequence[str],
    alphas: Any,
    grid: tuple[int, int],
    out_path: str | Path,
    *,
    cols: int = 5,
    smooth: bool = False,
    per_word_dir: str | Path | None = None,
) -> list[Path]:
    """Write the overlay figure to ``out_path`` (PNG) and, when ``per_word_dir`` is given,
    one PNG per word there (``00_<word>.png``, ...). Returns the paths written, figure first."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    caption = " ".join(words)
    # Computed once here, shared by the figure and the per-word files (smoothing is the slow part).
    heats = _heat_maps(image, words, to_numpy(alphas), grid, smooth)
    written = [_save(_figure(image, words, heats, cols=cols, title=caption), out_path)]
    if per_word_dir is not None:
        per_word_dir = Path(per_word_dir)
        per_word_dir.mkdir(parents=True, exist_ok=True)
        for t, (word, heat) in enumerate(zip(words, heats)):
            figure = Figure(figsize=(3.0, 3.0 * image.height / image.width + 0.3))
            FigureCanvasAgg(figure)
            ax = figure.add_subplot()
            _draw_word(ax, image, word, heat)
            ax.set_axis_off()
            figure.tight_layout()
            written.append(_save(figure, per_word_dir / f"{t:02d}_{_file_safe(word)}.png"))
    return written


def _draw_word(ax: Any, image: Image.Image, word: str, heat: np.ndarray) -> None:
    ax.imshow(image)
    ax.imshow(HEATMAP.colorize(heat), alpha=HEATMAP.opacity)  # (H, W) like the image: same pixel grid
    ax.set_title(word, fontsize=10)


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=100)
    figure.clear()  # drop the artists now; the Figure is not in pyplot, so nothing else holds it
    return path


def _file_safe(word: str) -> str:
    """The word itself (punctuation included) minus characters no file system accepts."""
    return re.sub(r'[\\/:*?"<>|\s\x00-\x1f]+', "_", word) or "_"


def _gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) array, edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = values
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        size = out.shape[axis]
        out = sum(k * padded.take(np.arange(i, i + size), axis=axis) for i, k in enumerate(kernel))
    return out.astype(np.float32)
