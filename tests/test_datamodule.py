import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.cli import main
from captioner.data import Box, CaptionDataModule, DataWarning, ImageLoadError, Split
from captioner.errors import CaptionerError
from captioner.vocab import Vocabulary

from .conftest import SYNTH_COUNTS

CONFIGS = Path(__file__).parents[1] / "configs"


def write_split(root: Path, split: str, captions: dict[int, list[str]], *, missing=(), corrupt=()) -> None:
    """COCO layout: root/<split>/<id>.png and root/annotations/captions_<split>.json."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for image_id in captions:
        path = root / split / f"{image_id}.png"
        if image_id in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
        elif image_id not in missing:
            Image.new("RGB", (20, 10), (image_id * 10 % 256, 0, 0)).save(path)
    data = {
        "images": [{"id": i, "file_name": f"{i}.png"} for i in captions],
        "annotations": [
            {"id": n, "image_id": i, "caption": c}
            for n, (i, c) in enumerate(((i, c) for i, cs in captions.items() for c in cs), start=1)
        ],
    }
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data), encoding="utf-8")


def with_eval_splits(root: Path) -> None:
    """One-image val and test splits beside a test's train split: a COCO folder without them
    would have them held out of its train split."""
    write_split(root, "val", {1001: ["a val image"]})
    write_split(root, "test", {1002: ["a test image"]})


def test_vocab_is_ready_after_init_and_built_from_train_only(tmp_path):
    write_split(tmp_path, "train", {1: ["a red dog", "a dog"], 2: ["a cat"]})
    write_split(tmp_path, "val", {3: ["a purple zebra"]})
    write_split(tmp_path, "test", {4: ["a purple cat"]})
    dm = CaptionDataModule(str(tmp_path), min_word_count=2)
    assert dm.vocab_words == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]
    assert "zebra" not in dm.vocab and dm.vocab is dm.vocab  # built once, cached


def test_vocab_path_saved_then_loaded(tmp_path):
    write_split(tmp_path, "train", {1: ["a red dog"]})
    with_eval_splits(tmp_path)
    path = tmp_path / "out" / "vocab.json"
    _ = CaptionDataModule(str(tmp_path), vocab_path=str(path)).vocab
    assert Vocabulary.load(path).words[4:] == ["a", "dog", "red"]
    Vocabulary.build(["only these words"]).save(path)
    assert CaptionDataModule(str(tmp_path), vocab_path=str(path)).vocab_words[4:] == ["only", "these", "words"]


def test_train_batches_pair_every_caption_and_pad(synth_data):
    dm = CaptionDataModule(str(synth_data), image_size=32, batch_size=7)
    dm.setup("fit")
    vocab = dm.vocab
    batches = list(dm.train_dataloader())
    assert sum(len(b["image_ids"]) for b in batches) == 5 * SYNTH_COUNTS["train"]
    batch = batches[0]
    assert batch["images"].shape == (7, 3, 32, 32) and batch["images"].dtype == torch.float32
    tokens = batch["tokens"]
    assert tokens.dtype == batch["image_ids"].dtype == torch.long
    lengths = (tokens != vocab.pad_id).sum(dim=1)  # real tokens, <start> and <end> included
    assert tokens.shape == (7, int(lengths.max()))
    for row, length in zip(tokens, lengths.tolist()):
        assert row[0] == vocab.start_id and row[length - 1] == vocab.end_id
        assert (row[length:] == vocab.pad_id).all() and (row[1 : length - 1] > vocab.unk_id).all()
    captions = {r.image_id: [c.lower() for c in r.captions] for r in dm.records("train")}
    for row, image_id in zip(tokens, batch["image_ids"].tolist()):
        assert vocab.decode(row) in captions[image_id]


def test_shuffle_is_seeded_and_changes_every_epoch(synth_data):
    def epochs(seed, which=(0, 1)):
        loader = CaptionDataModule(str(synth_data), image_size=8, batch_size=120, seed=seed).train_dataloader()
        orders = []
        for epoch in which:
            loader.sampler.set_epoch(epoch)  # as Lightning does before every epoch
            orders.append(torch.cat([b["tokens"][:, :4] for b in loader]).tolist())
        return orders

    first = epochs(0)
    assert first == epochs(0)
    assert first[0] != first[1]
    assert epochs(1)[0] != first[0]
    assert epochs(0, which=(1,)) == first[1:], "an epoch's order must not depend on the epochs before it (resume)"


def test_eval_batches_carry_all_references_once_per_image(synth_data):
    dm = CaptionDataModule(str(synth_data), image_size=16, batch_size=2, eval_batch_size=5)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [len(b["image_ids"]) for b in batches] == [5, 3]
    batch = batches[0]
    assert batch["images"].shape == (5, 3, 16, 16)
    records = {r.image_id: r for r in dm.records("val")}
    for image_id, references, path in zip(batch["image_ids"].tolist(), batch["references"], batch["paths"]):
        assert references == list(records[image_id].captions) and len(references) == 5
        assert Path(path) == records[image_id].path
    dm.setup("predict")
    assert sum(len(b["image_ids"]) for b in dm.predict_dataloader()) == SYNTH_COUNTS["test"]


def test_karpathy_format_gives_the_same_data(synth_data):
    coco = CaptionDataModule(str(synth_data), image_size=8)
    karpathy = CaptionDataModule(
        str(synth_data), format="karpathy", karpathy_json=str(synth_data / "dataset_shapes.json"), image_size=8
    )
    assert karpathy.vocab == coco.vocab
    for split in ("train", "val", "test"):
        assert karpathy.records(split) == coco.records(split)
    assert torch.equal(next(iter(karpathy.train_dataloader()))["tokens"], next(iter(coco.train_dataloader()))["tokens"])


def test_boxes_from_instances_file_or_empty(synth_data, tmp_path):
    boxes = CaptionDataModule(str(synth_data)).boxes("val")
    assert sorted(boxes) == [r.image_id for r in CaptionDataModule(str(synth_data)).records("val")]
    assert all(isinstance(b, Box) for bs in boxes.values() for b in bs)
    write_split(tmp_path, "train", {1: ["a dog"]})
    with_eval_splits(tmp_path)
    assert CaptionDataModule(str(tmp_path)).boxes("train") == {}


def test_long_captions_are_truncated_with_a_counted_warning(tmp_path):
    write_split(tmp_path, "train", {1: ["one two three four five six", "one two"], 2: ["a b c d e"]})
    with_eval_splits(tmp_path)
    dm = CaptionDataModule(str(tmp_path), max_caption_len=4, batch_size=8)
    with pytest.warns(DataWarning, match=r"truncating 2 of 3 training captions to max_caption_len=4"):
        loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["tokens"].shape[1] == 4 + 2  # <start>, four words, <end>
    assert sorted(dm.vocab.decode(row) for row in batch["tokens"]) == ["a b c d", "one two", "one two three four"]


def test_empty_captions_are_skipped_with_a_counted_warning(tmp_path):
    write_split(tmp_path, "train", {1: ["a dog", "", " ... "], 2: ["Ein Mädchen", "!"]})
    with_eval_splits(tmp_path)
    with pytest.warns(DataWarning, match="skipped 3 empty or punctuation-only captions"):
        dm = CaptionDataModule(str(tmp_path), batch_size=8)
        batch = next(iter(dm.train_dataloader()))
    assert sorted(dm.vocab.decode(row) for row in batch["tokens"]) == ["a dog", "ein mädchen"]


def test_missing_images_raise_at_setup_or_are_skipped(tmp_path):
    write_split(tmp_path, "train", {1: ["a dog"], 2: ["a cat"], 3: ["a cow"]}, missing=(2,))
    with_eval_splits(tmp_path)
    with pytest.raises(CaptionerError, match="1 of 3 images listed in .*captions_train.json are missing"):
        _ = CaptionDataModule(str(tmp_path)).vocab
    dm = CaptionDataModule(str(tmp_path), skip_missing_images=True, batch_size=8)
    with pytest.warns(DataWarning, match="skipping 1 of 3 images"):
        assert [r.image_id for r in dm.records("train")] == [1, 3]
    assert sorted(next(iter(dm.train_dataloader()))["image_ids"].tolist()) == [1, 3]


def test_missing_folder_and_malformed_annotations_are_clear_errors(tmp_path):
    with pytest.raises(CaptionerError, match="no caption data recognised at .*looked for .*coco: annotations/"):
        CaptionDataModule(str(tmp_path))
    with pytest.raises(CaptionerError, match="no COCO captions files under .*annotations"):
        _ = CaptionDataModule(str(tmp_path), format="coco").vocab
    write_split(tmp_path, "train", {1: ["a dog"]})
    (tmp_path / "annotations" / "captions_val.json").write_text('{"images": [}')
    with pytest.raises(CaptionerError, match="captions_val.json is not valid JSON"):
        CaptionDataModule(str(tmp_path)).setup("validate")
    write_split(tmp_path, "test", {1: ["a dog"]})
    (tmp_path / "test" / "1.png").unlink()
    (tmp_path / "test").rmdir()
    with pytest.raises(CaptionerError, match="image folder .*test does not exist"):
        CaptionDataModule(str(tmp_path)).setup("test")


def test_unreadable_training_image_is_left_out_with_a_counted_warning(tmp_path):
    write_split(tmp_path, "train", {1: ["a dog"], 2: ["a cat", "a cat sits"], 3: ["a cow"]}, corrupt=(2,))
    with_eval_splits(tmp_path)
    loader = CaptionDataModule(str(tmp_path), batch_size=4, image_size=8).train_dataloader()
    with pytest.warns(DataWarning, match=r"skipping training image .*2\.png .*; 1 unreadable training image"):
        (batch,) = list(loader)
    assert sorted(batch["image_ids"].tolist()) == [1, 3]
    assert batch["images"].shape[0] == batch["tokens"].shape[0] == 2


def test_batch_of_only_unreadable_images_is_an_error(tmp_path):
    write_split(tmp_path, "train", {1: ["a dog"], 2: ["a cat"]}, corrupt=(1, 2))
    with_eval_splits(tmp_path)
    loader = CaptionDataModule(str(tmp_path), batch_size=2, image_size=8).train_dataloader()
    with pytest.warns(DataWarning), pytest.raises(CaptionerError, match="none of the 2 training images"):
        next(iter(loader))


def test_unreadable_eval_image_raises_image_load_error_naming_it(tmp_path):
    write_split(tmp_path, "train", {1: ["a dog"]})
    write_split(tmp_path, "val", {2: ["a cat"]}, corrupt=(2,))
    loader = CaptionDataModule(str(tmp_path), batch_size=2).val_dataloader()
    with pytest.raises(ImageLoadError, match=r"2\.png"):
        next(iter(loader))


def test_worker_processes_get_the_same_batches(synth_data):
    def first_batch(workers):
        dm = CaptionDataModule(str(synth_data), image_size=8, batch_size=4, num_workers=workers)
        return next(iter(dm.train_dataloader())), dm.train_dataloader().persistent_workers

    (serial, persistent0), (parallel, persistent1) = first_batch(0), first_batch(1)
    assert not persistent0 and persistent1
    assert torch.equal(serial["tokens"], parallel["tokens"]) and torch.equal(serial["images"], parallel["images"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(format="yaml"), "data.format must be one of 'auto', .*'coco', 'karpathy', .*; got 'yaml'"),
        (dict(karpathy_json="a.json", annotations="b.json"), "karpathy_json is the older name of data.annotations"),
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(max_caption_len=0), "max_caption_len must be an integer >= 1"),
        (dict(min_word_count=0), "min_word_count must be an integer >= 1"),
        (dict(eval_batch_size=0), "eval_batch_size must be an integer >= 1"),
        (dict(num_workers=-1), "num_workers must be an integer >= 0, got -1"),
    ],
)
def test_bad_settings_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(CaptionerError, match=message):
        CaptionDataModule(str(tmp_path), **kwargs)


def test_unknown_split_or_stage(synth_data):
    dm = CaptionDataModule(
        str(synth_data), format="karpathy", karpathy_json=str(synth_data / "dataset_shapes.json"), val=Split("restval")
    )
    with pytest.raises(CaptionerError, match="split 'restval' is not in .*'test', 'train', 'val'"):
        dm.records("val")
    with pytest.raises(CaptionerError, match="role must be one of 'train', 'val', 'test'; got 'validation'"):
        dm.records("validation")
    with pytest.raises(CaptionerError, match="unknown stage"):
        dm.setup("train")


def relaid_out(synth_data: Path, root: Path) -> dict[str, Split]:
    """The synthetic set re-laid out as many real sets are: every split's images in one shared
    `images/` folder and the annotation files in a folder of their own, elsewhere. Returns the
    `CaptionDataModule` splits that point at it."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    splits = {}
    for role in ("train", "val", "test"):
        for image in (synth_data / role).iterdir():
            (root / "images" / image.name).write_bytes(image.read_bytes())
        files = {}
        for kind in ("captions", "instances"):
            files[kind] = root / "labels" / f"{role}_{kind}.json"
            files[kind].write_bytes((synth_data / "annotations" / f"{kind}_{role}.json").read_bytes())
        splits[role] = Split(role, images=str(root / "images"), **{kind: str(path) for kind, path in files.items()})
    return splits


