"""The deletion test of faithfulness: hand-built decoders whose answer is known, model
randomisation, determinism, padding, both step orders and hard attention."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from captioner.dates.model import DatesModel, encode_texts
from captioner.dates.system import TRANSLATION_DECODER
from captioner.evaluation import faithfulness
from captioner.evaluation.faithfulness import (
    WordDeletion,
    _deletion_ranks,
    attention_spread,
    deletion_curves,
    erased_counts,
    faithfulness_scores,
    looked_cells,
)
from captioner.models import Decoder, DecoderConfig, FusedDecoder, SequenceEncoderConfig
from captioner.models.attention import SoftAttention

CELLS, WORD, START, VOCAB = 16, 3, 1, 6
OBJECT = (5, 6, 9, 10)  # a 2×2 block of the 4×4 grid


def _hand_built(
    energies: dict[int, float],
    reads: dict[int, float],
    *,
    attend_from: str = "previous",
    attention: str = "soft",
    kind: type[Decoder] = Decoder,
) -> Decoder:
    """Features are one-hot per cell. Attention energies e_i = `energies` (0 elsewhere), whatever the
    state; word WORD's logit is Σ_i reads[i]·z_i (z the context), every other logit 0."""
    config = DecoderConfig(
        embed_dim=CELLS,
        hidden_dim=4,
        attention_dim=1,
        dropout=0.0,
        gate="none",
        attention=attention,
        hard_decoding="argmax",
        attend_from=attend_from,
    )
    decoder = kind(config, vocab_size=VOCAB, feature_dim=CELLS).eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.zero_()
        decoder.attention.score.weight.fill_(10.0)  # e_i = 10·tanh(W_a a_i)
        for cell, energy in energies.items():
            decoder.attention.feature_proj.weight[0, cell] = math.atanh(energy / 10)
        for cell, weight in reads.items():
            decoder.out_vocab.weight[WORD, cell] = weight
        decoder.out_context.weight.copy_(torch.eye(CELLS))  # L_z z: the context itself
    return decoder


def _features(batch: int = 2) -> torch.Tensor:
    return torch.eye(CELLS).expand(batch, CELLS, CELLS).clone()


CAPTIONS = [[WORD] * 3, [WORD] * 2]
WORDS = [["x"] * 3, ["x"] * 2]
KINDS = [
    pytest.param(kind, attend_from, attention, id=f"{kind.__name__}-{attend_from}-{attention}")
    for kind in (Decoder, FusedDecoder)
    for attend_from in ("previous", "current")
    for attention in ("soft", "hard")
]


def _verdicts(decoder: Decoder, seed: int = 0) -> tuple[list[WordDeletion], dict[str, float]]:
    results = deletion_curves(decoder, _features(), CAPTIONS, START, seed=seed)
    assert [len(r.log_p) for r in results] == [3, 2]
    return results, faithfulness_scores(WORDS, results, {"x": "x"})


@pytest.mark.parametrize(("kind", "attend_from", "attention"), KINDS)
def test_a_word_that_reads_the_one_cell_it_looks_at_is_faithful(kind, attend_from, attention):
    decoder = _hand_built({4: 9.9}, {4: 8.0}, attend_from=attend_from, attention=attention, kind=kind)
    results, scores = _verdicts(decoder)
    for result in results:
        assert (result.drop > 1.0).all() and result.dependent.all()
        assert (result.faithful == 1.0).all()
        assert (result.areas[:, 0] < 0.25).all()  # gone after the first cell
        assert torch.allclose(result.spread, torch.full_like(result.spread, 1 / CELLS))
    assert scores["deletion_faithfulness"] == 1.0 and scores["object_deletion_faithfulness"] == 1.0
    assert scores["deletion_dependent_share"] == 1.0 and scores["deletion_dependent_words"] == 5


