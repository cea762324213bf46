"""The measurements: one function per measurement, registered in `MEASUREMENTS`.

Each takes a `Context` and returns {json_key: value}; `RATIOS` are derived afterwards.
Timings are the median of several repeats after warm-up iterations; rows compared with each
other (float32 against mixed precision) take turns, so that all see the same shared machine.
Mixed precision is Lightning's: the forward and the loss under autocast, the backward and the
optimizer step outside it (`train_step`).

Measurements may live in other modules too: decorate them with `@measurement` (from here)
and list the module in `benchmarks/__main__.py`'s MEASUREMENT_MODULES; add any derived
ratio to `RATIOS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.naive import NaiveDecoder, naive_loss
from captioner.inference.precision import bf16_supported
from captioner.models import DecoderConfig, Encoder, EncoderConfig, FusedDecoder
from captioner.models.search import beam_search
from captioner.training.loss import caption_loss

START, END, PAD = 1, 2, 0
# Lightning's names for the trainer precisions measured beside float32, and their autocast dtypes.
MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


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
        # The paper's order, as the implementation we compare against has it (the `_current` rows
        # time the other).
        return DecoderConfig(
            embed_dim=self.width,
            hidden_dim=self.width,
            attention_dim=self.width,
            attend_from="previous",
            initial_state="mean",
        )


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
        return self.seconds_each({"fn": fn}, repeats)["fn"]

    def seconds_each(self, fns: dict[str, Callable[[], object]], repeats: int | None = None) -> dict[str, float]:
        """Median wall time of each fn over `repeats` rounds after `warmup` rounds; each round
        runs every fn once, in turn, so that their ratios come from the same stretch of time."""
        times: dict[str, list[float]] = {name: [] for name in fns}
        for i in range(self.sizes.warmup + (self.sizes.repeats if repeats is None else repeats)):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= self.sizes.warmup:
                    times[name].append(time.perf_counter() - start)
        return {name: statistics.median(seconds) for name, seconds in times.items()}

    @property
    def mixed_precisions(self) -> list[str]:
        """The mixed precisions this device runs in hardware: bf16-mixed where it multiplies
        bfloat16 (CPUs with AVX512-BF16 or AMX, GPUs from Ampere on), and 16-mixed on CUDA."""
        return ["bf16-mixed"] * bf16_supported(self.device) + ["16-mixed"] * (self.device.type == "cuda")


Measurement = Callable[[Context], dict[str, float]]
MEASUREMENTS: list[Measurement] = []


def measurement(fn: Measurement) -> Measurement:
    MEASUREMENTS.append(fn)
    return fn


def _adam(module: torch.nn.Module) -> torch.optim.Optimizer:
    # fused: one kernel over all parameters, as training uses (captioner.training.optimization).
    return torch.optim.Adam(module.parameters(), lr=4e-4, fused=True)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """What Lightning wraps a training step's forward in: autocast for a mixed `precision`."""
    if precision not in MIXED:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=MIXED[precision])


class Trainer:
    """Adam on a module, in a Lightning trainer precision ("32-true", "bf16-mixed", "16-mixed"):
    `loss_of()` runs under its autocast, `step(loss)` back-propagates and updates outside it
    (16-mixed with a gradient scaler, as Lightning does)."""

    def __init__(self, module: torch.nn.Module, device: torch.device, precision: str = "32-true") -> None:
        self.device, self.precision = device, precision
        self.optimizer = _adam(module)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def forward(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def train_step(decoder: FusedDecoder, captions: torch.Tensor, precision: str = "32-true"):
    """A function features (B, P, D) -> None doing one teacher-forced step of `decoder` with Adam
    in a trainer `precision`; every training measurement times this same step."""
    trainer = Trainer(decoder, captions.device, precision)

    def step(features: torch.Tensor) -> None:
        with trainer.forward():
            logits, alphas = decoder(features, captions[:, :-1])
            loss = caption_loss(logits.float(), captions[:, 1:], alphas.float(), PAD).total
        trainer.step(loss)

    return step


def images_per_s(name: str, precision: str = "32-true") -> str:
    """The JSON key of measurement `name` in a trainer `precision`: float32 keeps the plain key
    ("decoder_train_images_per_s"), mixed ones name theirs ("decoder_train_bf16_mixed_images_per_s")."""
    return f"{name}_images_per_s" if precision not in MIXED else f"{name}_{precision.replace('-', '_')}_images_per_s"


def speedups(*names: str) -> list[tuple[str, str, str]]:
    """`RATIOS` of each measurement in each mixed precision to its float32 one ("..._bf16_mixed_speedup")."""
    return [
        (
            images_per_s(name, precision).replace("_images_per_s", "_speedup"),
            images_per_s(name, precision),
            images_per_s(name),
        )
        for name in names
        for precision in MIXED
    ]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@measurement
def decoder_train(ctx: Context) -> dict[str, float]:
    """Forward + backward + Adam step of the Decoder on given features, in float32 and in each
    mixed precision the device has, taking turns."""
    batch = ctx.sizes.train_batch
    captions, features = ctx.captions(batch), ctx.features(batch)
    steps = {}
    for precision in ["32-true", *ctx.mixed_precisions]:
        step = train_step(ctx.decoder().train(), captions, precision)
        steps[images_per_s("decoder_train", precision)] = lambda step=step: step(features)
    return {key: batch / seconds for key, seconds in ctx.seconds_each(steps).items()}


@measurement
def decoder_train_bound(ctx: Context) -> dict[str, float]:
    """What bounds the training step: its matrix products' FLOPs per image (counted over one
    float32 step, forward and backward, `torch.utils.flop_counter`), and the speed of the
    step's largest product, W_a a ((B·P, D) by (D, A)), in float32 and in the dtype of each mixed
    precision. Each bound (`RATIOS`) is that speed over those FLOPs: every product at the speed
    of the largest, and all else free."""
    s, batch = ctx.sizes, ctx.sizes.train_batch
    step, features = train_step(ctx.decoder().train(), ctx.captions(batch)), ctx.features(batch)
    counter = FlopCounterMode(display=False)
    with counter:
        step(features)
    results = {"decoder_train_gflop_per_image": counter.get_total_flops() / batch / 1e9}
    a = torch.randn(batch * s.grid**2, s.feature_dim, device=ctx.device)
    b = torch.randn(s.feature_dim, s.width, device=ctx.device)
    dtypes = [torch.float32] + [MIXED[precision] for precision in ctx.mixed_precisions]
    products = {dtype_name(dtype): (a.to(dtype), b.to(dtype)) for dtype in dtypes}
    seconds = ctx.seconds_each({name: lambda a=a, b=b: a @ b for name, (a, b) in products.items()})
    flops = 2 * a.size(0) * a.size(1) * b.size(1)
    return results | {f"matmul_{name}_gflop_per_s": flops / time / 1e9 for name, time in seconds.items()}


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
    *speedups("decoder_train"),
    *[
        (f"decoder_train_{name}_bound_images_per_s", f"matmul_{name}_gflop_per_s", "decoder_train_gflop_per_image")
        for name in ("float32", *map(dtype_name, MIXED.values()))
    ],
    *[
        (
            f"{images_per_s('decoder_train', precision).removesuffix('_images_per_s')}_of_{dtype_name(dtype)}_bound",
            images_per_s("decoder_train", precision),
            f"decoder_train_{dtype_name(dtype)}_bound_images_per_s",
        )
        for precision, dtype in {"32-true": torch.float32, **MIXED}.items()
    ],
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
