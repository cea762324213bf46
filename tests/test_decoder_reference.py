"""The fused decoder against the readable one (`captioner.models.decoder.Decoder`, the paper's
equations with nn.LSTMCell and a plain tanh attention), in float64: values and gradients, for
every gate, both step orders, soft and hard attention, with and without a mask. The readable
decoder shares only its parameters with the fused time loop, chunked energies and hand-written
backward, so a slip in any of those shows here. And the fused decoder in mixed precision (its
products in bfloat16 or float16 under autocast, on the CPU and on CUDA) against the same float64
reference, within the tolerance below."""

from __future__ import annotations

import pytest
import torch

from captioner.models import Decoder, DecoderConfig, FusedDecoder
from captioner.models.search import beam_search

V, D, B, T, P = 11, 6, 3, 5, 7

# Mixed precision's tolerance, as a share of a tensor's norm. bfloat16 keeps 8 significant bits:
# rounding moves a number by up to u = 2^-9 (0.2%) of itself. A product under mixed precision
# rounds its two inputs and its result (3u), and a value here comes out of a few such products
# in a row: logits, α and the whole gradient (every parameter's, what an optimizer step follows)
# within 2^-6 (8u). One parameter's gradient is a sum of rounded terms of both signs (over rows,
# steps and positions) whose cancellation multiplies its relative error: within 2^-4 (32u) of
# its own norm, or, when its terms cancel to almost nothing (the attention's, at times), within
# 2^-8 (2u) of the whole gradient's. Measured over these cases and four seeds: at most 0.3% on
# values, 0.35% on the whole gradient, 1.2% on the features' gradient, 5.7% of its own norm on a
# parameter's, apart from one attention gradient at 11.6% of its own norm, 0.02% of the whole.
# Autocast over the readable decoder, which rounds its state too, errs by up to 7.6% of their
# own norms on such gradients. float16 keeps 11 bits and meets the bounds with room to spare.
MIXED_VALUES, MIXED_GRADIENT, MIXED_GRADIENT_OF_WHOLE = 2**-6, 2**-4, 2**-8
MIXED = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cpu", torch.float16, id="cpu-float16"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=pytest.mark.gpu),
]


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


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double().cpu() - want).norm() / want.norm())


@pytest.mark.parametrize(("device", "low"), MIXED)
@pytest.mark.parametrize("gate", ["scalar", "channel", "none"])
@pytest.mark.parametrize("attend_from", ["previous", "current"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("path", ["forward", "forward_autograd"])
def test_mixed_precision_stays_within_its_tolerance_of_the_reference(device, low, gate, attend_from, masked, path):
    readable, fused = _pair(gate=gate, attend_from=attend_from)
    fused = fused.float().to(device)  # float32 weights, as mixed precision trains them
    features, tokens, mask = _inputs(masked)
    weights = torch.randn(B, T, V, dtype=torch.float64)
    want = _run(readable, features, tokens, mask, weights)

    def mixed(features, tokens, mask):
        with torch.autocast(device, dtype=low):
            return getattr(fused, path)(features, tokens, mask)

    on = {"device": device}
    got = _run(mixed, features.float().to(device), tokens.to(device), mask if mask is None else mask.to(device),
               weights.to(**on))  # fmt: skip
    for name, a, b, tolerance in zip(
        ["logits", "alphas", "features"], got, want, [MIXED_VALUES] * 2 + [MIXED_GRADIENT]
    ):
        assert _relative_error(a, b) < tolerance, name
    pairs = [(name, p.grad, q.grad) for (name, p), q in zip(fused.named_parameters(), readable.parameters())]
    whole = torch.cat([q.flatten() for _, _, q in pairs])
    assert _relative_error(torch.cat([p.flatten() for _, p, _ in pairs]), whole) < MIXED_VALUES
    for name, got_grad, want_grad in pairs:
        assert got_grad.dtype == torch.float32
        error = (got_grad.double().cpu() - want_grad).norm()
        assert error < max(MIXED_GRADIENT * want_grad.norm(), MIXED_GRADIENT_OF_WHOLE * whole.norm()), name
    if mask is not None:
        alphas = got[1].cpu()
        assert (alphas.masked_select(~mask.unsqueeze(1).expand_as(alphas)) == 0).all()


@pytest.mark.parametrize(("device", "low"), MIXED)
@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_hard_attention_in_mixed_precision_matches_in_its_expected_rows(device, low, attend_from):
    readable, fused = _pair(attention="hard", attend_from=attend_from)
    fused = fused.float().to(device)
    features, tokens, mask = _inputs(masked=True)
    want = readable.forward_hard(features, tokens, mask, expected_prob=1.0).logits
    with torch.autocast(device, dtype=low):
        got = fused.forward_hard(features.float().to(device), tokens.to(device), mask.to(device), expected_prob=1.0)
    assert got.logits.dtype == torch.float32 and _relative_error(got.logits, want) < MIXED_VALUES


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
