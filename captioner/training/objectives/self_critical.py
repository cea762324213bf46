"""Self-critical sequence training (Rennie et al. 2017) on CIDEr-D.

The action is a sampled caption, the reward its CIDEr-D against the image's references
(`captioner.evaluation.cider.CiderD`, document frequencies from the training references), the
baseline the reward of the greedy caption, or, with several samples per image, the mean reward
of the image's other samples. Start it from a trained model (`model.init_from`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from captioner.errors import CaptionerError
from captioner.evaluation.cider import CiderD
from captioner.models.captioner import ShowAttendTell
from captioner.models.decoder import Decoder
from captioner.models.search import DecodingConfig, greedy_decode, sample_captions
from captioner.training.objectives.base import Logs, Objective, batch_annotations
from captioner.training.objectives.reinforce import reinforce_loss
from captioner.vocab import END, Vocabulary, tokenize

SCST_BASELINES = ("greedy", "mean")


class ScstParts(NamedTuple):
    loss: Tensor
    reward: Tensor  # mean CIDEr-D of the samples
    baseline: Tensor  # mean baseline reward
    sample_length: Tensor  # mean words per sample


class SelfCritical(Objective):
    """SCST: sample captions, score them with CIDEr-D against each image's own references, and
    push up the log-probability of those that beat the baseline. batch: `image_ids` (B,) too;
    the training references come from the data module (`records("train")`, as
    `captioner.data.CaptionDataModule` gives them).

    The reward appends <end> to the sampled words and to every reference (as
    ruotianluo/ImageCaptioning.pytorch does), so how a caption ends is scored too: a caption
    cut off after "a" or "and" lacks the reference n-grams that end in <end>.

    Args:
        samples: captions drawn per image.
        baseline: "greedy", the greedy caption's reward, or "mean", the image's other samples' mean.
    """

    def __init__(self, samples: int = 1, baseline: str = "greedy") -> None:
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise CaptionerError(f"SelfCritical samples must be at least 1, got {samples!r}")
        if baseline not in SCST_BASELINES:
            raise CaptionerError(f"SelfCritical baseline must be 'greedy' or 'mean', got {baseline!r}")
        if baseline == "mean" and samples < 2:
            raise CaptionerError(
                "SelfCritical baseline 'mean' averages the rewards of an image's other samples; "
                f"set samples to 2 or more (got {samples}), or use baseline 'greedy'"
            )
        self.samples, self.baseline = samples, baseline
        self.scorer: CiderD | None = None

    def attach(self, model: ShowAttendTell, vocab: Vocabulary, decoding: DecodingConfig) -> None:
        self.vocab, self.max_len = vocab, decoding.max_len
        self.banned = (vocab.pad_id, vocab.start_id, vocab.unk_id)

    def start(self, data: Any) -> None:
        """Build the CIDEr-D scorer from the training references once (every process builds the same)."""
        if not hasattr(data, "records"):
            raise CaptionerError(
                "the SelfCritical objective scores sampled captions against each training image's references: "
                "train with captioner.data.CaptionDataModule (or a data module with records(role))"
            )
        self.use_references({record.image_id: list(record.captions) for record in data.records("train")})

    def use_references(self, references: Mapping[int, Sequence[str]]) -> None:
        """references: image id -> raw reference captions (the training split's), tokenized with
        `captioner.vocab.tokenize`; the CIDEr-D document frequencies are computed here, once."""
        tokenized = {i: [[*tokenize(c), END] for c in caps] for i, caps in references.items() if caps}
        self.scorer = CiderD(tokenized)

    def forward(self, model: ShowAttendTell, batch: dict[str, Any]) -> tuple[Tensor, Logs]:
        parts = self.loss(model.decoder, batch_annotations(model, batch).features, batch["image_ids"])
        logs = {"reward": parts.reward, "baseline_reward": parts.baseline, "sample_length": parts.sample_length}
        return parts.loss, logs

    def rewards(self, image_ids: Sequence[int], token_ids: Sequence[Sequence[int]]) -> Tensor:
        """CIDEr-D of captions given as word ids (stopping at <end>, if any) -> (N,) float32."""
        candidates = [[*self.vocab.decode_tokens(ids), END] for ids in token_ids]
        return torch.from_numpy(self.scorer.score(list(image_ids), candidates)).float()

    def loss(self, decoder: Decoder, features: Tensor, image_ids: Tensor) -> ScstParts:
        """features (B, P, D) of a training batch and its image_ids (B,) -> `ScstParts`.

        A batch of (image, caption) pairs can hold an image more than once: each distinct
        image is sampled once (n times). The greedy baseline decodes in eval mode (no dropout);
        sampling runs in the decoder's current mode.
        """
        ids, first = _first_occurrences(image_ids)
        features = features[first]
        n = self.samples
        drawn = sample_captions(
            decoder,
            features,
            start_id=self.vocab.start_id,
            end_id=self.vocab.end_id,
            pad_id=self.vocab.pad_id,
            samples=n,
            max_len=self.max_len,
            banned_ids=self.banned,
        )
        sample_ids = [i for i in ids for _ in range(n)]
        rewards = self.rewards(sample_ids, drawn.tokens.flatten(0, 1).tolist()).view(len(ids), n)
        if self.baseline == "greedy":
            greedy = self._greedy(decoder, features)
            baselines = self.rewards(ids, greedy).unsqueeze(1).expand(-1, n)
        else:
            baselines = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
        rewards, baselines = rewards.to(features.device), baselines.to(features.device)
        loss = reinforce_loss(drawn.log_probs.flatten(0, 1), rewards.flatten(), baselines.flatten(), drawn.mask.sum())
        return ScstParts(loss, rewards.mean(), baselines.mean(), drawn.lengths.float().mean())

    def _greedy(self, decoder: Decoder, features: Tensor) -> list[list[int]]:
        training = decoder.training
        decoder.eval()
        try:
            captions = greedy_decode(
                decoder,
                features.detach(),
                start_id=self.vocab.start_id,
                end_id=self.vocab.end_id,
                max_len=self.max_len,
                banned_ids=self.banned,
            )
        finally:
            decoder.train(training)
        return [c.tokens for c in captions]


def _first_occurrences(image_ids: Tensor) -> tuple[list[int], Tensor]:
    """Distinct image ids in order of first appearance, and the row of each first appearance."""
    seen: dict[int, int] = {}
    for row, image_id in enumerate(image_ids.tolist()):
        seen.setdefault(image_id, row)
    return list(seen), torch.tensor(list(seen.values()), dtype=torch.long, device=image_ids.device)
