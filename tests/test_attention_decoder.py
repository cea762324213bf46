import pytest
import torch
import torch.nn.functional as F

from captioner.errors import CaptionerError
from captioner.models import DecoderConfig, FusedDecoder, SoftAttention, attention
from captioner.models.search import beam_search, greedy_decode
from captioner.training.loss import caption_loss

V, D, P = 13, 10, 6


def _decoder(gate="scalar", seed=0, dropout=0.0, **settings):
    torch.manual_seed(seed)
    config = DecoderConfig(embed_dim=8, hidden_dim=9, attention_dim=7, dropout=dropout, gate=gate, **settings)
    return FusedDecoder(config, V, D)


def test_attention_weights_sum_to_one_and_are_zero_where_masked():
    torch.manual_seed(0)
    att = SoftAttention(D, 9, 7)
    features, hidden = torch.randn(4, P, D), torch.randn(4, 9)
    mask = torch.rand(4, P) > 0.4
    mask[:, 0] = True
    context, alpha = att(features, att.project_features(features), hidden, mask)
    assert alpha.shape == (4, P) and context.shape == (4, D)
    assert torch.allclose(alpha.sum(-1), torch.ones(4))
    assert torch.all(alpha[~mask] == 0)
    assert torch.allclose(context, torch.einsum("bp,bpd->bd", alpha, features), atol=1e-6)


def test_attention_matches_the_tanh_formula():
    torch.manual_seed(1)
    att = SoftAttention(D, 9, 7)
    features, hidden = torch.randn(3, P, D), torch.randn(3, 9)
    energy = torch.tanh(att.feature_proj(features) + att.hidden_proj(hidden).unsqueeze(1))
    expected = att.score(energy).squeeze(-1).softmax(-1)
    _, alpha = att(features, att.project_features(features), hidden)
    assert torch.allclose(alpha, expected, atol=1e-6)


def test_attention_broadcasts_beams_over_shared_features():
    torch.manual_seed(2)
    att = SoftAttention(D, 9, 7)
    features, hidden = torch.randn(2, P, D), torch.randn(2, 3, 9)
    projected = att.project_features(features)
    context, alpha = att(features, projected, hidden)
    assert context.shape == (2, 3, D) and alpha.shape == (2, 3, P)
    for k in range(3):
        c_k, a_k = att(features, projected, hidden[:, k])
        assert torch.allclose(context[:, k], c_k, atol=1e-6) and torch.allclose(alpha[:, k], a_k, atol=1e-6)


def _count_feature_projections(decoder):
    """Calls of the one method that computes W_a a + b, in every precision."""
    calls, project = [], decoder._prepare

    def counted(*args):
        calls.append(1)
        return project(*args)

    decoder._prepare = counted
    return calls


def test_feature_projection_runs_once_per_forward_and_per_decode():
    decoder = _decoder().eval()
    calls = _count_feature_projections(decoder)
    features = torch.randn(3, P, D)
    decoder(features, torch.randint(0, V, (3, 7)))
    assert len(calls) == 1
    beam_search(decoder, features, start_id=1, end_id=2, beam_size=4, max_len=8)
    assert len(calls) == 2
    greedy_decode(decoder, features, start_id=1, end_id=2, max_len=8)
    assert len(calls) == 3


def test_teacher_forced_shapes():
    decoder = _decoder(dropout=0.5)
    logits, alphas = decoder(torch.randn(2, P, D), torch.randint(0, V, (2, 5)))
    assert logits.shape == (2, 5, V) and alphas.shape == (2, 5, P)
    assert torch.allclose(alphas.sum(-1), torch.ones(2, 5))


