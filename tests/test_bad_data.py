"""Bad input in the text forms is named (file and line), never swallowed: an error where
training cannot go on, a counted warning where it can."""

from __future__ import annotations

import pytest

from captioner.cli import main
from captioner.data.collection import CaptionCollection
from captioner.data.records import DataWarning
from captioner.errors import CaptionerError

from .formats import collection, write_csv, write_image


def table(root, text: str, *, images=("a.png", "b.png", "c.png", "d.png"), data: bytes | None = None):
    for image in images:
        write_image(root / image, f"img{len(image):02d}")
    path = root / "captions.csv"
    if data is None:
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def read_all(path, **settings):
    data = CaptionCollection(path, **settings)
    return {role: data.records(role) for role in ("train", "val", "test")}


def all_records(path, **settings):
    return sorted((r for records in read_all(path, **settings).values() for r in records), key=lambda r: r.image_id)


def test_a_table_without_the_image_column_lists_the_columns_it_has(tmp_path):
    path = table(tmp_path, "picture,caption\na.png,a cat\n")
    with pytest.raises(
        CaptionerError,
        match=r"captions.csv line 1 has no image column \(its columns: 'picture', "
        r"'caption'\); name the image column one of image, file_name",
    ):
        CaptionCollection(path, format="csv").records("train")
    path = table(tmp_path, "image,words\na.png,a cat\n")
    with pytest.raises(CaptionerError, match=r"has no caption column \(its columns: 'image', 'words'\)"):
        CaptionCollection(path, format="csv").records("train")


def test_a_row_naming_a_missing_image_is_named_with_its_line_or_skipped_with_a_count(tmp_path):
    path = table(tmp_path, "image,caption\na.png,a cat\nb.png,a dog\ngone.png,a cow\nc.png,a hen\nd.png,a pig\n")
    with pytest.raises(
        CaptionerError,
        match=r"1 of 5 images listed in .*captions.csv are missing .*gone.png "
        r"\(captions.csv line 4\).*skip_missing_images",
    ):
        read_all(path)
    with pytest.warns(DataWarning, match="skipping 1 of 5 images listed in .*captions.csv"):
        records = all_records(path, skip_missing=True)
    assert sorted(r.path.name for r in records) == ["a.png", "b.png", "c.png", "d.png"]


def test_blank_captions_are_counted_not_trained_on(tmp_path):
    path = table(tmp_path, 'image,caption\na.png,a cat\na.png,""\nb.png,   \nb.png,a dog\nc.png,!!\nd.png,a pig\n')
    with pytest.warns(DataWarning, match=r"skipped 3 empty or punctuation-only captions in .*captions.csv"):
        records = all_records(path)
    assert [r.captions for r in records] == [("a cat",), ("a dog",), (), ("a pig",)]


def test_a_byte_order_mark_quoted_commas_and_line_breaks_are_read(tmp_path):
    text = 'image,caption\r\na.png,"a cat, on a mat"\r\nb.png,"a dog\r\nin two lines"\r\nc.png,a hen\r\nd.png,a pig\r\n'
    path = table(tmp_path, "", data=b"\xef\xbb\xbf" + text.encode())
    records = all_records(path)
    assert [r.captions for r in records[:2]] == [("a cat, on a mat",), ("a dog\r\nin two lines",)]


def test_unquoted_commas_in_a_last_caption_column_are_kept(tmp_path):
    path = table(tmp_path, "image,caption\na.png,a cat, a hat, a mat\nb.png,b\nc.png,c\nd.png,d\n")
    assert all_records(path)[0].captions == ("a cat, a hat, a mat",)


def test_a_row_with_too_few_fields_names_its_line(tmp_path):
    path = table(tmp_path, "image,caption,split\na.png,a cat,train\nb.png,a dog\n")
    with pytest.raises(CaptionerError, match=r"captions.csv line 3 has 2 field\(s\), the header 3"):
        read_all(path)


def test_mixed_encodings_name_the_first_line_that_is_not_utf8(tmp_path):
    data = "image,caption\na.png,a café\n".encode() + "b.png,a café\nc.png,a crêpe\n".encode("cp1252")
    path = table(tmp_path, "", data=data)
    with pytest.raises(CaptionerError, match=r"captions.csv line 3 is not UTF-8 \(byte 0xe9\); 2 line\(s\) are not"):
        read_all(path)


