"""A checkpoint carrying a pickled callable is refused with a message naming it; nothing runs."""

from __future__ import annotations

import os

import pytest
import torch

from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.inference.checkpoint import load_checkpoint
from tests.fixtures import TINY_TRAINING

SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux and macOS


class _RunsAShellCommand:
    """Unpickling this would call os.system("true")."""

    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture
def evil(tiny_checkpoint, tmp_path, monkeypatch):
    """A genuine checkpoint plus the payload; os.system is swapped for a recorder so that a
    loader which did run the payload would be caught, not run a shell."""
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["callbacks"] = {"innocent": _RunsAShellCommand()}
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    calls = []
    monkeypatch.setattr(os, "system", calls.append)
    yield path
    assert calls == []


def test_the_message_names_the_pickled_callable(evil):
    with pytest.raises(CaptionerError) as caught:
        load_checkpoint(evil)
    message = str(caught.value)
    assert f"pickled callable or class, {SYSTEM}, that loading would call" in message
    assert "not a PyTorch checkpoint" not in message and str(evil) in message


def test_a_bare_pickled_callable_is_named_too(tmp_path, monkeypatch):
    path = tmp_path / "bare.ckpt"
    torch.save(_RunsAShellCommand(), path)
    calls = []
    monkeypatch.setattr(os, "system", calls.append)
    with pytest.raises(CaptionerError, match=f"{SYSTEM}, that loading would call"):
        load_checkpoint(path)
    assert calls == []


def test_the_training_cli_names_it(evil, synth_data, tmp_path, capsys):
    args = ["train", "test", "--data.data_dir", str(synth_data), *TINY_TRAINING]
    assert main([*args, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(evil)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint {evil} was refused")
    assert f"{SYSTEM}, that loading would call" in err[0]
