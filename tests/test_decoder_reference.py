"""The fused decoder against the readable one (`captioner.models.decoder.Decoder`, the paper's
equations with nn.LSTMCell and a plain tanh attention), in float64: values and gradients, for
every gate, both step orders, soft and hard attention, with and without a mask. The readable
decoder shares only its parameters with the fused time loop, chunked energies and hand-written
backward, so a slip in any of those shows here."""

from __future__ import annotations

import pytest
import torch

from captioner.models import Decoder, DecoderConfig, FusedDecoder
from captioner.models.search import beam_search

V, D, B, T, P = 11, 6, 3, 5, 7


def _pair(seed: int = 0, **settings) -> tuple[Decoder, FusedDecoder]:
    torch.manual_seed(seed)
    config = DecoderConfig(embed_dim=4, hidden_dim=5, attention_dim=3, dropout=0.0, **settings)
    readable = Decoder(config, V, D).double()
    fused = FusedDecoder(config, V, D).double()
    fused.load_state_dict(readable.state_dict())
    return readable, fused


def _inputs(masked: bool):
    features = torch.randn(B, P, D, dtype=torch.float64)
    tokens = torch.randint(0, V, (B, T))
    mask = torch.rand(B, P) > 0.4 if masked else None
    if mask is not None:
        mask[:, 0] = True  # every row attends somewhere
    return features, tokens, mask


def _run(run, features, tokens, mask, weights):
    """Outputs and the gradients of a loss reaching every logit and α."""
    features = features.clone().requires_grad_(True)
    logits, alphas = run(features, tokens, mask)
    ((logits * weights).sum() + (alphas**2).sum()).backward()
    return logits.detach(), alphas.detach(), features.grad


@pytest.mark.parametrize("gate", ["scalar", "channel", "none"])
@pytest.mark.parametrize("attend_from", ["previous", "current"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("path", ["forward", "forward_autograd"])
def test_fused_decoder_matches_the_readable_one_values_and_gradients(gate, attend_from, masked, path):
    readable, fused = _pair(gate=gate, attend_from=attend_from)
    features, tokens, mask = _inputs(masked)
    weights = torch.randn(B, T, V, dtype=torch.float64)

    got = _run(getattr(fused, path), features, tokens, mask, weights)
    want = _run(readable, features, tokens, mask, weights)

    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    for (name, p), q in zip(fused.named_parameters(), readable.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-8, msg=f"gradient of {name}")
    if mask is not None:
        alphas = got[1]
        assert (alphas.masked_select(~mask.unsqueeze(1).expand_as(alphas)) == 0).all()


@pytest.mark.parametrize("attend_from", ["previous", "current"])
@pytest.mark.parametrize("hard_decoding", ["expected", "argmax"])
def test_hard_decoders_agree_when_decoding_and_in_their_expected_rows(attend_from, hard_decoding):
    readable, fused = _pair(attention="hard", hard_decoding=hard_decoding, attend_from=attend_from)
    features, tokens, mask = _inputs(masked=True)
    for a, b in zip(fused(features, tokens, mask), readable(features, tokens, mask)):
        torch.testing.assert_close(a, b)
    # expected_prob 1: every row takes the expected context, so nothing is sampled.
    hard_fused = fused.forward_hard(features, tokens, mask, expected_prob=1.0)
    hard_readable = readable.forward_hard(features, tokens, mask, expected_prob=1.0)
    torch.testing.assert_close(hard_fused.logits, hard_readable.logits)
    assert not hard_fused.sampled.any() and not hard_readable.sampled.any()


@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_hard_sampling_draws_locations_with_the_right_log_probability(attend_from):
    """Each step's reported log-probability is log α_t of one cell, the cell drawn: over many
    draws of one caption, each cell is reported as often as α_t says (P(s_t = i) = E[α_ti]
    over the earlier draws), and the entropy is H(α_t)."""
    readable, fused = _pair(attention="hard", attend_from=attend_from)
    features, tokens, _ = _inputs(masked=False)
    draws = 4000
    features, tokens = features[:1].expand(draws, -1, -1), tokens[:1].expand(draws, -1)
    for decoder in (readable, fused):
        torch.manual_seed(0)
        with torch.no_grad():
            out = decoder.forward_hard(features, tokens, expected_prob=0.0)
        assert out.sampled.all()
        alphas = out.alphas  # (draws, T, P)
        cell = (alphas.log() - out.location_log_probs.unsqueeze(-1)).abs().argmin(-1)  # (draws, T)
        torch.testing.assert_close(alphas.gather(-1, cell.unsqueeze(-1)).squeeze(-1).log(), out.location_log_probs)
        for t in range(T):
            frequencies = torch.bincount(cell[:, t], minlength=P).double() / draws
            torch.testing.assert_close(frequencies, alphas[:, t].mean(0), atol=0.035, rtol=0)
        torch.testing.assert_close(out.entropies, -(alphas * alphas.log()).sum(-1))


@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_beam_search_gives_the_same_captions_with_either_decoder(attend_from):
    readable, fused = _pair(seed=3, attend_from=attend_from)
    features, _, mask = _inputs(masked=True)
    common = dict(beam_size=3, start_id=1, end_id=2, max_len=6, mask=mask)
    for a, b in zip(beam_search(fused, features, **common), beam_search(readable, features, **common)):
        assert a.tokens == b.tokens
        torch.testing.assert_close(a.alphas, b.alphas)
