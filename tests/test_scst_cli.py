"""Self-critical training through `captioner train fit`, starting from a trained checkpoint."""

from __future__ import annotations

import json
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


def _guarded_run(synth_data: Path, out: Path, init_from: Path, max_drop: float, *extra: str):
    """A one-epoch SCST stage validated on boxes, behind the grounding gate."""
    gate = [{"class_path": "captioner.training.grounding_gate.GroundingGate", "init_args": {"max_drop": max_drop}}]
    validated = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    guard = ["--trainer.callbacks", json.dumps(gate), "--checkpoint.monitor", "val/grounded_CIDEr", *extra]
    return _scst_cli(synth_data, out, init_from, *validated, *guard)


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(path)["state_dict"].items() if k.startswith("model.")}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_gated_stage_that_holds_keeps_its_best_epoch(tiny_checkpoint, synth_data, tmp_path):
    # A max_drop of 1 allows any drop: the guarded score is the CIDEr itself.
    cli = _guarded_run(synth_data, tmp_path, tiny_checkpoint, 1.0)
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/grounded_CIDEr"]) == float(metrics["val/CIDEr"]) > 0
    best, last = (_model_state(tmp_path / "checkpoints" / name) for name in ("best.ckpt", "last.ckpt"))
    assert _same(best, last)  # one epoch: its checkpoint is the best
    assert not _same(best, _model_state(tiny_checkpoint))


def test_a_gated_stage_that_never_holds_leaves_the_model_it_started_from(tiny_checkpoint, synth_data, tmp_path):
    # A max_drop of -1 asks for a pointing game above the start + 1: no validation can hold it.
    with pytest.warns(UserWarning, match=r"best.ckpt is the model this stage started from, .*tiny_run"):
        cli = _guarded_run(synth_data, tmp_path, tiny_checkpoint, -1.0)
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/grounded_CIDEr"]) == 0.0 and float(metrics["val/CIDEr"]) > 0
    start = _model_state(tiny_checkpoint)
    assert _same(_model_state(tmp_path / "checkpoints" / "best.ckpt"), start)  # the README's next command uses it
    assert not _same(_model_state(tmp_path / "checkpoints" / "last.ckpt"), start)  # training did move the weights


def test_the_gate_needs_the_checkpoints_kept_by_its_score(tiny_checkpoint, synth_data, tmp_path):
    with pytest.raises(CaptionerError, match="set checkpoint.monitor val/grounded_CIDEr"):
        _guarded_run(synth_data, tmp_path, tiny_checkpoint, 0.02, "--checkpoint.monitor", "val/CIDEr")
