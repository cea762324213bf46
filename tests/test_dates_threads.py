"""`captioner dates` chooses one torch thread unless --threads says otherwise."""

from __future__ import annotations

import pytest
import torch

from captioner.cli import main

FAST_FIT = ["--trainer.fast_dev_run", "true", "--trainer.logger", "false", "--data.train_size", "256"]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # neither the default nor the override below
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("flag", "threads"), [([], 1), (["--threads", "2"], 2), (["--threads=2"], 2)])
def test_dates_fit_runs_on_the_chosen_threads(flag, threads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["dates", "fit", *flag, *FAST_FIT, "--trainer.enable_progress_bar", "false"]) == 0
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_thread_counts_are_one_error_line(value, capsys):
    assert main(["dates", "fit", "--threads", value]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --threads must be an integer >= 1, got {value if value == '0' else repr(value)}\n"
    assert torch.get_num_threads() == 3