def test_per_split_paths_read_a_shared_images_folder_and_annotations_elsewhere(synth_data, tmp_path):
    splits = relaid_out(synth_data, tmp_path)
    given = CaptionDataModule(data_dir=None, **splits)
    conventional = CaptionDataModule(str(synth_data))
    for role in ("train", "val", "test"):
        records = given.records(role)
        assert [(r.image_id, r.captions) for r in records] == [
            (r.image_id, r.captions) for r in conventional.records(role)
        ]
        assert {r.path.parent for r in records} == {tmp_path / "images"}
        assert given.boxes(role) == conventional.boxes(role) != {}
    assert given.vocab_words == conventional.vocab_words


def test_per_split_paths_override_the_data_dir_convention_one_by_one(synth_data, tmp_path):
    splits = relaid_out(synth_data, tmp_path)
    # Only the test split's captions live elsewhere, and they are the val split's.
    dm = CaptionDataModule(
        str(synth_data), test=Split("test", captions=splits["val"].captions, images=str(synth_data / "val"))
    )
    assert [r.image_id for r in dm.records("test")] == [r.image_id for r in dm.records("val")]
    path = lambda role, kind: dm.collection.reader.path(dm.split(role), kind)
    assert path("train", "images") == synth_data / "train"
    assert path("val", "instances") == synth_data / "annotations" / "instances_val.json"
    assert path("test", "captions") == Path(splits["val"].captions)
    assert path("test", "instances") == synth_data / "annotations" / "instances_test.json"


