"""Training throughput of the two extra objectives next to cross-entropy, on the same Decoder.

- cross-entropy: `train_step`, the teacher-forced step every training measurement times.
- hard attention: `Decoder.forward_hard` (sampled locations, autograd time loop) and
  `HardAttention.loss`, then Adam; and, as the small-data recipe trains it, attending from the
  current state with the expected-context baseline, next to cross-entropy on that decoder.
- SCST: `SelfCritical.loss` — n sampled captions per image (n = 5, the mean of the other
  samples as baseline; and n = 1 with the greedy caption as baseline) scored with CIDEr-D
  against 5 random references per image, then Adam.
All on `train_batch` images, in float32 and in each mixed precision the device has (an
objective's precisions take turns); the ratios are to cross-entropy, measured in the same run.
"""

from __future__ import annotations

import torch

from benchmarks.suite import RATIOS, Context, Trainer, images_per_s, measurement, speedups, train_step
from captioner.models import Decoder
from captioner.models.captioner import ShowAttendTell
from captioner.models.search import DecodingConfig
from captioner.training.objectives import HardAttention, SelfCritical
from captioner.vocab import SPECIALS, Vocabulary

REFERENCES_PER_IMAGE = 5


def _vocab(size: int) -> Vocabulary:
    return Vocabulary([*SPECIALS, *(f"w{i}" for i in range(size - len(SPECIALS)))])


def _hard_step(ctx: Context, decoder: Decoder, captions: torch.Tensor, precision: str, baseline: str):
    trainer, objective = Trainer(decoder, captions.device, precision), HardAttention(baseline=baseline)
    objective.attach(ShowAttendTell(torch.nn.Identity(), decoder), _vocab(ctx.sizes.vocab), DecodingConfig())

    def step(features: torch.Tensor) -> None:
        with trainer.forward():
            out = decoder.forward_hard(
                features,
                captions[:, :-1],
                expected_prob=objective.expected_prob,
                with_expected_logits=objective.expected_context_baseline,
            )
            loss = objective.loss(out, captions[:, 1:])[0]
        trainer.step(loss)

    return step


def _scst_step(ctx: Context, decoder: Decoder, precision: str, samples: int, baseline: str):
    s, batch = ctx.sizes, ctx.sizes.train_batch
    vocab = _vocab(s.vocab)
    generator = torch.Generator().manual_seed(0)
    references = {
        image: [
            " ".join(
                vocab.words[i] for i in torch.randint(len(SPECIALS), s.vocab, (s.caption_len,), generator=generator)
            )
            for _ in range(REFERENCES_PER_IMAGE)
        ]
        for image in range(batch)
    }
    scst = SelfCritical(samples, baseline)
    scst.attach(ShowAttendTell(torch.nn.Identity(), decoder), vocab, DecodingConfig(max_len=s.caption_len))
    scst.use_references(references)
    trainer, image_ids = Trainer(decoder, ctx.device, precision), torch.arange(batch, device=ctx.device)

    def step(features: torch.Tensor) -> None:
        with trainer.forward():
            loss = scst.loss(decoder, features, image_ids).loss
        trainer.step(loss)

    return step


@measurement
def objectives_train(ctx: Context) -> dict[str, float]:
    """Images per second of a training step with each objective, in each precision; an
    objective's precisions take turns."""
    batch = ctx.sizes.train_batch
    features, captions = ctx.features(batch), ctx.captions(batch)
    objectives = {
        "xe_train": lambda precision: train_step(ctx.decoder().train(), captions, precision),
        "hard_attention_train": lambda precision: _hard_step(
            ctx, ctx.decoder(attention="hard").train(), captions, precision, "moving_average"
        ),
        "xe_current_train": lambda precision: train_step(
            ctx.decoder(attend_from="current").train(), captions, precision
        ),
        "hard_current_train": lambda precision: _hard_step(
            ctx, ctx.decoder(attention="hard", attend_from="current").train(), captions, precision, "expected_context"
        ),
        "scst_5_samples_train": lambda precision: _scst_step(ctx, ctx.decoder().train(), precision, 5, "mean"),
        "scst_greedy_train": lambda precision: _scst_step(ctx, ctx.decoder().train(), precision, 1, "greedy"),
    }
    results = {}
    for name, make_step in objectives.items():
        steps = {images_per_s(name, p): make_step(p) for p in ["32-true", *ctx.mixed_precisions]}
        runs = {key: lambda step=step: step(features) for key, step in steps.items()}
        results |= {key: batch / seconds for key, seconds in ctx.seconds_each(runs).items()}
    return results


RATIOS += [
    *speedups(
        "xe_train",
        "hard_attention_train",
        "xe_current_train",
        "hard_current_train",
        "scst_5_samples_train",
        "scst_greedy_train",
    ),
    ("hard_attention_over_xe_train", "hard_attention_train_images_per_s", "xe_train_images_per_s"),
    ("hard_current_over_xe_current_train", "hard_current_train_images_per_s", "xe_current_train_images_per_s"),
    ("scst_5_samples_over_xe_train", "scst_5_samples_train_images_per_s", "xe_train_images_per_s"),
    ("scst_greedy_over_xe_train", "scst_greedy_train_images_per_s", "xe_train_images_per_s"),
]
