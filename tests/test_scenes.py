"""The scenes family: two to four objects of two sizes on a cluttered ground, with a grammar of its own."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.cli import main
from captioner.data import read_boxes, read_coco, read_karpathy, scenes
from captioner.evaluation.grounding import coco_category_words
from captioner.vocab import tokenize

SPLITS = ("train", "val", "test")
COUNTS = {"train": 30, "val": 8, "test": 8}
SIZE = 96
PHRASE_WORDS = (set(scenes.SIZE_RANGES), set(scenes.COLOUR_WORDS), set(scenes.CATEGORIES))


@pytest.fixture(scope="module")
def scene_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scenes.generate(tmp_path_factory.mktemp("scenes"), size=SIZE, seed=0, **COUNTS)


def phrases(text: str) -> list[tuple[str, str, str]]:
    """The (size, colour, kind) phrases of a caption, in order."""
    tokens = tokenize(text)
    return [
        tuple(tokens[i : i + 3])
        for i in range(len(tokens) - 2)
        if all(word in words for word, words in zip(tokens[i : i + 3], PHRASE_WORDS))
    ]


def size_word(extent: float, size: int) -> str:
    """The size word of a box's longer side: a star's box is 0.9 of its frame, the others' all of it."""
    (small_low, small_high), (large_low, large_high) = scenes.SIZE_RANGES["small"], scenes.SIZE_RANGES["large"]
    if 0.9 * small_low * size <= extent <= small_high * size + 0.02:
        return "small"
    assert 0.9 * large_low * size <= extent <= large_high * size + 0.02, extent
    return "large"


def test_every_reader_takes_the_files(scene_data):
    karpathy = read_karpathy(scene_data / "dataset_scenes.json", scene_data)
    for split in SPLITS:
        records = read_coco(scene_data / split, scene_data / "annotations" / f"captions_{split}.json", split)
        assert len(records) == COUNTS[split]
        assert all(len(r.captions) == 5 and Image.open(r.path).size == (SIZE, SIZE) for r in records)
        assert [(r.image_id, r.captions) for r in karpathy[split]] == [(r.image_id, r.captions) for r in records]
        boxes = read_boxes(scene_data / "annotations" / f"instances_{split}.json")
        assert sorted(boxes) == [r.image_id for r in records]
        assert {b.category for bs in boxes.values() for b in bs} <= set(scenes.CATEGORIES)


def test_captions_name_every_boxed_object_once_left_to_right(scene_data):
    objects_per_image, sizes_seen = Counter(), set()
    for split in SPLITS:
        captions = json.loads((scene_data / "annotations" / f"captions_{split}.json").read_text())
        instances = json.loads((scene_data / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in instances["categories"]}
        drawn = {image["id"]: [] for image in captions["images"]}
        for ann in instances["annotations"]:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            drawn[ann["image_id"]].append((x + w / 2, size_word(max(w, h), SIZE), names[ann["category_id"]]))
        texts = {image_id: [] for image_id in drawn}
        for ann in captions["annotations"]:
            texts[ann["image_id"]].append(ann["caption"])
        for image_id, objects in drawn.items():
            objects_per_image[len(objects)] += 1
            sizes_seen |= {size for _, size, _ in objects}
            expected = Counter((size, kind) for _, size, kind in objects)
            for text in texts[image_id]:
                assert len(tokenize(text)) <= 20, text
                assert Counter((size, kind) for size, _, kind in phrases(text)) == expected, text
            left_to_right = [(size, kind) for _, size, kind in sorted(objects)]
            assert [(size, kind) for size, _, kind in phrases(texts[image_id][0])] == left_to_right
            assert [(size, kind) for size, _, kind in phrases(texts[image_id][4])] == left_to_right[::-1]
            assert texts[image_id][2].startswith(f"{scenes.COUNT_WORDS[len(objects)]} objects :")
    assert set(objects_per_image) == {2, 3, 4} and sizes_seen == set(scenes.SIZE_RANGES)


@pytest.mark.parametrize("seed", range(25))
def test_objects_are_drawn_inside_their_boxes_in_the_named_colour(seed):
    """Rendering with and without the objects from the same generator state differs only inside
    the boxes (give or take the one pixel a polygon's rasterisation may round to), every box
    holds drawn pixels, and their mean colour is nearest the one the canonical caption names."""
    size = 80
    image, texts, objects = scenes._sample_image(np.random.default_rng(seed), size)
    rng = np.random.default_rng(seed)
    things = scenes._sample_things(rng, size)
    assert [t.bbox for t in things] == [o.bbox for o in objects]
    bare = np.asarray(scenes.render([], size, rng), dtype=int)
    pixels = np.asarray(image, dtype=int)
    changed = (pixels != bare).any(axis=2)
    covered = np.zeros_like(changed)
    colours = list(scenes.COLOUR_WORDS)
    for thing, obj in zip(things, objects):
        x, y, w, h = obj.bbox
        box = np.zeros_like(changed)
        box[max(0, int(y) - 1) : int(y + h) + 2, max(0, int(x) - 1) : int(x + w) + 2] = True
        covered |= box
        mean = pixels[box & changed].mean(axis=0)
        nearest = min(colours, key=lambda c: np.abs(np.array(scenes.COLOUR_WORDS[c]) - mean).sum())
        assert nearest == thing.colour
        assert (thing.size, thing.colour, thing.kind) in phrases(texts[0])
    assert not (changed & ~covered).any()


@pytest.mark.parametrize("seed", range(25))
def test_every_object_holds_a_cell_centre_of_an_8x8_grid(seed):
    """The pointing game scores a word by the grid cells whose centre lies in its box: even the
    smallest object must hold one, or naming it could never count as a hit."""
    size = 64
    centres = (np.arange(8) + 0.5) * size / 8
    for thing in scenes._sample_things(np.random.default_rng(seed), size):
        x, y, w, h = thing.bbox
        assert ((centres >= x) & (centres <= x + w)).any() and ((centres >= y) & (centres <= y + h)).any()


def test_category_words_are_the_only_mapped_caption_words(scene_data):
    mapping = coco_category_words(scenes.CATEGORIES)
    data = json.loads((scene_data / "dataset_scenes.json").read_text())
    words = {t for image in data["images"] for s in image["sentences"] for t in s["tokens"]}
    assert words & set(mapping) == set(scenes.CATEGORIES)
    assert not words & {"circle", "square", "triangle", "red", "top", "left of"}  # not the shapes grammar


def test_cli_kind_scenes_and_its_size_error(tmp_path, capsys):
    args = ["--train", "3", "--val", "1", "--test", "1", "--size", "96"]
    assert main(["data", "synth", "--kind", "scenes", "--out", str(tmp_path / "s"), *args]) == 0
    assert "wrote 5 scenes images" in capsys.readouterr().out
    instances = json.loads((tmp_path / "s" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in instances["categories"]] == list(scenes.CATEGORIES)
    assert (tmp_path / "s" / "dataset_scenes.json").is_file()
    assert main(["data", "synth", "--kind", "scenes", "--out", str(tmp_path / "x"), "--size", "48"]) == 2
    assert capsys.readouterr().err.startswith("error: size must be at least 64")
