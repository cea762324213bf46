"""`make gpu-check` on a machine without CUDA: one error line, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this would run the whole GPU check")
def test_gpu_check_without_cuda_is_one_error_line(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: gpu-check needs a CUDA GPU") and done.stderr.count("\n") == 1
    assert not out.exists()
