"""Soft (additive) attention of Show, Attend and Tell, eq. 4-5 and 8 of Xu et al. (2015)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


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
        """features (B, P, D), projected (B, P, A), hidden (B, H) or (B, K, H), mask (B, P) or,
        with beams, (B, K, P) bool (True = may attend) -> context (B, D) / (B, K, D), alpha (B, P) / (B, K, P)."""
        return self.attend(features, projected, self.hidden_proj(hidden), mask)

    def attend(
        self, features: Tensor, projected: Tensor, hidden_projected: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Like `forward`, with W_h h already computed: hidden_projected (B, A) or (B, K, A).

        The decoder computes W_h h inside one fused matmul with the LSTM's recurrent term.
        """
        beams = hidden_projected.dim() == 3
        if not beams:
            hidden_projected = hidden_projected.unsqueeze(1)
        scores = energies(projected, hidden_projected, self.score.weight[0])  # (B, K, P)
        if mask is not None:
            scores = scores.masked_fill(~(mask.unsqueeze(1) if mask.dim() == 2 else mask), float("-inf"))
        alpha = scores.softmax(dim=-1)
        # (B, K, P) @ (B, P, D): Σ_i α_i a_i per beam, in the features' dtype (16 bits under mixed
        # precision), returned in α's (float32 at least).
        context = torch.bmm(alpha.to(features.dtype), features).to(alpha.dtype)
        if not beams:
            return context.squeeze(1), alpha.squeeze(1)
        return context, alpha


# tanh(u) = 2σ(2u) − 1, and softmax ignores the constant −Σw that this leaves, so
# e_i = 2w·σ(2u_i) gives the same α. Why: on CPU, PyTorch's tanh is several times slower than sigmoid.
#
# The (B, K, P, A) tensor of sigmoids is the largest one of every step (hundreds of MB at beam
# search sizes), and the work on it is memory-bound: it is computed a few images at a time
# in one reused buffer of at most CHUNK_FLOATS floats, which stays in cache from the add to
# the product with w. This is faster on CPU than one pass over the whole tensor.
CHUNK_FLOATS = 2**21


def energies(projected: Tensor, hidden_projected: Tensor, weight: Tensor) -> Tensor:
    """projected (B, P, A) = W_a a + b, hidden_projected (B, K, A) = W_h h, weight (A,) = w
    -> scores (B, K, P) = 2w·σ(2(W_a a + b + W_h h)), equal to w·tanh(...) up to a constant.
    Differentiable; the backward recomputes the sigmoids chunk by chunk (`energies_backward`).
    Computed with autocast off in float32 at least (a no-op for float32 and float64 inputs): the
    chunked kernels take one dtype, and the softmax over these scores is where low precision hurts."""
    dtype = torch.promote_types(torch.promote_types(projected.dtype, hidden_projected.dtype), torch.float32)
    with torch.autocast(projected.device.type, enabled=False):
        return _Energies.apply(projected.to(dtype), hidden_projected.to(dtype), weight.to(dtype))


class _Energies(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projected, hidden_projected, weight):
        batch, beams, positions = projected.size(0), hidden_projected.size(1), projected.size(1)
        scores = projected.new_empty(batch, beams, positions)
        buffer = _chunk_buffer(projected, beams)
        for rows in _chunks(batch, buffer.size(0)):
            sigmoids = _sigmoids(projected[rows], hidden_projected[rows], buffer)
            torch.matmul(sigmoids, 2 * weight, out=scores[rows])
        ctx.save_for_backward(projected, hidden_projected, weight)
        return scores

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_scores):
        projected, hidden_projected, weight = ctx.saved_tensors
        grad_projected = torch.zeros_like(projected)
        grad_hidden, grad_weight = energies_backward(grad_scores, projected, hidden_projected, weight, grad_projected)
        return grad_projected, grad_hidden, grad_weight


def energies_backward(
    grad_scores: Tensor, projected: Tensor, hidden_projected: Tensor, weight: Tensor, grad_projected: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward of `energies`: grad_scores (B, K, P), projected (B, P, A), hidden_projected
    (B, K, A), weight (A,) -> gradients of hidden_projected (B, K, A) and of weight (A,).
    The gradient of projected is added into `grad_projected` (B, P, A) in place, so that the
    decoder's time loop sums it over all steps in one buffer. The sigmoids are recomputed:
    cheaper than keeping them (T of them, in the decoder's case).
    """
    grad_hidden = torch.empty_like(hidden_projected)
    grad_weight = torch.zeros_like(weight)
    buffer = _chunk_buffer(projected, hidden_projected.size(1))
    for rows in _chunks(projected.size(0), buffer.size(0)):
        s = _sigmoids(projected[rows], hidden_projected[rows], buffer)  # (b, K, P, A)
        d_scores = grad_scores[rows].unsqueeze(-1)  # (b, K, P, 1)
        grad_weight += 2 * torch.mv(s.flatten(0, 2).t(), d_scores.flatten())  # ∂e/∂w = 2s
        # ∂e/∂u = 2w · 2s(1 − s), with u = W_a a + b + W_h h; overwrites s.
        grad_u = torch.ops.aten.sigmoid_backward.grad_input((4 * weight).expand_as(s), s, grad_input=s)
        grad_u.mul_(d_scores)
        grad_projected[rows] += grad_u.squeeze(1) if grad_u.size(1) == 1 else grad_u.sum(dim=1)
        grad_hidden[rows] = grad_u.sum(dim=2)
    return grad_hidden, grad_weight


def _chunk_buffer(projected: Tensor, beams: int) -> Tensor:
    """Scratch (b, K, P, A) for the largest chunk of b images within CHUNK_FLOATS floats (b ≥ 1)."""
    batch, positions, dim = projected.shape
    images = min(batch, max(1, CHUNK_FLOATS // (beams * positions * dim)))
    return projected.new_empty(images, beams, positions, dim)


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def _sigmoids(projected: Tensor, hidden_projected: Tensor, buffer: Tensor) -> Tensor:
    """projected (b, P, A), hidden_projected (b, K, A) -> σ(2(projected + hidden_projected))
    (b, K, P, A), written into the first b images of buffer."""
    out = buffer[: projected.size(0)]
    torch.add((2 * hidden_projected).unsqueeze(2), projected.unsqueeze(1), alpha=2, out=out)
    return out.sigmoid_()
