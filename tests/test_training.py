"""Training through the Lightning CLI, in-process, on the tiny synthetic data set."""

import csv
import json
import shutil

import pytest
import torch

from captioner.training.cli import cli_main
from captioner.training.system import CaptioningModule
from tests.fixtures import tiny_model

# The shared tiny model, fine-tuning its encoder, with a wider LSTM so that 4 epochs learn.
TINY = tiny_model(model__encoder__fine_tune="all", model__decoder__hidden_dim=64)


def test_fast_dev_run(synth_data, tmp_path):
    cli = cli_main(
        [
            "fit",
            "--data.data_dir",
            str(synth_data),
            *TINY,
            "--trainer.fast_dev_run",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert cli.trainer.state.finished
    assert len(cli.model.vocab) == len(cli.datamodule.vocab)


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    """A short real run: 4 epochs, CSV logs and checkpoints in a temp folder."""
    run = tmp_path_factory.mktemp("run")
    cli = cli_main(
        [
            "fit",
            "--data.data_dir",
            str(synth_data),
            *TINY,
            "--model.optimizer.decoder_lr",
            "0.003",
            "--model.optimizer.encoder_lr",
            "0.001",
            "--trainer.max_epochs",
            "4",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.logger",
            "pytorch_lightning.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(run),
            "--trainer.logger.name",
            "logs",
            "--checkpoint.dirpath",
            str(run / "checkpoints"),
        ]
    )
    return cli, run


def test_loss_falls_and_metrics_are_logged(trained):
    cli, run = trained
    rows = list(csv.DictReader((run / "logs" / "version_0" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 8
    quarter = len(losses) // 4
    assert sum(losses[-quarter:]) / quarter < 0.8 * sum(losses[:quarter]) / quarter
    val_rows = [r for r in rows if r.get("val/CIDEr")]
    assert len(val_rows) == 4  # one per epoch
    for name in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "pointing_game", "attention_in_box"):
        assert f"val/{name}" in cli.trainer.callback_metrics
    assert "val/deletion_faithfulness" not in cli.trainer.callback_metrics  # model.validation_faithfulness is off


def test_checkpoints_and_reload_give_same_captions(trained):
    cli, run = trained
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    assert best.is_file() and last.is_file()
    reloaded = CaptioningModule.load_from_checkpoint(last, map_location="cpu").eval()
    model = cli.model.eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    original = model.captions(batch)
    again = reloaded.captions(batch)
    assert [c.tokens for c in again] == [c.tokens for c in original]
    assert reloaded.hparams.vocab_words == cli.datamodule.vocab_words


def test_test_subcommand_writes_metrics_json(trained, synth_data):
    _cli, run = trained
    best = run / "checkpoints" / "best.ckpt"
    tested = cli_main(
        [
            "test",
            "--data.data_dir",
            str(synth_data),
            *TINY,
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(run),
            "--ckpt_path",
            str(best),
        ]
    )
    metrics = json.loads((best.parent / "metrics.json").read_text())
    assert {"test/BLEU-4", "test/CIDEr", "test/METEOR", "test/pointing_game", "test/attention_in_box"} <= set(metrics)
    assert 0.0 < metrics["test/chance_pointing_game"] < 1.0
    # Each image has at least one object, and every caption names its kinds, so grounding
    # counted at least one word per image decoded.
    assert metrics["test/grounded_words"] >= 1
    # Each word's deletion test runs at test time (not in validation, unless asked).
    assert metrics["test/deletion_words"] >= 1 and 0.0 <= metrics["test/deletion_dependent_share"] <= 1.0
    assert metrics["test/object_deletion_words"] >= 1 and "test/object_deletion_faithfulness" in metrics
    # The file holds exactly what the test run scored, every test metric and nothing else.
    logged = {name: float(value) for name, value in tested.trainer.callback_metrics.items()}
    assert metrics == {name: value for name, value in logged.items() if name.startswith("test/")}


def test_checkpoint_hyperparameters_are_plain_data(trained):
    _, run = trained
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert isinstance(hparams["vocab_words"], list) and hparams["vocab_words"][:4] == [
        "<pad>",
        "<start>",
        "<end>",
        "<unk>",
    ]
    assert hparams["image_size"] == 64
    # The settings dataclasses travel as dicts, so weights_only loading can read them.
    assert hparams["encoder"]["backbone"] == "resnet18" and hparams["decoder"]["embed_dim"] == 32
    assert hparams["decoding"] == {"beam_size": 3, "max_len": 30, "length_normalize": True, "allow_unk": False}
    assert {".".join(k.split(".")[:2]) for k in ckpt["state_dict"]} == {"model.encoder", "model.decoder"}


def test_a_checkpoint_from_before_the_model_object_still_tests(trained, synth_data, tmp_path):
    _cli, run = trained
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    # As captioner wrote it before: encoder.*/decoder.* at the top, the optimiser's settings
    # flat among the hyper-parameters, the runtime switches beside them, the objective chosen by
    # flags, the grounding gate a model setting and the faithfulness switch under its old name.
    checkpoint["state_dict"] = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    hparams = checkpoint["hyper_parameters"]
    hparams.update(hparams.pop("optimizer"), compile=False, tf32=True)
    hparams.update(hparams.pop("objective")["init_args"], hard_attention={"baseline": "moving_average"})
    hparams.update(scst=None, keep_if_grounded=None)
    hparams["validation_erasure"] = hparams.pop("validation_faithfulness")
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    torch.save(checkpoint, tmp_path / "old" / "best.ckpt")
    shutil.copy(run / "checkpoints" / "best.ckpt", tmp_path / "new" / "best.ckpt")
    args = ["--data.data_dir", str(synth_data), *TINY, "--trainer.logger", "false"]
    for layout in ("old", "new"):
        ckpt = tmp_path / layout / "best.ckpt"
        cli_main(["test", *args, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt)])
    then, now = (json.loads((tmp_path / layout / "metrics.json").read_text()) for layout in ("old", "new"))
    assert then == now  # the same weights, settings and scores
