"""The `LightningDataModule`: records -> vocabulary -> datasets -> batches.

Training yields one (image, caption) pair per reference caption; validation, test and
predict yield each image once with all its references, for free-running decoding and the
COCO metrics.

    train batch: images (B, 3, S, S) float, tokens (B, T) long (<start> ... <end>, padded
                 with <pad>), image_ids (B,) long
    eval batch:  images (B, 3, S, S), image_ids (B,) long, references list[list[str]], paths list[str],
                 sizes (B, 2) long: each image's (W, H) before resizing, the pixels its boxes use
With `features_dir` (cached encoder features, see `captioner.data.features`) every batch
carries `features` (B, P, D) float32 in place of `images`, and no image is decoded.

Every listed image is checked to exist when the records are read (an error, or a counted
warning and a skip with `skip_missing_images`). A file that exists but cannot be decoded is
found only when its batch is built. In training its pairs are then left out of their batch,
with a `DataWarning` naming the file and counting the unreadable files met so far (per loader
process), so one bad file among thousands does not end a long run; a batch with no readable
image left raises `CaptionerError`. In validation, test and predict it raises `ImageLoadError`
naming the file: scores over a silently smaller set would mislead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from captioner.data.features import SplitFeatures, check_meta
from captioner.data.images import ImageLoadError, image_transform, load_image_for
from captioner.data.records import (
    Box,
    DataWarning,
    ImageRecord,
    coco_layout,
    karpathy_split,
    read_boxes,
    read_coco,
    read_karpathy,
)
from captioner.errors import CaptionerError
from captioner.vocab import Vocabulary, tokenize

ROLES = ("train", "val", "test")

# record -> (model input: image (3, S, S) or features (P, D), the image's (W, H) before resizing)
Source = Callable[[ImageRecord], tuple[torch.Tensor, tuple[int, int]]]


class ImageSource:
    """The `Source` that decodes the image file (a large JPEG at reduced scale, see
    `load_image_for`) and resizes and normalises it to `image_size`²."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.transform = image_transform(image_size)

    def __call__(self, record: ImageRecord) -> tuple[torch.Tensor, tuple[int, int]]:
        image, size = load_image_for(record.path, self.image_size)
        return self.transform(image), size


class CaptionPairs(Dataset):
    """One item per (image, caption): `(input, token ids (L,) long, image_id)`; input from `source`."""

    def __init__(self, records: list[ImageRecord], encoded: list[tuple[int, list[int]]], source: Source):
        self.records = records
        self.encoded = encoded  # (index into records, token ids incl. <start>/<end>)
        self.source = source
        self.unreadable: set[Path] = set()  # image files that failed to load, in this process

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """The pair, or None when its image cannot be loaded (warned once per file; see module doc)."""
        index, ids = self.encoded[i]
        record = self.records[index]
        try:
            inputs = self.source(record)[0]
        except ImageLoadError as error:
            if error.path not in self.unreadable:
                self.unreadable.add(error.path)
                warnings.warn(
                    f"skipping training image {error.path} ({error.reason}); {len(self.unreadable)} "
                    "unreadable training image(s) so far; replace or remove it from the annotations",
                    DataWarning,
                    stacklevel=2,
                )
            return None
        return inputs, torch.tensor(ids, dtype=torch.long), record.image_id


class EpochShuffle(RandomSampler):
    """A random order that depends only on (seed, epoch), so a run resumed at epoch e sees the
    same order as one that never stopped. Lightning calls `set_epoch` before every epoch, as it
    does on a DistributedSampler (which replaces this one under DDP, shuffling by its own seed
    and the epoch)."""

    def __init__(self, data_source: Dataset, seed: int):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class CaptionImages(Dataset):
    """One item per image: `(input, image_id, references, path, (W, H) before resizing)`; input from `source`."""

    def __init__(self, records: list[ImageRecord], source: Source):
        self.records = records
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, list[str], str, tuple[int, int]]:
        record = self.records[i]
        inputs, size = self.source(record)
        return inputs, record.image_id, list(record.captions), str(record.path), size


