"""Policy-gradient objectives: REINFORCE, the moving-average baseline, hard attention's
location sampling, caption sampling and self-critical training on CIDEr-D."""

from __future__ import annotations

import pytest
import torch

from captioner.errors import CaptionerError
from captioner.models import DecoderConfig, FusedDecoder
from captioner.models.captioner import ShowAttendTell
from captioner.models.hard_attention import argmax_context, sample_context
from captioner.models.search import DecodingConfig, greedy_decode, sample_captions
from captioner.training.objectives import HardAttention, SelfCritical
from captioner.training.objectives.reinforce import MovingAverageBaseline, reinforce_loss
from captioner.vocab import Vocabulary


@pytest.fixture
def one_thread():
    """Tensors this small only lose to threading overhead (a lot of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


pytestmark = pytest.mark.usefixtures("one_thread")

REWARDS = torch.tensor([1.0, -2.0, 0.5, 3.0])
LOGITS = torch.tensor([0.3, -0.2, 1.0, 0.1])


def _exact_gradient(logits: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """∇_θ E_{a ~ softmax θ}[r_a] = p ⊙ (r − p·r), the known answer."""
    p = logits.softmax(0)
    return p * (rewards - (p * rewards).sum())


@pytest.mark.parametrize("baseline", ["zero", "constant", "depends_on_theta"])
def test_reinforce_expected_gradient_is_the_exact_gradient(baseline):
    """Enumerate every action, weight each estimate by its probability: the expectation of the
    REINFORCE gradient is exactly −∇E[r], whatever the baseline (even one computed from θ,
    since no gradient may flow through it)."""
    theta = LOGITS.clone().requires_grad_()
    log_p = theta.log_softmax(0)
    b = {"zero": torch.tensor(0.0), "constant": torch.tensor(1.7), "depends_on_theta": (log_p.exp() * REWARDS).sum()}
    expected = torch.zeros(4)
    for action in range(4):
        (grad,) = torch.autograd.grad(
            reinforce_loss(log_p[action].view(1, 1), REWARDS[action].view(1), b[baseline].view(1), 1.0),
            theta,
            retain_graph=True,
        )
        expected += log_p[action].exp().detach() * grad
    torch.testing.assert_close(expected, -_exact_gradient(LOGITS, REWARDS), rtol=1e-5, atol=1e-6)


def test_sampled_hard_attention_estimates_the_exact_gradient():
    """Monte Carlo through `sample_context`: locations drawn from α = softmax(θ), reward r(a_s);
    the mean REINFORCE gradient over many draws matches p ⊙ (r − p·r), and locations come up
    as often as α says."""
    torch.manual_seed(0)
    draws = 40_000
    features = REWARDS.view(1, 4, 1).expand(draws, 4, 1)  # a_i = r_i: the context is the reward
    theta = LOGITS.clone().requires_grad_()
    alpha = theta.softmax(0).expand(draws, 4)
    expected_context = alpha @ REWARDS
    choice = sample_context(features, alpha, expected_context.unsqueeze(1), torch.zeros(draws, dtype=torch.bool))
    reward = choice.attended.squeeze(1)
    baseline = MovingAverageBaseline()
    baseline(torch.tensor([0.9]))  # any earlier value: an unbiased baseline
    loss = reinforce_loss(choice.log_prob.unsqueeze(1), reward, baseline(reward), draws)
    (grad,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(-grad, _exact_gradient(LOGITS, REWARDS), rtol=0, atol=0.02)
    frequencies = torch.bincount((reward.unsqueeze(1) == REWARDS).float().argmax(1), minlength=4) / draws
    torch.testing.assert_close(frequencies, LOGITS.softmax(0), rtol=0, atol=0.01)
    entropy = -(LOGITS.softmax(0) * LOGITS.log_softmax(0)).sum()
    torch.testing.assert_close(choice.entropy, entropy.expand(draws).detach())


def test_expected_rows_take_the_soft_context_and_sample_nothing():
    torch.manual_seed(0)
    features = torch.randn(3, 5, 2)
    alpha = torch.randn(3, 5).softmax(-1).requires_grad_()
    soft = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)
    expected = torch.tensor([True, False, True])
    choice = sample_context(features, alpha, soft, expected)
    torch.testing.assert_close(choice.attended[expected], soft[expected])
    assert (choice.log_prob[expected] == 0).all() and (choice.entropy[expected] == 0).all()
    assert any(torch.equal(choice.attended[1], features[1, p]) for p in range(5))
    # Masked positions (α = 0) are never drawn and add nothing to the entropy.
    masked = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).expand(200, 5)
    picks = sample_context(features[:1].expand(200, 5, 2), masked, soft[:1].expand(200, 2), expected[1:2].expand(200))
    assert torch.isfinite(picks.entropy).all()
    torch.testing.assert_close(picks.entropy, torch.full((200,), 0.6931), atol=1e-4, rtol=0)
    assert all(any(torch.equal(a, features[0, p]) for p in (1, 3)) for a in picks.attended)


def test_sampling_every_step_at_once_draws_each_steps_own_location():
    # alpha (B, T, P): step t of image b must draw from α[b, t] and take features[b, s].
    features = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    alpha = torch.zeros(2, 3, 4)
    for b, t, p in [(0, 0, 1), (0, 1, 3), (0, 2, 0), (1, 0, 2), (1, 1, 2), (1, 2, 3)]:
        alpha[b, t, p] = 1.0
    soft = torch.bmm(alpha, features)
    choice = sample_context(features, alpha, soft - 100, torch.tensor([False, True]))
    torch.testing.assert_close(choice.attended[0], features[0, [1, 3, 0]])
    torch.testing.assert_close(choice.attended[1], soft[1] - 100)  # the expected row keeps its context
    assert choice.log_prob.shape == choice.entropy.shape == (2, 3)
    assert (choice.log_prob == 0).all() and (choice.entropy == 0).all()  # one-hot: log 1 = 0, H = 0


def test_per_step_rewards_pair_each_location_with_its_own_word():
    """Two steps, three locations each, word log-likelihood r_t(s_t) depending on that step's
    location alone (a decoder attending from the current state). Enumerating every (s_0, s_1),
    the expected gradient with per-step rewards equals the exact gradient of E[r_0 + r_1], as the
    whole caption's reward does; a reward paired with the wrong step would not."""
    theta = torch.tensor([[0.2, -0.5, 0.9], [1.1, 0.0, -0.3]], requires_grad=True)
    word_log_probs = torch.tensor([[-0.1, -2.0, -0.7], [-1.5, -0.2, -3.0]])  # r_t(s)
    real, sampled = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, dtype=torch.bool)
    exact = torch.stack([_exact_gradient(theta[t].detach(), word_log_probs[t]) for t in range(2)])
    for per_step in (True, False):
        expected = torch.zeros(2, 3)
        for s0 in range(3):
            for s1 in range(3):
                objective = HardAttention(reinforce_lambda=1.0, entropy_lambda=0.0)
                objective.moving_average(torch.tensor([-1.0]))  # a value from history: an unbiased baseline
                alpha = theta.softmax(-1)
                log_alpha = torch.stack([alpha[0, s0].log(), alpha[1, s1].log()]).view(1, 2)
                rewards = torch.stack([word_log_probs[0, s0], word_log_probs[1, s1]]).view(1, 2)
                terms = objective.terms(rewards, log_alpha, torch.zeros(1, 2), real, sampled, per_step=per_step)
                (grad,) = torch.autograd.grad(terms.total, theta)
                expected += (alpha[0, s0] * alpha[1, s1]).detach() * grad
        # total is normalised by the 2 real tokens, and is a loss: −∇ E[Σ_t r_t] / 2
        torch.testing.assert_close(-2 * expected, exact, rtol=1e-5, atol=1e-6)


