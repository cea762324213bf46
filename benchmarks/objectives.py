"""Training throughput of the two extra objectives next to cross-entropy, on the same Decoder.

- cross-entropy: `train_step`, the teacher-forced step every training measurement times.
- hard attention: `Decoder.forward_hard` (sampled locations, autograd time loop) and
  `hard_attention_loss`, then Adam; and, as the small-data recipe trains it, attending from the
  current state with the expected-context baseline, next to cross-entropy on that decoder.
- SCST: `SelfCritical.loss` — n sampled captions per image (n = 5, the mean of the other
  samples as baseline; and n = 1 with the greedy caption as baseline) scored with CIDEr-D
  against 5 random references per image, then Adam.
All on `train_batch` images; the ratios are to cross-entropy, measured in the same run.
"""

from __future__ import annotations

import torch

from benchmarks.suite import PAD, RATIOS, Context, _adam, measurement, train_step
from captioner.models import Decoder
from captioner.training.objectives import (
    HardAttentionConfig,
    MovingAverageBaseline,
    ScstConfig,
    SelfCritical,
    hard_attention_loss,
)
from captioner.vocab import SPECIALS, Vocabulary

REFERENCES_PER_IMAGE = 5


def _hard_step(decoder: Decoder, captions: torch.Tensor, config: HardAttentionConfig = HardAttentionConfig()):  # noqa: B008
    optimizer, baseline = _adam(decoder), MovingAverageBaseline()

    def step(features: torch.Tensor) -> None:
        out = decoder.forward_hard(
            features,
            captions[:, :-1],
            expected_prob=config.expected_prob,
            with_expected_logits=config.expected_context_baseline,
        )
        loss = hard_attention_loss(out, captions[:, 1:], PAD, 1.0, baseline, config)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _scst_step(ctx: Context, decoder: Decoder, config: ScstConfig):
    s, batch = ctx.sizes, ctx.sizes.train_batch
    vocab = Vocabulary([*SPECIALS, *(f"w{i}" for i in range(s.vocab - len(SPECIALS)))])
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
    scst = SelfCritical.from_references(references, vocab, config, max_len=s.caption_len)
    optimizer, image_ids = _adam(decoder), torch.arange(batch, device=ctx.device)

    def step(features: torch.Tensor) -> None:
        loss = scst.loss(decoder, features, image_ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


@measurement
def objectives_train(ctx: Context) -> dict[str, float]:
    """Images per second of a training step with each objective."""
    batch = ctx.sizes.train_batch
    features, captions = ctx.features(batch), ctx.captions(batch)
    expected_baseline = HardAttentionConfig(baseline="expected_context")
    steps = {
        "xe_train_images_per_s": train_step(ctx.decoder().train(), captions),
        "hard_attention_train_images_per_s": _hard_step(ctx.decoder(attention="hard").train(), captions),
        "xe_current_train_images_per_s": train_step(ctx.decoder(attend_from="current").train(), captions),
        "hard_current_train_images_per_s": _hard_step(
            ctx.decoder(attention="hard", attend_from="current").train(), captions, expected_baseline
        ),
        "scst_5_samples_train_images_per_s": _scst_step(ctx, ctx.decoder().train(), ScstConfig(5, "mean")),
        "scst_greedy_train_images_per_s": _scst_step(ctx, ctx.decoder().train(), ScstConfig(1, "greedy")),
    }
    return {key: batch / ctx.seconds(lambda step=step: step(features)) for key, step in steps.items()}


RATIOS += [
    ("hard_attention_over_xe_train", "hard_attention_train_images_per_s", "xe_train_images_per_s"),
    ("hard_current_over_xe_current_train", "hard_current_train_images_per_s", "xe_current_train_images_per_s"),
    ("scst_5_samples_over_xe_train", "scst_5_samples_train_images_per_s", "xe_train_images_per_s"),
    ("scst_greedy_over_xe_train", "scst_greedy_train_images_per_s", "xe_train_images_per_s"),
]
