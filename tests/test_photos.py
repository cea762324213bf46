"""The photos family: plain-coloured figures told apart by shape alone, on crops of real photographs."""

import contextlib
import io
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from captioner.cli import main
from captioner.data import Box, photos, read_boxes, read_coco, read_karpathy
from captioner.evaluation.grounding import GroundingSample, coco_category_words, grounding_scores
from captioner.training.cli import cli_main
from captioner.vocab import tokenize
from tests.fixtures import tiny_model

SPLITS = ("train", "val", "test")
COUNTS = {"train": 14, "val": 4, "test": 4}
SIZE = 96
NUMBERS = {"a": 1, "an": 1, **{word: n for n, word in photos.COUNT_WORDS.items()}}
PLURAL_KINDS = {plural: kind for kind, plural in photos.PLURALS.items()}


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return photos.generate(tmp_path_factory.mktemp("photos"), size=SIZE, seed=0, **COUNTS)


def coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def named(text: str) -> Counter:
    """How many figures of each kind a caption names: "a heart" one, "two hearts" two."""
    tokens = tokenize(text)
    found = Counter()
    for before, word in itertools.pairwise(tokens):
        if word in photos.CATEGORIES:
            assert before in ("a", "an"), text
            found[word] += 1
        elif word in PLURAL_KINDS:
            assert NUMBERS[before] >= 2, text
            found[PLURAL_KINDS[word]] += NUMBERS[before]
    return found


def kinds_in_order(text: str) -> list[str]:
    return [
        PLURAL_KINDS.get(word, word) for word in tokenize(text) if word in photos.CATEGORIES or word in PLURAL_KINDS
    ]


def drawn(data: Path, split: str) -> dict[int, list[tuple[str, list[float]]]]:
    """image id -> [(category, COCO box)] from the split's instances file."""
    instances = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    objects = {image["id"]: [] for image in instances["images"]}
    for ann in instances["annotations"]:
        objects[ann["image_id"]].append((names[ann["category_id"]], ann["bbox"]))
    return objects


def test_every_reader_takes_the_files(photo_data):
    karpathy = read_karpathy(photo_data / "dataset_photos.json", photo_data)
    for split in SPLITS:
        records = read_coco(photo_data / split, photo_data / "annotations" / f"captions_{split}.json", split)
        assert len(records) == COUNTS[split]
        assert all(len(r.captions) == 5 and Image.open(r.path).size == (SIZE, SIZE) for r in records)
        assert [(r.image_id, r.captions) for r in karpathy[split]] == [(r.image_id, r.captions) for r in records]
        boxes = read_boxes(photo_data / "annotations" / f"instances_{split}.json")
        assert sorted(boxes) == [r.image_id for r in records]
        assert {b.category for bs in boxes.values() for b in bs} <= set(photos.CATEGORIES)


def test_test_grounds_come_only_from_photos_training_never_uses(tmp_path, monkeypatch):
    """Every ground is cropped from one photograph: record which, image by image (the splits
    are written in order, train first), and check the test split's are held out."""
    assert all((photos.PHOTO_DIR / f"{name}.jpg").is_file() for names in photos.PHOTOS.values() for name in names)
    opened = []
    original = photos._photo
    monkeypatch.setattr(photos, "_photo", lambda name: opened.append(name) or original(name))
    counts = {"train": 40, "val": 10, "test": 10}
    photos.generate(tmp_path, size=64, seed=1, **counts)
    assert len(opened) == sum(counts.values())
    used = {"train": set(opened[:40]), "val": set(opened[40:50]), "test": set(opened[50:])}
    assert used["train"] == set(photos.PHOTOS["train"])  # 40 draws from five photos: all of them
    assert used["val"] <= set(photos.PHOTOS["val"]) and used["test"] <= set(photos.PHOTOS["test"])
    assert used["test"] and not used["test"] & (used["train"] | used["val"])
    assert not used["val"] & used["train"]