def test_utf16_with_its_mark_is_read(tmp_path):
    path = table(tmp_path, "", data="image\tcaption\na.png\tun café\nb.png\tb\nc.png\tc\nd.png\td\n".encode("utf-16"))
    assert all_records(path)[0].captions == ("un café",)


def test_an_image_in_two_splits_names_both_lines(tmp_path):
    path = table(tmp_path, "image,caption,split\na.png,a cat,train\nb.png,a dog,val\na.png,a cat again,test\n")
    with pytest.raises(
        CaptionerError,
        match=r"image .*a.png is in split 'train' \(.*captions.csv line 2\) and in "
        r"split 'test' \(.*captions.csv line 4\); an image belongs in one split only",
    ):
        read_all(path)


def test_a_malformed_flickr8k_line_and_images_in_no_split_list(tmp_path):
    folder = tmp_path / "Flickr8k_text"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        write_image(tmp_path / "Images" / name, "img00")
    token = folder / "Flickr8k.token.txt"
    token.write_text("a.jpg#0\ta cat\nb.jpg a dog\n", encoding="utf-8")
    with pytest.raises(CaptionerError, match=r"Flickr8k.token.txt line 2 is not 'NAME.jpg#N<TAB>caption'"):
        read_all(tmp_path)
    token.write_text("a.jpg#0\ta cat\nb.jpg#0\ta dog\nc.jpg#0\ta hen\nd.jpg#0\ta pig\n", encoding="utf-8")
    (folder / "Flickr_8k.trainImages.txt").write_text("a.jpg\n")
    (folder / "Flickr_8k.devImages.txt").write_text("b.jpg\n")
    (folder / "Flickr_8k.testImages.txt").write_text("d.jpg\n")
    with pytest.warns(DataWarning, match="leaving out 1 images of .*token.txt that no split list names"):
        data = CaptionCollection(tmp_path)
        assert [r.path.name for r in data.records("train")] == ["a.jpg"]
    (folder / "Flickr_8k.testImages.txt").write_text("a.jpg\n")
    with pytest.raises(CaptionerError, match=r"testImages.txt line 1: image a.jpg is also in the 'train' split list"):
        CaptionCollection(tmp_path).records("train")


def test_imagefolder_and_sidecar_name_their_problems(tmp_path):
    write_image(tmp_path / "a.png", "img00")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a cat"}\n{"file_name": "a.png"\n')
    with pytest.raises(CaptionerError, match=r"metadata.jsonl line 2 is not valid JSON"):
        read_all(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "label": "cat"}\n')
    with pytest.raises(
        CaptionerError,
        match=r"metadata.jsonl line 1 has no caption column \(its columns: "
        r"'file_name', 'label'\)",
    ):
        read_all(tmp_path)
    side = tmp_path / "side"
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        write_image(side / name, "img01")
    for name in ("a", "b", "c", "d"):
        (side / f"{name}.txt").write_text(f"a {name}\n\n")
    with pytest.warns(DataWarning, match=r"leaving out 1 images under .*side without a caption file beside them"):
        records = all_records(side)
    assert [r.captions for r in records] == [("a a",), ("a b",), ("a c",), ("a d",)]


def test_on_the_command_line_bad_data_is_one_line_and_exit_2(tmp_path, capsys):
    path = table(tmp_path, "picture,caption\na.png,a cat\n")
    args = ["train", "fit", "--config", "small_scratch", "--data.data_dir", str(path), "--trainer.logger", "false"]
    assert main([*args, "--trainer.default_root_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert "no caption data recognised" in err  # auto finds no image column, so no table
    assert not (tmp_path / "run").exists(), "nothing written for a run that could not start"


def test_no_split_file_is_written_when_the_draw_fails(tmp_path):
    from captioner.data.splits import Holdout

    table_path = write_csv(tmp_path / "data", collection(3, splits=False))
    split = tmp_path / "split.json"
    with pytest.raises(CaptionerError, match="cannot hold out"):
        CaptionCollection(table_path, holdout=Holdout(val=2, test=1), split_path=split).records("train")
    assert not split.exists()
