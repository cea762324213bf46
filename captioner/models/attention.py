"""Soft (additive) attention of Show, Attend and Tell, eq. 4-5 and 8 of Xu et al. (2015)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SoftAttention(nn.Module):
    """e_i = w · tanh(W_a a_i + W_h h + b);  α = softmax_i(e);  z = Σ_i α_i a_i.

    `W_a a_i + b` does not depend on the decoding step, so callers compute it once per image
    with `project_features` and pass it to every step.

    Hidden states may carry an extra beam axis: hidden (B, K, H) attends over features
    (B, P, D) by broadcasting, so K beams share one copy of their image's features.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)  # W_a and b
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim, bias=False)  # W_h
        # A bias on the score would be the same for every position: softmax ignores it.
        self.score = nn.Linear(attention_dim, 1, bias=False)  # w

    def project_features(self, features: Tensor) -> Tensor:
        """features (B, P, D) -> W_a a + b, (B, P, A). Call once per image, not per step."""
        return self.feature_proj(features)

    def forward(
        self, features: Tensor, projected: Tensor, hidden: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """features (B, P, D), projected (B, P, A), hidden (B, H) or (B, K, H), mask (B, P) bool
        (True = may attend) -> context (B, D) / (B, K, D), alpha (B, P) / (B, K, P)."""
        return self.attend(features, projected, self.hidden_proj(hidden), mask)

    def attend(
        self,
        features: Tensor,
        projected: Tensor,
        hidden_projected: Tensor,
        mask: Tensor | None = None,
        workspace: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Like `forward`, with W_h h already computed: hidden_projected (B, A) or (B, K, A).

        The decoder computes W_h h inside one fused matmul with the LSTM's recurrent term.
        workspace: optional scratch memory of at least B·K·P·A floats, see `energies`.
        """
        beams = hidden_projected.dim() == 3
        if not beams:
            hidden_projected = hidden_projected.unsqueeze(1)
        scores = energies(projected, hidden_projected, self.score.weight[0], workspace)  # (B, K, P)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        alpha = scores.softmax(dim=-1)
        context = torch.bmm(alpha, features)  # (B, K, P) @ (B, P, D): Σ_i α_i a_i per beam
        if not beams:
            return context.squeeze(1), alpha.squeeze(1)
        return context, alpha


# tanh(u) = 2σ(2u) − 1, and softmax ignores the constant −Σw that this leaves, so
# e_i = 2w·σ(2u_i) gives the same α. Why: on CPU, PyTorch's tanh is ~2-8x slower than
# sigmoid, and the (B, K, P, A) tensor it runs over is the largest one of every step.


def energies(projected: Tensor, hidden_projected: Tensor, weight: Tensor, workspace: Tensor | None = None) -> Tensor:
    """projected (B, P, A) = W_a a + b, hidden_projected (B, K, A) = W_h h, weight (A,) = w
    -> scores (B, K, P) = 2w·σ(2(W_a a + b + W_h h)), equal to w·tanh(...) up to a constant.

    The sigmoids (B, K, P, A) are written into `workspace` (any tensor of at least that many
    floats) when given, and are then left there (`energies_backward` needs them). Why: at
    beam-search sizes this tensor is over 100 MB, and allocating it afresh every step
    (page faults) costs as much as the arithmetic.
    """
    (batch, positions, dim), beams = projected.shape, hidden_projected.size(1)
    out = None
    if workspace is not None:
        out = workspace.view(-1)[: batch * beams * positions * dim].view(batch, beams, positions, dim)
    sig = torch.add((2 * hidden_projected).unsqueeze(2), projected.unsqueeze(1), alpha=2, out=out)
    return torch.matmul(sig.sigmoid_(), 2 * weight)


def energies_backward(
    grad_scores: Tensor, sigmoids: Tensor, weight: Tensor, grad_projected: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward of `energies` for one step without the beam axis, given its sigmoids
    s = σ(2u) (B, P, A) (consumed: overwritten with ∂e/∂u).

    grad_scores (B, P) -> grad of hidden_projected (B, A) and of weight (A,); the gradient of
    projected (B, P, A) is added into `grad_projected` in place, so that the decoder sums it
    over all steps in one buffer.
    """
    batch, positions, dim = sigmoids.shape
    # ∂e/∂w = 2s;  ∂e/∂u = 2w · 2s(1 − s).
    grad_weight = torch.mv(sigmoids.view(-1, dim).t(), grad_scores.reshape(-1)) * 2
    grad_u = torch.ops.aten.sigmoid_backward.grad_input(
        (4 * weight).expand_as(sigmoids), sigmoids, grad_input=sigmoids
    ).mul_(grad_scores.unsqueeze(-1))
    grad_projected += grad_u
    return grad_u.sum(dim=1), grad_weight
