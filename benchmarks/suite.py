"""The measurements: one function per measurement, registered in `MEASUREMENTS`.

Each takes a `Context` and returns {json_key: value}; `RATIOS` are derived afterwards.
Timings are the median of several repeats after warm-up iterations.

Measurements may live in other modules too: decorate them with `@measurement` (from here)
and list the module in `benchmarks/__main__.py`'s MEASUREMENT_MODULES; add any derived
ratio to `RATIOS`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.naive import NaiveDecoder, naive_loss
from captioner.models import DecoderConfig, Encoder, EncoderConfig, FusedDecoder
from captioner.models.search import beam_search
from captioner.training.loss import caption_loss

START, END, PAD = 1, 2, 0


@dataclass(frozen=True)
class Sizes:
    feature_dim: int
    grid: int
    width: int  # embedding, LSTM and attention width
    vocab: int
    caption_len: int  # decoding steps per caption (inputs <start> w_1.. and targets ..w_n <end>)
    train_batch: int
    decode_batch: int
    beam: int
    one_at_a_time_images: int
    backbone: str
    image_size: int
    image_batch: int
    warmup: int
    repeats: int

    @property
    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(embed_dim=self.width, hidden_dim=self.width, attention_dim=self.width)


COCO = Sizes(
    feature_dim=2048,
    grid=14,
    width=512,
    vocab=9490,
    caption_len=16,
    train_batch=32,
    decode_batch=64,
    beam=5,
    one_at_a_time_images=4,
    backbone="resnet101",
    image_size=256,
    image_batch=8,
    warmup=1,
    repeats=3,
)
TINY = Sizes(
    feature_dim=32,
    grid=3,
    width=16,
    vocab=50,
    caption_len=5,
    train_batch=4,
    decode_batch=4,
    beam=5,
    one_at_a_time_images=2,
    backbone="resnet18",
    image_size=64,
    image_batch=2,
    warmup=0,
    repeats=1,
)


@dataclass(frozen=True)
class Context:
    sizes: Sizes
    device: torch.device

    def features(self, batch: int) -> torch.Tensor:
        """Random encoder output (batch, grid², feature_dim)."""
        s = self.sizes
        return torch.randn(batch, s.grid**2, s.feature_dim, device=self.device).relu()

    def captions(self, batch: int) -> torch.Tensor:
        """(batch, caption_len + 1): <start>, words, <end>."""
        s = self.sizes
        words = torch.randint(PAD + 4, s.vocab, (batch, s.caption_len + 1), device=self.device)
        words[:, 0], words[:, -1] = START, END
        return words

    def decoder(self, **settings) -> FusedDecoder:
        """A Decoder at these sizes; `settings` replace fields of its DecoderConfig."""
        s = self.sizes
        return FusedDecoder(dataclasses.replace(s.decoder_config, **settings), s.vocab, s.feature_dim).to(self.device)

    def seconds(self, fn: Callable[[], object], repeats: int | None = None) -> float:
        """Median wall time of fn over `repeats` runs (default: the sizes') after `warmup` runs."""
        times = []
        for i in range(self.sizes.warmup + (self.sizes.repeats if repeats is None else repeats)):
            start = time.perf_counter()
            fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= self.sizes.warmup:
                times.append(time.perf_counter() - start)
        return statistics.median(times)


Measurement = Callable[[Context], dict[str, float]]
MEASUREMENTS: list[Measurement] = []


def measurement(fn: Measurement) -> Measurement:
    MEASUREMENTS.append(fn)
    return fn


def _adam(module: torch.nn.Module) -> torch.optim.Optimizer:
    # fused: one kernel over all parameters, as training uses (captioner.training.optimization).
    return torch.optim.Adam(module.parameters(), lr=4e-4, fused=True)


def train_step(decoder: FusedDecoder, captions: torch.Tensor):
    """A function features (B, P, D) -> None doing one teacher-forced step of `decoder` with Adam;
    every training measurement times this same step."""
    optimizer = _adam(decoder)

    def step(features: torch.Tensor) -> None:
        logits, alphas = decoder(features, captions[:, :-1])
        loss = caption_loss(logits, captions[:, 1:], alphas, PAD).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


@measurement
def decoder_train(ctx: Context) -> dict[str, float]:
    """Forward + backward + Adam step of the Decoder on given features."""
    batch = ctx.sizes.train_batch
    step, features = train_step(ctx.decoder().train(), ctx.captions(batch)), ctx.features(batch)
    return {"decoder_train_images_per_s": batch / ctx.seconds(lambda: step(features))}


@measurement
def decoder_train_naive(ctx: Context) -> dict[str, float]:
    """The same training step with the sgrvinod-style decoder (benchmarks/naive.py)."""
    s, batch = ctx.sizes, ctx.sizes.train_batch
    decoder = NaiveDecoder(s.width, s.width, s.width, s.vocab, s.feature_dim).to(ctx.device).train()
    features, captions = ctx.features(batch), ctx.captions(batch)
    lengths = torch.full((batch,), captions.size(1), device=ctx.device)
    optimizer = _adam(decoder)

    def step():
        loss = naive_loss(decoder, features, captions, lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"decoder_train_naive_images_per_s": batch / ctx.seconds(step, repeats=1)}  # slow: one run


def _beam(ctx: Context, decoder: FusedDecoder, features: torch.Tensor, beam_size: int):
    return beam_search(
        decoder, features, start_id=START, end_id=END, beam_size=beam_size, max_len=ctx.sizes.caption_len
    )


@measurement
def beam5(ctx: Context) -> dict[str, float]:
    """Batched beam search (decode_batch images × beam 5), max_len = caption_len; the paper's
    decoder, and one attending from the current state (whose LSTM does not read the context)."""
    features, beam = ctx.features(ctx.sizes.decode_batch), ctx.sizes.beam
    results = {}
    for key, attend_from in (("beam5_images_per_s", "previous"), ("beam5_current_images_per_s", "current")):
        decoder = ctx.decoder(attend_from=attend_from).eval()
        results[key] = features.size(0) / ctx.seconds(lambda decoder=decoder: _beam(ctx, decoder, features, beam))
    return results


@measurement
def beam5_one_at_a_time(ctx: Context) -> dict[str, float]:
    """The same Decoder and beam search, called for one image at a time."""
    decoder, features = ctx.decoder().eval(), ctx.features(ctx.sizes.one_at_a_time_images)

    def run():
        for i in range(features.size(0)):
            _beam(ctx, decoder, features[i : i + 1], ctx.sizes.beam)

    return {"beam5_one_at_a_time_images_per_s": features.size(0) / ctx.seconds(run, repeats=1)}  # slow: one run


@measurement
def end_to_end(ctx: Context) -> dict[str, float]:
    """Images -> captions: the backbone (random weights) + beam 3, against the encoder alone."""
    s = ctx.sizes
    encoder = Encoder(EncoderConfig(s.backbone, grid_size=s.grid)).to(ctx.device).eval()
    decoder = FusedDecoder(s.decoder_config, s.vocab, encoder.out_channels)
    decoder = decoder.to(ctx.device).eval()
    images = torch.randn(s.image_batch, 3, s.image_size, s.image_size, device=ctx.device)

    @torch.inference_mode()
    def encode():
        return encoder(images)

    return {
        "end_to_end_images_per_s": s.image_batch / ctx.seconds(lambda: _beam(ctx, decoder, encode(), 3)),
        "encoder_only_images_per_s": s.image_batch / ctx.seconds(encode),
    }


# (key, numerator, denominator): derived from the measured keys when both are present.
RATIOS = [
    ("decoder_train_speedup", "decoder_train_images_per_s", "decoder_train_naive_images_per_s"),
    ("beam5_speedup", "beam5_images_per_s", "beam5_one_at_a_time_images_per_s"),
    ("end_to_end_over_encoder_time", "encoder_only_images_per_s", "end_to_end_images_per_s"),
    ("cached_features_speedup", "cached_features_train_images_per_s", "frozen_encoder_train_images_per_s"),
]


def run(ctx: Context, measurements: list[Measurement] = MEASUREMENTS) -> dict[str, float]:
    results: dict[str, float] = {}
    for measure in measurements:
        torch.manual_seed(0)
        results.update(measure(ctx))
    for key, numerator, denominator in RATIOS:
        if numerator in results and denominator in results:
            results[key] = results[numerator] / results[denominator]
    return results