def _naive_loss(decoder, features, inputs, targets, pad_id):
    """Reference: one `step` per time step, vocabulary projection inside the loop."""
    projected = decoder.prepare(features)
    state = decoder.init_state(features)
    log_probs, alphas = [], []
    for t in range(inputs.size(1)):
        lp, state, alpha = decoder.step(inputs[:, t], state, features, projected)
        log_probs.append(lp)
        alphas.append(alpha)
    log_probs, alphas = torch.stack(log_probs, 1), torch.stack(alphas, 1)
    ce = F.nll_loss(log_probs.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
    real = (targets != pad_id).unsqueeze(-1)
    attention = ((1 - (alphas * real).sum(1)) ** 2).sum(1).mean()
    return ce + attention


@pytest.mark.parametrize("attend_from", ["previous", "current"])
@pytest.mark.parametrize("gate", ["scalar", "channel", "none"])
def test_fast_forward_equals_step_by_step_reference(gate, attend_from):
    decoder = _decoder(gate=gate, attend_from=attend_from)
    features = torch.randn(3, P, D)
    tokens = torch.randint(3, V, (3, 7))
    tokens[1, 5:] = 0
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    logits, alphas = decoder(features, inputs)
    fast = caption_loss(logits, targets, alphas, pad_id=0).total
    fast_grads = torch.autograd.grad(fast, list(decoder.parameters()), allow_unused=True)
    naive = _naive_loss(decoder, features, inputs, targets, pad_id=0)
    naive_grads = torch.autograd.grad(naive, list(decoder.parameters()), allow_unused=True)

    assert torch.allclose(fast, naive, atol=1e-5)
    for (name, _), g1, g2 in zip(decoder.named_parameters(), fast_grads, naive_grads):
        assert (g1 is None) == (g2 is None), name
        if g1 is not None:
            assert torch.allclose(g1, g2, atol=1e-5), name


@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_step_with_beams_equals_step_per_beam(attend_from):
    decoder = _decoder(attend_from=attend_from).eval()
    features = torch.randn(2, P, D)
    projected = decoder.prepare(features)
    h = torch.randn(2, 3, 9)
    c = torch.randn(2, 3, 9)
    prev = torch.randint(0, V, (2, 3))
    log_probs, (h2, _c2), alpha = decoder.step(prev, (h, c), features, projected)
    assert log_probs.shape == (2, 3, V) and h2.shape == (2, 3, 9) and alpha.shape == (2, 3, P)
    for k in range(3):
        lp_k, (h_k, _), a_k = decoder.step(prev[:, k], (h[:, k], c[:, k]), features, projected)
        assert torch.allclose(log_probs[:, k], lp_k, atol=1e-5)
        assert torch.allclose(h2[:, k], h_k, atol=1e-6) and torch.allclose(alpha[:, k], a_k, atol=1e-6)


def test_bad_gate_is_a_clear_error():
    with pytest.raises(CaptionerError, match="gate='sigmoid'.*scalar, channel, none"):
        FusedDecoder(DecoderConfig(gate="sigmoid"), vocab_size=V, feature_dim=D)


def _energies_reference(projected, hidden_projected, weight):
    """The paper's formula, by plain autograd: w·tanh(W_a a + b + W_h h), (B, K, P)."""
    return torch.tanh(projected.unsqueeze(1) + hidden_projected.unsqueeze(2)) @ weight


@pytest.mark.parametrize("chunk_floats", [1, 7 * 2 * 5, 2**21])  # one image, two, all at once
def test_chunked_energies_and_their_backward_match_the_tanh_formula(monkeypatch, chunk_floats):
    monkeypatch.setattr(attention, "CHUNK_FLOATS", chunk_floats)
    torch.manual_seed(3)
    projected = torch.randn(5, 7, 4, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(5, 2, 7, dtype=torch.float64)
    # Equal up to a constant per (image, beam), which softmax ignores: compare centred scores.
    fast, ref = attention.energies(projected, hidden, weight), _energies_reference(projected, hidden, weight)
    centred = lambda e: e - e.mean(dim=-1, keepdim=True)
    assert torch.allclose(centred(fast), centred(ref), atol=1e-10)
    fast_grads = torch.autograd.grad(fast, (projected, hidden, weight), centred(grad))
    ref_grads = torch.autograd.grad(ref, (projected, hidden, weight), centred(grad))
    for g1, g2 in zip(fast_grads, ref_grads):
        assert torch.allclose(g1, g2, atol=1e-10)


@pytest.mark.parametrize("gate", ["scalar", "channel", "none"])
def test_fast_backward_gives_feature_gradients_for_fine_tuning(monkeypatch, gate):
    monkeypatch.setattr(attention, "CHUNK_FLOATS", 2 * P * 7)  # several chunks per step
    decoder = _decoder(gate=gate).double()
    features = torch.randn(3, P, D, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(3, V, (3, 6))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits, alphas = decoder(features, inputs)
    fast = torch.autograd.grad(caption_loss(logits, targets, alphas, pad_id=0).total, features)[0]
    naive = torch.autograd.grad(_naive_loss(decoder, features, inputs, targets, pad_id=0), features)[0]
    assert torch.allclose(fast, naive, atol=1e-10)


def test_fast_path_gradients_pass_gradcheck():
    decoder = _decoder(gate="channel").double()
    features = torch.randn(2, P, D, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(3, V, (2, 4))

    def outputs(features):
        logits, alphas = decoder(features, tokens)
        return logits, alphas

    assert torch.autograd.gradcheck(outputs, (features,), fast_mode=True)


def test_zero_initial_state_starts_from_zero_whatever_the_features():
    torch.manual_seed(5)
    config = DecoderConfig(embed_dim=8, hidden_dim=9, attention_dim=7, dropout=0.0, initial_state="zero")
    zero = FusedDecoder(config, V, D)
    assert not any(name.startswith("init_proj") for name in zero.state_dict())
    for features in (torch.randn(3, P, D), 10 * torch.randn(3, P, D)):
        h, c = zero.init_state(features)
        assert torch.equal(h, torch.zeros(3, 9)) and torch.equal(c, torch.zeros(3, 9))
    # A "mean" decoder whose Linear(mean a) is 0 starts at tanh(0) = 0 too: same logits, same gradients
    # (the hand-written backward must not assume an h_0 that depends on the features).
    mean = _decoder(initial_state="mean")
    mean.load_state_dict(zero.state_dict(), strict=False)
    torch.nn.init.zeros_(mean.init_proj.weight)
    torch.nn.init.zeros_(mean.init_proj.bias)
    features = torch.randn(3, P, D, requires_grad=True)
    tokens = torch.randint(3, V, (3, 6))
    outputs = []
    for decoder in (zero, mean):
        logits, alphas = decoder(features, tokens)
        (grad,) = torch.autograd.grad((logits**2).sum() + alphas[:, 0].square().sum(), features)
        outputs.append((logits, alphas, grad))
    for got, want in zip(*outputs):
        assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(CaptionerError, match="initial_state='learned'"):
        FusedDecoder(DecoderConfig(initial_state="learned"), V, D)


@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_attention_for_a_word_sees_the_word_before_it_only_when_attending_from_the_current_state(attend_from):
    # α_t chooses where to look for y_t. From the current state it is computed after the LSTM has
    # read y_{t-1} (input t), so changing that input moves α_t; from the previous state it cannot.
    decoder = _decoder(attend_from=attend_from)
    features = torch.randn(2, P, D)
    tokens = torch.randint(3, V, (2, 5))
    changed = tokens.clone()
    changed[:, 3] = (tokens[:, 3] + 1 - 3) % (V - 3) + 3
    _, alphas = decoder(features, tokens)
    _, changed_alphas = decoder(features, changed)
    assert torch.equal(alphas[:, :3], changed_alphas[:, :3])
    moved = not torch.allclose(alphas[:, 3], changed_alphas[:, 3], atol=1e-6)
    assert moved == (attend_from == "current")


@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_context_feeds_the_lstm_only_when_attending_from_the_previous_state(attend_from):
    # With h_0 = 0, a decoder attending from the current state never lets the image into its
    # LSTM: the hidden states depend on the words alone, and a word's context reaches only that
    # word's output. From the previous state, z_t is an LSTM input and the states depend on it.
    decoder = _decoder(attend_from=attend_from, initial_state="zero")
    hiddens, deep_output = [], decoder.deep_output

    def spied(embedded, h, *args):
        hiddens.append(h)
        return deep_output(embedded, h, *args)

    decoder.deep_output = spied
    tokens = torch.randint(3, V, (2, 5))
    decoder(torch.randn(2, P, D), tokens)
    decoder(5 * torch.randn(2, P, D), tokens)
    same = torch.allclose(hiddens[0], hiddens[1], atol=1e-6)
    assert same == (attend_from == "current")


def test_attending_from_the_current_state_is_checked():
    with pytest.raises(CaptionerError, match="attend_from='next'.*previous, current"):
        FusedDecoder(DecoderConfig(attend_from="next"), V, D)
    # The LSTM reads the word alone: its input is E wide, not E + D.
    assert _decoder(attend_from="current").lstm.weight_ih.shape == (4 * 9, 8)