def test_per_step_advantages_are_each_words_own():
    token_log_probs = torch.tensor([[-1.0, -3.0, 0.0], [-2.0, -0.5, -4.0]])
    real = torch.tensor([[True, True, False], [True, True, True]])
    location_log_probs = torch.zeros(2, 3, requires_grad=True)
    objective = HardAttention(reinforce_lambda=1.0, entropy_lambda=0.0)
    objective.moving_average(torch.tensor([-1.5]))
    terms = objective.terms(
        token_log_probs, location_log_probs * real, torch.zeros(2, 3), real, torch.ones(2, dtype=torch.bool),
        per_step=True,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(terms.total, location_log_probs)
    torch.testing.assert_close(grad, -(token_log_probs + 1.5) * real / 5)
    torch.testing.assert_close(terms.log_likelihood, torch.tensor(-5.25))  # still per caption


def test_expected_context_baseline_is_each_words_own_expected_context_likelihood():
    token_log_probs = torch.tensor([[-1.0, -3.0, 0.0], [-2.0, -0.5, -4.0]])
    expected_log_probs = torch.tensor([[-0.5, -3.5, -9.0], [-1.0, -1.5, -2.0]])
    real = torch.tensor([[True, True, False], [True, True, True]])
    location_log_probs = torch.zeros(2, 3, requires_grad=True)
    objective = HardAttention(reinforce_lambda=1.0, entropy_lambda=0.0, baseline="expected_context")
    args = (token_log_probs, location_log_probs * real, torch.zeros(2, 3), real, torch.ones(2, dtype=torch.bool))
    terms = objective.terms(*args, per_step=True, expected_log_probs=expected_log_probs)
    (grad,) = torch.autograd.grad(terms.total, location_log_probs)
    torch.testing.assert_close(grad, -(token_log_probs - expected_log_probs) * real / 5)
    torch.testing.assert_close(terms.baseline, torch.tensor(-8.5 / 5))  # mean over the real words
    assert objective.moving_average.updates == 0  # the moving average is not used


def test_argmax_context_picks_the_most_attended_location_per_beam():
    features = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)
    alpha = torch.tensor([[[0.1, 0.7, 0.2], [0.6, 0.2, 0.2]], [[0.1, 0.1, 0.8], [0.3, 0.4, 0.3]]])
    torch.testing.assert_close(argmax_context(features, alpha), features[[[0, 0], [1, 1]], [[1, 0], [2, 1]]])
    torch.testing.assert_close(argmax_context(features, alpha[:, 0]), features[[0, 1], [1, 2]])


