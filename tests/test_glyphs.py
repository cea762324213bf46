"""The glyphs family: grey digits told apart by shape alone, in the formats of the shapes family."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.cli import main
from captioner.data import glyphs, read_boxes, read_coco, read_karpathy, synth
from captioner.evaluation.grounding import coco_category_words
from captioner.vocab import tokenize

SPLITS = ("train", "val", "test")
COUNTS = {"train": 30, "val": 8, "test": 8}
SIZE = 64
# Brightest background pixel: ground below 50 plus noise up to _NOISE, with room for rounding.
GROUND_MAX = 50 + glyphs._NOISE


@pytest.fixture(scope="module")
def glyph_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return glyphs.generate(tmp_path_factory.mktemp("glyphs"), size=SIZE, seed=0, **COUNTS)


def category_words(text: str) -> list[str]:
    return [word for word in tokenize(text) if word in glyphs.CATEGORIES]


def test_every_reader_takes_the_files(glyph_data):
    karpathy = read_karpathy(glyph_data / "dataset_glyphs.json", glyph_data)
    for split in SPLITS:
        records = read_coco(glyph_data / split, glyph_data / "annotations" / f"captions_{split}.json", split)
        assert len(records) == COUNTS[split]
        assert all(len(r.captions) == 5 and r.path.is_file() for r in records)
        assert [(r.image_id, r.captions) for r in karpathy[split]] == [(r.image_id, r.captions) for r in records]
        boxes = read_boxes(glyph_data / "annotations" / f"instances_{split}.json")
        assert sorted(boxes) == [r.image_id for r in records]
        assert {b.category for bs in boxes.values() for b in bs} <= set(glyphs.CATEGORIES)


def test_images_are_grey_and_the_boxes_hold_all_the_ink_tightly(glyph_data):
    for split in SPLITS:
        instances = json.loads((glyph_data / "annotations" / f"instances_{split}.json").read_text())
        by_image = {image["id"]: [] for image in instances["images"]}
        for ann in instances["annotations"]:
            by_image[ann["image_id"]].append(ann["bbox"])
        for image in instances["images"]:
            rgb = np.asarray(Image.open(glyph_data / split / image["file_name"]))
            assert rgb.shape == (SIZE, SIZE, 3)
            assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # no colour
            ink = rgb[..., 0] > GROUND_MAX
            inside = np.zeros_like(ink)
            for x, y, w, h in by_image[image["id"]]:
                assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
                assert h >= 0.18 * SIZE - 1  # small, but never below a coarse grid's cell
                inside[int(y) : int(y + h), int(x) : int(x + w)] = True
                rows, cols = np.nonzero(ink[int(y) : int(y + h), int(x) : int(x + w)])
                # Tight: the clearly inked pixels reach (within antialiasing) every edge of the box.
                assert rows.min() <= 1 and cols.min() <= 1 and rows.max() >= h - 2 and cols.max() >= w - 2
            assert not (ink & ~inside).any(), f"ink outside the boxes in {image['file_name']}"


@pytest.mark.parametrize("seed", range(30))
def test_boxes_are_exactly_the_drawn_ink(seed):
    """Rendering with and without the glyphs from the same generator state differs exactly
    where a glyph covers the ground, and every covered pixel lies in its box."""
    size = 72
    image, _, objects = glyphs._sample_image(np.random.default_rng(seed), size)
    glyph_list = glyphs._sample_glyphs(np.random.default_rng(seed), size)
    assert [g.bbox for g in glyph_list] == [o.bbox for o in objects]
    rng = np.random.default_rng(seed)
    glyphs._sample_glyphs(rng, size)
    bare = np.asarray(glyphs.render([], size, rng), dtype=int)
    changed = (np.asarray(image, dtype=int) != bare).any(axis=2)
    coverage = np.zeros((size, size), dtype=bool)
    for g in glyph_list:
        mask = np.asarray(g.mask) > 0
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()  # tight
        coverage[g.y : g.y + g.h, g.x : g.x + g.w] |= mask
    assert not (changed & ~coverage).any()
    assert changed.sum() >= 0.5 * coverage.sum()  # faint antialiased edges may round away


def test_captions_name_each_drawn_glyph_once_and_nothing_else(glyph_data):
    sizes = Counter()
    for split in SPLITS:
        captions = json.loads((glyph_data / "annotations" / f"captions_{split}.json").read_text())
        instances = json.loads((glyph_data / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in instances["categories"]}
        drawn = {image["id"]: [] for image in captions["images"]}
        for ann in instances["annotations"]:
            x, y, w, h = ann["bbox"]
            drawn[ann["image_id"]].append((names[ann["category_id"]], x + w / 2, y + h / 2))
        texts = {image_id: [] for image_id in drawn}
        for ann in captions["annotations"]:
            texts[ann["image_id"]].append(ann["caption"])
        for image_id, objects in drawn.items():
            assert 1 <= len(objects) <= 3
            sizes[len(objects)] += 1
            for text in texts[image_id]:
                assert Counter(category_words(text)) == Counter(name for name, _, _ in objects), text
            canonical = texts[image_id][0]
            if len(objects) == 1:
                _, cx, cy = objects[0]
                assert canonical.endswith(synth.GRID_PHRASES[int(cy * 3 // SIZE)][int(cx * 3 // SIZE)])
            elif len(objects) == 2:
                axis = 1 if " to the left of " in canonical else 2
                assert axis == 1 or " above " in canonical
                assert category_words(canonical) == [o[0] for o in sorted(objects, key=lambda o: o[axis])]
            else:
                assert category_words(canonical) == [o[0] for o in sorted(objects, key=lambda o: o[1])]
    assert set(sizes) == {1, 2, 3}


def test_category_words_are_unambiguous_caption_words(glyph_data):
    """The grounding metrics map caption words to categories by name and plural: the only
    caption words they map are the digits' names, and every name occurs."""
    mapping = coco_category_words(glyphs.CATEGORIES)
    data = json.loads((glyph_data / "dataset_glyphs.json").read_text())
    words = {t for image in data["images"] for s in image["sentences"] for t in s["tokens"]}
    assert words & set(mapping) == set(glyphs.CATEGORIES)
    assert not words & {"one", "two", "three", "six", "nine", "zero"} - set(glyphs.CATEGORIES)
    assert all(re.fullmatch(r"[a-z]+", name) for name in glyphs.CATEGORIES)
    assert re.search(r"\ban eight\b", " ".join(s["raw"] for i in data["images"] for s in i["sentences"]))


def test_generate_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="at least 48"):
        glyphs.generate(tmp_path, train=1, size=40)
    with pytest.raises(ValueError, match="train >= 1"):
        glyphs.generate(tmp_path, train=0)


def test_cli_kind_glyphs_and_shapes_stays_the_default(tmp_path, capsys):
    args = ["--train", "3", "--val", "1", "--test", "1", "--size", "48"]
    assert main(["data", "synth", "--kind", "glyphs", "--out", str(tmp_path / "g"), *args]) == 0
    assert "wrote 5 glyphs images" in capsys.readouterr().out
    instances = json.loads((tmp_path / "g" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in instances["categories"]] == list(glyphs.CATEGORIES)
    assert (tmp_path / "g" / "dataset_glyphs.json").is_file()
    assert main(["data", "synth", "--out", str(tmp_path / "s"), *args]) == 0
    assert (tmp_path / "s" / "dataset_shapes.json").is_file() and not (tmp_path / "s" / "dataset_glyphs.json").exists()
    assert main(["data", "synth", "--kind", "glyphs", "--out", str(tmp_path / "x"), "--size", "32"]) == 2
    assert capsys.readouterr().err.startswith("error: size must be at least 48")
