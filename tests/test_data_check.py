"""`captioner data check`: what training would see, named; exit 2 where training could not start."""

from __future__ import annotations

import json

import pytest

from captioner.cli import main
from captioner.data.check import CheckSettings, check, duplicate_groups
from captioner.data.collection import CaptionCollection

from .formats import collection, write_coco, write_csv


def run_check(capsys, *args) -> tuple[int, dict]:
    code = main(["data", "check", *map(str, args), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_check_reports_a_clean_collection_and_exits_0(tmp_path, capsys):
    path = write_coco(tmp_path, collection(12))
    code, report = run_check(capsys, path)
    assert code == 0 and report["problems"] == []
    assert report["format"] == "coco"
    assert report["images"] == {
        "found": 12,
        "missing": 0,
        "missing_examples": [],
        "unreadable": 0,
        "unreadable_examples": [],
        "decoded": False,
    }
    assert {role: s["images"] for role, s in report["splits"].items()} == {"train": 8, "val": 2, "test": 2}
    assert report["splits"]["train"]["captions_per_image"] == {"min": 2, "mean": 2.0, "max": 2}
    assert report["split_made"] is None and report["duplicate_images"]["groups"] == 0


def test_check_counts_and_names_what_training_would_skip_or_stop_on(tmp_path, capsys):
    path = write_csv(tmp_path, collection(20, splits=False))
    with path.open("a", encoding="utf-8") as table:
        table.write("gone.png,a picture that is not there\nimg00.png,...\n")
    (tmp_path / "Images" / "img01.png").write_bytes(b"")  # empty: unreadable without decoding
    (tmp_path / "Images" / "img03.png").write_bytes((tmp_path / "Images" / "img02.png").read_bytes())
    code, report = run_check(capsys, path, "--max-caption-len", "5", "--min-word-count", "3")
    assert code == 2
    assert report["problems"] == ["1 listed images are missing; set data.skip_missing_images true"]
    assert report["images"]["missing"] == 1 and report["images"]["missing_examples"][0].endswith("gone.png")
    assert report["images"]["unreadable"] == 1 and "img01.png: empty file" in report["images"]["unreadable_examples"][0]
    assert [sorted(p.rsplit("/", 1)[1] for p in g) for g in report["duplicate_images"]["examples"]] == [
        ["img02.png", "img03.png"]
    ]
    assert any("skipped 1 empty or punctuation-only captions" in line for line in report["skipped"])
    assert "held out of one pile" in report["split_made"]
    captions = report["captions"]
    assert captions["train_captions"] == report["splits"]["train"]["captions"]
    # "a <colour> square, number <i>" is 6 tokens, over 5; "ein <colour>es Quadrat Nr <i> é" is 6 too.
    assert captions["over_long"] == captions["train_captions"]
    # Each number is seen twice, below min_word_count 3: the coverage says how many tokens that costs.
    assert 0.5 < captions["token_coverage"] < 1
    assert captions["length_words"]["p50"] == 6


def test_check_decode_names_a_file_that_is_not_an_image(tmp_path, capsys):
    path = write_coco(tmp_path, collection(12))
    (tmp_path / "train" / "img00.png").write_text("not a png")
    _, plain = run_check(capsys, path)
    assert plain["images"]["unreadable"] == 0
    _, decoded = run_check(capsys, path, "--decode")
    assert decoded["images"]["unreadable"] == 1 and "img00.png" in decoded["images"]["unreadable_examples"][0]


def test_check_takes_a_recipes_settings_and_names_images_in_two_splits(tmp_path, capsys):
    path = write_coco(tmp_path, collection(12))
    # The same file listed by the val split as well: a test image the model trained on.
    captions = json.loads((tmp_path / "annotations" / "captions_val.json").read_text())
    captions["images"].append({"id": 99, "file_name": "../train/img00.png"})
    (tmp_path / "annotations" / "captions_val.json").write_text(json.dumps(captions))
    code, report = run_check(capsys, path, "--config", "small_scratch")
    assert code == 2 and report["images_in_two_splits"] == 1
    assert report["captions"]["max_caption_len"] == 20  # small_scratch's data.max_caption_len


def test_check_human_output_has_one_line_per_finding(tmp_path, capsys):
    assert main(["data", "check", str(write_csv(tmp_path, collection(10, splits=False)))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"data: {tmp_path / 'captions.csv'}: csv (captions.csv, columns 'image' and 'caption')"
    assert any(line.startswith("vocabulary: ") for line in out) and out[-1] == "training can start"


def test_check_on_nothing_recognisable_is_one_error_line(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no caption data recognised")


def test_duplicates_are_told_by_content_not_size(tmp_path):
    files = {name: tmp_path / name for name in ("a", "b", "c", "d")}
    files["a"].write_bytes(b"x" * 70000)
    files["b"].write_bytes(b"x" * 70000)
    files["c"].write_bytes(b"x" * 69999 + b"y")  # same size and head, other bytes
    files["d"].write_bytes(b"z")
    sizes = {p: p.stat().st_size for p in files.values()}
    assert duplicate_groups(sorted(files.values()), sizes) == [[files["a"], files["b"]]]


@pytest.mark.parametrize("min_count, vocabulary", [(1, 4 + 3), (2, 4 + 1)])
def test_vocabulary_matches_the_data_modules(tmp_path, min_count, vocabulary):
    items = {"img00.png": (("a cat", "a dog"), ""), "img01.png": (("a hen",), ""), "img02.png": (("x",), "")}
    items |= {f"img{i:02d}.png": (("x",), "") for i in range(3, 10)}
    data = CaptionCollection(write_csv(tmp_path, items))
    report = check(data, CheckSettings(min_word_count=min_count, max_caption_len=20))
    from captioner.vocab import Vocabulary

    built = Vocabulary.build((c for r in data.records("train") for c in r.captions), min_count=min_count)
    assert report["captions"]["vocabulary"] == len(built)