def test_moving_average_baseline():
    baseline = MovingAverageBaseline(decay=0.9)
    first = baseline(torch.tensor([1.0, 3.0]))
    assert first.item() == pytest.approx(2.0)  # no history yet: the batch's own mean
    second = baseline(torch.tensor([10.0, 12.0]))  # the value before this batch's update
    assert second.item() == pytest.approx(2.0)
    assert baseline.value.item() == pytest.approx(0.9 * 2.0 + 0.1 * 11.0)
    third = baseline(torch.tensor([100.0, -5.0, 4.0]), keep=torch.tensor([False, True, True]))
    assert third.item() == pytest.approx(2.9)
    assert baseline.value.item() == pytest.approx(0.9 * 2.9 + 0.1 * -0.5)
    unchanged = baseline.value.item()
    assert baseline(torch.tensor([7.0]), keep=torch.tensor([False])).item() == pytest.approx(unchanged)
    assert baseline.value.item() == pytest.approx(unchanged)
    restored = MovingAverageBaseline()
    restored.load_state_dict(baseline.state_dict())  # a buffer: resumes from checkpoints
    assert restored(torch.tensor([0.0])).item() == pytest.approx(unchanged)
    with pytest.raises(CaptionerError, match="decay"):
        MovingAverageBaseline(decay=1.0)


def _decoder(vocab: int, seed: int = 0, dropout: float = 0.0) -> FusedDecoder:
    torch.manual_seed(seed)
    return FusedDecoder(DecoderConfig(embed_dim=16, hidden_dim=16, attention_dim=8, dropout=dropout), vocab, 8)


