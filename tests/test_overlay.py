"""Attention maps land on the right part of the image; figures and files are complete."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.viz.overlay import HEATMAP, HeatmapStyle, attention_map, draw_attention, save_attention


def _one_hot(index: int, cells: int) -> np.ndarray:
    alpha = np.zeros(cells, dtype=np.float32)
    alpha[index] = 1.0
    return alpha


@pytest.mark.parametrize(
    ("image_size", "grid"),
    [((64, 64), (4, 4)), ((60, 40), (4, 4)), ((60, 40), (2, 3)), ((40, 90), (3, 2))],
)
@pytest.mark.parametrize("smooth", [False, True])
def test_top_left_cell_lights_the_top_left_region(image_size, grid, smooth):
    width, height = image_size
    rows, cols = grid
    heat = attention_map(_one_hot(0, rows * cols), grid, image_size, smooth=smooth)

    assert heat.shape == (height, width)
    cell_h, cell_w = height // rows, width // cols
    top_left = heat[:cell_h, :cell_w]
    bottom_right = heat[-cell_h:, -cell_w:]
    assert top_left.mean() > 0.5 * heat.max()
    assert bottom_right.max() < 0.05 * heat.max()
    # The peak sits inside the attended cell.
    peak_y, peak_x = np.unravel_index(heat.argmax(), heat.shape)
    assert peak_y < cell_h and peak_x < cell_w


def test_row_major_layout_bottom_right_cell_and_tensor_input():
    grid, size = (2, 3), (60, 40)  # 2 rows x 3 cols on a 60x40 (W x H) image
    heat = attention_map(torch.tensor(_one_hot(5, 6)), grid, size)  # last cell = bottom-right
    assert heat[20:, 40:].mean() > 0.5 and heat[:20, :20].max() == 0.0


def test_uniform_attention_gives_a_flat_map():
    heat = attention_map(np.full(12, 1 / 12), (3, 4), (50, 30), smooth=True)
    np.testing.assert_allclose(heat, 1 / 12, rtol=1e-5)


def test_wrong_grid_is_rejected():
    with pytest.raises(ValueError, match="grid"):
        attention_map(np.ones(10), (3, 3), (30, 30))


def _example(cells: int = 9):
    image = Image.new("RGB", (60, 40), (200, 120, 40))
    words = ["a", "red", "circle"]
    alphas = torch.stack([torch.tensor(_one_hot(i, cells)) for i in range(len(words) + 1)])  # + <end> row
    return image, words, alphas


def test_figure_has_the_image_then_one_panel_per_word():
    image, words, alphas = _example()
    figure = draw_attention(image, words, alphas, (3, 3), cols=2, title="a red circle")

    image_axes = [ax for ax in figure.axes if ax.images][:-1]  # the last one is the colour bar
    assert len(figure.axes) == len(image_axes) + 1 == 2 + len(words)
    assert image_axes[0].get_title() == "a red circle"
    assert [ax.get_title() for ax in image_axes[1:]] == words
    assert all(len(ax.images) == 2 for ax in image_axes[1:])  # the image + the heat map


def test_save_attention_writes_one_png_plus_one_per_word(tmp_path):
    image, words, alphas = _example()

    only = save_attention(image, words, alphas, (3, 3), tmp_path / "one" / "overlay.png")
    assert only == [tmp_path / "one" / "overlay.png"]

    written = save_attention(
        image, words, alphas, (3, 3), tmp_path / "overlay.png", smooth=True, per_word_dir=tmp_path / "words"
    )
    assert len(written) == 1 + len(words)
    assert sorted(p.name for p in (tmp_path / "words").iterdir()) == ["00_a.png", "01_red.png", "02_circle.png"]
    for path in written + only:
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 50


def test_no_figures_are_left_open(tmp_path):
    import matplotlib.pyplot as plt

    image, words, alphas = _example()
    before = plt.get_fignums()
    save_attention(image, words, alphas, (3, 3), tmp_path / "o.png", per_word_dir=tmp_path)
    assert plt.get_fignums() == before


def test_per_word_file_names_keep_punctuation_but_not_path_separators(tmp_path):
    image, _, alphas = _example()
    save_attention(image, ["a", ",", "x/y"], alphas, (3, 3), tmp_path / "o.png", per_word_dir=tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["00_a.png", "01_,.png", "02_x_y.png"]


def _lut_index(style: HeatmapStyle, colours: np.ndarray) -> np.ndarray:
    """(..., 3) colours -> their entry in the style's LUT."""
    matches = (colours[..., None, :] == style.lut).all(-1)
    assert matches.any(-1).all()
    return matches.argmax(-1)


