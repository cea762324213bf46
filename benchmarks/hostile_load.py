"""What loading a hostile model folder costs: seconds and memory per kind of lie; one JSON object.

    python -m benchmarks.hostile_load --model exports/shapes
    python -m benchmarks.hostile_load --ckpt runs/demo/checkpoints/best.ckpt   # exported first

Each case is a copy of the export with config.json or model.safetensors altered as a stranger
might (issue 34's probes), loaded with `load_pretrained` in this process: the wall time, and the
peak resident memory above the resident memory just before the load (Linux: the peak is reset
through /proc/self/clear_refs before each case, and freed memory handed back after it), after
one warm-up load. The genuine export is the first case, for comparison. Each case must end in one CaptionerError, except
the genuine one. Run it on a quiet machine (the load average is printed with the numbers).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.inference.export import export, load_pretrained
from captioner.serve.budget import release_free_memory

# A case: (config, header, data) -> (config.json text, model.safetensors bytes).
Case = Callable[[dict, dict, bytes], tuple[str, bytes]]


def _weights(header: object, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _with_config(change: Callable[[dict], None]) -> Case:
    def case(config: dict, header: dict, data: bytes) -> tuple[str, bytes]:
        change(config)
        return json.dumps(config), _weights(header, data)

    return case


def _set(section: str, key: str, value: object) -> Case:
    return _with_config(lambda config: config[section].__setitem__(key, value))


def _words(n: int) -> Case:
    return _with_config(lambda config: config["vocab_words"].extend(f"w{i}" for i in range(n)))


def _nan(config: dict, header: dict, data: bytes) -> tuple[str, bytes]:
    start = header["decoder.lstm.weight_hh"]["data_offsets"][0]
    return json.dumps(config), _weights(header, data[:start] + struct.pack("<f", float("nan")) + data[start + 4 :])


def cases(words: int) -> dict[str, Case]:
    """The hostile folders, by name (`words`: how many words the largest vocabulary lie adds)."""
    return {
        "genuine": _with_config(lambda config: None),
        "decoder.hidden_dim 1e9": _set("decoder", "hidden_dim", 10**9),
        "decoder.hidden_dim 1e5": _set("decoder", "hidden_dim", 10**5),
        "encoder.grid_size 1e6": _set("encoder", "grid_size", 10**6),
        "image.size 1e6": _set("image", "size", 10**6),
        "200k more words": _words(200_000),
        f"{words:,} more words": _words(words),
        "decoder.hidden_dim 1024 (weights disagree)": _set("decoder", "hidden_dim", 1024),
        "a ResNet-152 at a 64 grid (weights disagree)": _with_config(
            lambda config: config["encoder"].update(backbone="resnet152", stages=None, grid_size=64)
        ),
        "config.json: 200,000 nested brackets": lambda c, h, d: ("[" * 200_000, _weights(h, d)),
        "header length 1e15": lambda c, h, d: (json.dumps(c), struct.pack("<Q", 10**15) + b"{}"),
        "header: 200,000 nested brackets": lambda c, h, d: (
            json.dumps(c),
            struct.pack("<Q", 200_000) + b"[" * 200_000,
        ),
        "header: 5,000 tensors": lambda c, h, d: (
            json.dumps(c),
            _weights({f"t{i}": h["decoder.embedding.weight"] for i in range(5000)}, d),
        ),
        "header: a 1e9 x 1e9 tensor": lambda c, h, d: (
            json.dumps(c),
            _weights({**h, "decoder.embedding.weight": {**h["decoder.embedding.weight"], "shape": [10**9, 10**9]}}, d),
        ),
        "a NaN weight": _nan,
    }


def resident_bytes(field: str) -> int | None:
    """VmRSS or VmHWM (peak) of this process from /proc/self/status, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Make VmHWM the current resident size (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(folder: Path) -> dict[str, object]:
    gc.collect()
    release_free_memory()
    measurable = reset_peak()
    base = resident_bytes("VmRSS")
    start = time.perf_counter()
    try:
        loaded = load_pretrained(folder)
        outcome = "loaded"
    except CaptionerError as error:
        loaded, outcome = None, str(error).replace(str(folder), "FOLDER")[:160]
    seconds = time.perf_counter() - start
    peak = resident_bytes("VmHWM") if measurable else None
    del loaded
    over = None if peak is None or base is None else round((peak - base) / 2**20, 1)
    return {"seconds": round(seconds, 3), "peak_mb_over_base": over, "outcome": outcome}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="an export folder (`captioner export`)")
    source.add_argument("--ckpt", type=Path, help="a checkpoint, exported into a temporary folder first")
    parser.add_argument("--words", type=int, default=10_000_000, help="words of the largest vocabulary lie")
    parser.add_argument("--only", nargs="+", metavar="CASE", help="run only these cases (by name)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            model = Path(scratch) / "export"
            export(args.ckpt, model)
        config = json.loads((model / "config.json").read_text())
        raw = (model / "model.safetensors").read_bytes()
        length = struct.unpack("<Q", raw[:8])[0]
        header, data = json.loads(raw[8 : 8 + length]), raw[8 + length :]
        load_pretrained(model)  # a warm-up: imports and first-use allocations are not the cases' cost
        results = {}
        for name, case in cases(args.words).items():
            if args.only and name not in args.only:
                continue
            folder = Path(scratch) / "case"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(model, folder)
            text, weights = case(json.loads(json.dumps(config)), json.loads(json.dumps(header)), data)
            (folder / "config.json").write_text(text)
            (folder / "model.safetensors").write_bytes(weights)
            results[name] = measure(folder)
    report = {"cases": results, "load_average": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
