"""Every form a user keeps captions in reads to the same records, is recognised by
`data.format auto`, is split the same way when it is one pile, and trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.data.collection import CaptionCollection
from captioner.data.readers import READERS, reader_class
from captioner.data.splits import ROLES, Holdout, SplitFile
from captioner.errors import CaptionerError
from captioner.training.cli import cli_main

from .fixtures import NO_VALIDATION, QUIET, TINY_SETTINGS
from .formats import WRITERS, collection

PILE_FORMS = ("csv", "flickr8k", "imagefolder", "sidecar", "hf_saved")


def _needs(form: str) -> None:
    if form == "hf_saved":
        pytest.importorskip("datasets")


def signature(records) -> list[tuple[tuple[int, ...], tuple[str, ...], str]]:
    """What a record is, whatever its file is called: its image's first pixel (unique in the
    collection), its captions, its split."""
    out = []
    for record in records:
        with Image.open(record.path) as image:
            out.append((image.convert("RGB").getpixel((0, 0)), record.captions, record.split))
    return sorted(out)


def test_every_format_has_a_writer_here():
    assert set(WRITERS) == set(READERS)


@pytest.mark.parametrize("form", list(WRITERS))
def test_each_form_is_recognised_and_reads_the_same_records(form, tmp_path):
    _needs(form)
    items = collection()
    reference = CaptionCollection(WRITERS["coco"](tmp_path / "coco", items))
    path = WRITERS[form](tmp_path / form, items)
    data = CaptionCollection(path)
    assert data.format == form, data.found
    assert data.found.startswith(f"{path}: {form} (")
    for role in ROLES:
        assert signature(data.records(role)) == signature(reference.records(role)), role
        assert len(data.records(role)) == sum(1 for _, split in items.values() if split == role)
    # Named explicitly, the same.
    named = CaptionCollection(path, format=form)
    assert signature(named.records("val")) == signature(reference.records("val"))


def test_ids_are_unique_and_follow_the_image_paths(tmp_path):
    data = CaptionCollection(WRITERS["csv"](tmp_path, collection()))
    records = [r for role in ROLES for r in data.records(role)]
    ids = sorted(r.image_id for r in records)
    assert ids == list(range(1, len(records) + 1))
    assert [r.path.name for r in sorted(records, key=lambda r: r.image_id)] == sorted(r.path.name for r in records)


@pytest.mark.parametrize("form", PILE_FORMS)
def test_a_pile_is_split_over_images_the_same_in_every_form(form, tmp_path):
    _needs(form)
    items = collection(20, splits=False)
    reference = CaptionCollection(WRITERS["csv"](tmp_path / "csv", items), holdout=Holdout(val=0.2, test=3))
    data = CaptionCollection(WRITERS[form](tmp_path / form, items), holdout=Holdout(val=0.2, test=3))
    sizes = {role: len(data.records(role)) for role in ROLES}
    assert sizes == {"train": 13, "val": 4, "test": 3}
    if form != "hf_saved":  # its images are written out under new names
        for role in ROLES:
            assert signature(data.records(role)) == signature(reference.records(role))
    keys = [r.path for role in ROLES for r in data.records(role)]
    assert len(keys) == len(set(keys)) == 20, "an image in two splits"
    assert data.made is not None and "held out of one pile" in data.made.summary()


def test_the_draw_depends_on_seed_and_images_only():
    keys = [f"photos/{i}.jpg" for i in range(200)]
    holdout = Holdout(val=0.1, test=0.05, seed=3)
    drawn = holdout.draw(keys)
    assert drawn == holdout.draw(list(reversed(keys))), "row order must not matter"
    assert sorted(drawn.values()).count("val") == 20 and sorted(drawn.values()).count("test") == 10
    assert drawn != Holdout(val=0.1, test=0.05, seed=4).draw(keys)
    # Adding images moves few of the old ones: the rule ranks each image by its own hash.
    grown = holdout.draw([*keys, *(f"photos/new{i}.jpg" for i in range(10))])
    moved = sum(grown[k] != drawn[k] for k in keys)
    assert moved <= 4


@pytest.mark.parametrize("size", [-0.1, 1.5, "a", True])
def test_bad_holdout_sizes_are_refused(size):
    with pytest.raises(CaptionerError, match="data.holdout.val must be a fraction in"):
        Holdout(val=size)


def test_holding_out_everything_is_an_error(tmp_path):
    data = CaptionCollection(WRITERS["csv"](tmp_path, collection(3, splits=False)), holdout=Holdout(val=1, test=2))
    with pytest.raises(CaptionerError, match="cannot hold out 2 test, 1 val images from 3"):
        data.records("train")


def test_missing_val_split_is_held_out_of_train(tmp_path):
    items = {name: (caps, "test" if split == "test" else "train") for name, (caps, split) in collection(20).items()}
    data = CaptionCollection(WRITERS["imagefolder"](tmp_path, items), holdout=Holdout(val=3))
    assert len(data.records("test")) == sum(1 for _, s in items.values() if s == "test")
    assert len(data.records("val")) == 3
    assert len(data.records("train")) + 3 == sum(1 for _, s in items.values() if s == "train")
    assert not {r.path for r in data.records("val")} & {r.path for r in data.records("train")}
    assert data.made.drawn_from == "train"


def test_split_file_is_written_then_used_and_checked(tmp_path):
    items = collection(20, splits=False)
    table = WRITERS["csv"](tmp_path / "data", items)
    path = tmp_path / "run" / "split.json"
    first = CaptionCollection(table, split_path=path)
    made = {role: [r.path.name for r in first.records(role)] for role in ROLES}
    written = json.loads(path.read_text())
    assert written["holdout"] == {"val": 0.1, "test": 0.1, "seed": 0}
    assert {role: sorted(Path(k).name for k in keys) for role, keys in written["images"].items()} == {
        role: sorted(names) for role, names in made.items()
    }
    # Hand-moved in the file, the move is kept: the file is the split, not a cache of the rule.
    moved = written["images"]["test"].pop()
    written["images"]["train"].append(moved)
    path.write_text(json.dumps(written))
    again = CaptionCollection(table, split_path=path)
    assert Path(moved).name in [r.path.name for r in again.records("train")]
    with pytest.raises(CaptionerError, match=r"other data.holdout settings \(seed 0 -> 5\); delete it"):
        CaptionCollection(table, split_path=path, holdout=Holdout(seed=5)).records("train")
    assert not list(path.parent.glob(".*partial")), "no temporary file left behind"


def test_a_split_file_naming_an_image_twice_is_refused(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(
        json.dumps(
            {
                "holdout": {"val": 0.1, "test": 0.1, "seed": 0},
                "images": {"train": ["a.png"], "val": ["a.png"], "test": []},
            }
        )
    )
    with pytest.raises(CaptionerError, match="puts image a.png in both 'train' and 'val'"):
        SplitFile(path).read(Holdout())


def test_split_names_for_a_pile_are_refused(tmp_path):
    from captioner.data.splits import Split

    table = WRITERS["csv"](tmp_path, collection(10, splits=False))
    data = CaptionCollection(table, splits={"train": Split("train"), "val": Split("dev2"), "test": Split("test")})
    with pytest.raises(CaptionerError, match="data.val.name: the data at .* has no splits of its own"):
        data.records("val")


def test_auto_says_what_each_format_looks_for_when_nothing_fits(tmp_path):
    (tmp_path / "notes.md").write_text("nothing here")
    with pytest.raises(CaptionerError) as info:
        CaptionCollection(tmp_path)
    message = str(info.value)
    assert all(f"{name}: {reader_class(name).looks_for}" in message for name in READERS)
    with pytest.raises(CaptionerError, match="does not exist"):
        CaptionCollection(tmp_path / "nowhere")


@pytest.mark.parametrize("form", list(WRITERS))
def test_each_form_trains_with_the_small_scratch_recipe_and_nothing_else(form, tmp_path, capsys):
    """`captioner train fit --config small_scratch --data.data_dir PATH`: the tiny model's sizes
    and one step are the only additions, for time."""
    _needs(form)
    items = collection(12, splits=form in ("coco", "karpathy"))
    path = WRITERS[form](tmp_path / form, items)
    tiny = [part for name, value in TINY_SETTINGS.items() for part in (f"--{name}", str(value))]
    run = tmp_path / "run"
    args = ["fit", "--config", "small_scratch", "--data.data_dir", str(path), *tiny, *QUIET, *NO_VALIDATION]
    args += ["--trainer.max_steps", "1", "--data.num_workers", "0", "--trainer.default_root_dir", str(run)]
    args += ["--checkpoint.dirpath", str(run / "checkpoints")]
    cli_main(args)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    if form not in ("coco", "karpathy"):  # a pile: its split is written beside the run
        split = json.loads((run / "split.json").read_text())
        assert sum(len(keys) for keys in split["images"].values()) == len(items)
