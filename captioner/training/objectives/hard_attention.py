"""Hard attention's lower bound (Xu et al. 2015, section 4.1), trained with REINFORCE.

The action is the sequence of attended locations s̃, the reward log p(y | s̃, a); the baseline
is a moving average of it (`MovingAverageBaseline`), or, for a decoder attending from the
current state, each word's log-likelihood under the expected context; an entropy bonus
λ_e H(α) keeps α from collapsing early; with probability `expected_prob` per image the
expected context replaces the sample (decided in `Decoder.forward_hard`; those images train by
plain backpropagation).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor

from captioner.errors import CaptionerError
from captioner.models.captioner import ShowAttendTell
from captioner.models.decoder import HardForward
from captioner.models.search import DecodingConfig
from captioner.training.loss import LossParts, caption_loss
from captioner.training.objectives.base import Logs, Objective, batch_annotations
from captioner.training.objectives.reinforce import MovingAverageBaseline, reinforce_loss
from captioner.vocab import Vocabulary

HARD_BASELINES = ("moving_average", "expected_context")


class HardParts(NamedTuple):
    total: Tensor
    reinforce: Tensor  # the REINFORCE surrogate (its value means little; its gradient is the estimate)
    entropy: Tensor  # mean H(α) over the sampled real steps
    log_likelihood: Tensor  # mean log p(y | s̃, a) per caption, the reward
    baseline: Tensor  # the mean baseline: per caption, or per word with per_step rewards


class HardAttention(Objective):
    """The hard-attention lower bound, for a decoder with `attention: hard`: cross-entropy and the
    doubly stochastic term (`caption_loss`) plus the REINFORCE terms (`terms`).

    Args:
        attention_lambda, attention_entropy: as `CrossEntropy`'s.
        reinforce_lambda: λ_r, the weight of the REINFORCE term on the sampled locations.
        entropy_lambda: λ_e, the weight of the entropy bonus on α, per sampled step.
        expected_prob: per image, the chance of the expected context instead of a sample.
        baseline: "moving_average" of the rewards (the paper's), or "expected_context": each
            word's log-likelihood had its step attended to Σ_i α_i a_i (a decoder with
            `attend_from: current` only, where a location changes its own word alone).
        baseline_decay: the moving average's decay; a buffer that travels in checkpoints.
    """

    def __init__(
        self,
        attention_lambda: float = 0.0,
        attention_entropy: float = 0.0,
        reinforce_lambda: float = 1.0,
        entropy_lambda: float = 0.01,
        expected_prob: float = 0.5,
        baseline: str = "moving_average",
        baseline_decay: float = 0.9,
    ) -> None:
        super().__init__()
        if baseline not in HARD_BASELINES:
            raise CaptionerError(f"HardAttention baseline {baseline!r} is not one of {', '.join(HARD_BASELINES)}")
        if not 0.0 <= expected_prob <= 1.0:
            raise CaptionerError(f"HardAttention expected_prob must be in [0, 1], got {expected_prob}")
        self.attention_lambda, self.attention_entropy = attention_lambda, attention_entropy
        self.reinforce_lambda, self.entropy_lambda = reinforce_lambda, entropy_lambda
        self.expected_prob, self.baseline, self.baseline_decay = expected_prob, baseline, baseline_decay
        self.moving_average = MovingAverageBaseline(baseline_decay)
        self.pad_id = 0

    @property
    def expected_context_baseline(self) -> bool:
        return self.baseline == "expected_context"

    def attach(self, model: ShowAttendTell, vocab: Vocabulary, decoding: DecodingConfig) -> None:
        config = model.decoder.config
        if config.attention != "hard":
            raise CaptionerError(
                "the HardAttention objective samples where to look: it needs model.decoder.attention hard"
            )
        if self.expected_context_baseline and config.attend_from != "current":
            raise CaptionerError(
                'HardAttention baseline "expected_context" needs model.decoder.attend_from "current" '
                '(with the paper\'s order a location affects every later word); use baseline "moving_average"'
            )
        self.pad_id = vocab.pad_id

    def forward(self, model: ShowAttendTell, batch: dict[str, Any]) -> tuple[Tensor, Logs]:
        tokens = batch["tokens"]
        out = model.forward_hard(
            batch_annotations(model, batch),
            tokens[:, :-1],
            expected_prob=self.expected_prob,
            with_expected_logits=self.expected_context_baseline,
        )
        total, parts, hard = self.loss(out, tokens[:, 1:])
        logs = {"cross_entropy": parts.cross_entropy, "attention_penalty": parts.attention}
        return total, logs | {"attention_entropy": hard.entropy, "log_likelihood_baseline": hard.baseline}

    def loss(self, forward: HardForward, targets: Tensor) -> tuple[Tensor, LossParts, HardParts]:
        """The whole objective for `Decoder.forward_hard`'s output and the target tokens (B, T)
        -> (total, the caption loss's parts, the hard terms)."""
        logits = forward.logits.float()
        parts = caption_loss(
            logits, targets, forward.alphas.float(), self.pad_id, self.attention_lambda, self.attention_entropy
        )
        expected = forward.expected_logits
        hard = self.terms(
            _target_log_probs(logits, targets),
            forward.location_log_probs,
            forward.entropies,
            targets != self.pad_id,
            forward.sampled,
            per_step=forward.independent_steps,
            expected_log_probs=None if expected is None else _target_log_probs(expected, targets),
        )
        return parts.total + hard.total, parts, hard

    def terms(
        self,
        token_log_probs: Tensor,
        location_log_probs: Tensor,
        entropies: Tensor,
        real: Tensor,
        sampled: Tensor,
        per_step: bool = False,
        expected_log_probs: Tensor | None = None,
    ) -> HardParts:
        """The terms hard attention adds to cross-entropy (which already gives ∂ log p(y | s̃, a)).

        token_log_probs (B, T): log p(y_t | ...) of the target words; location_log_probs (B, T):
        log α_t[s̃_t] (0 where the expected context was used); entropies (B, T): H(α_t) (0 there
        too); real (B, T) bool: the caption's real steps; sampled (B,) bool: the captions whose
        locations were sampled (the rest used the expected context). Normalised by the number of
        real tokens, like the cross-entropy, so λ_r = 1 follows the lower bound's gradient (eq. 12).
        total = λ_r · REINFORCE − λ_e · Σ H / tokens.

        per_step: each location s̃_t affects only its own word y_t (a decoder attending from the
        current state: z_t feeds no later step), so log p(y | s̃, a) = Σ_t log p(y_t | s̃_t, ...)
        and the other steps' terms add nothing to the expected gradient of log α_t[s̃_t], only
        variance. Each location is then rewarded with its own word's log-likelihood, against a
        moving average of those: the same expected gradient, with less noise.

        expected_log_probs (B, T), with the "expected_context" baseline (which `attach` allows
        only where steps are independent): log p(y_t) had step t attended to the expected
        context Σ_i α_ti a_i. It depends on α_t but not on the location drawn from it, so it is a
        valid baseline, and it follows each word: a moving average over all words rewards
        locations for the word being easy ("a") and punishes them for it being hard (a digit),
        which pushes α off the very regions that name the hard words.
        """
        tokens = real.sum().clamp(min=1)
        caption_rewards = (token_log_probs * real).sum(dim=1).detach()  # log p(y | s̃, a) per caption
        if per_step:
            rewards = (token_log_probs * real).detach()  # (B, T): log p(y_t | s̃_t, ...)
            if self.expected_context_baseline:
                b = expected_log_probs.detach() * real
            else:
                b = self.moving_average(rewards, real & sampled.unsqueeze(1))
        else:
            rewards = caption_rewards
            b = self.moving_average(rewards, sampled)
        reinforce = reinforce_loss(location_log_probs * real, rewards, b, tokens)  # 0 in the expected rows
        entropy = (entropies * real).sum() / tokens
        total = self.reinforce_lambda * reinforce - self.entropy_lambda * entropy
        mean_baseline = (b * real).sum() / tokens if b.dim() == 2 else b  # per word, or one value
        return HardParts(total, reinforce, entropy, caption_rewards.mean(), mean_baseline)


def _target_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """logits (B, T, V), targets (B, T) -> log p(y_t) of each target word (B, T), float32."""
    return logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
