"""The prediction writer of `captioner train predict`, on one process (two: tests/test_ddp.py)."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from captioner.training.predictions import CaptionWriter


class _Numbers(pl.LightningModule):
    """Captions each number in the batch as "image N"; raises at batch `fail_at`, if given."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> list[dict]:
        if batch_idx == self.fail_at:
            raise RuntimeError("decoding broke")
        return [{"caption": f"image {int(n)}"} for n in batch]


def _predict(out, module: _Numbers, root) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[CaptionWriter(str(out))],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.predict(module, DataLoader(torch.arange(6), batch_size=2), return_predictions=False)


def test_writes_one_line_per_image_in_order_and_deletes_its_part(tmp_path):
    out = tmp_path / "out" / "captions.jsonl"
    _predict(out, _Numbers(), tmp_path)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"caption": f"image {n}"} for n in range(6)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["captions.jsonl"]


def test_a_failed_predict_leaves_no_part_file_and_the_old_output(tmp_path):
    out = tmp_path / "out" / "captions.jsonl"
    out.parent.mkdir()
    out.write_text("earlier run\n")
    with pytest.raises(RuntimeError, match="decoding broke"):
        _predict(out, _Numbers(fail_at=1), tmp_path)  # batch 0 was already written to the part
    assert sorted(p.name for p in out.parent.iterdir()) == ["captions.jsonl"]
    assert out.read_text() == "earlier run\n"