@pytest.mark.parametrize(("kind", "attend_from", "attention"), KINDS[::3])
def test_a_word_that_reads_every_cell_of_one_object_is_faithful(kind, attend_from, attention):
    # α is spread over the object's four cells, and the word reads all of them: erasing two (the old
    # half-α test) leaves the others carrying the word, but erasing in α order still takes it away
    # within the first four cells, long before random orders do.
    decoder = _hand_built(
        dict.fromkeys(OBJECT, 9.9), dict.fromkeys(OBJECT, 8.0), attend_from=attend_from, attention=attention, kind=kind
    )
    results, scores = _verdicts(decoder)
    for result in results:
        assert result.dependent.all()
        by_alpha = result.curves[:, 0].exp()
        assert (by_alpha[:, :3] > 0.9).all()  # one or two of its cells erased: the word stands
        assert (result.lead > 0.3).all()
    assert scores["deletion_faithfulness"] == 1.0


@pytest.mark.parametrize(("kind", "attend_from", "attention"), KINDS[::3])
def test_a_word_that_ignores_the_image_is_not_dependent_and_not_scored(kind, attend_from, attention):
    decoder = _hand_built({4: 9.9}, {}, attend_from=attend_from, attention=attention, kind=kind)
    results, scores = _verdicts(decoder)
    for result in results:
        assert result.drop.abs().max() < 1e-5 and not result.dependent.any()
        assert result.faithful.isnan().all() and result.lead.isnan().all()
        assert [w["faithful"] for w in result.as_json()] == [None] * len(result.log_p)
        assert all(note.endswith("not image-dependent") for note in result.notes())
    assert scores["deletion_dependent_share"] == 0.0 and scores["deletion_words"] == 5
    assert math.isnan(scores["deletion_faithfulness"]) and scores["deletion_dependent_words"] == 0
    assert math.isnan(scores["object_deletion_faithfulness"])


@pytest.mark.parametrize(("kind", "attend_from", "attention"), [k for k in KINDS if "soft" in k.id])
def test_attention_that_points_away_from_the_cell_the_word_reads_is_not_faithful(kind, attend_from, attention):
    # α mostly on cell 0, least on cell 15, which is what the word reads: the α order keeps that
    # cell to the end (p even rises as the look is pushed onto it), random orders erase it sooner.
    # Soft attention only: a hard decoder's argmax look never lands on that cell, so the word reads nothing.
    energies = {0: 3.0, CELLS - 1: -1.0}
    decoder = _hand_built(energies, {CELLS - 1: 200.0}, attend_from=attend_from, attention=attention, kind=kind)
    results, scores = _verdicts(decoder)
    for result in results:
        assert result.dependent.all()
        assert (result.faithful == 0.0).all() and (result.lead < 0).all()
    assert scores["deletion_faithfulness"] == 0.0 and scores["deletion_dependent_words"] == 5


def test_the_aggregates_count_image_dependent_content_and_object_words():
    def deletion(no_look: list[float], alpha_first: bool) -> WordDeletion:
        n = len(no_look)
        log_p = torch.full((n,), -0.1)
        # Order 0 drops to no look at the first point, or only at the end (a random order does the other).
        early, late = torch.tensor([-3.0, -3.0]), torch.tensor([-0.1, -0.1])
        curves = torch.stack([early, late] if alpha_first else [late, early]).expand(n, 2, 2)
        return WordDeletion(log_p, torch.tensor(no_look), torch.tensor([0.25, 0.5]), curves, torch.full((n,), 0.25))

    captions = [["a", "red", "circle"], ["a", "circle"]]
    deletions = [deletion([-3.0, -3.0, -0.2], True), deletion([-3.0, -3.0], False)]
    scores = faithfulness_scores(captions, deletions, {"circle": "circle"})
    # Content words: red (dependent, faithful), circle (not dependent), circle (dependent, not faithful).
    assert scores["deletion_words"] == 3 and scores["deletion_dependent_words"] == 2
    assert scores["deletion_dependent_share"] == pytest.approx(2 / 3)
    assert scores["deletion_faithfulness"] == 0.5
    assert scores["object_deletion_words"] == 2 and scores["object_deletion_dependent_words"] == 1
    assert scores["object_deletion_faithfulness"] == 0.0
    assert scores["deletion_area_attention"] == pytest.approx(scores["deletion_area_random"])  # one each way
    assert math.isnan(faithfulness_scores([], [])["deletion_faithfulness"])
    assert faithfulness_scores([], [])["deletion_words"] == 0


