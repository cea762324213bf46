"""The decoder against an independent reference: the paper's equations written with
`nn.LSTMCell`, a plain tanh attention and autograd, in float64. Nothing here shares code with
`Decoder._advance`, the chunked energies or the hand-written backward through time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captioner.models import Decoder, DecoderConfig

V, D, B, T, P = 11, 6, 3, 5, 7


def _reference(decoder: Decoder, features: torch.Tensor, tokens: torch.Tensor, mask=None):
    """features (B, P, D), tokens (B, T), mask (B, P) -> logits (B, T, V), alphas (B, T, P)."""
    cell = decoder.lstm  # a real nn.LSTMCell: the decoder only borrows its parameters
    assert type(cell) is nn.LSTMCell
    att = decoder.attention
    if mask is None:
        mask = torch.ones(features.shape[:2], dtype=torch.bool)
    keep = mask.double().unsqueeze(-1)
    mean = (features * keep).sum(1) / keep.sum(1)
    h, c = torch.tanh(decoder.init_proj(mean)).chunk(2, dim=-1)
    logits, alphas = [], []
    for t in range(tokens.size(1)):
        embedded = decoder.embedding(tokens[:, t])
        # e_ti = w · tanh(W_a a_i + b + W_h h_{t-1})
        energy = att.score(torch.tanh(att.feature_proj(features) + att.hidden_proj(h).unsqueeze(1))).squeeze(-1)
        alpha = energy.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        context = (alpha.unsqueeze(-1) * features).sum(dim=1)
        if decoder.gate is not None:
            context = torch.sigmoid(decoder.gate(h)) * context
        h, c = cell(torch.cat([embedded, context], dim=-1), (h, c))
        out = embedded + decoder.out_hidden(h) + decoder.out_context(context)
        logits.append(decoder.out_vocab(out))
        alphas.append(alpha)
    return torch.stack(logits, 1), torch.stack(alphas, 1)


@pytest.mark.parametrize("gate", ["scalar", "channel", "none"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("path", ["hand-written", "autograd"])
def test_decoder_matches_the_reference_values_and_gradients(gate, masked, path):
    torch.manual_seed(0)
    config = DecoderConfig(embed_dim=4, hidden_dim=5, attention_dim=3, dropout=0.0, gate=gate)
    decoder = Decoder(config, V, D).double()
    features = torch.randn(B, P, D, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (B, T))
    mask = torch.rand(B, P) > 0.4 if masked else None
    if mask is not None:
        mask[:, 0] = True  # every row attends somewhere
    weights = torch.randn(B, T, V, dtype=torch.float64)  # a loss that reaches every logit

    run = decoder.forward if path == "hand-written" else decoder.forward_autograd
    logits, alphas = run(features, tokens, mask)
    ((logits * weights).sum() + (alphas**2).sum()).backward()
    got = {name: p.grad.clone() for name, p in decoder.named_parameters()}
    got_features = features.grad.clone()

    decoder.zero_grad()
    features.grad = None
    ref_logits, ref_alphas = _reference(decoder, features, tokens, mask)
    ((ref_logits * weights).sum() + (ref_alphas**2).sum()).backward()

    torch.testing.assert_close(logits, ref_logits, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(alphas, ref_alphas, atol=1e-10, rtol=1e-9)
    if mask is not None:
        assert (alphas.masked_select(~mask.unsqueeze(1).expand_as(alphas)) == 0).all()
    for name, param in decoder.named_parameters():
        torch.testing.assert_close(got[name], param.grad, atol=1e-9, rtol=1e-8, msg=f"gradient of {name}")
    torch.testing.assert_close(got_features, features.grad, atol=1e-9, rtol=1e-8)
