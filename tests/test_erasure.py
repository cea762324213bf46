"""Erasure faithfulness: a word that depends on where it looked is found out; one that does not scores chance."""

from __future__ import annotations

import math

import pytest
import torch

from captioner.dates.model import DatesModel, encode_texts
from captioner.evaluation.erasure import (
    _erasures,
    attention_spread,
    erase_words,
    erasure_scores,
    looked_cells,
)
from captioner.models import Decoder, DecoderConfig, FusedDecoder, SequenceEncoderConfig
from captioner.models.attention import SoftAttention

CELLS, WORD, START = 9, 3, 1


def _hand_built(
    attend_from: str, attention: str = "soft", depends: bool = True, cell: int = 4, kind: type[Decoder] = Decoder
) -> Decoder:
    """Features are one-hot per cell; attention looks at `cell` whatever the state; word WORD's
    logit is 8·z[cell] (the context's share of that cell), or ignores the image (depends=False)."""
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
    decoder = kind(config, vocab_size=6, feature_dim=CELLS).eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.zero_()
        decoder.attention.feature_proj.weight[0, cell] = 3.0  # energy high at `cell` only
        decoder.attention.score.weight.fill_(10.0)  # α ≈ 0.99 on `cell`
        decoder.out_vocab.weight[WORD, cell] = 8.0 if depends else 0.0
        decoder.out_context.weight.copy_(torch.eye(CELLS))  # L_z z: the context itself
    return decoder


def _features(batch: int = 2) -> torch.Tensor:
    return torch.eye(CELLS).expand(batch, CELLS, CELLS).clone()


@pytest.mark.parametrize("kind", [Decoder, FusedDecoder])
@pytest.mark.parametrize("attend_from", ["previous", "current"])
@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_a_word_that_reads_its_looked_cell_is_faithful_and_one_that_ignores_the_image_is_chance(
    attend_from, attention, kind
):
    captions = [[WORD, WORD, WORD], [WORD, WORD]]
    decoder = _hand_built(attend_from, attention, kind=kind)
    results = erase_words(decoder, _features(), captions, START, draws=8)

    assert [len(r.log_p) for r in results] == [3, 2]
    for result in results:
        assert (result.cells == 1).all()  # α on cell 4 holds more than half
        assert (result.looked_drop > 1.0).all()  # erasing cell 4 takes the word's evidence away
        assert (result.faithful == 1.0).all()
        assert torch.allclose(result.spread, torch.full_like(result.spread, 1 / CELLS))
    words = [["x"] * 3, ["x"] * 2]
    assert erasure_scores(words, results)["erasure_faithfulness"] == 1.0

    ignoring = erase_words(_hand_built(attend_from, attention, False, kind=kind), _features(), captions, START)
    scores = erasure_scores(words, ignoring, {"x": "x"})
    assert scores["erasure_faithfulness"] == 0.5 and scores["object_erasure_faithfulness"] == 0.5
    assert abs(scores["erasure_looked_drop"]) < 1e-5 and scores["erasure_words"] == 5


def test_teacher_forced_log_p_is_what_the_decoder_gives_the_word():
    decoder = FusedDecoder(DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.3), 7, 5)
    features, captions = torch.randn(2, 6, 5), [[3, 4, 5], [6]]
    decoder.train()  # erasure scores in eval mode and puts the mode back
    results = erase_words(decoder, features, captions, START)
    assert decoder.training
    decoder.eval()
    tokens = torch.tensor([[START, 3, 4], [START, 6, 0]])
    logits, _ = decoder(features, tokens)
    expected = logits.log_softmax(-1)[0].gather(-1, torch.tensor([[3], [4], [5]])).squeeze(-1)
    assert torch.allclose(results[0].log_p, expected, atol=1e-5)
    assert torch.allclose(results[1].log_p, logits.log_softmax(-1)[1, :1, 6], atol=1e-5)


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


def test_looked_cells_hold_half_the_attention_and_random_erasure_takes_as_many():
    alpha = torch.tensor([[0.05, 0.4, 0.3, 0.25], [0.25, 0.25, 0.25, 0.25]])
    assert looked_cells(alpha).tolist() == [[False, True, True, False], [True, True, False, False]]
    assert attention_spread(alpha).tolist() == [0.5, 0.5]
    assert attention_spread(torch.tensor([0.0, 1.0, 0.0, 0.0])).item() == 0.25

    allowed = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    alpha = torch.softmax(torch.randn(2, 5, 6).masked_fill(~allowed.unsqueeze(1), -math.inf), -1)
    erased, cells, measurable = _erasures(alpha, allowed, 16, torch.Generator().manual_seed(1))
    assert erased.shape == (2, 5, 17, 6)
    assert (erased.sum(-1) == cells.unsqueeze(-1)).all()  # every draw erases as many cells
    assert not erased[1, ..., 4:].any()  # never the padding
    assert erased[0, :, 1:].any(0).any(0).all() and erased[1, :, 1:, :4].any(0).any(0).all()  # any allowed cell
    assert measurable.all()


def test_dates_model_erases_input_characters_and_never_the_padding():
    torch.manual_seed(0)
    model = DatesModel(
        list("0123456789 JulyThe,"),
        SequenceEncoderConfig(embed_dim=8, hidden_dim=8),
        DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.0),
    ).eval()
    inputs = encode_texts(model.source, ["July 20 1969", "20 7 69"])
    features, mask = model.encode(inputs)
    captions = [[4, 5, 6], [7, 8]]
    results = erase_words(model.decoder, features, captions, model.target.start_id, mask=mask)
    short = int(mask[1].sum())
    assert short == 7
    for result, allowed in zip(results, (12, short)):
        assert torch.isfinite(result.looked).all() and torch.isfinite(result.random).all()
        assert ((result.cells >= 1) & (result.cells < allowed)).all()
        assert torch.allclose(result.spread, result.cells / allowed)
    assert (results[0].looked != results[0].log_p).any()  # erasing input characters changes the output


def test_sanity_check_randomised_attention_weights_change_maps_and_erasure_the_same_weights_do_not(
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
        results = erase_words(decoder, features, captions, loaded.vocab.start_id)
        return alphas, torch.cat([r.looked_drop - r.random_drop for r in results])

    maps, effects = measure(loaded.model.decoder)
    same_maps, same_effects = measure(load_model(tiny_checkpoint).model.decoder)
    assert torch.equal(maps, same_maps) and torch.equal(effects, same_effects)

    randomised = copy.deepcopy(loaded.model.decoder)
    torch.manual_seed(1)
    for layer in (randomised.attention.feature_proj, randomised.attention.hidden_proj, randomised.attention.score):
        layer.reset_parameters()
    new_maps, new_effects = measure(randomised)
    # Changed by as much as the maps stand out from uniform (a tiny model's maps stay near 1/P).
    assert (new_maps - maps).abs().max() > 0.5 * (maps - 1 / maps.size(-1)).abs().max()
    assert (new_effects - effects).abs().max() > 1e-3