def collate_pairs(
    items: list[tuple[torch.Tensor, torch.Tensor, int]], pad_id: int, key: str = "images"
) -> dict[str, torch.Tensor]:
    """Stack the inputs under `key` and right-pad token ids with `pad_id` to the longest caption.
    Items that are None (unreadable images, see `CaptionPairs`) are left out."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise CaptionerError(
            f"none of the {len(items)} training images of a batch could be loaded (see the warnings above); "
            "check the image files"
        )
    inputs, tokens, image_ids = zip(*kept)
    padded = torch.nn.utils.rnn.pad_sequence(list(tokens), batch_first=True, padding_value=pad_id)
    return {
        key: torch.stack(inputs),
        "tokens": padded,
        "image_ids": torch.tensor(image_ids, dtype=torch.long),
    }


def collate_images(items: list[tuple[torch.Tensor, int, list[str], str, tuple[int, int]]], key: str = "images") -> dict:
    inputs, image_ids, references, paths, sizes = zip(*items)
    return {
        key: torch.stack(inputs),
        "image_ids": torch.tensor(image_ids, dtype=torch.long),
        "references": list(references),
        "paths": list(paths),
        "sizes": torch.tensor(sizes, dtype=torch.long),
    }


class CaptionDataModule(pl.LightningDataModule):
    """Caption data from a COCO-format folder or a Karpathy-split file.

    Args:
        data_dir: Root of the data. COCO format: images in `data_dir/<split>/`, captions in
            `data_dir/annotations/captions_<split>.json`, boxes (optional, for the grounding
            scores) in `data_dir/annotations/instances_<split>.json`; any of them can be given
            per split instead (below), and with all of them given data_dir may be left out.
            Karpathy format: the image root that the file's `filepath/filename` entries are
            relative to.
        format: "coco" (official annotation files, read with pycocotools) or "karpathy".
        karpathy_json: The Karpathy-split file (`dataset_coco.json`, ...); required for
            format "karpathy".
        train_split: Split name used for training (COCO: e.g. "train2014").
        val_split: Split name used for validation (COCO: e.g. "val2014").
        test_split: Split name used for testing and prediction.
        image_size: Side S in pixels that images are resized to (S x S).
        batch_size: Training batch size, in (image, caption) pairs.
        eval_batch_size: Validation/test/predict batch size in images; None = batch_size.
        num_workers: DataLoader worker processes (0 = load in the main process).
        min_word_count: Words seen fewer times in the training captions become <unk>.
        max_caption_len: Training captions longer than this many words are truncated (with a
            warning that counts them); references used for evaluation are kept whole.
        vocab_path: JSON vocabulary file: loaded if it exists, else built from the training
            split and saved there. None = build in memory.
        skip_missing_images: Skip images listed in the annotations but absent on disk (with a
            counted warning) instead of raising an error.
        seed: Seed of the training shuffle. The order differs every epoch and depends only on
            (seed, epoch), so a resumed run repeats it (`EpochShuffle`; under DDP Lightning's
            distributed sampler takes over the shuffling, seeded by `seed_everything`).
        features_dir: Folder written by `captioner features extract`: train, validate and test
            from its cached encoder features (batches carry `features` instead of `images`;
            no image is decoded). Needs a frozen encoder with the settings it was made with.
        train_images, val_images, test_images: COCO format: the split's image folder, in place
            of `data_dir/<split>/` (splits may share one folder).
        train_annotations, val_annotations, test_annotations: COCO format: the split's captions
            file, in place of `data_dir/annotations/captions_<split>.json`.
        train_instances, val_instances, test_instances: The split's COCO instances file, in
            place of `data_dir/annotations/instances_<split>.json`; a file given here must exist.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        format: str = "coco",
        karpathy_json: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        image_size: int = 448,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        min_word_count: int = 1,
        max_caption_len: int = 20,
        vocab_path: str | None = None,
        skip_missing_images: bool = False,
        seed: int = 0,
        features_dir: str | None = None,
        train_images: str | None = None,
        val_images: str | None = None,
        test_images: str | None = None,
        train_annotations: str | None = None,
        val_annotations: str | None = None,
        test_annotations: str | None = None,
        train_instances: str | None = None,
        val_instances: str | None = None,
        test_instances: str | None = None,
    ):
        super().__init__()
        if format not in ("coco", "karpathy"):
            raise CaptionerError(f'data format must be "coco" or "karpathy", got {format!r}')
        if format == "karpathy" and not karpathy_json:
            raise CaptionerError('format "karpathy" needs karpathy_json: the path of the dataset_*.json file')
        # Per-split paths, by role and kind; None = the data_dir convention.
        layout = {
            "train": {"images": train_images, "annotations": train_annotations, "instances": train_instances},
            "val": {"images": val_images, "annotations": val_annotations, "instances": val_instances},
            "test": {"images": test_images, "annotations": test_annotations, "instances": test_instances},
        }
        if format == "karpathy":
            given = [f"{role}_{kind}" for role in ROLES for kind in ("images", "annotations") if layout[role][kind]]
            if given:
                raise CaptionerError(
                    f'{", ".join(given)} only apply to format "coco"; with a Karpathy file the image paths '
                    "are data_dir/filepath/filename"
                )
        if data_dir is None and (
            format == "karpathy" or not all(layout[r]["images"] and layout[r]["annotations"] for r in ROLES)
        ):
            raise CaptionerError(
                'data_dir is not set; give the data set folder (data.data_dir), or for format "coco" every '
                "split's images and annotations (data.train_images, data.train_annotations, ...)"
            )
        for name, value in [
            ("image_size", image_size),
            ("batch_size", batch_size),
            ("max_caption_len", max_caption_len),
        ]:
            if value < 1:
                raise CaptionerError(f"{name} must be at least 1, got {value}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise CaptionerError(f"eval_batch_size must be at least 1 or None, got {eval_batch_size}")
        if num_workers < 0:
            raise CaptionerError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.layout = layout
        self.format = format
        self.karpathy_json = karpathy_json
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.min_word_count = min_word_count
        self.max_caption_len = max_caption_len
        self.vocab_path = vocab_path
        self.skip_missing_images = skip_missing_images
        self.seed = seed
        self.features_dir = features_dir
        self._records: dict[str, list[ImageRecord]] = {}
        self._karpathy: dict[str, list[ImageRecord]] | None = None
        self._vocab: Vocabulary | None = None
        self._datasets: dict[str, Dataset] = {}

    # -- records and vocabulary -------------------------------------------------------------

    def _split_name(self, split: str) -> str:
        if split not in ROLES:
            raise CaptionerError(f"split must be one of {ROLES}, got {split!r}")
        return self.split_names[split]

    def records(self, split: str) -> list[ImageRecord]:
        """Records of `split` ("train", "val" or "test"; mapped to the configured split names), cached."""
        if split not in self._records:
            name = self._split_name(split)
            if self.format == "coco":
                self._records[split] = read_coco(
                    self.path(split, "images"),
                    self.path(split, "annotations"),
                    name,
                    skip_missing=self.skip_missing_images,
                )
            else:
                if self._karpathy is None:
                    self._karpathy = read_karpathy(
                        self.karpathy_json, self.data_dir, skip_missing=self.skip_missing_images
                    )
                self._records[split] = karpathy_split(self._karpathy, name, self.karpathy_json)
        return self._records[split]

    def path(self, split: str, kind: str) -> Path:
        """Where `split`'s "images" folder, "annotations" (captions) file or "instances" file is:
        the one given for it (which must exist), else its place under data_dir (COCO layout)."""
        name = self._split_name(split)
        given = self.layout[split][kind]
        if given is not None:
            if not Path(given).exists():
                raise CaptionerError(f"data.{split}_{kind} {given} does not exist; check the path or leave it unset")
            return Path(given)
        if self.data_dir is None:
            raise CaptionerError(f"no {kind} for the {split} split: set data.{split}_{kind} or data.data_dir")
        return coco_layout(self.data_dir, name)[kind]

    def boxes(self, split: str) -> dict[int, list[Box]]:
        """Image id -> boxes from the split's instances file (`path(split, "instances")`); {} when
        that is the data_dir convention's file and it is absent."""
        path = self.path(split, "instances")
        return read_boxes(path) if path.exists() else {}

    @property
    def vocab(self) -> Vocabulary:
        """The vocabulary: loaded from `vocab_path` if that exists, else built from the TRAIN captions."""
        if self._vocab is None:
            if self.vocab_path and Path(self.vocab_path).exists():
                self._vocab = Vocabulary.load(self.vocab_path)
            else:
                captions = (c for record in self.records("train") for c in record.captions)
                self._vocab = Vocabulary.build(captions, min_count=self.min_word_count)
                if self.vocab_path:
                    self._vocab.save(self.vocab_path)
        return self._vocab

    @property
    def vocab_words(self) -> list[str]:
        """`vocab.words` as a plain list (what the model and its checkpoint store)."""
        return list(self.vocab.words)

    # -- datasets ---------------------------------------------------------------------------

    def _train_pairs(self) -> CaptionPairs:
        records = self.records("train")
        vocab = self.vocab
        encoded, too_long = [], 0
        for index, record in enumerate(records):
            for caption in record.captions:
                tokens = tokenize(caption)
                too_long += len(tokens) > self.max_caption_len
                encoded.append((index, vocab.encode_tokens(tokens, max_len=self.max_caption_len)))
        if not encoded:
            raise CaptionerError(f"the training split {self.split_names['train']!r} has no captions to train on")
        if too_long:
            warnings.warn(
                f"truncating {too_long} of {len(encoded)} training captions to max_caption_len="
                f"{self.max_caption_len} words; raise max_caption_len to keep them whole",
                DataWarning,
                stacklevel=2,
            )
        return CaptionPairs(records, encoded, self._source("train", records))

    def _eval_images(self, split: str, *, need_references: bool) -> CaptionImages:
        records = self.records(split)
        if need_references:
            # An image without references cannot be scored; keep it out of val/test, say so.
            scored = [r for r in records if r.captions]
            if len(scored) < len(records):
                warnings.warn(
                    f"leaving {len(records) - len(scored)} images without captions out of the "
                    f"{self.split_names[split]!r} split",
                    DataWarning,
                    stacklevel=2,
                )
            records = scored
        return CaptionImages(records, self._source(split, records))

    def _source(self, split: str, records: list[ImageRecord]) -> ImageSource | SplitFeatures:
        """Where the model inputs of `records` come from: the cached features, or the image files."""
        if self.features_dir is None:
            return ImageSource(self.image_size)
        features = SplitFeatures(self.features_dir, self.split_names[split])
        features.require(records)
        return features

    def check_features(self, settings: dict) -> None:
        """With `features_dir`: raise CaptionerError unless its features were extracted with these
        encoder `settings` (see `captioner.data.features.ENCODER_KEYS`)."""
        if self.features_dir is not None:
            check_meta(self.features_dir, settings)

    def image_dataloader(self, split: str) -> DataLoader:
        """Every image of `split` once, as eval batches of decoded `images` (even with
        `features_dir`): the input of feature extraction."""
        records = self.records(split)
        images = CaptionImages(records, ImageSource(self.image_size))
        return self._loader(images, batch_size=self.eval_batch_size, collate_fn=collate_images)

    def _build(self, key: str) -> Dataset:
        if key == "train":
            return self._train_pairs()
        if key == "predict":
            return self._eval_images("test", need_references=False)
        return self._eval_images(key, need_references=True)

    def _dataset(self, key: str) -> Dataset:
        """The dataset for "train", "val", "test" or "predict", built on first use."""
        if key not in self._datasets:
            self._datasets[key] = self._build(key)
        return self._datasets[key]

    def setup(self, stage: str | None = None) -> None:
        """Read and check the data the stage needs ("fit", "validate", "test", "predict"; None = all)."""
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        if stage is not None and stage not in stages:
            raise CaptionerError(f"unknown stage {stage!r}; expected one of {sorted(stages)}")
        for key in stages[stage] if stage else ("train", "val", "test", "predict"):
            self._dataset(key)

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(
            self._dataset("train"),
            batch_size=self.batch_size,
            sampler=EpochShuffle(self._dataset("train"), self.seed),
            # The loader draws its workers' base seed from this, not from torch's global RNG,
            # whose state at each epoch start the module sets (see CaptioningModule.on_train_epoch_start).
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=partial(collate_pairs, pad_id=self.vocab.pad_id, key=self._input_key),  # picklable for workers
        )

    @property
    def _input_key(self) -> str:
        return "images" if self.features_dir is None else "features"

    def _eval_loader(self, key: str) -> DataLoader:
        collate = partial(collate_images, key=self._input_key)
        return self._loader(self._dataset(key), batch_size=self.eval_batch_size, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")