def test_areas_follow_the_trapezoids_from_the_decoded_p_to_no_look():
    p = math.log(0.8)
    result = WordDeletion(
        torch.tensor([p]),
        torch.tensor([math.log(0.2)]),
        torch.tensor([0.25, 0.5]),
        torch.tensor([[[math.log(0.4), math.log(0.2)], [math.log(0.8), math.log(0.4)]]]),
        torch.tensor([0.5]),
    )
    # α order: 1 → 0.5 → 0.25 → 0.25 at x = 0, .25, .5, 1; random: 1 → 1 → 0.5 → 0.25.
    alpha_area = 0.25 * (1 + 0.5) / 2 + 0.25 * (0.5 + 0.25) / 2 + 0.5 * 0.25
    random_area = 0.25 * 1 + 0.25 * 0.75 + 0.5 * 0.375
    assert result.areas[0].tolist() == pytest.approx([alpha_area, random_area])
    assert result.drop.item() == pytest.approx(math.log(4)) and result.dependent.item()
    assert result.faithful.item() == 1.0
    assert result.lead.item() == pytest.approx((random_area - alpha_area) / 0.75)
    [word] = result.as_json()
    assert word["area_attention"] == pytest.approx(alpha_area) and word["faithful"] is True
    assert word["p_attention_order"] == pytest.approx([0.4, 0.2]) and word["erased"] == [0.25, 0.5]
    assert result.notes() == [
        f"no look: 0.80 → 0.20\ndeletion {alpha_area:.2f} vs random ≥ {random_area:.2f}: faithful"
    ]


def test_teacher_forced_log_p_is_what_the_decoder_gives_the_word_and_no_look_zeroes_the_context():
    decoder = FusedDecoder(DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.3), 7, 5)
    features, captions = torch.randn(2, 6, 5), [[3, 4, 5], [6]]
    decoder.train()  # scored in eval mode, and the mode is put back
    results = deletion_curves(decoder, features, captions, START, orders=3)
    assert decoder.training
    decoder.eval()
    tokens = torch.tensor([[START, 3, 4], [START, 6, 0]])
    logits, _ = decoder(features, tokens)
    expected = logits.log_softmax(-1)[0].gather(-1, torch.tensor([[3], [4], [5]])).squeeze(-1)
    assert torch.allclose(results[0].log_p, expected, atol=1e-5)
    assert torch.allclose(results[1].log_p, logits.log_softmax(-1)[1, :1, 6], atol=1e-5)
    # The first word's no look is its step from the initial state with zero features.
    h0, c0 = decoder.init_state(features)
    zeros = torch.zeros_like(features)
    no_look, _, _ = decoder.step(torch.full((2,), START), (h0, c0), zeros, decoder.prepare(zeros))
    assert torch.allclose(results[0].no_look[0], no_look[0, 3], atol=1e-5)
    assert results[0].curves.shape == (3, 4, len(faithfulness.ERASED_FRACTIONS) + 1)


def _reading_decoder(kind: type[Decoder] = FusedDecoder) -> Decoder:
    """A random decoder whose words lean on their context (L_z scaled up), so most are image-dependent."""
    torch.manual_seed(0)
    decoder = kind(DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.0), 7, 5).eval()
    with torch.no_grad():
        decoder.out_context.weight.mul_(30)
    return decoder


def _own_captions(
    decoder: Decoder, features: torch.Tensor, lengths: list[int], mask: torch.Tensor | None = None, start: int = START
) -> list[list[int]]:
    """Greedy captions of the given lengths: words the decoder picks from its context."""
    state = decoder.init_state(features, mask)
    projected, token, words = decoder.prepare(features), torch.full((features.size(0),), start), []
    for _ in range(max(lengths)):
        log_probs, state, _ = decoder.step(token, state, features, projected, mask)
        token = log_probs.argmax(-1)
        words.append(token)
    return [torch.stack(words, 1)[b, :n].tolist() for b, n in enumerate(lengths)]


