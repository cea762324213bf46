"""Attention maps land on the right part of the image; figures and files are complete."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.viz.overlay import HEATMAP, attention_map, draw_attention, save_attention


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

    image_axes = [ax for ax in figure.axes if ax.images]
    assert len(figure.axes) == len(image_axes) == 1 + len(words)
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


def test_heatmap_style_colours_a_map_through_its_lut_from_min_to_max():
    heat = np.array([[0.2, 0.4], [0.6, 1.0]], dtype=np.float32)
    colours = HEATMAP.colorize(heat)
    lut = HEATMAP.lut
    assert lut.shape == (HEATMAP.lut_size, 3) and lut.dtype == np.uint8
    assert (colours[0, 0] == lut[0]).all() and (colours[1, 1] == lut[-1]).all()
    assert (colours[0, 1] == lut[int(0.25 * HEATMAP.lut_size)]).all()
    assert (HEATMAP.colorize(np.full((3, 3), 0.5)) == lut[0]).all()  # a flat map: one colour, no division by 0
    style = HEATMAP.as_json()
    assert style["opacity"] == HEATMAP.opacity and style["lut"] == lut.tolist()
