"""Two processes (Lightning DDP, gloo on CPU): every image scored once, only rank 0 writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from captioner.data import synth
from captioner.training.cli import cli_main
from tests.fixtures import NO_VALIDATION, TINY_MODEL, tiny_model

MODEL = tiny_model(
    model__encoder__stages=1,
    model__decoder__embed_dim=16,
    model__decoder__hidden_dim=16,
    model__decoder__attention_dim=16,
    data__image_size=32,
    data__batch_size=4,
    data__eval_batch_size=2,
)
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    """7 validation images: 2 ranks get 4 each, so the sampler pads with one duplicate."""
    return synth.generate(tmp_path_factory.mktemp("odd"), train=8, val=7, test=0, size=32, seed=1)


def _captioner_train(*args: str, log: Path) -> subprocess.Popen:
    """Start `captioner train *args` in a subprocess (DDP launches its other rank from it)."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "captioner.cli", "train", *args], stdout=out, stderr=subprocess.STDOUT
        )


def _finish(process: subprocess.Popen, log: Path) -> None:
    assert process.wait(timeout=600) == 0, log.read_text()
    assert "Starting with 2 processes" in log.read_text()


def test_ddp_fit_and_validate_score_every_image_once_and_write_once(odd_data, tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    overlays = [{"class_path": "captioner.training.callbacks.AttentionOverlayCallback", "init_args": {"num_images": 2}}]
    fit = _captioner_train(
        "fit",
        "--data.data_dir",
        str(odd_data),
        *MODEL,
        *DDP,
        "--trainer.max_epochs",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.default_root_dir",
        str(run),
        "--checkpoint.dirpath",
        str(run / "checkpoints"),
        "--trainer.logger",
        "pytorch_lightning.loggers.TensorBoardLogger",
        "--trainer.logger.save_dir",
        str(run),
        "--trainer.logger.name",
        "logs",
        "--trainer.callbacks",
        json.dumps(overlays),
        log=tmp_path / "fit.log",
    )
    _finish(fit, tmp_path / "fit.log")

    # Validate copies of last.ckpt (each gets its own val_metrics.json) with 2 processes and,
    # meanwhile, with 1.
    copies = {}
    for name in ("two", "one"):
        (tmp_path / name).mkdir()
        copies[name] = shutil.copy(ckpt, tmp_path / name / "last.ckpt")
    validate = _captioner_train(
        "validate",
        "--data.data_dir",
        str(odd_data),
        *MODEL,
        *DDP,
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path / "two"),
        "--ckpt_path",
        str(copies["two"]),
        log=tmp_path / "validate.log",
    )
    cli_main(
        [
            "validate",
            "--data.data_dir",
            str(odd_data),
            *MODEL,
            "--trainer.devices",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "one"),
            "--ckpt_path",
            str(copies["one"]),
        ]
    )
    _finish(validate, tmp_path / "validate.log")
    two_processes = json.loads((tmp_path / "two" / "val_metrics.json").read_text())
    one_process = json.loads((tmp_path / "one" / "val_metrics.json").read_text())
    assert {"val/BLEU-4", "val/CIDEr", "val/METEOR"} <= set(one_process)
    # Padding duplicates counted twice would change CIDEr's document frequencies and BLEU's sums.
    assert two_processes == pytest.approx(one_process, rel=1e-9, nan_ok=True)

    # Only rank 0 wrote: one checkpoint folder, one config, one event file with each overlay once.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [p.relative_to(run) for p in run.rglob("config.yaml")] == [Path("logs/version_0/config.yaml")]
    (events,) = run.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
    assert sorted(accumulator.Tags()["images"]) == ["attention/0", "attention/1"]
    assert all(len(accumulator.Images(tag)) == 1 for tag in ("attention/0", "attention/1"))


def test_ddp_predict_writes_every_image_once_in_order_like_one_process(synth_data, tiny_checkpoint, tmp_path):
    # The conftest set's training split (so the checkpoint's vocabulary) with 7 test images:
    # two ranks then get 4 and 3, or 4 and 4 with a padding duplicate.
    data = synth.generate(tmp_path / "data", train=24, val=1, test=7, size=64, seed=0)
    common = ["--data.data_dir", str(data), *TINY_MODEL, "--data.eval_batch_size", "2", "--trainer.logger", "false"]
    common += ["--ckpt_path", str(tiny_checkpoint)]
    two = _captioner_train(
        "predict", *common, *DDP, "--predictions.path", str(tmp_path / "two.jsonl"), log=tmp_path / "predict.log"
    )
    cli_main(["predict", *common, "--trainer.devices", "1", "--predictions.path", str(tmp_path / "one.jsonl")])
    _finish(two, tmp_path / "predict.log")

    one_process = (tmp_path / "one.jsonl").read_text()
    records = [json.loads(line) for line in one_process.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in sorted((data / "test").glob("*.png"))]
    assert all(set(r) == {"path", "image_id", "caption", "score"} and r["caption"] for r in records)
    # Same images, order and captions; scores to float32 rounding (the ranks batch other images together).
    two_processes = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert [{**r, "score": None} for r in two_processes] == [{**r, "score": None} for r in records]
    assert [r["score"] for r in two_processes] == pytest.approx([r["score"] for r in records], abs=1e-5)
    assert sorted(p.name for p in tmp_path.glob("*.jsonl*")) == ["one.jsonl", "two.jsonl"]  # parts merged away


def test_ddp_hard_attention_then_scst_from_its_checkpoint(odd_data, tmp_path):
    """Both objectives under two processes: the hard-attention baseline averages rewards over
    the ranks (every rank must join that all-reduce), and SCST scores each rank's samples
    against their own images' references."""
    common = [
        "--data.data_dir",
        str(odd_data),
        *MODEL,
        *DDP,
        "--trainer.max_epochs",
        "1",
        *NO_VALIDATION,
    ]
    hard_run, scst_run = tmp_path / "hard", tmp_path / "scst"
    hard = _captioner_train(
        "fit",
        *common,
        "--model.decoder.attention",
        "hard",
        "--model.objective",
        "HardAttention",
        "--trainer.default_root_dir",
        str(hard_run),
        "--checkpoint.dirpath",
        str(hard_run / "checkpoints"),
        log=tmp_path / "hard.log",
    )
    _finish(hard, tmp_path / "hard.log")
    hard_ckpt = hard_run / "checkpoints" / "last.ckpt"
    baseline = torch.load(hard_ckpt, weights_only=True)["state_dict"]["objective.moving_average.value"]
    assert baseline < 0  # a mean log-likelihood was recorded
    scst = _captioner_train(
        "fit",
        *common,
        "--model.decoder.attention",
        "hard",
        "--model.init_from",
        str(hard_ckpt),
        "--model.objective",
        "SelfCritical",
        "--model.objective.samples",
        "2",
        "--model.objective.baseline",
        "mean",
        "--model.decoding.max_len",
        "6",
        "--trainer.default_root_dir",
        str(scst_run),
        "--checkpoint.dirpath",
        str(scst_run / "checkpoints"),
        log=tmp_path / "scst.log",
    )
    _finish(scst, tmp_path / "scst.log")
    before = torch.load(hard_ckpt, weights_only=True)["state_dict"]
    after = torch.load(scst_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("model.decoder."))
