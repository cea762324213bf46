"""The training objective: cross-entropy on real tokens plus the doubly stochastic attention term."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor


class LossParts(NamedTuple):
    total: Tensor
    cross_entropy: Tensor
    attention: Tensor


def caption_loss(
    logits: Tensor, targets: Tensor, alphas: Tensor, pad_id: int, attention_lambda: float = 1.0
) -> LossParts:
    """logits (B, T, V), targets (B, T), alphas (B, T, P) -> LossParts of scalars.

    cross_entropy: mean over real (non-pad) target tokens.
    attention: mean over the batch of Σ_i (1 − Σ_t α_ti)², the t-sum over each caption's real
    steps only (eq. 14 of Xu et al.), so every position is pushed to get attention once.
    total = cross_entropy + attention_lambda · attention.
    """
    cross_entropy = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
    real = (targets != pad_id).unsqueeze(-1)  # (B, T, 1)
    coverage = alphas.masked_fill(~real, 0.0).sum(dim=1)  # (B, P)
    attention = (1.0 - coverage).pow(2).sum(dim=1).mean()
    return LossParts(cross_entropy + attention_lambda * attention, cross_entropy, attention)