def test_the_same_call_gives_the_same_answer_and_another_seed_other_orders():
    decoder = _reading_decoder()
    features = torch.randn(3, 12, 5)
    captions = _own_captions(decoder, features, [3, 1, 2])
    first = deletion_curves(decoder, features, captions, START, seed=4)
    again = deletion_curves(decoder, features, captions, START, seed=4)
    other = deletion_curves(decoder, features, captions, START, seed=5)
    assert sum(int(r.dependent.sum()) for r in first) >= 3
    for a, b, c in zip(first, again, other):
        torch.testing.assert_close(a.curves, b.curves, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(a.no_look, b.no_look)
        torch.testing.assert_close(a.curves[:, 0], c.curves[:, 0], rtol=0, atol=0, equal_nan=True)  # α is α
    assert any((a.curves[:, 1:] != c.curves[:, 1:]).any() for a, c in zip(first, other))


@pytest.mark.parametrize("kind", [Decoder, FusedDecoder])
def test_chunked_scoring_gives_the_same_numbers(monkeypatch, kind):
    decoder = _reading_decoder(kind)
    features = torch.randn(3, 9, 5)
    captions = _own_captions(decoder, features, [3, 1, 2])
    whole = deletion_curves(decoder, features, captions, START, orders=4)
    assert sum(int(r.dependent.sum()) for r in whole) >= 3
    rows = 5 * (len(faithfulness.ERASED_FRACTIONS) + 1)  # orders × points of one word
    monkeypatch.setattr(faithfulness, "MAX_SCORED_FLOATS", (7 + 9 * 8) * rows // 3)  # a third of a word
    chunked = deletion_curves(decoder, features, captions, START, orders=4)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a.curves, b.curves, atol=1e-5, rtol=1e-6, equal_nan=True)
        torch.testing.assert_close(a.no_look, b.no_look, atol=1e-5, rtol=1e-6)


def test_erased_counts_double_from_one_cell_to_half_then_go_by_quarters_to_all_but_one():
    assert erased_counts(torch.tensor([64])).tolist() == [[1, 2, 4, 8, 16, 32, 48, 63]]
    assert erased_counts(torch.tensor([196])).tolist() == [[3, 6, 12, 24, 49, 98, 147, 195]]
    assert erased_counts(torch.tensor([7, 2, 1])).tolist() == [[1, 1, 1, 1, 2, 4, 5, 6], [1] * 8, [0] * 8]


def test_orders_rank_by_descending_alpha_and_random_orders_never_draw_padding():
    assert looked_cells(torch.tensor([0.05, 0.4, 0.3, 0.25])).tolist() == [False, True, True, False]
    assert attention_spread(torch.tensor([[0.05, 0.4, 0.3, 0.25], [0.25] * 4])).tolist() == [0.5, 0.5]
    allowed = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    alpha = torch.softmax(torch.randn(2, 5, 6).masked_fill(~allowed.unsqueeze(1), -math.inf), -1)
    ranks = _deletion_ranks(alpha, allowed, 16, torch.Generator().manual_seed(1))
    assert ranks.shape == (2, 5, 17, 6)
    assert (ranks.sort(-1).values == torch.arange(6)).all()  # every order a permutation
    first = ranks[..., 0, :].argmin(-1)
    assert torch.equal(first, alpha.argmax(-1))  # the α order starts at the largest α
    assert (ranks[1, :, :, 4:] >= 4).all()  # padding after every allowed cell
    assert (ranks[:, :, 1] != ranks[:, :, 2]).any()  # the random orders differ


def test_dates_model_erases_input_characters_and_never_the_padding():
    torch.manual_seed(0)
    model = DatesModel(
        list("0123456789 JulyThe,"),
        SequenceEncoderConfig(embed_dim=8, hidden_dim=8),
        dataclasses.replace(TRANSLATION_DECODER, embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.0),
    ).eval()
    with torch.no_grad():
        model.decoder.out_context.weight.mul_(30)  # words that lean on what they read
    inputs = encode_texts(model.source, ["July 20 1969", "20 7 69"])
    features, mask = model.encode(inputs)
    start = model.target.start_id
    captions = _own_captions(model.decoder, features, [3, 2], mask, start)
    results = deletion_curves(model.decoder, features, captions, start, mask=mask)
    short = int(mask[1].sum())
    assert short == 7
    for result, allowed in zip(results, (12, short)):
        assert result.dependent.any() and result.measured.all()
        assert torch.isfinite(result.curves[result.dependent]).all()
        assert result.erased.tolist() == pytest.approx((erased_counts(torch.tensor([allowed]))[0] / allowed).tolist())
    moved = results[0].curves[results[0].dependent] != results[0].log_p[results[0].dependent, None, None]
    assert moved.any()  # erasing input characters moves p

    # Padding is never erased: the short input's curves are those of the same input without padding.
    unpadded, every = model.encode(encode_texts(model.source, ["20 7 69"]))
    alone = deletion_curves(model.decoder, unpadded, captions[1:], start, mask=every)
    padded = deletion_curves(model.decoder, features[1:], captions[1:], start, mask=mask[1:])
    torch.testing.assert_close(alone[0].curves[:, 0], padded[0].curves[:, 0], atol=1e-5, rtol=1e-5, equal_nan=True)
    assert alone[0].dependent.any()


def test_sanity_check_randomised_attention_weights_change_maps_and_scores_the_same_weights_do_not(
    tiny_checkpoint, synth_data
):
    """Adebayo et al. (2018): an explanation that survives randomising the model's weights explains nothing."""
    import copy

    from captioner.data import image_transform, load_image
    from captioner.inference.checkpoint import load_model
    from captioner.models.search import decode_captions

    loaded = load_model(tiny_checkpoint)
    transform = image_transform(loaded.image_size)
    images = torch.stack([transform(load_image(p)) for p in sorted((synth_data / "test").glob("*.png"))[:6]])
    with torch.inference_mode():
        features = loaded.model.encode(images).features
        captions = [c.tokens for c in decode_captions(loaded.model.decoder, features, loaded.vocab, loaded.decoding)]
    steps = max(map(len, captions))
    inputs = torch.tensor([[loaded.vocab.start_id, *c, *[0] * steps][:steps] for c in captions])

    def measure(decoder: Decoder) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            _, alphas = decoder.eval()(features, inputs)
        results = deletion_curves(decoder, features, captions, loaded.vocab.start_id)
        # Per word: its α order's area, or -1 where it is not image-dependent (not scored).
        return alphas, torch.cat([r.areas[:, 0].nan_to_num(-1.0) for r in results])

    maps, areas = measure(loaded.model.decoder)
    same_maps, same_areas = measure(load_model(tiny_checkpoint).model.decoder)
    assert torch.equal(maps, same_maps) and torch.equal(areas, same_areas)

    randomised = copy.deepcopy(loaded.model.decoder)
    torch.manual_seed(1)
    for layer in (randomised.attention.feature_proj, randomised.attention.hidden_proj, randomised.attention.score):
        layer.reset_parameters()
    new_maps, new_areas = measure(randomised)
    # Changed by as much as the maps stand out from uniform (a tiny model's maps stay near 1/P).
    assert (new_maps - maps).abs().max() > 0.5 * (maps - 1 / maps.size(-1)).abs().max()
    assert (new_areas - areas).abs().max() > 1e-3


def test_randomising_a_faithful_look_makes_it_unfaithful():
    """The hand-built one-cell reader, its attention re-initialised: the word still reads its cell
    (where it is image-dependent), but α no longer ranks that cell first, and the test fails it."""
    verdicts = []
    for seed in range(12):
        decoder = _hand_built({4: 9.9}, {4: 100.0})
        torch.manual_seed(seed)
        decoder.attention.feature_proj.reset_parameters()  # a look at random cells
        results, _ = _verdicts(decoder, seed=seed)
        verdicts += [float(v) for r in results for v in r.faithful if not v.isnan()]
    assert len(verdicts) >= 20 and sum(verdicts) / len(verdicts) < 0.5


def test_masking_cells_renormalises_alpha_over_the_kept_ones():
    attention = SoftAttention(feature_dim=5, hidden_dim=4, attention_dim=3)
    features = torch.randn(2, 6, 5)
    projected = attention.project_features(features)
    hidden = torch.randn(2, 3, 4)
    _, full = attention(features, projected, hidden)
    keep = torch.rand(2, 3, 6) > 0.4
    keep[..., 0] = True
    _, kept = attention(features, projected, hidden, keep)
    assert torch.allclose(kept.sum(-1), torch.ones(2, 3))
    assert (kept[~keep] == 0).all()
    renormalised = full * keep / (full * keep).sum(-1, keepdim=True)
    assert torch.allclose(kept, renormalised, atol=1e-6)
