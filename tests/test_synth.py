import contextlib
import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from captioner.cli import main
from captioner.data import glyphs, photos, scenes, synth
from captioner.evaluation.grounding import coco_category_words
from captioner.vocab import tokenize

from .conftest import SYNTH_COUNTS, SYNTH_SIZE

SPLITS = ("train", "val", "test")
PHRASE = re.compile(r"\b(red|green|blue|yellow) (circle|square|triangle)\b")


def coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def nearest_colour(rgb: np.ndarray) -> str:
    return min(synth.COLOUR_WORDS, key=lambda name: np.abs(np.array(synth.COLOUR_WORDS[name]) - rgb).sum())


def drawn_objects(data: Path, split: str) -> dict[int, list[tuple[str, str, float, float, float]]]:
    """image id -> [(colour read from the pixel at the box centre, category, cx, cy, side)]."""
    instances = coco(data / "annotations" / f"instances_{split}.json")
    objects = {}
    for image_id in instances.getImgIds():
        pixels = np.asarray(Image.open(data / split / instances.imgs[image_id]["file_name"])).astype(int)
        found = []
        for ann in instances.imgToAnns[image_id]:
            x, y, w, h = ann["bbox"]
            cx, cy = x + w / 2, y + h / 2
            colour = nearest_colour(pixels[int(cy), int(cx)])
            found.append((colour, instances.cats[ann["category_id"]]["name"], cx, cy, w))
        objects[image_id] = found
    return objects


def test_pycocotools_reads_every_split_with_five_captions_per_image(synth_data):
    all_ids = []
    for split in SPLITS:
        captions = coco(synth_data / "annotations" / f"captions_{split}.json")
        ids = captions.getImgIds()
        assert len(ids) == SYNTH_COUNTS[split]
        all_ids += ids
        for image_id in ids:
            info = captions.imgs[image_id]
            assert info["file_name"] == f"{image_id:012d}.png"
            assert Image.open(synth_data / split / info["file_name"]).size == (SYNTH_SIZE, SYNTH_SIZE)
            assert len(captions.imgToAnns[image_id]) == synth.CAPTIONS_PER_IMAGE
    assert len(set(all_ids)) == len(all_ids)  # unique across splits


def test_instances_have_categories_boxes_inside_images_and_polygons(synth_data):
    for split in SPLITS:
        instances = coco(synth_data / "annotations" / f"instances_{split}.json")
        assert [instances.cats[i]["name"] for i in sorted(instances.cats)] == list(synth.CATEGORIES)
        for ann in instances.anns.values():
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= SYNTH_SIZE and y + h <= SYNTH_SIZE
            assert 0.2 * SYNTH_SIZE - 0.01 <= w <= 0.35 * SYNTH_SIZE + 0.01
            assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h + 1  # + rounding
            points = np.array(ann["segmentation"][0]).reshape(-1, 2)
            assert len(points) >= 3
            assert np.all(points >= [x - 0.01, y - 0.01]) and np.all(points <= [x + w + 0.01, y + h + 0.01])
            # pycocotools can rasterise the polygon; it covers roughly the stated area.
            assert abs(instances.annToMask(ann).sum() - ann["area"]) <= 0.15 * ann["area"] + 10