def test_samples_follow_the_model_distribution_without_banned_words():
    decoder = _decoder(9)
    features = torch.randn(2, 4, 8)
    torch.manual_seed(1)
    drawn = sample_captions(
        decoder, features, start_id=1, end_id=2, pad_id=0, samples=3000, max_len=4, banned_ids=(0, 1, 3)
    )
    assert drawn.tokens.shape[:2] == (2, 3000) and drawn.log_probs.requires_grad
    assert not torch.isin(drawn.tokens[drawn.mask], torch.tensor([0, 1, 3])).any()
    assert (drawn.tokens[~drawn.mask] == 0).all() and (drawn.log_probs[~drawn.mask] == 0).all()
    # After <end> nothing; a sample ends with <end> or runs max_len tokens.
    ends = (drawn.tokens == 2).cumsum(-1)
    assert not (drawn.mask & (ends - (drawn.tokens == 2).long() > 0)).any()
    torch.testing.assert_close(drawn.lengths, (drawn.mask & (drawn.tokens != 2)).sum(-1))
    # The first word's frequencies and log-probabilities are the step's renormalised distribution.
    with torch.no_grad():
        h, c = decoder.init_state(features)
        log_p, _, _ = decoder.step(torch.ones(2, dtype=torch.long), (h, c), features, decoder.prepare(features))
        log_p[:, [0, 1, 3]] = float("-inf")
        policy = log_p.log_softmax(-1)
    for image in range(2):
        first = drawn.tokens[image, :, 0]
        frequencies = torch.bincount(first, minlength=9) / 3000
        torch.testing.assert_close(frequencies, policy[image].exp(), rtol=0, atol=0.03)
        torch.testing.assert_close(drawn.log_probs[image, :, 0].detach(), policy[image, first], rtol=0, atol=1e-5)
    drawn.log_probs.sum().backward()
    assert decoder.out_vocab.weight.grad.abs().sum() > 0


def _scst_setup(samples: int, baseline: str):
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "blue", "circle", "square", "left", "right", "on", "the"]
    vocab = Vocabulary(words)
    references = {
        10: ["a red circle on the left", "a red circle on the left"],
        11: ["a blue square on the right", "the blue square on the right"],
        12: ["a red square on the right", "a red square on the right"],
        13: ["a blue circle on the left", "the blue circle on the left"],
    }
    scst = SelfCritical(samples=samples, baseline=baseline)
    scst.attach(ShowAttendTell(torch.nn.Identity(), _decoder(len(vocab))), vocab, DecodingConfig(max_len=8))
    scst.use_references(references)
    return vocab, scst


def _greedy_reward(decoder: FusedDecoder, scst: SelfCritical, vocab: Vocabulary, features, ids) -> float:
    decoder.eval()
    captions = greedy_decode(decoder, features, start_id=1, end_id=2, max_len=8, banned_ids=(0, 1, 3))
    decoder.train()
    return scst.rewards(ids.tolist(), [c.tokens for c in captions]).mean().item()


@pytest.mark.parametrize(("samples", "baseline", "lr", "steps"), [(4, "greedy", 0.01, 80), (8, "mean", 0.01, 50)])
def test_scst_raises_the_reward_on_a_set_it_can_overfit(samples, baseline, lr, steps):
    vocab, scst = _scst_setup(samples, baseline)
    decoder = _decoder(len(vocab), seed=2)
    features = torch.randn(4, 4, 8, generator=torch.Generator().manual_seed(0)) * 2
    ids = torch.tensor([10, 11, 12, 13])
    # A batch of pairs repeats images: each distinct one is sampled once.
    batch_features, batch_ids = features[[0, 1, 1, 2, 3, 0]], ids[[0, 1, 1, 2, 3, 0]]
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    before = _greedy_reward(decoder, scst, vocab, features, ids)
    torch.manual_seed(0)
    for _ in range(steps):
        parts = scst.loss(decoder, batch_features, batch_ids)
        optimizer.zero_grad()
        parts.loss.backward()
        optimizer.step()
    after = _greedy_reward(decoder, scst, vocab, features, ids)
    assert before < 1.0 and after > max(2 * before, before + 1.0), (before, after)


def test_rewards_score_each_image_against_its_own_references():
    vocab, scst = _scst_setup(1, "greedy")
    caption = [vocab.id(w) for w in ["a", "red", "circle", "on", "the", "left"]] + [vocab.end_id, 5, 5]
    rewards = scst.rewards([10, 11], [caption, caption])
    # "a", "on", "the" are in every image's references: no weight. Words after <end> do not count.
    assert rewards[0] > 5 and rewards[1] < 1
    assert rewards[0] > scst.rewards([10], [caption[:3]])[0]


def test_scst_settings_are_checked():
    with pytest.raises(CaptionerError, match="samples to 2 or more"):
        SelfCritical(samples=1, baseline="mean")
    with pytest.raises(CaptionerError, match="at least 1"):
        SelfCritical(samples=0)
    with pytest.raises(CaptionerError, match="'greedy' or 'mean'"):
        SelfCritical(samples=2, baseline="median")
