import itertools

import pytest
import torch

from captioner.errors import CaptionerError
from captioner.models import DecoderConfig, FusedDecoder
from captioner.models.search import Caption, DecodingConfig, beam_search, greedy_decode

START, END = 1, 2


def _decoder(vocab=12, seed=0):
    torch.manual_seed(seed)
    return FusedDecoder(DecoderConfig(embed_dim=6, hidden_dim=7, attention_dim=5, dropout=0.0), vocab, 8).eval()


def _features(b, seed=0):
    return torch.randn(b, 4, 8, generator=torch.Generator().manual_seed(seed)) * 3


def _assert_same(a: Caption, b: Caption):
    assert a.tokens == b.tokens
    assert a.score == pytest.approx(b.score, abs=1e-5)
    assert torch.allclose(a.alphas, b.alphas, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_beam_size_one_is_greedy(seed):
    decoder, features = _decoder(seed=seed), _features(5, seed)
    greedy = greedy_decode(decoder, features, start_id=START, end_id=END, max_len=10)
    beam = beam_search(decoder, features, start_id=START, end_id=END, beam_size=1, max_len=10, length_normalize=False)
    assert [g.tokens for g in greedy] == [b.tokens for b in beam]
    assert [g.score for g in greedy] == [b.score for b in beam]
    for g, b in zip(greedy, beam):
        assert torch.equal(g.alphas, b.alphas)


def test_captions_are_well_formed():
    decoder, features = _decoder(), _features(6)
    for captions in (
        greedy_decode(decoder, features, start_id=START, end_id=END, max_len=7),
        beam_search(decoder, features, start_id=START, end_id=END, beam_size=3, max_len=7),
    ):
        assert len(captions) == 6
        for c in captions:
            assert END not in c.tokens and len(c.tokens) <= 7
            assert c.alphas.shape == (len(c.tokens), 4)
            assert torch.allclose(c.alphas.sum(-1), torch.ones(len(c.tokens)), atol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_a_batch_gives_the_same_captions_as_one_image_at_a_time(normalize):
    decoder, features = _decoder(seed=3), _features(5, seed=3)
    kwargs = dict(start_id=START, end_id=END, beam_size=4, max_len=9, length_normalize=normalize)
    batched = beam_search(decoder, features, **kwargs)
    for i, caption in enumerate(batched):
        _assert_same(caption, beam_search(decoder, features[i : i + 1], **kwargs)[0])


def _sequence_score(decoder, features, tokens):
    """Raw log-probability of emitting `tokens` after <start>, one step at a time."""
    projected, state = decoder.prepare(features), decoder.init_state(features)
    prev, total = torch.tensor([START]), 0.0
    for tok in tokens:
        log_probs, state, _ = decoder.step(prev, state, features, projected)
        total += log_probs[0, tok].item()
        prev = torch.tensor([tok])
    return total


@pytest.mark.parametrize("beam_size", [5, 7])  # as wide as the vocabulary, and wider
@pytest.mark.parametrize("seed", range(6))
def test_beam_as_wide_as_the_vocabulary_finds_the_best_sequence(seed, beam_size):
    # Vocabulary 0=<pad> 1=<start> 2=<end> 3, 4 with <pad>/<start> banned: every sequence of at
    # most 3 tokens that is finished (ends in <end>) or reaches max_len is a candidate.
    max_len, emitted = 3, [END, 3, 4]
    decoder, features = _decoder(vocab=5, seed=seed), _features(1, seed)
    with torch.inference_mode():
        candidates = [
            seq
            for n in range(1, max_len + 1)
            for seq in itertools.product(emitted, repeat=n)
            if END not in seq[:-1] and (seq[-1] == END or n == max_len)
        ]
        scored = {seq: _sequence_score(decoder, features, seq) for seq in candidates}
    best = max(scored, key=scored.get)
    caption = beam_search(
        decoder,
        features,
        start_id=START,
        end_id=END,
        beam_size=beam_size,
        max_len=max_len,
        length_normalize=False,
        banned_ids=(0, 1),
    )[0]
    assert caption.tokens == [tok for tok in best if tok != END]
    assert caption.score == pytest.approx(scored[best], abs=1e-5)


def test_length_normalisation_divides_by_length_including_end():
    decoder, features = _decoder(seed=1), _features(3, seed=1)
    for i in range(3):
        caption = beam_search(decoder, features[i : i + 1], start_id=START, end_id=END, beam_size=3, max_len=6)[0]
        finished = len(caption.tokens) < 6
        emitted = caption.tokens + ([END] if finished else [])
        raw = _sequence_score(decoder, features[i : i + 1], emitted)
        assert caption.score == pytest.approx(raw / len(emitted), abs=1e-5)


def test_banned_ids_are_never_emitted():
    decoder, features = _decoder(seed=2), _features(6, seed=2)
    # Ban the words each decoder picks most often without the ban.
    free = greedy_decode(decoder, features, start_id=START, end_id=END, max_len=8)
    common = torch.bincount(torch.tensor([t for c in free for t in c.tokens]), minlength=12)
    banned = tuple(common.topk(3).indices.tolist())
    for captions in (
        greedy_decode(decoder, features, start_id=START, end_id=END, max_len=8, banned_ids=banned),
        beam_search(decoder, features, start_id=START, end_id=END, beam_size=3, max_len=8, banned_ids=banned),
    ):
        assert not {t for c in captions for t in c.tokens} & set(banned)


@pytest.mark.parametrize("kwargs", [dict(beam_size=0), dict(max_len=0), dict(beam_size=2.5)])
def test_bad_settings_are_clear_errors(kwargs):
    settings = {"beam_size": 3, "max_len": 5, **kwargs}
    with pytest.raises(CaptionerError, match=next(iter(kwargs))):
        beam_search(_decoder(), _features(1), start_id=START, end_id=END, **settings)
    with pytest.raises(CaptionerError, match=next(iter(kwargs))):
        DecodingConfig(**kwargs)
    if "max_len" in kwargs:
        with pytest.raises(CaptionerError, match="max_len"):
            greedy_decode(_decoder(), _features(1), start_id=START, end_id=END, **kwargs)
