"""The image path before and after a decoder change, in one run: prints one JSON object.

python -m benchmarks.mask_overhead --before 78c209b      # the commit before the decoder's mask

The `captioner/models/decoder.py` and `captioner/decoding.py` of `--before` (a commit from
before `DecoderConfig`, whose Decoder takes its sizes as keywords) are loaded from git
beside the working tree's, both decoders get the same weights, and a training step
(teacher-forced forward + backward) and a beam search over the same inputs are timed
interleaved, each first in turn (median of `--repeats`), so machine load hits both alike. Image path: no mask.
Ratios are after / before (1.0 = no change; above 1 = slower now).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from captioner.models import DecoderConfig, FusedDecoder
from captioner.models import search as decoding

ROOT = Path(__file__).resolve().parents[1]


def _module_at(commit: str, relative: str, name: str, directory: Path):
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:{relative}"], check=True, capture_output=True, text=True
    ).stdout
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mask_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git commit to compare against")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--width", type=int, default=256, help="embedding, LSTM and attention width")
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=16, help="caption length")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        old_decoder = _module_at(args.before, "captioner/models/decoder.py", "_before_decoder", Path(tmp))
        old_decoding = _module_at(args.before, "captioner/decoding.py", "_before_decoding", Path(tmp))
    sizes = dict(embed_dim=args.width, hidden_dim=args.width, attention_dim=args.width, dropout=0.0)
    torch.manual_seed(0)
    after = FusedDecoder(DecoderConfig(**sizes), args.vocab, args.feature_dim)
    before = old_decoder.Decoder(args.vocab, args.feature_dim, **sizes)
    before.load_state_dict(after.state_dict())
    features = torch.randn(args.batch, args.grid * args.grid, args.feature_dim)
    tokens = torch.randint(4, args.vocab, (args.batch, args.steps))

    def train_step(decoder):
        logits, alphas = decoder(features, tokens)
        (logits.logsumexp(-1).mean() + alphas.pow(2).mean()).backward()

    def beam(module, decoder):
        decoder.eval()
        module.beam_search(decoder, features, start_id=1, end_id=2, beam_size=args.beam, max_len=args.steps)
        decoder.train()

    cases = {
        "train_step": (lambda: train_step(before), lambda: train_step(after)),
        "beam_search": (lambda: beam(old_decoding, before), lambda: beam(decoding, after)),
    }
    results: dict = {"before": args.before, "threads": torch.get_num_threads(), **vars(args)}
    for name, (run_before, run_after) in cases.items():
        run_before(), run_after()  # warm-up
        times_before, times_after = [], []
        for i in range(args.repeats):  # interleaved, and in turn first, so load changes hit both alike
            if i % 2:
                times_after.append(_seconds(run_after))
                times_before.append(_seconds(run_before))
            else:
                times_before.append(_seconds(run_before))
                times_after.append(_seconds(run_after))
        results[f"{name}_before_s"] = statistics.median(times_before)
        results[f"{name}_after_s"] = statistics.median(times_after)
        results[f"{name}_ratio"] = results[f"{name}_after_s"] / results[f"{name}_before_s"]
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
