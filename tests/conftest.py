"""Shared fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from captioner.data import synth

# Hypothesis keeps its files (example database, caches) in a temporary folder: by default they
# land in the working directory at collection, before any fixture moves the test elsewhere.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="captioner-hypothesis-"))

SYNTH_COUNTS = {"train": 24, "val": 8, "test": 8}
SYNTH_SIZE = 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _session_in_a_temporary_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Session and module fixtures run in a temporary directory, so nothing written by a relative
    path lands in the checkout; subprocesses (`python -m captioner.cli`, `-m benchmarks`) still
    import this checkout's code through PYTHONPATH."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        yield


@pytest.fixture(autouse=True)
def _test_in_its_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs with its own tmp_path as the working directory."""
    monkeypatch.chdir(tmp_path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA: skipped on machines without it."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make gpu-check` on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic shapes set (24 train / 8 val / 8 test images, 64 px, seed 0), made once.

    Layout: `<split>/*.png`, `annotations/{captions,instances}_<split>.json`,
    `dataset_shapes.json`. Treat it as read-only: every test in the session shares it.
    """
    return synth.generate(tmp_path_factory.mktemp("shapes"), size=SYNTH_SIZE, seed=0, **SYNTH_COUNTS)


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.ckpt of a seconds-long run through the real CLI on `synth_data` (see tests/fixtures.py)."""
    from tests.fixtures import train_tiny_checkpoint

    return train_tiny_checkpoint(synth_data, tmp_path_factory.mktemp("tiny_run"))
