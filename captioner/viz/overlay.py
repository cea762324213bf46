"""Attention overlays: where the decoder looked while emitting each word.

Figures are built on matplotlib's ``Figure`` with an Agg canvas (never pyplot), so no
display is needed and nothing stays registered in pyplot's global figure list.

``HEATMAP`` holds the drawing rules (smoothing, scale, colour map, opacity). The service's page
draws in the browser from ``HEATMAP.as_json()`` (served at ``GET /v1/overlay``), so a heat
map looks the same in ``captioner attend``/``gallery``, TensorBoard and on the page.

One scale for every word (docs/attention.md): the colour says how many times the uniform
weight 1/P a cell holds, on a log scale from 1× (uniform, or less: the darkest colour) to P×
(all of α on that one cell: the brightest). The range is the same for every word, caption and
image of a grid size, so a diffuse word looks dim and spread out and a sharp one bright.
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
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from captioner.arrays import to_numpy
from captioner.evaluation.faithfulness import attention_spread

__all__ = ["HEATMAP", "SCALES", "HeatmapStyle", "attention_map", "draw_attention", "save_attention", "spread_label"]

# "relative": α relative to uniform, log scale, one range for all words (the default).
# "word": each word stretched to its own min..max (the common practice; it makes a diffuse
# word look as certain as a sharp one, so it is an option for comparison only).
SCALES = ("relative", "word")


@dataclass(frozen=True)
class HeatmapStyle:
    """How one word's attention is drawn over its image.

    A map is upsampled bilinearly (pixel centres, edges clamped), blurred with a Gaussian of
    ``smooth_sigma_cells`` grid cells when smoothing, put on the 0..1 ``scale`` (see
    ``scaled``), coloured through the ``lut_size``-entry ``colormap`` (entry ⌊x·lut_size⌋, the
    top one for x = 1), and laid over the image at ``opacity``.
    """

    # Softens the blocky grid as the paper's figures do, while a single attended cell still
    # stays in its own neighbourhood.
    smooth_sigma_cells: float = 0.5
    # Perceptually uniform and dark at the bottom: low attention darkens the image, as in the
    # paper's light-on-dark figures, and equal steps of the scale look like equal steps.
    colormap: str = "magma"
    opacity: float = 0.6
    lut_size: int = 256
    scale: str = "relative"

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale={self.scale!r} is not one of {', '.join(SCALES)}")

    @cached_property
    def lut(self) -> np.ndarray:
        """(lut_size, 3) uint8 RGB colours of ``colormap``, low to high."""
        rgba = colormaps[self.colormap].resampled(self.lut_size)(np.arange(self.lut_size))
        return np.round(rgba[:, :3] * 255).astype(np.uint8)

    def scaled(self, heat: np.ndarray, cells: int) -> np.ndarray:
        """(H, W) attention map of a grid of ``cells`` cells -> (H, W) in [0, 1].

        "relative": log(α·P) / log(P), clipped to [0, 1]: 0 at or below the uniform 1/P, 1 for
        α = 1. "word": (α − min) / (max − min) of this map (0 for a flat map).
        """
        if self.scale == "word":
            low, high = float(heat.min()), float(heat.max())
            return (heat - low) / (high - low) if high > low else np.zeros_like(heat)
        if cells < 2:
            return np.zeros_like(heat)
        with np.errstate(divide="ignore"):
            return np.clip(np.log(np.maximum(heat, 0) * cells) / math.log(cells), 0.0, 1.0)

    def colorize(self, heat: np.ndarray, cells: int) -> np.ndarray:
        """(H, W) attention map of a grid of ``cells`` cells -> (H, W, 3) uint8 colours."""
        scaled = self.scaled(heat, cells)
        return self.lut[np.clip((scaled * self.lut_size).astype(np.int64), 0, self.lut_size - 1)]

    def legend(self, cells: int) -> list[tuple[float, str]]:
        """Colour-bar ticks for a grid of ``cells`` cells: (position on the 0..1 scale, α label).
        "relative": α = 1/P (uniform), 4/P, 16/P, ... and 1; "word": the ends of each word's range."""
        if self.scale == "word" or cells < 2:
            return [(0.0, "its lowest α"), (1.0, "its highest α")]
        ticks, ratio = [], 1
        while ratio < cells:
            ticks.append(
                (math.log(ratio) / math.log(cells), _alpha_label(ratio / cells) + ("\n(uniform)" if ratio == 1 else ""))
            )
            ratio *= 4
        if len(ticks) > 1 and ticks[-1][0] > 0.88:
            ticks.pop()  # too close to the top tick to label
        return [*ticks, (1.0, "1")]

    def as_json(self) -> dict[str, Any]:
        """The rules as plain data, for drawing elsewhere (the service's page)."""
        return {
            "smooth_sigma_cells": self.smooth_sigma_cells,
            "colormap": self.colormap,
            "opacity": self.opacity,
            "scale": self.scale,
            "lut": self.lut.tolist(),
        }


