"""Crash safety: a run killed mid-epoch resumes exactly; checkpoints are never half-written."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from captioner.training.checkpoint_io import AtomicCheckpointIO
from captioner.training.cli import cli_main
from tests.fixtures import tiny_model

# Dropout > 0 exercises the RNG; a cosine schedule exercises the scheduler state.
RUN = [
    *tiny_model(
        model__encoder__fine_tune="all",
        model__decoder__embed_dim=16,
        model__decoder__hidden_dim=16,
        model__decoder__attention_dim=16,
        model__decoder__dropout=0.3,
        model__optimizer__lr_schedule="cosine",
        data__eval_batch_size=4,
    ),
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.num_sanity_val_steps",
    "0",
]


class StallInEpoch(pl.Callback):
    """After the first training batch of `epoch`, write `marker` (the global step) and sleep,
    so a test can SIGKILL the run at a known point mid-epoch."""

    def __init__(self, marker: str, epoch: int = 1):
        self.marker, self.epoch = Path(marker), epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            self.marker.write_text(str(trainer.global_step))
            time.sleep(600)


def _run_args(data: Path, run: Path) -> list[str]:
    return [
        "--data.data_dir",
        str(data),
        *RUN,
        "--checkpoint.dirpath",
        str(run / "checkpoints"),
        "--trainer.logger",
        "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run),
        "--trainer.logger.name",
        "logs",
    ]


def _fit(log: Path, *args: str) -> subprocess.Popen:
    """`captioner train fit *args` in a subprocess, its output in the file `log` (a pipe could fill up)."""
    command = [sys.executable, "-m", "captioner.cli", "train", "fit", *args]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.2)


def _last_val_row(run: Path) -> dict[str, float]:
    rows = [row for path in sorted((run / "logs").glob("version_*/metrics.csv")) for row in csv.DictReader(path.open())]
    last = [row for row in rows if row.get("val/CIDEr")][-1]
    return {k: float(v) for k, v in last.items() if k.startswith("val/") and v}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_run_resumes_to_the_same_weights_and_metrics(synth_data, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    marker = tmp_path / "in_epoch_2"
    stall = [{"class_path": "tests.test_resume.StallInEpoch", "init_args": {"marker": str(marker)}}]
    # The uninterrupted run and the one to kill run side by side, to save time.
    logs = {name: tmp_path / f"{name}.log" for name in ("straight", "victim", "resumed")}
    uninterrupted = _fit(logs["straight"], *_run_args(synth_data, straight))
    victim = _fit(logs["victim"], *_run_args(synth_data, crashed), "--trainer.callbacks", json.dumps(stall))
    try:
        _wait_for(marker, victim, logs["victim"])
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    saved = _load(crashed / "checkpoints" / "last.ckpt")
    # Killed one step into epoch 2: last.ckpt is the end of epoch 1 and that step is lost.
    assert (saved["epoch"], saved["global_step"]) == (0, 3) and marker.read_text() == "4"

    resumed = _fit(logs["resumed"], *_run_args(synth_data, crashed), "--ckpt_path", "last")
    for run, log in ((uninterrupted, logs["straight"]), (resumed, logs["resumed"])):
        assert run.wait(timeout=600) == 0, log.read_text()
    assert "Restored all states from the checkpoint" in logs["resumed"].read_text()

    expected, got = _load(straight / "checkpoints" / "last.ckpt"), _load(crashed / "checkpoints" / "last.ckpt")
    assert (got["epoch"], got["global_step"]) == (expected["epoch"], expected["global_step"]) == (1, 6)
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    assert _last_val_row(crashed) == pytest.approx(_last_val_row(straight), rel=0, abs=0, nan_ok=True)


def test_the_cli_saves_checkpoints_atomically(synth_data, tmp_path):
    cli = cli_main(["--data.data_dir", str(synth_data), *RUN, "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def _partial_save(obj, file, *args, **kwargs):
    """Stands in for torch.save dying halfway: half the bytes reach the file."""
    file.write(b"\x80\x02half a checkpoint")
    raise OSError("disk went away")


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    monkeypatch.setattr(torch, "save", _partial_save)
    with pytest.raises(OSError, match="disk went away"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert _load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the partial file is cleaned up


def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    pid = os.fork()
    if pid == 0:  # the child dies mid-write, without any cleanup, as under SIGKILL
        try:
            torch.save = lambda obj, file, *a, **k: (file.write(b"half"), file.flush(), os._exit(9))
            io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert _load(path)["epoch"] == 1
    leftovers = [name for name in os.listdir(tmp_path) if name != "last.ckpt"]
    assert leftovers == [f".{pid}.ckpt-partial"]
    assert "last" not in leftovers[0]  # so `--ckpt_path last` can never pick it