def test_captions_match_what_is_drawn(synth_data):
    counts = Counter()
    for split in SPLITS:
        captions = coco(synth_data / "annotations" / f"captions_{split}.json")
        for image_id, objects in drawn_objects(synth_data, split).items():
            texts = [a["caption"] for a in captions.imgToAnns[image_id]]
            canonical = PHRASE.findall(texts[0])
            # The pixel colour at each box centre and the box category are exactly what is named.
            assert Counter(canonical) == Counter((colour, kind) for colour, kind, *_ in objects), texts[0]
            for text in texts:
                assert all(f"{colour} {kind}" in text for colour, kind, *_ in objects), text
            counts[len(objects)] += 1
            if len(objects) == 1:
                _, _, cx, cy, _ = objects[0]
                where = synth.GRID_PHRASES[int(cy * 3 // SYNTH_SIZE)][int(cx * 3 // SYNTH_SIZE)]
                assert texts[0].endswith(where)
            elif len(objects) == 2:
                horizontal = " to the left of " in texts[0]
                assert horizontal or " above " in texts[0]
                axis = 2 if horizontal else 3  # index of cx or cy
                first, second = sorted(objects, key=lambda o: o[axis])
                assert [first[:2], second[:2]] == canonical
                # Clearly apart along the named axis, clearly less along the other one.
                major, minor = second[axis] - first[axis], abs(second[5 - axis] - first[5 - axis])
                assert major >= (first[4] + second[4]) / 2 and major >= 2 * minor
            else:
                assert [o[:2] for o in sorted(objects, key=lambda o: o[2])] == canonical
    assert set(counts) == {1, 2, 3}


@pytest.mark.parametrize("seed", range(40))
def test_layouts_never_overlap_and_stay_inside(seed):
    size = 96
    rng = np.random.default_rng(seed)
    shapes = synth._sample_shapes(rng, size)
    for i, a in enumerate(shapes):
        assert a.side / 2 <= a.cx <= size - a.side / 2 and a.side / 2 <= a.cy <= size - a.side / 2
        for b in shapes[i + 1 :]:
            reach = (a.side + b.side) / 2
            assert abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach
    assert len(synth.captions_for(shapes, size)) == synth.CAPTIONS_PER_IMAGE


def test_karpathy_file_mirrors_the_coco_files(synth_data):
    karpathy = json.loads((synth_data / "dataset_shapes.json").read_text())["images"]
    by_id = {entry["cocoid"]: entry for entry in karpathy}
    for split in SPLITS:
        captions = coco(synth_data / "annotations" / f"captions_{split}.json")
        for image_id in captions.getImgIds():
            entry = by_id[image_id]
            assert (entry["split"], entry["filepath"], entry["filename"]) == (
                split,
                split,
                captions.imgs[image_id]["file_name"],
            )
            assert [s["raw"] for s in entry["sentences"]] == [a["caption"] for a in captions.imgToAnns[image_id]]
            assert all(s["tokens"] == tokenize(s["raw"]) for s in entry["sentences"])


def test_word_tables_cover_the_captions(synth_data):
    words = {
        t
        for e in json.loads((synth_data / "dataset_shapes.json").read_text())["images"]
        for s in e["sentences"]
        for t in s["tokens"]
    }
    assert set(synth.CATEGORIES) <= words and set(synth.COLOUR_WORDS) <= words
    object_words = coco_category_words(synth.CATEGORIES)  # what the grounding scores look up
    assert {object_words[w] for w in words if w in object_words} == set(synth.CATEGORIES)
    assert object_words["triangles"] == "triangle"


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("generate", "kwargs"),
    [
        (synth.generate, dict(train=6, val=2, test=2, size=48)),
        (glyphs.generate, dict(train=6, val=2, test=2, size=48)),
        (scenes.generate, dict(train=5, val=2, test=2, size=64)),
        (photos.generate, dict(train=4, val=2, test=2, size=64)),
    ],
    ids=["shapes", "glyphs", "scenes", "photos"],
)
def test_same_seed_same_bytes_other_seed_other_images(generate, kwargs, tmp_path):
    first = tree_bytes(generate(tmp_path / "a", seed=3, **kwargs))
    assert first == tree_bytes(generate(tmp_path / "b", seed=3, **kwargs))
    other = tree_bytes(generate(tmp_path / "c", seed=4, **kwargs))
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first if name.endswith(".png"))


def test_generate_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="at least 32"):
        synth.generate(tmp_path, train=1, size=16)
    with pytest.raises(ValueError, match="train >= 1"):
        synth.generate(tmp_path, train=0)


def test_cli_data_synth_in_process(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "synth", "--out", str(out), "--train", "3", "--val", "1", "--test", "1", "--size", "40"]) == 0
    assert "wrote 5 shapes images" in capsys.readouterr().out
    assert len(list((out / "train").glob("*.png"))) == 3
    assert main(["data", "synth", "--out", str(out), "--size", "8"]) == 2
    assert capsys.readouterr().err.startswith("error: size must be at least 32")


def test_cli_data_synth_subprocess(tmp_path):
    out = tmp_path / "shapes"
    command = [
        sys.executable,
        "-m",
        "captioner.cli",
        "data",
        "synth",
        "--out",
        str(out),
        "--train",
        "2",
        "--val",
        "1",
        "--test",
        "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "annotations" / "instances_test.json").is_file() and (out / "dataset_shapes.json").is_file()
