"""Policy gradients (REINFORCE, Williams 1992), shared by the hard-attention and self-critical
objectives: for an action x ~ p_θ with reward r(x), ∇_θ E[r] = E[(r(x) − b) ∇_θ log p_θ(x)] for
any baseline b that does not depend on x. The losses are surrogates whose gradient is that
estimate (negated, for minimising)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from captioner.errors import CaptionerError


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