@pytest.mark.parametrize("seed", range(20))
def test_boxes_are_the_tight_frames_of_what_is_drawn(seed):
    """Drawing the same image without its figures (the ground comes first from the generator)
    differs from it only inside the boxes, and in every box up to (within a pixel) each edge."""
    split = SPLITS[seed % 3]
    image, _, objects = photos._sample_image(np.random.default_rng(seed), SIZE, photos=photos.PHOTOS[split])
    rng = np.random.default_rng(seed)
    bare = photos.ground(rng, SIZE, photos.PHOTOS[split])
    figures = photos._sample_figures(rng, SIZE)
    assert [f.bbox for f in figures] == [o.bbox for o in objects]
    changed = (np.asarray(image, dtype=int) != bare).any(axis=2)
    inside = np.zeros_like(changed)
    for f in figures:
        assert f.coverage[0].any() and f.coverage[-1].any() and f.coverage[:, 0].any() and f.coverage[:, -1].any()
        x, y, w, h = (int(v) for v in f.bbox)
        assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
        inside[y : y + h, x : x + w] = True
        rows, cols = np.nonzero(changed[y : y + h, x : x + w])
        assert rows.min() <= 1 and cols.min() <= 1 and rows.max() >= h - 2 and cols.max() >= w - 2
        assert changed[y : y + h, x : x + w].sum() >= 0.9 * np.count_nonzero(f.coverage >= 0.5)
    assert not (changed & ~inside).any()


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("size", [64, SIZE])
def test_figures_never_overlap_and_each_holds_more_than_a_grid_cell(seed, size):
    """Frames at least the margin apart, their centres' top-to-bottom order clear, and the short
    side of every frame wider than a cell of an 8x8 grid, so a cell centre always lies inside."""
    figures = photos._sample_figures(np.random.default_rng(seed), size)
    assert 1 <= len(figures) <= 4
    centres = (np.arange(8) + 0.5) * size / 8
    for i, a in enumerate(figures):
        assert min(a.w, a.h) > size / 8 and max(a.w, a.h) <= 0.36 * size
        x, y, w, h = a.bbox
        assert ((centres >= x) & (centres <= x + w)).any() and ((centres >= y) & (centres <= y + h)).any()
        for b in figures[i + 1 :]:
            gap = photos.MARGIN * size
            assert abs(a.cx - b.cx) >= (a.w + b.w) / 2 + gap or abs(a.cy - b.cy) >= (a.h + b.h) / 2 + gap
            assert abs(a.cy - b.cy) >= photos.MIN_Y_GAP * size


def test_polygons_outline_the_figures_in_their_boxes(photo_data):
    for split in SPLITS:
        instances = coco(photo_data / "annotations" / f"instances_{split}.json")
        for ann in instances.anns.values():
            x, y, w, h = ann["bbox"]
            points = np.array(ann["segmentation"][0]).reshape(-1, 2)
            assert np.all(points >= [x, y]) and np.all(points <= [x + w, y + h])
            # pycocotools rasterises the polygon to about the drawn area (the sum of the coverage).
            assert abs(instances.annToMask(ann).sum() - ann["area"]) <= 0.1 * ann["area"] + 10


@pytest.mark.parametrize("seed", range(12))
def test_figures_stand_out_from_the_ground_around_them(seed):
    """The fill keeps its distance from most of the ground just around the figure: measured on
    the image, with the figure's inner pixels (their shading averages out) against the bare ground."""
    split = SPLITS[seed % 3]
    image, _, _ = photos._sample_image(np.random.default_rng(seed), SIZE, photos=photos.PHOTOS[split])
    rng = np.random.default_rng(seed)
    bare = photos.ground(rng, SIZE, photos.PHOTOS[split]).astype(float)
    pixels = np.asarray(image, dtype=float)
    for f in photos._sample_figures(rng, SIZE):
        inside = np.zeros((SIZE, SIZE), dtype=bool)
        inside[f.y : f.y + f.h, f.x : f.x + f.w] = f.coverage > 0
        full = np.zeros_like(inside)
        full[f.y : f.y + f.h, f.x : f.x + f.w] = f.coverage == 1
        ring = np.zeros_like(inside)
        for dy, dx in np.ndindex(5, 5):
            ring |= np.roll(inside, (dy - 2, dx - 2), axis=(0, 1))
        fill = pixels[full].mean(axis=0)
        contrast = np.percentile(np.linalg.norm(bare[ring & ~inside] - fill, axis=1), 25)
        assert contrast >= 0.8 * photos._MIN_CONTRAST


