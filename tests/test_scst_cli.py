"""Self-critical training through `captioner train fit`, starting from a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner.errors import CaptionerError
from captioner.inference.checkpoint import load_checkpoint, load_model, load_weights
from captioner.training.cli import cli_main
from captioner.vocab import Vocabulary
from tests.fixtures import TINY_TRAINING


def _scst_cli(synth_data: Path, out: Path, init_from: Path, *extra: str):
    return cli_main(
        [
            "fit",
            "--data.data_dir",
            str(synth_data),
            *TINY_TRAINING,
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.default_root_dir",
            str(out),
            "--checkpoint.dirpath",
            str(out / "checkpoints"),
            "--model.init_from",
            str(init_from),
            "--model.objective",
            "SelfCritical",
            "--model.objective.samples",
            "2",
            "--model.objective.baseline",
            "mean",
            "--model.decoding.max_len",
            "8",
            *extra,
        ]
    )


def _scst_run(synth_data: Path, out: Path, init_from: Path, *extra: str) -> Path:
    _scst_cli(synth_data, out, init_from, *extra)
    return out / "checkpoints" / "best.ckpt"


def _decoder_state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(path)["state_dict"].items() if k.startswith("model.decoder.")}


def test_scst_fine_tunes_the_checkpoint_it_starts_from(tiny_checkpoint, synth_data, tmp_path):
    # With a zero learning rate the weights must come out exactly as they went in: the run
    # started from init_from's weights, not from a fresh initialisation.
    frozen = _scst_run(synth_data, tmp_path / "lr0", tiny_checkpoint, "--model.optimizer.decoder_lr", "0")
    start = _decoder_state(tiny_checkpoint)
    for name, tensor in _decoder_state(frozen).items():
        assert torch.equal(tensor, start[name]), name
    tuned = _scst_run(synth_data, tmp_path / "tuned", tiny_checkpoint)
    assert any(not torch.equal(tensor, start[name]) for name, tensor in _decoder_state(tuned).items())
    hparams = load_checkpoint(tuned)["hyper_parameters"]
    assert hparams["objective"] == {
        "class_path": "captioner.training.objectives.self_critical.SelfCritical",
        "init_args": {"samples": 2, "baseline": "mean"},
    }
    assert load_model(tuned).model.decoder.config.attention == "soft"  # still a plain captioning checkpoint


def test_init_from_refuses_another_vocabulary(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    other = Vocabulary([*model.vocab.words[:-1], "zebra"])
    with pytest.raises(CaptionerError, match="same size, other words"):
        load_weights(tiny_checkpoint, model.model, other)


def _guarded_run(synth_data: Path, out: Path, init_from: Path, tolerance: str):
    """A one-epoch SCST stage validated on boxes, keeping checkpoints on val/grounded_CIDEr."""
    validated = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    guard = ["--checkpoint.monitor", "val/grounded_CIDEr", "--model.keep_if_grounded", tolerance]
    return _scst_cli(synth_data, out, init_from, *validated, *guard)


def test_keep_if_grounded_scores_cider_only_where_the_pointing_game_holds(tiny_checkpoint, synth_data, tmp_path):
    # A tolerance of 1 allows any drop: the guarded score is the CIDEr itself.
    held = _guarded_run(synth_data, tmp_path / "held", tiny_checkpoint, "1.0").trainer.callback_metrics
    assert float(held["val/grounded_CIDEr"]) == float(held["val/CIDEr"]) > 0
    # A tolerance of -1 asks for a pointing game above 1 + the start: no epoch can hold it.
    with pytest.warns(UserWarning, match="keep the model it started from"):
        lost = _guarded_run(synth_data, tmp_path / "lost", tiny_checkpoint, "-1.0").trainer.callback_metrics
    assert float(lost["val/grounded_CIDEr"]) == 0.0 and float(lost["val/CIDEr"]) > 0