def test_a_near_uniform_word_is_drawn_dim_everywhere_not_stretched_to_full_range():
    cells = 16
    rng = np.random.default_rng(0)
    alpha = np.full(cells, 1 / cells) * rng.uniform(0.9, 1.1, cells)
    alpha /= alpha.sum()
    heat = attention_map(alpha, (4, 4), (40, 40))
    shown = _lut_index(HEATMAP, HEATMAP.colorize(heat, cells))
    assert shown.max() < 0.05 * HEATMAP.lut_size  # nothing stands out: the darkest colours only
    stretched = HeatmapStyle(scale="word")
    assert _lut_index(stretched, stretched.colorize(heat, cells)).max() == stretched.lut_size - 1


def test_two_words_share_one_scale():
    cells = 16
    sharp = _one_hot(5, cells)
    softer = np.full(cells, 0.5 / (cells - 1), dtype=np.float32)
    softer[5] = 0.5
    peaks = [
        _lut_index(HEATMAP, HEATMAP.colorize(attention_map(a, (4, 4), (40, 40)), cells)).max() for a in (sharp, softer)
    ]
    assert peaks[0] > 0.95 * HEATMAP.lut_size and peaks[1] < 0.8 * HEATMAP.lut_size  # α = 1 vs α = 0.5
    # α = 0.5 is log(8)/log(16) = 3/4 of the way from uniform to all-on-one-cell.
    assert abs(HEATMAP.scaled(np.array([0.5]), cells)[0] - 0.75) < 1e-6
    assert HEATMAP.scaled(np.array([1 / cells, 0.01, 0.0]), cells).tolist() == [0.0, 0.0, 0.0]
    word = HeatmapStyle(scale="word")
    assert [word.scaled(attention_map(a, (4, 4), (40, 40)), cells).max() for a in (sharp, softer)] == [1.0, 1.0]


def test_legend_labels_alpha_from_uniform_to_one():
    ticks = HEATMAP.legend(196)
    positions = [at for at, _ in ticks]
    assert positions == sorted(positions) and positions[0] == 0.0 and positions[-1] == 1.0
    assert ticks[0][1].endswith("\n(uniform)") and ticks[-1][1] == "1"
    assert "0.02" in ticks[1][1]  # 4/196
    style = HEATMAP.as_json()
    assert style["scale"] == "relative" and style["opacity"] == HEATMAP.opacity and style["lut"] == HEATMAP.lut.tolist()
    with pytest.raises(ValueError, match="scale"):
        HeatmapStyle(scale="auto")


def test_panels_carry_the_spread_notes_and_one_colour_bar():
    image, words, alphas = _example()
    uniform = torch.full((4, 9), 1 / 9)
    figure = draw_attention(image, words, uniform, (3, 3), notes=["n1", "n2", "n3"])
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert texts == [
        "half of α on 56% of the image\nn1",
        "half of α on 56% of the image\nn2",
        "half of α on 56% of the image\nn3",
    ]  # 5 of 9 cells
    bar = figure.axes[-1]
    assert bar.get_title() == "α" and [t.get_text() for t in bar.get_yticklabels()][-1] == "1"
    sharp = draw_attention(image, words, alphas, (3, 3))
    assert "half of α on 11% of the image" in [t.get_text() for t in sharp.axes[1].texts]
