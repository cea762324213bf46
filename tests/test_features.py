"""Cached encoder features: `captioner features extract`, and training from them."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from captioner.cli import main
from captioner.data.features import SplitFeatures
from captioner.errors import CaptionerError
from captioner.models import Encoder, EncoderConfig
from captioner.models.config import NOT_IN_FEATURES
from captioner.training.callbacks import AttentionOverlayCallback
from captioner.training.cli import cli_main
from captioner.training.extract import encoder_settings

TINY_CONFIG = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False},
    "model": {
        "encoder": {"backbone": "resnet18", "stages": 2, "grid_size": 4, "fine_tune": "none"},
        "decoder": {"embed_dim": 32, "hidden_dim": 64, "attention_dim": 32, "dropout": 0.0},
        "optimizer": {"lr_schedule": "constant"},
    },
    "data": {"image_size": 64, "batch_size": 8, "eval_batch_size": 8},
}
POSITIONS, CHANNELS = 16, 128  # grid 4x4; resnet18's layer2


@pytest.fixture(scope="module")
def config(synth_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    settings = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "data_dir": str(synth_data)}}
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def extracted(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "tiny"
    assert main(["features", "extract", "--config", str(config), "--out", str(out)]) == 0
    return out


def _module_and_data(config, *overrides):
    """The model and data module the CLI builds from `config` (same seed, same encoder)."""
    cli = cli_main(["--config", str(config), "--trainer.logger", "false", *overrides], run=False)
    return cli.model, cli.datamodule


def test_extract_writes_every_image_once_as_float16(extracted, config, synth_data):
    model, datamodule = _module_and_data(config)
    meta = json.loads((extracted / "meta.json").read_text())
    assert meta["splits"] == {"train": 24, "val": 8, "test": 8}
    settings = encoder_settings(model.model.encoder, model.hparams.image_size)
    assert meta | settings == meta  # every feature setting of the encoder, the image size, SHA-256
    assert (meta["positions"], meta["feature_dim"]) == (POSITIONS, CHANNELS)
    model.eval()
    for split in ("train", "val", "test"):
        index = json.loads((extracted / split / "index_0.json").read_text())
        records = datamodule.records(split)
        assert sorted(map(int, index["images"])) == sorted(r.image_id for r in records)
        rows = np.load(extracted / split / index["shard"], mmap_mode="r")
        assert rows.dtype == np.float16 and rows.shape == (len(records), POSITIONS, CHANNELS)
        assert sorted(row for row, _, _ in index["images"].values()) == list(range(len(records)))
        batch = next(iter(datamodule.image_dataloader(split)))
        with torch.no_grad():
            expected = model.model.encoder(batch["images"])
        for image_id, features, size in zip(batch["image_ids"].tolist(), expected, batch["sizes"].tolist()):
            row, width, height = index["images"][str(image_id)]
            torch.testing.assert_close(torch.from_numpy(rows[row].astype(np.float32)), features, atol=2e-3, rtol=2e-3)
            assert [width, height] == size


def test_batches_and_loss_match_the_encoder_on_the_fly(extracted, config):
    model, images = _module_and_data(config)
    _, cached = _module_and_data(config, "--data.features_dir", str(extracted))
    model.eval()  # dropout is 0; eval mode only fixes the (frozen) encoder's BatchNorm the same way
    for a, b in zip(images.train_dataloader(), cached.train_dataloader()):
        assert "images" not in b and b["features"].dtype == torch.float32
        assert b["features"].shape == (len(b["tokens"]), POSITIONS, CHANNELS)
        for key in ("tokens", "image_ids"):
            assert torch.equal(a[key], b[key])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a trainer
            torch.testing.assert_close(b["features"], model.model.encoder(a["images"]), atol=2e-3, rtol=2e-3)
            torch.testing.assert_close(model.training_step(b, 0), model.training_step(a, 0), atol=1e-3, rtol=1e-3)
    a, b = next(iter(images.val_dataloader())), next(iter(cached.val_dataloader()))
    assert "images" not in b
    assert torch.equal(a["image_ids"], b["image_ids"]) and torch.equal(a["sizes"], b["sizes"])
    assert a["references"] == b["references"] and a["paths"] == b["paths"]


def test_training_from_features_decodes_no_image(extracted, synth_data, tmp_path):
    # Same records, but every image file is now garbage: any attempt to decode one fails.
    data = shutil.copytree(synth_data, tmp_path / "data")
    for image in data.rglob("*.png"):
        image.write_bytes(b"not an image")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "data_dir": str(data)}}))
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--data.features_dir",
            str(extracted),
            "--trainer.logger",
            "false",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "val/CIDEr" in cli.trainer.callback_metrics  # validation decoded from the cached features


def test_attention_overlays_from_cached_features(extracted, config, tmp_path):
    model, datamodule = _module_and_data(config, "--data.features_dir", str(extracted))
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        current_epoch=0,
        global_step=3,
        loggers=[logger],
        val_dataloaders=datamodule.val_dataloader(),
    )
    AttentionOverlayCallback(num_images=2).on_validation_epoch_end(trainer, model.eval())
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir).Reload()
    assert sorted(events.Tags()["images"]) == ["attention/0", "attention/1"]


def test_fine_tuning_with_cached_features_is_refused(extracted, config, capsys):
    args = ["--config", str(config), "--model.encoder.fine_tune", "all", "--trainer.logger", "false"]
    assert main(["train", "fit", *args, "--data.features_dir", str(extracted), "--trainer.fast_dev_run", "true"]) == 2
    assert "model.encoder.fine_tune='all' trains the encoder" in capsys.readouterr().err
    assert (
        main(
            [
                "features",
                "extract",
                "--config",
                str(config),
                "--out",
                str(extracted.parent / "ft"),
                "--model.encoder.fine_tune",
                "all",
            ]
        )
        == 2
    )
    assert "cannot be cached" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (["--model.encoder.grid_size", "2"], "grid_size=4"),
        (["--seed_everything", "1"], "encoder_sha256="),
        # The same weights, features shifted by half a stride: its hash cannot tell.
        (["--model.encoder.align_grid", "false"], "align_grid=True"),
    ],
    ids=["grid_size", "other_random_weights", "align_grid"],
)
def test_features_made_with_other_settings_are_refused(extracted, config, capsys, override, named):
    args = ["train", "fit", "--config", str(config), *override, "--data.features_dir", str(extracted)]
    assert main([*args, "--trainer.logger", "false", "--trainer.fast_dev_run", "true"]) == 2
    err = capsys.readouterr().err
    assert f"{extracted} were extracted with {named}" in err and "captioner features extract" in err


def test_every_encoder_setting_decides_the_features_unless_listed_as_not():
    """A field added to EncoderConfig is part of the cached features' settings by default; the
    ones left out really leave an image's features unchanged."""
    names = {field.name for field in dataclasses.fields(EncoderConfig)}
    assert set(NOT_IN_FEATURES) < names
    settings = EncoderConfig().feature_settings()
    assert set(settings) == names - set(NOT_IN_FEATURES)
    assert {"align_grid", "coord_channels", "grid_size", "stages"} <= set(settings)
    images = torch.randn(2, 3, 64, 64)

    def extracted_with(**changed):
        torch.manual_seed(0)
        encoder = Encoder(EncoderConfig(backbone="resnet18", stages=2, grid_size=4, **changed)).eval()
        with torch.no_grad():
            return encoder_settings(encoder, 64), encoder(images)

    settings, features = extracted_with()
    for changed in ({"fine_tune": "all"}, {"fine_tune": 1}, {"channels_last": True}):
        other_settings, other_features = extracted_with(**changed)
        assert other_settings == settings
        torch.testing.assert_close(other_features, features)
    assert extracted_with(align_grid=not EncoderConfig.align_grid)[0] != settings


def test_missing_extraction_and_nonempty_out_are_clear_errors(extracted, config, tmp_path, capsys):
    with pytest.raises(CaptionerError, match="has no meta.json: extract the features first"):
        SplitFeatures(tmp_path, "train")
    assert main(["features", "extract", "--config", str(config), "--out", str(extracted)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_extract_help_as_a_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "features", "extract", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "--config" in out and "--out" in out