def _alpha_label(alpha: float) -> str:
    return f"{alpha:.2g}" if alpha >= 0.01 else f"{alpha:.1e}"


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


def spread_label(alpha: Any) -> str:
    """How spread out one word's attention (P,) is, in words: the share of the image that
    holds half of it (`captioner.evaluation.faithfulness.attention_spread`)."""
    share = float(attention_spread(torch.as_tensor(to_numpy(alpha))))
    return f"half of α on {share:.0%} of the image"


def draw_attention(
    image: Image.Image,
    words: Sequence[str],
    alphas: Any,
    grid: tuple[int, int],
    *,
    cols: int = 5,
    smooth: bool = False,
    title: str | None = None,
    notes: Sequence[str] | None = None,
    style: HeatmapStyle | None = None,
) -> Figure:
    """The image, then one panel per word with that word's attention over the image, all on
    one scale, with a colour bar of α and each word's spread under its panel.

    Args:
        image: the RGB image (any size; boxes and grid are relative to it).
        words: the caption's words; panel t shows ``alphas[t]`` titled ``words[t]``.
        alphas: (L, P) attention, L >= len(words) (extra trailing rows are not drawn).
        grid: (rows, cols) of the attention grid, rows·cols = P.
        cols: panels per figure row.
        title: the first panel's title (e.g. the whole caption).
        notes: one more line of text per word under its panel (e.g. its deletion test).
        style: the drawing rules; ``HEATMAP`` by default.
    """
    weights = to_numpy(alphas)
    heats = _heat_maps(image, words, weights, grid, smooth)
    return _figure(
        image, words, heats, _captions(words, weights, notes), grid, style or HEATMAP, cols=cols, title=title
    )


def _heat_maps(
    image: Image.Image, words: Sequence[str], weights: np.ndarray, grid: tuple[int, int], smooth: bool
) -> list[np.ndarray]:
    """One (H, W) attention map per word from weights (L >= len(words), P)."""
    if weights.ndim != 2 or weights.shape[0] < len(words):
        raise ValueError(f"alphas must be (L >= {len(words)}, P), got {weights.shape}")
    return [attention_map(weights[t], grid, image.size, smooth) for t in range(len(words))]


def _captions(words: Sequence[str], weights: np.ndarray, notes: Sequence[str] | None) -> list[str]:
    """Under each panel: its spread and, when given, its note."""
    if notes is not None and len(notes) != len(words):
        raise ValueError(f"{len(notes)} notes for {len(words)} words")
    return [spread_label(weights[t]) + ("" if notes is None else f"\n{notes[t]}") for t in range(len(words))]


