"""Hard (stochastic) attention of Show, Attend and Tell, section 4.1 of Xu et al. (2015).

The attention weights α are those of `SoftAttention`; what differs is the context. In
training, each step samples one location s_t ~ Multinoulli(α_t) and takes z_t = a_{s_t};
the decoder is trained on the variational lower bound with REINFORCE
(`captioner.training.objectives.hard_attention.HardAttention.loss`), which needs log α_t[s_t] and the entropy of α_t
from here. With probability 0.5 per image the paper uses the expected context Σ_i α_ti a_i
(the soft one) instead of a sample: those rows are `expected`.

At test time there is nothing to sample. `DecoderConfig.hard_decoding` picks the context:
"expected" Σ_i α_ti a_i, as the paper does (decoding is then exactly soft attention's), or
"argmax", the single most attended location, z_t = a_{argmax α_t}. Either way the decoder
reports α_t, so overlays and grounding scores work for both kinds of attention.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class HardChoice(NamedTuple):
    """One training step of hard attention (or all T steps at once), shapes (B, [T,] ...)."""

    attended: Tensor  # (B, [T,] D): a_{s_t}, or Σ_i α_i a_i in the expected rows
    log_prob: Tensor  # (B, [T]): log α[s_t]; 0 in the expected rows (nothing was sampled)
    entropy: Tensor  # (B, [T]): H(α) = −Σ_i α_i log α_i; 0 in the expected rows


def sample_context(features: Tensor, alpha: Tensor, expected_context: Tensor, expected: Tensor) -> HardChoice:
    """features (B, P, D), alpha (B, [T,] P) (differentiable), expected_context (B, [T,] D) =
    Σ_i α_i a_i, expected (B,) bool -> `HardChoice`, with a T axis when alpha has one (every
    step of a teacher-forced caption at once).

    The sampled context carries no gradient to α (a sample is not differentiable); α learns
    through the REINFORCE term on `log_prob` and the entropy term. Positions with α = 0
    (masked out) are never sampled and add 0 to the entropy.
    """
    batch, positions = alpha.size(0), alpha.size(-1)
    # float: autocast may give bf16
    location = torch.multinomial(alpha.detach().float().reshape(-1, positions), 1).view(*alpha.shape[:-1], 1)
    index = location.reshape(batch, -1, 1).expand(-1, -1, features.size(-1))  # (B, T or 1, D)
    picked = features.gather(1, index).view(expected_context.shape)
    sampled = (~expected).view(batch, *([1] * (alpha.dim() - 2)))  # (B, [1])
    attended = torch.where(sampled.unsqueeze(-1), picked, expected_context)
    log_prob = alpha.gather(-1, location).squeeze(-1).log() * sampled
    entropy = -torch.special.xlogy(alpha, alpha).sum(dim=-1) * sampled
    return HardChoice(attended, log_prob, entropy)


def argmax_context(features: Tensor, alpha: Tensor) -> Tensor:
    """features (B, P, D), alpha (B, [K,] P) -> a_{argmax α} (B, [K,] D): the context of the
    single most attended location (ties: the first), for decoding with "argmax"."""
    location = alpha.argmax(dim=-1)  # (B, [K])
    if alpha.dim() == 2:
        return features[torch.arange(features.size(0), device=features.device), location]
    return features.gather(1, location.unsqueeze(-1).expand(-1, -1, features.size(-1)))
