"""Decoder and decoding speed at COCO sizes; prints one JSON object.

python -m benchmarks            # COCO sizes, a few minutes on 2 CPU cores
python -m benchmarks --tiny     # toy sizes, seconds (used by the tests)
python -m benchmarks --only decoder_train,decoder_train_bound --threads 1   # some, on one thread
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform

import torch

from benchmarks.suite import COCO, MEASUREMENTS, TINY, Context, run

# Modules whose @measurement functions register themselves in suite.MEASUREMENTS on import;
# they run in this order. To add measurements, write them in a module and list it here.
MEASUREMENT_MODULES = ["benchmarks.suite", "benchmarks.cached", "benchmarks.objectives"]


def cpu_info(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo ("model name", "flags"), or None off Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine(device: torch.device) -> dict:
    """What every benchmark JSON records about where it ran, including the CPU's bfloat16
    instructions: AVX512-BF16 (dot products) and AMX (tile matrix multiplies), from its flags."""
    flags = set((cpu_info("flags") or "").split())
    return {
        "device": device.type,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cpu": cpu_info("model name") or platform.processor() or "unknown",
        "cpu_avx512_bf16": "avx512_bf16" in flags,
        "cpu_amx": {"amx_tile", "amx_bf16"} <= flags,
        "load_average_1min": os.getloadavg()[0],  # at the start; the machine may be shared
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a seconds-long smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", help="comma-separated measurements to run (their function names), not all")
    parser.add_argument(
        "--threads", type=int, help="CPU threads (torch.set_num_threads); one thread on a machine others load"
    )
    args = parser.parse_args(argv)
    for name in MEASUREMENT_MODULES:
        importlib.import_module(name)
    measurements = MEASUREMENTS
    if args.only:
        named = {measure.__name__: measure for measure in MEASUREMENTS}
        unknown = sorted(set(args.only.split(",")) - set(named))
        if unknown:
            parser.error(f"unknown measurements {unknown}; known: {sorted(named)}")
        measurements = [named[name] for name in args.only.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {
        **machine(device),
        "sizes": "tiny" if args.tiny else "coco",
        **run(Context(TINY if args.tiny else COCO, device), measurements),
    }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