def test_split_names_choose_the_data_dir_files(synth_data):
    dm = CaptionDataModule(str(synth_data), test=Split("val"))
    reader = dm.collection.reader
    assert reader.path(dm.split("test"), "images") == synth_data / "val"
    assert reader.path(dm.split("test"), "captions") == synth_data / "annotations" / "captions_val.json"
    assert dm.records("test") == dm.records("val") and dm.boxes("test") == dm.boxes("val")


def test_missing_per_split_paths_are_errors_naming_them(synth_data, tmp_path):
    missing = tmp_path / "nowhere" / "captions.json"
    with pytest.raises(CaptionerError, match=f"data.val.captions {missing} does not exist"):
        CaptionDataModule(str(synth_data), val=Split("val", captions=str(missing))).records("val")
    with pytest.raises(CaptionerError, match=f"data.val.images {tmp_path / 'pics'} does not exist"):
        CaptionDataModule(str(synth_data), val=Split("val", images=str(tmp_path / "pics"))).records("val")
    with pytest.raises(CaptionerError, match=f"data.test.instances {tmp_path / 'boxes.json'} does not exist"):
        CaptionDataModule(str(synth_data), test=Split("test", instances=str(tmp_path / "boxes.json"))).boxes("test")
    # Without data_dir, every split's images and captions must be given.
    splits = relaid_out(synth_data, tmp_path / "copy")
    splits["val"] = Split("val", captions=splits["val"].captions)
    with pytest.raises(CaptionerError, match="data_dir is not set"):
        CaptionDataModule(data_dir=None, **splits)
    with pytest.raises(CaptionerError, match='data.train.images only apply to format "coco"'):
        CaptionDataModule(
            str(synth_data), format="karpathy", karpathy_json="x.json", train=Split("train", images=str(synth_data))
        )


