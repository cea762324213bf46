import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.data import Box, CaptionDataModule, DataWarning, ImageLoadError
from captioner.errors import CaptionerError
from captioner.vocab import Vocabulary

from .conftest import SYNTH_COUNTS


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


def test_vocab_is_ready_after_init_and_built_from_train_only(tmp_path):
    write_split(tmp_path, "train", {1: ["a red dog", "a dog"], 2: ["a cat"]})
    write_split(tmp_path, "val", {3: ["a purple zebra"]})
    dm = CaptionDataModule(str(tmp_path), min_word_count=2)
    assert dm.vocab_words == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]
    assert "zebra" not in dm.vocab and dm.vocab is dm.vocab  # built once, cached


def test_vocab_path_saved_then_loaded(tmp_path):
    write_split(tmp_path, "train", {1: ["a red dog"]})
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
    assert CaptionDataModule(str(tmp_path)).boxes("train") == {}


def test_long_captions_are_truncated_with_a_counted_warning(tmp_path):
    write_split(tmp_path, "train", {1: ["one two three four five six", "one two"], 2: ["a b c d e"]})
    dm = CaptionDataModule(str(tmp_path), max_caption_len=4, batch_size=8)
    with pytest.warns(DataWarning, match=r"truncating 2 of 3 training captions to max_caption_len=4"):
        loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["tokens"].shape[1] == 4 + 2  # <start>, four words, <end>
    assert sorted(dm.vocab.decode(row) for row in batch["tokens"]) == ["a b c d", "one two", "one two three four"]


def test_empty_captions_are_skipped_with_a_counted_warning(tmp_path):
    write_split(tmp_path, "train", {1: ["a dog", "", " ... "], 2: ["Ein Mädchen", "!"]})
    with pytest.warns(DataWarning, match="skipped 3 empty or punctuation-only captions"):
        dm = CaptionDataModule(str(tmp_path), batch_size=8)
        batch = next(iter(dm.train_dataloader()))
    assert sorted(dm.vocab.decode(row) for row in batch["tokens"]) == ["a dog", "ein mädchen"]


def test_missing_images_raise_at_setup_or_are_skipped(tmp_path):
    write_split(tmp_path, "train", {1: ["a dog"], 2: ["a cat"], 3: ["a cow"]}, missing=(2,))
    with pytest.raises(CaptionerError, match="1 of 3 images listed in .*captions_train.json are missing"):
        _ = CaptionDataModule(str(tmp_path)).vocab
    dm = CaptionDataModule(str(tmp_path), skip_missing_images=True, batch_size=8)
    with pytest.warns(DataWarning, match="skipping 1 of 3 images"):
        assert [r.image_id for r in dm.records("train")] == [1, 3]
    assert sorted(next(iter(dm.train_dataloader()))["image_ids"].tolist()) == [1, 3]


def test_missing_folder_and_malformed_annotations_are_clear_errors(tmp_path):
    with pytest.raises(CaptionerError, match="captions_train.json does not exist"):
        _ = CaptionDataModule(str(tmp_path)).vocab
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
    loader = CaptionDataModule(str(tmp_path), batch_size=4, image_size=8).train_dataloader()
    with pytest.warns(DataWarning, match=r"skipping training image .*2\.png .*; 1 unreadable training image"):
        (batch,) = list(loader)
    assert sorted(batch["image_ids"].tolist()) == [1, 3]
    assert batch["images"].shape[0] == batch["tokens"].shape[0] == 2


def test_batch_of_only_unreadable_images_is_an_error(tmp_path):
    write_split(tmp_path, "train", {1: ["a dog"], 2: ["a cat"]}, corrupt=(1, 2))
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
        (dict(format="yaml"), '"coco" or "karpathy"'),
        (dict(format="karpathy"), "needs karpathy_json"),
        (dict(batch_size=0), "batch_size must be at least 1"),
        (dict(max_caption_len=0), "max_caption_len"),
        (dict(eval_batch_size=0), "eval_batch_size"),
        (dict(num_workers=-1), "num_workers"),
    ],
)
def test_bad_settings_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(CaptionerError, match=message):
        CaptionDataModule(str(tmp_path), **kwargs)


def test_unknown_split_or_stage(synth_data):
    dm = CaptionDataModule(
        str(synth_data), format="karpathy", karpathy_json=str(synth_data / "dataset_shapes.json"), val_split="restval"
    )
    with pytest.raises(CaptionerError, match="split 'restval' is not in .*'test', 'train', 'val'"):
        dm.records("val")
    with pytest.raises(CaptionerError, match="split must be one of"):
        dm.records("validation")
    with pytest.raises(CaptionerError, match="unknown stage"):
        dm.setup("train")
