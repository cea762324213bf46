import math

import pytest
import torch
import torch.nn.functional as F

from captioner.training.loss import caption_loss

PAD = 0


def _batch(seed=0, b=3, t=5, v=11, p=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g)
    targets = torch.randint(1, v, (b, t), generator=g)
    targets[0, 3:] = PAD
    targets[2, 1:] = PAD
    alphas = torch.rand(b, t, p, generator=g).softmax(-1)
    return logits, targets, alphas


def test_cross_entropy_is_the_mean_over_real_tokens():
    logits, targets, alphas = _batch()
    real = targets != PAD
    expected = F.cross_entropy(logits[real], targets[real])
    assert torch.allclose(caption_loss(logits, targets, alphas, PAD).cross_entropy, expected)


def test_padded_steps_do_not_change_the_loss():
    logits, targets, alphas = _batch()
    before = caption_loss(logits, targets, alphas, PAD)
    padded = targets == PAD
    logits2, alphas2 = logits.clone(), alphas.clone()
    logits2[padded] = torch.randn_like(logits2[padded]) * 10
    alphas2[padded] = torch.rand_like(alphas2[padded])
    after = caption_loss(logits2, targets, alphas2, PAD)
    for x, y in zip(before, after):
        assert torch.equal(x, y)


def test_attention_term_is_zero_when_every_position_gets_total_attention_one():
    t = p = 4
    targets = torch.tensor([[5, 6, 7, 8, PAD, PAD]])
    alphas = torch.zeros(1, t + 2, p)
    alphas[0, :t] = torch.eye(p)[torch.randperm(p)]  # each position attended exactly once
    alphas[0, t:] = 0.7  # padded steps: ignored
    parts = caption_loss(torch.randn(1, t + 2, 9), targets, alphas, PAD)
    assert parts.attention.item() == pytest.approx(0.0, abs=1e-7)


def test_attention_term_value_and_lambda():
    logits, targets, alphas = _batch()
    real = (targets != PAD).float().unsqueeze(-1)
    expected = ((1 - (alphas * real).sum(1)) ** 2).sum(1).mean()
    parts = caption_loss(logits, targets, alphas, PAD, attention_lambda=0.25)
    assert torch.allclose(parts.attention, expected)
    assert torch.allclose(parts.total, parts.cross_entropy + 0.25 * expected)


def test_entropy_term_is_the_mean_step_entropy_over_real_steps():
    logits, targets, alphas = _batch(seed=3)
    real = targets != PAD
    per_step = -(alphas * alphas.log()).sum(-1)
    parts = caption_loss(logits, targets, alphas, PAD, attention_lambda=0.5, entropy_weight=0.2)
    assert torch.allclose(parts.entropy, per_step[real].mean())
    assert torch.allclose(parts.total, parts.cross_entropy + 0.5 * parts.attention + 0.2 * parts.entropy)
    # One-hot attention has entropy 0; uniform over P cells has log P.
    peaked = torch.nn.functional.one_hot(torch.randint(0, 6, targets.shape), 6).float()
    assert caption_loss(logits, targets, peaked, PAD).entropy.item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full_like(alphas, 1 / 6)
    assert caption_loss(logits, targets, uniform, PAD).entropy.item() == pytest.approx(math.log(6))


def test_entropy_gradient_is_finite_where_a_mask_zeroed_attention():
    logits, targets, alphas = _batch(seed=4)
    alphas = alphas.clone()
    alphas[..., 0] = 0.0
    alphas = (alphas / alphas.sum(-1, keepdim=True)).requires_grad_()
    caption_loss(logits, targets, alphas, PAD, entropy_weight=1.0).total.backward()
    assert torch.isfinite(alphas.grad).all()
