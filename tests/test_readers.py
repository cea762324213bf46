import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.data import Box, DataWarning, ImageRecord, read_boxes, read_coco, read_karpathy
from captioner.errors import CaptionerError


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def write_coco(root: Path, captions: dict[int, list[str]], *, missing: tuple[int, ...] = ()) -> Path:
    """`root/images/<id>.png` for every id not in `missing`, and `root/captions.json`; returns the json path."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in captions]
    annotations = [
        {"id": n, "image_id": i, "caption": c}
        for n, (i, c) in enumerate(((i, c) for i, cs in captions.items() for c in cs), start=1)
    ]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in captions:
        if i not in missing:
            write_image(root / "images" / f"{i}.png")
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return path


def test_read_coco_groups_captions_by_image_sorted_by_id(tmp_path):
    path = write_coco(tmp_path, {7: ["A dog.", "a brown dog"], 3: ["a cat"]})
    records = read_coco(tmp_path / "images", path, "val")
    assert records == [
        ImageRecord(3, tmp_path / "images" / "3.png", ("a cat",), "val"),
        ImageRecord(7, tmp_path / "images" / "7.png", ("A dog.", "a brown dog"), "val"),
    ]


def test_read_coco_keeps_non_ascii_and_skips_empty_captions_with_one_counted_warning(tmp_path):
    path = write_coco(tmp_path, {1: ["Ein Mädchen läuft", "   ", "...", "собака"], 2: ["!?", "a cat"]})
    with pytest.warns(DataWarning, match=r"skipped 3 empty or punctuation-only captions") as caught:
        records = read_coco(tmp_path / "images", path, "train")
    assert len([w for w in caught if issubclass(w.category, DataWarning)]) == 1
    assert [r.captions for r in records] == [("Ein Mädchen läuft", "собака"), ("a cat",)]


def test_read_coco_image_info_file_without_annotations(tmp_path):
    write_image(tmp_path / "images" / "5.png")
    path = tmp_path / "image_info.json"
    path.write_text(json.dumps({"images": [{"id": 5, "file_name": "5.png"}]}))
    assert read_coco(tmp_path / "images", path, "test")[0].captions == ()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{ broken", "not valid JSON"),
        ("[1, 2]", "top level must be a JSON object"),
        ('{"annotations": []}', '"images" list'),
        ('{"images": [{"id": 1}]}', '"file_name"'),
        ('{"images": [{"id": 1, "file_name": "1.png"}, {"id": 1, "file_name": "2.png"}]}', "appears twice"),
        ('{"images": [{"id": 1, "file_name": "1.png"}], "annotations": [{"image_id": 1}]}', '"caption"'),
        (
            '{"images": [{"id": 1, "file_name": "1.png"}], "annotations": [{"image_id": 9, "caption": "x"}]}',
            "unknown image id 9",
        ),
    ],
)
def test_read_coco_malformed_file_names_file_and_problem(tmp_path, content, message):
    (tmp_path / "images").mkdir()
    path = tmp_path / "captions_val.json"
    path.write_text(content)
    with pytest.raises(CaptionerError, match=message) as info:
        read_coco(tmp_path / "images", path, "val")
    assert str(path) in str(info.value)


def test_read_coco_missing_annotation_file_and_missing_image_folder(tmp_path):
    with pytest.raises(CaptionerError, match="does not exist") as info:
        read_coco(tmp_path, tmp_path / "nope.json", "val")
    assert "nope.json" in str(info.value)
    path = write_coco(tmp_path, {1: ["a cat"]})
    with pytest.raises(CaptionerError, match="image folder .*elsewhere does not exist"):
        read_coco(tmp_path / "elsewhere", path, "val")


def test_read_coco_missing_images_error_or_skip_with_count(tmp_path):
    path = write_coco(tmp_path, {1: ["a"], 2: ["b"], 3: ["c"], 4: ["d"]}, missing=(2, 4))
    with pytest.raises(CaptionerError, match=r"2 of 4 images listed in .* are missing") as info:
        read_coco(tmp_path / "images", path, "train")
    assert "skip_missing_images" in str(info.value) and "2.png" in str(info.value)
    with pytest.warns(DataWarning, match=r"skipping 2 of 4 images"):
        records = read_coco(tmp_path / "images", path, "train", skip_missing=True)
    assert [r.image_id for r in records] == [1, 3]


def karpathy_file(tmp_path: Path, images: list[dict]) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"dataset": "test", "images": images}), encoding="utf-8")
    return path


def test_read_karpathy_coco_style_with_restval(tmp_path):
    for name in ("train2014/a.jpg", "val2014/b.jpg", "val2014/c.jpg"):
        write_image(tmp_path / name)
    path = karpathy_file(
        tmp_path,
        [
            {
                "filepath": "train2014",
                "filename": "a.jpg",
                "cocoid": 10,
                "imgid": 0,
                "split": "train",
                "sentences": [{"raw": "A cat.", "tokens": ["a", "cat"]}, {"raw": " ", "tokens": []}],
            },
            {
                "filepath": "val2014",
                "filename": "b.jpg",
                "cocoid": 11,
                "imgid": 1,
                "split": "restval",
                "sentences": [{"raw": "a dog"}],
            },
            {
                "filepath": "val2014",
                "filename": "c.jpg",
                "cocoid": 12,
                "imgid": 2,
                "split": "test",
                "sentences": [{"tokens": ["a", "bird"]}],
            },
        ],
    )
    with pytest.warns(DataWarning, match="skipped 1 empty"):
        splits = read_karpathy(path, tmp_path)
    assert sorted(splits) == ["test", "train"]
    assert splits["train"] == [
        ImageRecord(10, tmp_path / "train2014" / "a.jpg", ("A cat.",), "train"),
        ImageRecord(11, tmp_path / "val2014" / "b.jpg", ("a dog",), "train"),
    ]
    # A sentence with only tokens falls back to the joined tokens.
    assert splits["test"][0].captions == ("a bird",)


def test_read_karpathy_flickr_style_uses_imgid_and_no_filepath(tmp_path):
    write_image(tmp_path / "1000.jpg")
    path = karpathy_file(tmp_path, [{"filename": "1000.jpg", "imgid": 0, "split": "val", "sentences": [{"raw": "x"}]}])
    assert read_karpathy(path, tmp_path) == {"val": [ImageRecord(0, tmp_path / "1000.jpg", ("x",), "val")]}


def test_read_karpathy_errors(tmp_path):
    write_image(tmp_path / "a.jpg")
    bad = karpathy_file(tmp_path, [{"filename": "a.jpg", "split": "train", "sentences": []}])
    with pytest.raises(CaptionerError, match='"cocoid" or "imgid"'):
        read_karpathy(bad, tmp_path)
    twice = karpathy_file(tmp_path, [{"filename": "a.jpg", "imgid": 1, "split": "train"}] * 2)
    with pytest.raises(CaptionerError, match="appears twice"):
        read_karpathy(twice, tmp_path)
    missing = karpathy_file(tmp_path, [{"filename": "gone.jpg", "imgid": 1, "split": "train"}])
    with pytest.raises(CaptionerError, match="1 of 1 images"):
        read_karpathy(missing, tmp_path)
    with pytest.warns(DataWarning, match="skipping 1 of 1"):
        assert read_karpathy(missing, tmp_path, skip_missing=True) == {}
    with pytest.raises(CaptionerError, match="image folder"):
        read_karpathy(missing, tmp_path / "nowhere")
    (tmp_path / "dataset.json").write_text('{"images": 3}')
    with pytest.raises(CaptionerError, match='"images" list'):
        read_karpathy(tmp_path / "dataset.json", tmp_path)


def test_read_boxes(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"}],
                "categories": [{"id": 5, "name": "dog"}, {"id": 6, "name": "cat"}],
                "annotations": [
                    {"id": 1, "image_id": 1, "category_id": 6, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0.5, 0, 10, 20], "area": 200, "iscrowd": 0},
                ],
            }
        )
    )
    assert read_boxes(path) == {1: [Box("cat", 1, 2, 3, 4), Box("dog", 0.5, 0, 10, 20)], 2: []}
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.png"}],
                "categories": [],
                "annotations": [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}],
            }
        )
    )
    with pytest.raises(CaptionerError, match='known "category_id"'):
        read_boxes(path)


def test_both_readers_agree_on_the_synthetic_set(synth_data):
    karpathy = read_karpathy(synth_data / "dataset_shapes.json", synth_data)
    for split in ("train", "val", "test"):
        coco = read_coco(synth_data / split, synth_data / "annotations" / f"captions_{split}.json", split)
        assert coco == karpathy[split]
        assert all(len(r.captions) == 5 and r.path.is_file() for r in coco)
        boxes = read_boxes(synth_data / "annotations" / f"instances_{split}.json")
        assert sorted(boxes) == [r.image_id for r in coco]
        assert all(1 <= len(b) <= 3 for b in boxes.values())
