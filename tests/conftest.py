"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.data import synth

SYNTH_COUNTS = {"train": 24, "val": 8, "test": 8}
SYNTH_SIZE = 64


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
