"""The training objective: cross-entropy on real tokens plus the doubly stochastic attention term
and, optionally, a penalty on the entropy of each step's attention."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class LossParts(NamedTuple):
    total: Tensor
    cross_entropy: Tensor
    attention: Tensor
    entropy: Tensor


def caption_loss(
    logits: Tensor,
    targets: Tensor,
    alphas: Tensor,
    pad_id: int,
    attention_lambda: float = 1.0,
    entropy_weight: float = 0.0,
) -> LossParts:
    """logits (B, T, V), targets (B, T), alphas (B, T, P) -> LossParts of scalars.

    cross_entropy: mean over real (non-pad) target tokens.
    attention: mean over the batch of Σ_i (1 − Σ_t α_ti)², the t-sum over each caption's real
    steps only (eq. 14 of Xu et al.), so every position is pushed to get attention once.
    entropy: mean over real steps of H(α_t) = −Σ_i α_ti log α_ti (not in the paper; a positive
    weight pushes each step to attend to few cells).
    total = cross_entropy + attention_lambda · attention + entropy_weight · entropy.
    """
    cross_entropy = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
    real = (targets != pad_id).unsqueeze(-1)  # (B, T, 1)
    coverage = alphas.masked_fill(~real, 0.0).sum(dim=1)  # (B, P)
    attention = (1.0 - coverage).pow(2).sum(dim=1).mean()
    # The clamp keeps the gradient finite where a mask made α exactly 0 (0 · log 0 counts as 0).
    step_entropy = -(alphas * alphas.clamp_min(torch.finfo(alphas.dtype).tiny).log()).sum(dim=-1)  # (B, T)
    entropy = step_entropy.masked_select(real.squeeze(-1)).mean()
    # A term with weight 0 stays out of the sum, so backward does no work for it (it is still logged).
    total = cross_entropy
    if attention_lambda:
        total = total + attention_lambda * attention
    if entropy_weight:
        total = total + entropy_weight * entropy
    return LossParts(total, cross_entropy, attention, entropy)
