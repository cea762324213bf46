"""Inference precision: speed of fp32, bf16 and int8 captioning, and their captions on a checkpoint.

python -m benchmarks.precision                    # ResNet-101 at 256², beam 3, random weights (~2 min)
python -m benchmarks.precision --ckpt runs/demo/checkpoints/best.ckpt --data data/shapes [--beam-size 1]
python -m benchmarks.precision --tiny             # toy sizes, seconds (used by the tests)

Speed: end-to-end captioning of a batch of images (encoder, then beam search with beam 3)
through `captioner.inference.precision.inference_model`, as `Captioner` runs it; the precisions take
turns, twice, and each keeps its best time, so all see the same (shared) machine. int8's
one-off calibration is timed apart. With --ckpt: captions of the data's test split in each
precision, the share of images whose caption equals fp32's, and BLEU-4 / CIDEr of each; and,
where the device multiplies bfloat16, "bf16_mixed_decoder": the float32 encoder with the
decoder's products in bfloat16 (autocast, as in bf16-mixed training), which is what decoding
would give if it did not keep float32 (`captioner.models.search.decode_captions`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.__main__ import machine
from benchmarks.suite import COCO, END, START, TINY
from captioner.inference.precision import PRECISIONS, bf16_supported, inference_model, int8_supported
from captioner.models import DecoderConfig, EncoderConfig
from captioner.models.captioner import ShowAttendTell
from captioner.models.search import DecodingConfig, beam_search, greedy_decode
from captioner.vocab import Vocabulary

BEAM = 3


def available(device: torch.device) -> list[str]:
    supported = {"fp32": True, "bf16": bf16_supported(device), "int8": int8_supported(device)}
    return [name for name in PRECISIONS if supported[name]]


def speed(tiny: bool, device: torch.device, batch: int | None) -> dict[str, float]:
    s = TINY if tiny else COCO
    batch = batch or s.image_batch
    torch.manual_seed(0)
    width = DecoderConfig(embed_dim=s.width, hidden_dim=s.width, attention_dim=s.width)
    model = ShowAttendTell.for_images(EncoderConfig(backbone=s.backbone, grid_size=s.grid), width, s.vocab).eval()
    images = torch.randn(batch, 3, s.image_size, s.image_size)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(s.vocab - 4))])
    assert (vocab.start_id, vocab.end_id) == (START, END)
    settings = DecodingConfig(beam_size=BEAM, max_len=s.caption_len)
    results: dict[str, float] = {"images_per_batch": batch, "beam_size": BEAM, "max_len": s.caption_len}
    models = {}
    for name in available(device):
        start = time.perf_counter()
        models[name] = inference_model(model, name, device, calibration=images)
        if name == "int8":
            results["int8_calibration_s"] = time.perf_counter() - start
    best = {name: float("inf") for name in models}
    for _ in range(2):
        for name, runtime in models.items():
            start = time.perf_counter()
            with torch.inference_mode():
                runtime.caption(runtime.encode(images.to(device)), vocab, settings)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    for name, seconds in best.items():
        results[f"{name}_images_per_s"] = batch / seconds
        results[f"{name}_speedup"] = best["fp32"] / seconds
    return results


def agreement(ckpt: Path, data_dir: Path, device: torch.device, beam_size: int = BEAM) -> dict[str, float]:
    from captioner.data import CaptionDataModule
    from captioner.evaluation.captions import caption_scores
    from captioner.inference.api import Captioner

    records = CaptionDataModule(str(data_dir)).records("test")
    paths = [record.path for record in records]
    references = {record.image_id: list(record.captions) for record in records}
    captions = {}
    for name in available(device):
        # int8 calibrates on its first batch: the first 16 test images.
        captioner = Captioner.from_checkpoint(ckpt, device=device, precision=name)
        captions[name] = [r.caption for r in captioner.caption(paths, beam_size=beam_size)]
    if bf16_supported(device):
        captions["bf16_mixed_decoder"] = mixed_decoder_captions(
            Captioner.from_checkpoint(ckpt, device), paths, beam_size
        )
    results: dict[str, float] = {"test_images": len(paths), "beam_size": beam_size}
    for name, said in captions.items():
        scores = caption_scores(references, {record.image_id: c for record, c in zip(records, said)})
        results[f"{name}_BLEU-4"], results[f"{name}_CIDEr"] = scores["BLEU-4"], scores["CIDEr"]
        if name != "fp32":
            same = sum(a == b for a, b in zip(said, captions["fp32"]))
            results[f"{name}_captions_equal_to_fp32"] = same / len(paths)
    return results


def mixed_decoder_captions(captioner, paths: list[Path], beam_size: int, batch: int = 16) -> list[str]:
    """Captions of `paths` by a float32 `Captioner`'s encoder and its decoder under bfloat16
    autocast, decoded by the loops themselves (`decode_captions` would keep them float32)."""
    model, vocab = captioner.model.eval(), captioner.vocab
    settings = captioner.decoding_settings(beam_size=beam_size)
    common = dict(
        start_id=vocab.start_id,
        end_id=vocab.end_id,
        max_len=settings.max_len,
        banned_ids=(vocab.pad_id, vocab.start_id) + (() if settings.allow_unk else (vocab.unk_id,)),
    )
    said = []
    for start in range(0, len(paths), batch):
        images = torch.stack([captioner.to_tensor(path) for path in paths[start : start + batch]])
        with torch.inference_mode():
            features = model.encode(images.to(captioner.device)).features
            with torch.autocast(captioner.device.type, dtype=torch.bfloat16):
                if beam_size == 1:
                    decoded = greedy_decode(model.decoder, features, **common)
                else:
                    decoded = beam_search(
                        model.decoder,
                        features,
                        beam_size=beam_size,
                        length_normalize=settings.length_normalize,
                        **common,
                    )
        said += [" ".join(vocab.decode_tokens(caption.tokens)) for caption in decoded]
    return said


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a seconds-long smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, help="images per batch (default: 8, tiny 2)")
    parser.add_argument("--ckpt", type=Path, help="a trained checkpoint: compare captions instead of timing")
    parser.add_argument("--data", type=Path, help="its COCO-format data folder (test split), with --ckpt")
    parser.add_argument("--beam-size", type=int, default=BEAM, help="beam size of the --ckpt comparison (1: greedy)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = machine(device)
    if args.ckpt is not None:
        if args.data is None:
            parser.error("--ckpt needs --data")
        results.update(agreement(args.ckpt, args.data, device, args.beam_size))
    else:
        results.update(sizes="tiny" if args.tiny else "coco", **speed(args.tiny, device, args.images))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
