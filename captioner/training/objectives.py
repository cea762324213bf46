"""Training objectives beyond cross-entropy: hard attention's lower bound and self-critical training.

Both are policy gradients (REINFORCE, Williams 1992): for an action x ~ p_θ with reward r(x),
∇_θ E[r] = E[(r(x) − b) ∇_θ log p_θ(x)] for any baseline b that does not depend on x. The
losses here are surrogates whose gradient is that estimate (negated, for minimising).

- Hard attention (Xu et al. 2015, section 4.1): the action is the sequence of attended
  locations s̃, the reward log p(y | s̃, a); b is a moving average of it
  (`MovingAverageBaseline`), or, for a decoder attending from the current state, each word's
  log-likelihood under the expected context (`HardAttentionConfig.baseline`); an entropy bonus
  λ_e H(α) keeps α from collapsing early; with
  probability 0.5 per image the expected context replaces the sample (decided in
  `Decoder.forward_hard`; those images train by plain backpropagation).
- Self-critical sequence training (Rennie et al. 2017): the action is a sampled caption, the
  reward its CIDEr-D against the image's references (`captioner.evaluation.cider.CiderD`, document
  frequencies from the training references), the baseline the reward of the greedy caption,
  or, with several samples per image, the mean reward of the image's other samples.

Each objective is an object with one shape, `objective(model, batch) -> (loss, logs)`:
`CrossEntropy`, `HardAttention` and `SelfCriticalObjective`. Nothing here knows Lightning;
`captioner.training.system.CaptioningModule` picks one and calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.evaluation.cider import CiderD
from captioner.models.captioner import Annotations, ShowAttendTell
from captioner.models.config import PlainConfig
from captioner.models.decoder import Decoder, HardForward
from captioner.models.search import greedy_decode, sample_captions
from captioner.training.loss import LossParts, caption_loss
from captioner.vocab import END, Vocabulary, tokenize


def reinforce_loss(log_probs: Tensor, rewards: Tensor, baselines: Tensor, normalizer: float | Tensor) -> Tensor:
    """Surrogate loss whose gradient is the REINFORCE estimate of −∇ Σ E[reward] / normalizer.

    log_probs (N, ...) of the drawn actions (differentiable; entries to ignore hold 0),
    rewards (N,), one per sample for all its actions, or shaped like log_probs, one per action;
    baselines broadcastable to rewards (no gradient flows through either).
    """
    advantage = (rewards - baselines).detach().to(log_probs.dtype)
    if advantage.dim() == 1:
        advantage = advantage.view(-1, *([1] * (log_probs.dim() - 1)))
    return -(advantage * log_probs).sum() / normalizer


def mean_across_ranks(values: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean of `values` (where `keep`, a bool mask like it) over every process, and how many
    values it averaged (this process's alone without DDP). Every process must call it."""
    keep = torch.ones_like(values, dtype=torch.bool) if keep is None else keep
    total = torch.stack([(values.detach().float() * keep).sum(), keep.sum().float()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    return total[0] / total[1].clamp(min=1), total[1]


class MovingAverageBaseline(nn.Module):
    """b_k = decay · b_{k−1} + (1 − decay) · mean reward of batch k (Xu et al.: decay 0.9).

    `forward(rewards)` returns the baseline for this batch, the value before it is updated
    (so it does not depend on the batch's own samples), then updates it; the first batch,
    which has no history, gets its own mean. Under DDP the mean is over every process's
    rewards, so all processes keep the same baseline. A buffer: it travels in checkpoints.
    """

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise CaptionerError(f"the baseline's decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def forward(self, rewards: Tensor, keep: Tensor | None = None) -> Tensor:
        """rewards (N,), keep (N,) bool: which of them count (all by default) -> the baseline."""
        mean, count = mean_across_ranks(rewards, keep)
        if count == 0:  # nothing to learn from, on any process
            return self.value.clone()
        mean = mean.to(self.value)
        if self.updates == 0:
            self.value.copy_(mean)
            baseline = mean
        else:
            baseline = self.value.clone()
            self.value.mul_(self.decay).add_((1 - self.decay) * mean)
        self.updates += 1
        return baseline


# ---------------------------------------------------------------------------- hard attention


HARD_BASELINES = ("moving_average", "expected_context")


@dataclass(frozen=True)
class HardAttentionConfig(PlainConfig):
    """The training objective of hard attention (used when `DecoderConfig.attention` is "hard")."""

    reinforce_lambda: float = 1.0  # λ_r: weight of the REINFORCE term on the sampled locations
    entropy_lambda: float = 0.01  # λ_e: weight of the entropy bonus on α, per sampled step
    expected_prob: float = 0.5  # per image, the chance of the expected context instead of a sample
    baseline_decay: float = 0.9
    # "moving_average" of the rewards (the paper's), or "expected_context": each word's
    # log-likelihood had its step attended to Σ_i α_i a_i (attend_from "current" only)
    baseline: str = "moving_average"

    @property
    def expected_context_baseline(self) -> bool:
        """Whether the baseline needs the logits under the expected context (`forward_hard`'s
        with_expected_logits)."""
        return self.baseline == "expected_context"

    def __post_init__(self) -> None:
        if self.baseline not in HARD_BASELINES:
            raise CaptionerError(f"hard_attention.baseline {self.baseline!r} is not one of {', '.join(HARD_BASELINES)}")


class HardParts(NamedTuple):
    total: Tensor
    reinforce: Tensor  # the REINFORCE surrogate (its value means little; its gradient is the estimate)
    entropy: Tensor  # mean H(α) over the sampled real steps
    log_likelihood: Tensor  # mean log p(y | s̃, a) per caption, the reward
    baseline: Tensor  # the mean baseline: per caption, or per word with per_step rewards


def hard_attention_terms(
    token_log_probs: Tensor,
    location_log_probs: Tensor,
    entropies: Tensor,
    real: Tensor,
    sampled: Tensor,
    baseline: MovingAverageBaseline,
    config: HardAttentionConfig,
    per_step: bool = False,
    expected_log_probs: Tensor | None = None,
) -> HardParts:
    """The terms hard attention adds to cross-entropy (which already gives ∂ log p(y | s̃, a)).

    token_log_probs (B, T): log p(y_t | ...) of the target words; location_log_probs (B, T):
    log α_t[s̃_t] (0 where the expected context was used); entropies (B, T): H(α_t) (0 there
    too); real (B, T) bool: the caption's real steps; sampled (B,) bool: the captions whose
    locations were sampled (the rest used the expected context). Normalised by the number of real
    tokens, like the cross-entropy, so λ_r = 1 follows the lower bound's gradient (eq. 12).
    total = λ_r · REINFORCE − λ_e · Σ H / tokens.

    per_step: each location s̃_t affects only its own word y_t (a decoder attending from the
    current state: z_t feeds no later step), so log p(y | s̃, a) = Σ_t log p(y_t | s̃_t, ...)
    and the other steps' terms add nothing to the expected gradient of log α_t[s̃_t], only
    variance. Each location is then rewarded with its own word's log-likelihood, against a
    moving average of those: the same expected gradient, with less noise.

    expected_log_probs (B, T), with per_step and `config.baseline` "expected_context": log p(y_t)
    had step t attended to the expected context Σ_i α_ti a_i. It depends on α_t but not on the
    location drawn from it, so it is a valid baseline, and it follows each word: a moving average
    over all words rewards locations for the word being easy ("a") and punishes them for it
    being hard (a digit), which pushes α off the very regions that name the hard words.
    """
    tokens = real.sum().clamp(min=1)
    caption_rewards = (token_log_probs * real).sum(dim=1).detach()  # log p(y | s̃, a) per caption
    if config.expected_context_baseline and (not per_step or expected_log_probs is None):
        raise CaptionerError(
            'hard_attention.baseline "expected_context" needs a decoder with attend_from "current"; '
            'use baseline "moving_average" with attend_from "previous"'
        )
    if per_step:
        rewards = (token_log_probs * real).detach()  # (B, T): log p(y_t | s̃_t, ...)
        if config.expected_context_baseline:
            b = expected_log_probs.detach() * real
        else:
            b = baseline(rewards, real & sampled.unsqueeze(1))
    else:
        rewards = caption_rewards
        b = baseline(rewards, sampled)
    reinforce = reinforce_loss(location_log_probs * real, rewards, b, tokens)  # 0 in the expected rows
    entropy = (entropies * real).sum() / tokens
    total = config.reinforce_lambda * reinforce - config.entropy_lambda * entropy
    mean_baseline = (b * real).sum() / tokens if b.dim() == 2 else b  # per word, or one value
    return HardParts(total, reinforce, entropy, caption_rewards.mean(), mean_baseline)


def hard_attention_loss(
    forward: HardForward,
    targets: Tensor,
    pad_id: int,
    attention_lambda: float,
    baseline: MovingAverageBaseline,
    config: HardAttentionConfig,
    entropy_weight: float = 0.0,
) -> tuple[Tensor, LossParts, HardParts]:
    """The whole hard-attention objective for `Decoder.forward_hard`'s output and the target
    tokens (B, T): cross-entropy, the doubly stochastic and entropy terms (`caption_loss`) plus
    `hard_attention_terms` -> (total, the caption loss's parts, the hard terms)."""
    logits = forward.logits.float()
    parts = caption_loss(logits, targets, forward.alphas.float(), pad_id, attention_lambda, entropy_weight)
    token_log_probs = _target_log_probs(logits, targets)
    expected = forward.expected_logits
    expected_log_probs = None if expected is None else _target_log_probs(expected, targets)
    real = targets != pad_id
    hard = hard_attention_terms(
        token_log_probs,
        forward.location_log_probs,
        forward.entropies,
        real,
        forward.sampled,
        baseline,
        config,
        per_step=forward.independent_steps,
        expected_log_probs=expected_log_probs,
    )
    return parts.total + hard.total, parts, hard


def _target_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """logits (B, T, V), targets (B, T) -> log p(y_t) of each target word (B, T), float32."""
    return logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------- self-critical


@dataclass(frozen=True)
class ScstConfig(PlainConfig):
    """Self-critical sequence training on CIDEr-D."""

    samples: int = 1  # captions drawn per image
    baseline: Literal["greedy", "mean"] = "greedy"  # the greedy caption's reward, or the other samples' mean


class ScstParts(NamedTuple):
    loss: Tensor
    reward: Tensor  # mean CIDEr-D of the samples
    baseline: Tensor  # mean baseline reward
    sample_length: Tensor  # mean words per sample


class SelfCritical:
    """SCST (Rennie et al. 2017): sample captions, score them with CIDEr-D against each image's own
    references, and push up the log-probability of those that beat the baseline.

    The reward appends <end> to the sampled words and to every reference (as
    ruotianluo/ImageCaptioning.pytorch does), so how a caption ends is scored too: a caption
    cut off after "a" or "and" lacks the reference n-grams that end in <end>.
    """

    def __init__(self, scorer: CiderD, vocab: Vocabulary, config: ScstConfig, max_len: int) -> None:
        if config.samples < 1:
            raise CaptionerError(f"scst.samples must be at least 1, got {config.samples}")
        if config.baseline == "mean" and config.samples < 2:
            raise CaptionerError(
                "scst.baseline 'mean' averages the rewards of an image's other samples; "
                f"set scst.samples to 2 or more (got {config.samples}), or use baseline 'greedy'"
            )
        if config.baseline not in ("greedy", "mean"):
            raise CaptionerError(f"scst.baseline must be 'greedy' or 'mean', got {config.baseline!r}")
        self.scorer, self.vocab, self.config, self.max_len = scorer, vocab, config, max_len
        self.banned = (vocab.pad_id, vocab.start_id, vocab.unk_id)

    @classmethod
    def from_references(
        cls, references: Mapping[int, Sequence[str]], vocab: Vocabulary, config: ScstConfig, max_len: int
    ) -> SelfCritical:
        """references: image id -> raw reference captions (the training split's), tokenized with
        `captioner.vocab.tokenize`; the CIDEr-D document frequencies are computed here, once."""
        tokenized = {i: [[*tokenize(c), END] for c in caps] for i, caps in references.items() if caps}
        return cls(CiderD(tokenized), vocab, config, max_len)

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
        n = self.config.samples
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
        if self.config.baseline == "greedy":
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


# ---------------------------------------------------------------------------- objectives

Logs = dict[str, Tensor]


def batch_annotations(model: ShowAttendTell, batch: dict[str, Any]) -> Annotations:
    """The batch's cached `features` (B, P, D), else the model's encoder over its `images`."""
    return Annotations(batch["features"]) if "features" in batch else model.encode(batch["images"])


class CrossEntropy(nn.Module):
    """Teacher-forced cross-entropy plus the doubly stochastic term (`caption_loss`).

    batch: images (B, 3, S, S) or features (B, P, D), tokens (B, T) starting with <start>."""

    def __init__(self, pad_id: int, attention_lambda: float, attention_entropy: float = 0.0) -> None:
        super().__init__()
        self.pad_id, self.attention_lambda, self.attention_entropy = pad_id, attention_lambda, attention_entropy

    def forward(self, model: ShowAttendTell, batch: dict[str, Any]) -> tuple[Tensor, Logs]:
        tokens = batch["tokens"]
        # Under mixed precision the fused decoder casts its own products; its logits and α are float32.
        logits, alphas = model(batch_annotations(model, batch), tokens[:, :-1])
        parts = caption_loss(
            logits.float(), tokens[:, 1:], alphas.float(), self.pad_id, self.attention_lambda, self.attention_entropy
        )
        logs = {"cross_entropy": parts.cross_entropy, "attention_penalty": parts.attention}
        return parts.total, logs | {"attention_entropy": parts.entropy}


class HardAttention(nn.Module):
    """The hard-attention lower bound (`hard_attention_loss`) with its moving-average baseline,
    a buffer that travels in checkpoints."""

    def __init__(
        self, pad_id: int, attention_lambda: float, config: HardAttentionConfig, attention_entropy: float = 0.0
    ) -> None:
        super().__init__()
        self.pad_id, self.attention_lambda, self.attention_entropy = pad_id, attention_lambda, attention_entropy
        self.config = config
        self.baseline = MovingAverageBaseline(config.baseline_decay)

    def forward(self, model: ShowAttendTell, batch: dict[str, Any]) -> tuple[Tensor, Logs]:
        tokens = batch["tokens"]
        out = model.forward_hard(
            batch_annotations(model, batch),
            tokens[:, :-1],
            expected_prob=self.config.expected_prob,
            with_expected_logits=self.config.expected_context_baseline,
        )
        total, parts, hard = hard_attention_loss(
            out, tokens[:, 1:], self.pad_id, self.attention_lambda, self.baseline, self.config, self.attention_entropy
        )
        logs = {"cross_entropy": parts.cross_entropy, "attention_penalty": parts.attention}
        return total, logs | {"attention_entropy": hard.entropy, "log_likelihood_baseline": hard.baseline}


class SelfCriticalObjective(nn.Module):
    """SCST (`SelfCritical`) on a batch: batch images or features, and its image_ids (B,)."""

    def __init__(self, critic: SelfCritical) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, model: ShowAttendTell, batch: dict[str, Any]) -> tuple[Tensor, Logs]:
        parts = self.critic.loss(model.decoder, batch_annotations(model, batch).features, batch["image_ids"])
        logs = {"reward": parts.reward, "baseline_reward": parts.baseline, "sample_length": parts.sample_length}
        return parts.loss, logs
