"""The sequence encoder, and the decoder's mask: padding gets α = 0 exactly and changes nothing."""

import pytest
import torch
import torch.nn.functional as F

from captioner.errors import CaptionerError
from captioner.models import Decoder, DecoderConfig, SequenceEncoder, SequenceEncoderConfig, attention
from captioner.models.search import DecodingConfig, beam_search, decode_captions, greedy_decode
from captioner.vocab import Vocabulary

V, D, P = 13, 10, 6
LENGTHS = [6, 3, 1]


def _decoder(gate="scalar"):
    torch.manual_seed(0)
    return Decoder(DecoderConfig(embed_dim=8, hidden_dim=9, attention_dim=7, dropout=0.0, gate=gate), V, D)


def _mask():
    return torch.arange(P) < torch.tensor(LENGTHS).unsqueeze(1)  # (3, P)


@pytest.mark.parametrize("gate", ["scalar", "channel", "none"])
def test_masked_hand_written_backward_passes_gradcheck_and_gives_padding_no_gradient(monkeypatch, gate):
    monkeypatch.setattr(attention, "CHUNK_FLOATS", 2 * P * 7)  # several chunks per step
    decoder = _decoder(gate).double()
    features = torch.randn(3, P, D, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(3, V, (3, 4))
    mask = _mask()
    assert torch.autograd.gradcheck(lambda f: decoder(f, tokens, mask), (features,), fast_mode=True)
    logits, alphas = decoder(features, tokens, mask)
    (logits.sum() + alphas.pow(2).sum()).backward()
    # Padding has no influence, so no gradient: exactly zero, not merely small.
    assert torch.all(features.grad[~mask] == 0) and torch.all(features.grad[mask] != 0)


def test_padding_changes_nothing_in_training():
    """A sequence padded with junk positions (masked) gives the logits it gives alone."""
    decoder = _decoder()
    features = torch.randn(3, P, D)
    tokens = torch.randint(3, V, (3, 5))
    logits, alphas = decoder(features, tokens, _mask())
    for b, n in enumerate(LENGTHS):
        alone_logits, alone_alphas = decoder(features[b : b + 1, :n], tokens[b : b + 1])
        assert torch.allclose(logits[b], alone_logits[0], atol=1e-5)
        assert torch.allclose(alphas[b, :, :n], alone_alphas[0], atol=1e-6)
        assert torch.all(alphas[b, :, n:] == 0)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_padding_gets_no_attention_and_changes_nothing_in_search(search):
    decoder = _decoder().eval()
    torch.manual_seed(1)
    features, mask = torch.randn(3, P, D), _mask()
    if search == "greedy":
        run = lambda f, m: greedy_decode(decoder, f, start_id=1, end_id=2, max_len=8, mask=m)
    else:
        run = lambda f, m: beam_search(decoder, f, start_id=1, end_id=2, beam_size=3, max_len=8, mask=m)
    captions = run(features, mask)
    for b, (caption, n) in enumerate(zip(captions, LENGTHS)):
        assert len(caption.tokens) > 0
        assert torch.all(caption.alphas[:, n:] == 0)
        assert torch.allclose(caption.alphas.sum(-1), torch.ones(len(caption.tokens)), atol=1e-6)
        alone = run(features[b : b + 1, :n], None)[0]
        assert alone.tokens == caption.tokens
        assert torch.allclose(alone.alphas, caption.alphas[:, :n], atol=1e-6)


def test_decode_captions_passes_the_mask_on():
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *"abcdefghi"])
    decoder = _decoder().eval()
    features, mask = torch.randn(3, P, D), _mask()
    for beam_size in (1, 2):
        settings = DecodingConfig(beam_size=beam_size, max_len=8)
        for caption, n in zip(decode_captions(decoder, features, vocab, settings, mask), LENGTHS):
            assert torch.all(caption.alphas[:, n:] == 0)


def test_sequence_encoder_features_and_mask():
    torch.manual_seed(0)
    encoder = SequenceEncoder(SequenceEncoderConfig(embed_dim=5, hidden_dim=4), vocab_size=9, pad_id=0)
    tokens = torch.tensor([[4, 5, 6, 7], [8, 5, 0, 0]])
    features, mask = encoder(tokens)
    assert features.shape == (2, 4, 8) and encoder.out_dim == 8
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.all(features[1, 2:] == 0)
    # Both directions start at a sequence's own ends: more padding changes no real feature.
    alone, _ = encoder(tokens[1:, :2])
    assert torch.allclose(alone[0], features[1, :2], atol=1e-6)
    longer, _ = encoder(F.pad(tokens, (0, 3)))
    assert torch.allclose(longer[:, :4], features, atol=1e-6)
    # The backward direction sees the future: changing the last token changes the first feature.
    changed, _ = encoder(torch.tensor([[4, 5, 6, 3]]))
    assert not torch.allclose(changed[0, 0, 4:], features[0, 0, 4:])
    assert torch.allclose(changed[0, 0, :4], features[0, 0, :4])


def test_sequence_encoder_refuses_an_empty_sequence():
    encoder = SequenceEncoder(SequenceEncoderConfig(embed_dim=5, hidden_dim=4), vocab_size=9)
    with pytest.raises(CaptionerError, match="at least one token"):
        encoder(torch.tensor([[4, 5], [0, 0]]))