def test_hyperparameters_are_plain_data(synth_data, tmp_path):
    """Lightning stores them in every checkpoint, which resuming loads with weights_only=True."""
    dm = CaptionDataModule(str(synth_data), val=Split("restval", instances="boxes.json"))
    assert dm.hparams["val"] == {"name": "restval", "images": None, "captions": None, "instances": "boxes.json"}
    torch.save(dict(dm.hparams), tmp_path / "hparams.pt")
    assert torch.load(tmp_path / "hparams.pt", weights_only=True) == dict(dm.hparams)


@pytest.mark.parametrize(
    "setting, message",
    [
        (["--data.val.captions", "nowhere.json"], "error: data.val.captions nowhere.json does not exist"),
        (["--data.test.name", ""], "error: a data split needs a name"),
        (
            ["--data.format", "karpathy", "--data.karpathy_json", "x.json", "--data.train.images", "pics"],
            "data.train.images only apply",
        ),
    ],
)
def test_bad_split_settings_on_the_command_line_are_one_error_line(synth_data, tmp_path, capsys, setting, message):
    args = ["train", "fit", "--config", str(CONFIGS / "shapes.yaml"), "--data.data_dir", str(synth_data), *setting]
    assert main([*args, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [err.strip().splitlines()[-1]]
    assert message in err and "Traceback" not in err
