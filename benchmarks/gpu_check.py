"""`make gpu-check`: the GPU paths verified in one run on a machine with CUDA — the tests marked
`gpu` (tests/test_gpu.py, and the CUDA cases of tests/test_decoder_reference.py: the decoder
under CUDA autocast in bfloat16 and float16 against the float64 reference) and the benchmarks on
cuda (float32 beside bf16-mixed, where the GPU has bfloat16, and 16-mixed) — written as one JSON.

    python -m benchmarks.gpu_check --out runs/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main as benchmarks_main
from captioner.errors import CaptionerError

ROOT = Path(__file__).resolve().parents[1]


class _Outcomes:
    """A pytest plugin keeping each test's outcome (passed, failed, skipped) by node id."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"), help="the JSON to write")
    parser.add_argument("--tiny", action="store_true", help="benchmarks at toy sizes (seconds, not minutes)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise CaptionerError("gpu-check needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is False)")
    recorder = _Outcomes()
    status = pytest.main(["-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")], plugins=[recorder])
    results = {
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "tests": {"exit_status": int(status), "outcomes": recorder.outcomes},
        "benchmarks": benchmarks_main(["--device", "cuda", *(["--tiny"] if args.tiny else [])]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}: tests exit status {int(status)}", file=sys.stderr)
    return int(status)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CaptionerError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