def test_captions_name_every_figure_once_by_kind(photo_data):
    figures_per_image = Counter()
    for split in SPLITS:
        captions = json.loads((photo_data / "annotations" / f"captions_{split}.json").read_text())
        texts = {image["id"]: [] for image in captions["images"]}
        for ann in captions["annotations"]:
            texts[ann["image_id"]].append(ann["caption"])
        for image_id, objects in drawn(photo_data, split).items():
            figures_per_image[len(objects)] += 1
            expected = Counter(kind for kind, _ in objects)
            for text in texts[image_id]:
                assert len(tokenize(text)) <= 20, text
                assert named(text) == expected, text
            top_down = [kind for kind, (_, y, _, h) in sorted(objects, key=lambda o: o[1][1] + o[1][3] / 2)]
            assert kinds_in_order(texts[image_id][0]) == list(dict.fromkeys(top_down))  # grouped, topmost first
            if len(objects) > 1:
                assert kinds_in_order(texts[image_id][3]) == top_down
                assert kinds_in_order(texts[image_id][4]) == top_down[::-1]
            assert len(set(texts[image_id])) == 5
    assert set(figures_per_image) == {1, 2, 3, 4}


def test_category_words_are_the_only_mapped_caption_words_and_plurals_score(photo_data):
    """The grounding scorer maps caption words to categories by name and plural: the captions'
    mapped words are exactly the kinds and the plurals used, and a plural counts as its kind."""
    mapping = coco_category_words(photos.CATEGORIES)
    assert {plural: mapping[plural] for plural in PLURAL_KINDS} == PLURAL_KINDS
    data = json.loads((photo_data / "dataset_photos.json").read_text())
    words = {t for image in data["images"] for s in image["sentences"] for t in s["tokens"]}
    assert words & set(photos.CATEGORIES) == set(photos.CATEGORIES)
    assert words & set(mapping) <= set(photos.CATEGORIES) | set(PLURAL_KINDS)
    assert words & set(PLURAL_KINDS)
    # Not the other families' words: no colours, sizes, grid places or their headings.
    assert not words & {"red", "white", "large", "small", "left", "right", "objects", "scene", "circle", "star"}
    boxes = [Box("heart", 48, 48, 16, 16), Box("moon", 0, 0, 16, 16)]
    alphas = np.zeros((3, 16))
    alphas[1, 15] = 1.0  # "hearts" looks at the bottom-right cell, inside a heart's box
    alphas[2, 15] = 1.0  # "moon" looks there too: a miss
    sample = GroundingSample(["two", "hearts", "moon"], alphas, (4, 4), (64, 64), boxes)
    scores = grounding_scores([sample], mapping)
    assert scores["grounded_words"] == 2 and scores["pointing_game"] == 0.5


def test_cli_kind_photos_and_its_size_error(tmp_path, capsys):
    args = ["--train", "3", "--val", "1", "--test", "1", "--size", "64"]
    assert main(["data", "synth", "--kind", "photos", "--out", str(tmp_path / "p"), *args]) == 0
    assert "wrote 5 photos images" in capsys.readouterr().out
    instances = json.loads((tmp_path / "p" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in instances["categories"]] == list(photos.CATEGORIES)
    assert (tmp_path / "p" / "dataset_photos.json").is_file()
    assert main(["data", "synth", "--kind", "photos", "--out", str(tmp_path / "x"), "--size", "48"]) == 2
    assert capsys.readouterr().err.startswith("error: size must be at least 64")


def test_the_model_trains_on_it(photo_data, tmp_path):
    cli = cli_main(
        ["fit", "--data.data_dir", str(photo_data), *tiny_model(), "--trainer.fast_dev_run", "true",
         "--trainer.default_root_dir", str(tmp_path)]
    )  # fmt: skip
    assert cli.trainer.state.finished
    assert all(kind in cli.datamodule.vocab for kind in photos.CATEGORIES)
