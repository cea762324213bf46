"""Training from cached encoder features against training through the frozen encoder.

Both measure one training step of the same Decoder (forward, backward, Adam) on `train_batch`
images. "Cached" reads the features of each image from a float16 memory-mapped shard on disk
through `SplitFeatures`, exactly as the data module does (they arrive as float32), in float32
and in each mixed precision the device has; "frozen encoder" runs the backbone (random
weights, `image_size` pixels) over a batch of images first. Image decoding is left out of
both, which flatters the frozen-encoder side.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import torch

from benchmarks.suite import RATIOS, Context, images_per_s, measurement, speedups, train_step
from captioner.data.features import ShardWriter, SplitFeatures, write_meta
from captioner.data.records import ImageRecord
from captioner.models import Encoder, EncoderConfig, FusedDecoder

CACHED_BATCHES = 4  # distinct batches on disk, read in turn


@measurement
def cached_features_train_images_per_s(ctx: Context) -> dict[str, float]:
    """Decoder training step on features read from a memory-mapped float16 shard."""
    s, batch = ctx.sizes, ctx.sizes.train_batch
    records = [ImageRecord(i, Path(f"{i}.jpg"), (), "train") for i in range(CACHED_BATCHES * batch)]
    captions = ctx.captions(batch)
    steps = {p: train_step(ctx.decoder().train(), captions, p) for p in ["32-true", *ctx.mixed_precisions]}
    with tempfile.TemporaryDirectory() as root:
        shard = ShardWriter(Path(root) / "train", rank=0, capacity=len(records))
        for start in range(0, len(records), batch):
            ids = torch.arange(start, start + batch)
            shard.write(ctx.features(batch).cpu(), ids, torch.full((batch, 2), s.image_size))
        shard.close()
        write_meta(root, {})  # SplitFeatures opens only finished extractions
        store = SplitFeatures(root, "train")
        turn = itertools.count()

        def run(step) -> None:
            first = next(turn) % CACHED_BATCHES * batch
            features = torch.stack([store(r)[0] for r in records[first : first + batch]])
            step(features.to(ctx.device))

        runs = {images_per_s("cached_features_train", p): lambda step=step: run(step) for p, step in steps.items()}
        return {key: batch / seconds for key, seconds in ctx.seconds_each(runs).items()}


@measurement
def frozen_encoder_train_images_per_s(ctx: Context) -> dict[str, float]:
    """The same decoder step after the frozen backbone (no gradient) over the images."""
    s, batch = ctx.sizes, ctx.sizes.train_batch
    encoder = Encoder(EncoderConfig(s.backbone, grid_size=s.grid)).to(ctx.device).eval()
    decoder = FusedDecoder(s.decoder_config, s.vocab, encoder.out_channels)
    step = train_step(decoder.to(ctx.device).train(), ctx.captions(batch))
    images = torch.randn(batch, 3, s.image_size, s.image_size, device=ctx.device)

    def run() -> None:
        with torch.no_grad():
            features = encoder(images)
        step(features)

    return {"frozen_encoder_train_images_per_s": batch / ctx.seconds(run)}


RATIOS += speedups("cached_features_train")
