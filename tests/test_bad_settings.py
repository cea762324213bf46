"""Bad settings and bad numbers: one `error:` line naming the setting, exit 2; NaN losses."""

from __future__ import annotations

import itertools

import pytest
import torch

import captioner.training.objectives.cross_entropy
from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.models import DecoderConfig, EncoderConfig
from captioner.training.cli import cli_main
from captioner.training.loss import caption_loss
from captioner.training.system import CaptioningModule
from tests.fixtures import NO_VALIDATION, TINY_TRAINING, tiny_model, write_malicious_checkpoint

QUICK = [
    *tiny_model(
        model__encoder__stages=1,
        model__decoder__embed_dim=16,
        model__decoder__hidden_dim=16,
        model__decoder__attention_dim=16,
        data__image_size=32,
    ),
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "2",
    *NO_VALIDATION,
]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "setting, message",
    [
        (["--model.encoder.backbone", "resnet9000"], "backbone='resnet9000' is not supported; use one of"),
        (["--model.encoder.grid_size", "0"], "grid_size must be an integer >= 1, got 0"),
        (["--model.decoding.beam_size", "0"], "beam_size must be an integer >= 1, got 0"),
    ],
)
def test_bad_model_setting_is_one_error_line(synth_data, tmp_path, capsys, setting, message):
    args = [
        "train",
        "fit",
        "--data.data_dir",
        str(synth_data),
        *QUICK,
        *setting,
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert message in _one_error_line(capsys)


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_checkpoint_with_another_vocabulary_is_refused(synth_data, tiny_checkpoint, tmp_path, capsys, subcommand):
    # min_word_count 1000 leaves only the 4 specials: a vocabulary unlike the checkpoint's.
    args = [
        "train",
        subcommand,
        "--data.data_dir",
        str(synth_data),
        *TINY_TRAINING,
        "--data.min_word_count",
        "1000",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(tiny_checkpoint),
    ]
    assert main(args) == 2
    words = len(torch.load(tiny_checkpoint, weights_only=True)["hyper_parameters"]["vocab_words"])
    line = _one_error_line(capsys)
    assert f"{tiny_checkpoint} was trained with a vocabulary of {words} words" in line
    assert "one of 4 words" in line and "data.vocab_path" in line


def test_malicious_ckpt_path_is_refused(synth_data, tiny_checkpoint, tmp_path, capsys):
    target = tmp_path / "pwned"
    evil = write_malicious_checkpoint(tmp_path / "evil.ckpt", target, tiny_checkpoint)
    args = [
        "train",
        "test",
        "--data.data_dir",
        str(synth_data),
        *TINY_TRAINING,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(evil),
    ]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert f"checkpoint {evil} was refused" in line and "that loading would call" in line
    assert not target.exists()


def test_same_size_vocabulary_with_other_words_is_refused(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    words = checkpoint["hyper_parameters"]["vocab_words"]
    module = CaptioningModule(
        words[:4] + list(reversed(words[4:])),
        image_size=32,
        encoder=EncoderConfig(backbone="resnet18", stages=1, grid_size=2),
        decoder=DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8),
    )
    with pytest.raises(CaptionerError, match="same size, other words"):
        module.on_load_checkpoint(checkpoint)


class _Recorder:
    """Wraps `CaptioningModule.training_step` to keep the weights seen before each call."""

    def __init__(self, monkeypatch):
        self.before: list[dict[str, torch.Tensor]] = []
        self.module: CaptioningModule | None = None
        original = CaptioningModule.training_step

        def training_step(module, batch, batch_idx):
            self.module = module
            self.before.append({k: v.detach().clone() for k, v in module.state_dict().items()})
            return original(module, batch, batch_idx)

        monkeypatch.setattr(CaptioningModule, "training_step", training_step)


def _nan_loss_on(monkeypatch, calls: set[int]) -> None:
    """Make the loss NaN on the given (1-based) training steps."""
    count = itertools.count(1)

    def loss(*args, **kwargs):
        parts = caption_loss(*args, **kwargs)
        return parts._replace(total=parts.total * float("nan")) if next(count) in calls else parts

    monkeypatch.setattr(captioner.training.objectives.cross_entropy, "caption_loss", loss)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_the_run_naming_the_step(synth_data, tmp_path, monkeypatch, capsys):
    recorder = _Recorder(monkeypatch)
    _nan_loss_on(monkeypatch, {4})  # epoch 2, batch 2: global step 3
    args = [
        "train",
        "fit",
        "--data.data_dir",
        str(synth_data),
        *QUICK,
        "--checkpoint.dirpath",
        str(tmp_path),
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "the training loss is nan at step 3 (epoch 1, batch 1)" in line
    assert "model.skip_nonfinite_loss" in line
    assert _same(recorder.before[-1], recorder.module.state_dict()), "the NaN step must not touch the weights"
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)  # the last good checkpoint is intact
    assert (last["epoch"], last["global_step"]) == (0, 2)


def test_skip_nonfinite_loss_skips_and_counts(synth_data, tmp_path, monkeypatch):
    recorder = _Recorder(monkeypatch)
    _nan_loss_on(monkeypatch, {2})
    with pytest.warns(UserWarning, match=r"skipped the batch at step 1 \(epoch 0, batch 1\).*1 skipped so far"):
        cli = cli_main(
            [
                "fit",
                "--data.data_dir",
                str(synth_data),
                *QUICK,
                "--model.skip_nonfinite_loss",
                "true",
                "--checkpoint.dirpath",
                str(tmp_path),
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
    assert cli.trainer.state.finished
    before = recorder.before
    assert _same(before[1], before[2]), "the skipped step must not touch the weights"
    assert not _same(before[2], before[3]), "the steps after it train as usual"
    adam = cli.trainer.optimizers[0]
    assert all(adam.state[p]["step"] == 3 for p in cli.model.model.decoder.parameters())  # 4 batches, one skipped
    assert cli.trainer.callback_metrics["train/nonfinite_skips"] == 1