def _figure(
    image: Image.Image,
    words: Sequence[str],
    heats: list[np.ndarray],
    captions: list[str],
    grid: tuple[int, int],
    style: HeatmapStyle,
    *,
    cols: int,
    title: str | None,
) -> Figure:
    """The image, then one panel per word with its heat map (H, W) over the image, and a colour bar."""
    panels = 1 + len(words)
    fig_cols = min(cols, panels)
    fig_rows = math.ceil(panels / fig_cols)
    lines = max((caption.count("\n") + 1 for caption in captions), default=1)
    panel_height = 2.6 * image.height / image.width + 0.4 + 0.18 * lines
    figure = Figure(figsize=(2.6 * fig_cols + 0.9, panel_height * fig_rows))
    FigureCanvasAgg(figure)
    axes = figure.subplots(fig_rows, fig_cols, squeeze=False).ravel()
    axes[0].imshow(image)
    axes[0].set_title(title or "", fontsize=9, wrap=True)
    for ax, word, heat, caption in zip(axes[1:], words, heats, captions):
        _draw_word(ax, image, word, heat, caption, grid, style)
    for ax in axes[:panels]:
        ax.set_axis_off()
    for ax in axes[panels:]:
        figure.delaxes(ax)
    figure.tight_layout(rect=(0, 0, 1 - 0.9 / (2.6 * fig_cols + 0.9), 1))
    _colour_bar(figure, grid, style)
    return figure


def _colour_bar(figure: Figure, grid: tuple[int, int], style: HeatmapStyle) -> None:
    """The scale's colours with α ticks, at the right edge of the figure."""
    width, _ = figure.get_size_inches()
    ax = figure.add_axes((1 - 0.75 / width, 0.1, 0.12 / width, 0.8))
    ax.imshow(style.lut[::-1, None, :], aspect="auto", extent=(0, 1, 0, 1))
    ticks = style.legend(grid[0] * grid[1])
    ax.set_xticks([])
    ax.yaxis.tick_right()
    ax.set_yticks([at for at, _ in ticks], [label for _, label in ticks], fontsize=7)
    ax.set_title("α", fontsize=9)


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
    notes: Sequence[str] | None = None,
    style: HeatmapStyle | None = None,
) -> list[Path]:
    """Write the overlay figure to ``out_path`` (PNG) and, when ``per_word_dir`` is given,
    one PNG per word there (``00_<word>.png``, ...). Returns the paths written, figure first.
    ``notes`` and ``style`` as in ``draw_attention``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    style = style or HEATMAP
    caption = " ".join(words)
    weights = to_numpy(alphas)
    # Computed once here, shared by the figure and the per-word files (smoothing is the slow part).
    heats = _heat_maps(image, words, weights, grid, smooth)
    captions = _captions(words, weights, notes)
    written = [_save(_figure(image, words, heats, captions, grid, style, cols=cols, title=caption), out_path)]
    if per_word_dir is not None:
        per_word_dir = Path(per_word_dir)
        per_word_dir.mkdir(parents=True, exist_ok=True)
        for t, (word, heat) in enumerate(zip(words, heats)):
            lines = captions[t].count("\n") + 1
            figure = Figure(figsize=(3.9, 3.0 * image.height / image.width + 0.3 + 0.18 * lines))
            FigureCanvasAgg(figure)
            ax = figure.add_subplot()
            _draw_word(ax, image, word, heat, captions[t], grid, style)
            ax.set_axis_off()
            figure.tight_layout(rect=(0, 0, 1 - 0.9 / 3.9, 1))
            _colour_bar(figure, grid, style)
            written.append(_save(figure, per_word_dir / f"{t:02d}_{_file_safe(word)}.png"))
    return written


def _draw_word(
    ax: Any, image: Image.Image, word: str, heat: np.ndarray, caption: str, grid: tuple[int, int], style: HeatmapStyle
) -> None:
    ax.imshow(image)
    # (H, W) like the image: same pixel grid
    ax.imshow(style.colorize(heat, grid[0] * grid[1]), alpha=style.opacity)
    ax.set_title(word, fontsize=10)
    ax.text(0.5, -0.02, caption, transform=ax.transAxes, ha="center", va="top", fontsize=7)


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
