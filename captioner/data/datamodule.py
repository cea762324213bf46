"""The `LightningDataModule`: records -> vocabulary -> datasets -> batches.

The records come from `captioner.data.collection.CaptionCollection`, whichever format the data
is in; this module knows none by name. Training yields one (image, caption) pair per reference
caption; validation, test and predict yield each image once with all its references, for
free-running decoding and the COCO metrics (batch shapes and what happens to an unreadable
image: `captioner.data.datasets`). Every listed image is checked to exist when the records are
read (an error, or a counted warning and a skip with `skip_missing_images`).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from captioner.data.collection import CaptionCollection
from captioner.data.datasets import (
    CaptionImages,
    CaptionPairs,
    EpochShuffle,
    ImageSource,
    collate_images,
    collate_pairs,
)
from captioner.data.features import SplitFeatures, check_meta
from captioner.data.readers import FORMATS
from captioner.data.records import Box, DataWarning, ImageRecord
from captioner.data.splits import ROLES, Holdout, Split, SplitFile
from captioner.errors import CaptionerError, require_choice, require_non_negative, require_positive
from captioner.vocab import MAX_CAPTION_LEN, MIN_WORD_COUNT, Vocabulary, tokenize

__all__ = ["ROLES", "CaptionDataModule", "Holdout", "Split"]

# The name of the split file written beside a run whose split was made (data.split_path unset).
SPLIT_FILE = "split.json"


class CaptionDataModule(pl.LightningDataModule):
    """Caption data in any format `captioner.data.readers` reads.

    Args:
        data_dir: The data set: its folder, or its file for formats kept in one (a CSV, a
            Flickr8k token file, a Karpathy file). COCO format: the folder the splits' default
            places are in (see `Split`); with every split's images and captions given, it may
            be left out.
        format: "auto" (default): recognised from what is at data_dir, said in one line; or a
            format by name, one of `captioner.data.readers.READERS` (docs/datasets.md shows each).
        annotations: The captions file when it is not where data_dir implies, e.g. a Karpathy
            file kept apart from its images (data_dir is then the image root).
        karpathy_json: The older name of `annotations`, kept so that existing configs work.
        train: The split used for training (its name, and for COCO where its files are if not
            under data_dir); e.g. `--data.train.name train2014`, `--data.val.captions PATH`.
        val: The split used for validation.
        test: The split used for testing and prediction.
        holdout: How validation and test images are drawn when the data has no such splits
            (`Holdout`: fractions or numbers of images, and a seed).
        split_path: JSON file of a drawn split: used if it exists (checked against `holdout`),
            else written there. None = drawn, and written as split.json in the trainer's
            default_root_dir when fitting.
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
    """

    def __init__(
        self,
        data_dir: str | None = None,
        format: str = "auto",
        annotations: str | None = None,
        karpathy_json: str | None = None,
        train: Split = Split("train"),
        val: Split = Split("val"),
        test: Split = Split("test"),
        holdout: Holdout = Holdout(),
        split_path: str | None = None,
        image_size: int = 448,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        min_word_count: int = MIN_WORD_COUNT,
        max_caption_len: int = MAX_CAPTION_LEN,
        vocab_path: str | None = None,
        skip_missing_images: bool = False,
        seed: int = 0,
        features_dir: str | None = None,
    ):
        super().__init__()
        require_choice("data.format", format, FORMATS)
        require_positive(
            image_size=image_size, batch_size=batch_size, min_word_count=min_word_count, max_caption_len=max_caption_len
        )
        if eval_batch_size is not None:
            require_positive(eval_batch_size=eval_batch_size)
        require_non_negative(num_workers=num_workers)
        if karpathy_json is not None:
            if annotations is not None and annotations != karpathy_json:
                raise CaptionerError("data.karpathy_json is the older name of data.annotations; set only one")
            annotations = karpathy_json
        splits = {"train": train, "val": val, "test": test}
        self.collection = CaptionCollection(
            data_dir,
            format=format,
            annotations=annotations,
            splits=splits,
            holdout=holdout,
            split_path=split_path,
            skip_missing=skip_missing_images,
        )
        rank_zero_info(f"data: {self.collection.found}")
        self.save_hyperparameters()
        # Checkpoints carry plain data only (they are loaded with weights_only=True).
        self.hparams.update({role: asdict(split) for role, split in splits.items()})
        self.hparams["holdout"] = asdict(holdout)
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.format = self.collection.format
        self.split_path = split_path
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.min_word_count = min_word_count
        self.max_caption_len = max_caption_len
        self.vocab_path = vocab_path
        self.seed = seed
        self.features_dir = features_dir
        self._vocab: Vocabulary | None = None
        self._datasets: dict[str, Dataset] = {}

    # -- records and vocabulary -------------------------------------------------------------

    def split(self, role: str) -> Split:
        """The split that `role` ("train", "val" or "test") reads."""
        return self.collection.split(role)

    def records(self, role: str) -> list[ImageRecord]:
        """Records of the split that `role` ("train", "val" or "test") reads, cached."""
        return self.collection.records(role)

    def boxes(self, role: str) -> dict[int, list[Box]]:
        """Image id -> boxes of `role`'s images; {} when the data has none."""
        return self.collection.boxes(role)

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
            raise CaptionerError(f"the training split {self.split('train').name!r} has no captions to train on")
        if too_long:
            warnings.warn(
                f"truncating {too_long} of {len(encoded)} training captions to max_caption_len="
                f"{self.max_caption_len} words; raise max_caption_len to keep them whole",
                DataWarning,
                stacklevel=2,
            )
        return CaptionPairs(records, encoded, self._source("train", records))

    def _eval_images(self, role: str, *, need_references: bool) -> CaptionImages:
        records = self.records(role)
        if need_references:
            # An image without references cannot be scored; keep it out of val/test, say so.
            scored = [r for r in records if r.captions]
            if len(scored) < len(records):
                warnings.warn(
                    f"leaving {len(records) - len(scored)} images without captions out of the "
                    f"{self.split(role).name!r} split",
                    DataWarning,
                    stacklevel=2,
                )
            records = scored
        return CaptionImages(records, self._source(role, records))

    def _source(self, role: str, records: list[ImageRecord]) -> ImageSource | SplitFeatures:
        """Where the model inputs of `records` come from: the cached features, or the image files."""
        if self.features_dir is None:
            return ImageSource(self.image_size)
        features = SplitFeatures(self.features_dir, self.split(role).name)
        features.require(records)
        return features

    def check_features(self, settings: dict) -> None:
        """With `features_dir`: raise CaptionerError unless its features were extracted with these
        encoder `settings` (`captioner.data.features.check_meta`)."""
        if self.features_dir is not None:
            check_meta(self.features_dir, settings)

    def image_dataloader(self, role: str) -> DataLoader:
        """Every image of `role`'s split once, as eval batches of decoded `images` (even with
        `features_dir`): the input of feature extraction."""
        records = self.records(role)
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
        if stage == "fit":
            self._record_split()

    def _record_split(self) -> None:
        """A drawn split, when no data.split_path keeps it, is written beside the run (rank 0)."""
        made = self.collection.made
        if made is None:
            return
        rank_zero_info(f"split: {made.summary()}")
        if self.split_path is None and self.trainer is not None and self.trainer.is_global_zero:
            path = SplitFile(Path(self.trainer.default_root_dir) / SPLIT_FILE).write(made)
            rank_zero_info(f"split: written to {path}; --data.split_path {path} trains or tests on it again")

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
