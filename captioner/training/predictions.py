"""Writing `Trainer.predict` captions to one JSON-lines file, from any number of processes.

    captioner train predict --config configs/shapes.yaml --ckpt_path runs/demo/checkpoints/best.ckpt \\
        --predictions.path captions.jsonl --trainer.devices 2

Each process appends its captions, with their index in the data set, to its own part file
beside `path` as each batch finishes. When predicting ends, rank 0 merges the parts into
`path` in data-set order, each image exactly once (a distributed sampler that pads its
shards with repeated images makes duplicates; they are dropped), and deletes them. When
predicting fails, each process deletes its own part and `path` is left as it was. With
several machines, `path` must be on a file system they all see.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from captioner.errors import CaptionerError


class CaptionWriter(BasePredictionWriter):
    """Writes the predicted captions as JSON lines, one object per image with the keys of
    `CaptioningModule.predict_step` (path, image_id, caption, score), in data-set order.

    Args:
        path: the output file; None writes `predictions.jsonl` in the trainer's
            `default_root_dir`.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = None if path is None else Path(path)
        self.written: Path | None = None  # the merged file, once a predict run has finished
        self._part = None

    def output_path(self, trainer: pl.Trainer) -> Path:
        return self.path if self.path is not None else Path(trainer.default_root_dir) / "predictions.jsonl"

    def _part_path(self, trainer: pl.Trainer, rank: int) -> Path:
        out = self.output_path(trainer)
        return out.with_name(f"{out.name}.part{rank}-of-{trainer.world_size}")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self.output_path(trainer)
        if out.is_dir():
            raise CaptionerError(f"predictions.path {out} is a directory; name a file, e.g. {out}/captions.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.written = None
        self._part = self._part_path(trainer, trainer.global_rank).open("w", encoding="utf-8")

    def write_on_batch_end(
        self, trainer, pl_module, prediction: list[dict[str, Any]], batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        if batch_indices is None or len(batch_indices) != len(prediction):
            raise CaptionerError("predict gave no data-set indices for a batch; use the data module's predict loader")
        for index, item in zip(batch_indices, prediction):
            self._part.write(json.dumps({"index": int(index), **item}, ensure_ascii=False) + "\n")
        self._part.flush()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._part.close()
        self._part = None
        trainer.strategy.barrier()  # every part is complete
        if trainer.is_global_zero:
            self.written = merge_parts(
                [self._part_path(trainer, rank) for rank in range(trainer.world_size)], self.output_path(trainer)
            )
        trainer.strategy.barrier()  # nobody reads `path` before it is there

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # A failed predict must not leave this rank's part file beside `path`.
        if self._part is None:
            return
        self._part.close()
        self._part = None
        self._part_path(trainer, trainer.global_rank).unlink(missing_ok=True)


def merge_parts(parts: list[Path], out: Path) -> Path:
    """Merge part files of {"index": i, ...} lines into `out`: sorted by index, one line per
    index (the first seen), without the index; the parts are deleted. Written atomically."""
    by_index: dict[int, dict[str, Any]] = {}
    for part in parts:
        with part.open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                by_index.setdefault(record.pop("index"), record)
    partial = out.with_name(out.name + ".tmp")
    with partial.open("w", encoding="utf-8") as merged:
        for index in sorted(by_index):
            merged.write(json.dumps(by_index[index], ensure_ascii=False) + "\n")
    os.replace(partial, out)
    for part in parts:
        part.unlink()
    return out
