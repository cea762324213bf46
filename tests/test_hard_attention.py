"""Hard (stochastic) attention: sampling in training, expected or argmax context when decoding,
and a hard-attention checkpoint through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.inference.checkpoint import load_model
from captioner.models import DecoderConfig, FusedDecoder
from captioner.models.search import DecodingConfig, decode_captions
from captioner.training.objectives import HardAttention
from captioner.training.system import CaptioningModule
from captioner.vocab import Vocabulary
from tests.fixtures import train_tiny_checkpoint

V, D, P = 11, 6, 5
VOCAB = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *"abcdefg"])


def _decoder(attention="hard", hard_decoding="expected", seed=0, attend_from="previous", initial_state="mean"):
    torch.manual_seed(seed)
    config = DecoderConfig(
        embed_dim=8,
        hidden_dim=9,
        attention_dim=7,
        dropout=0.0,
        attention=attention,
        hard_decoding=hard_decoding,
        attend_from=attend_from,
        initial_state=initial_state,
    )
    return FusedDecoder(config, V, D)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(4, P, D, generator=g) * 2
    tokens = torch.randint(4, V, (4, 6), generator=g)
    tokens[:, 0] = 1
    tokens[2, 4:] = 0  # a shorter caption, padded
    return features, tokens


@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_expected_rows_are_soft_attention_and_sampled_rows_attend_one_cell(attend_from):
    decoder, soft = _decoder(attend_from=attend_from), _decoder(attention="soft", attend_from=attend_from)
    features, tokens = _batch()
    soft_logits, soft_alphas = soft(features, tokens)
    everywhere = decoder.forward_hard(features, tokens, expected_prob=1.0)
    torch.testing.assert_close(everywhere.logits, soft_logits)
    torch.testing.assert_close(everywhere.alphas, soft_alphas)
    assert not everywhere.sampled.any() and (everywhere.location_log_probs == 0).all()
    assert everywhere.independent_steps == (attend_from == "current")

    torch.manual_seed(3)
    sampled = decoder.forward_hard(features, tokens, expected_prob=0.0)
    assert sampled.sampled.all()
    assert (sampled.location_log_probs < 0).all() and torch.isfinite(sampled.location_log_probs).all()
    entropy = -(sampled.alphas * sampled.alphas.log()).sum(-1)
    torch.testing.assert_close(sampled.entropies, entropy)
    assert not torch.allclose(sampled.logits, soft_logits)  # other contexts than the soft ones


def test_expected_logits_share_hidden_states_and_dropout_and_differ_by_the_context_alone():
    """The per-word baseline of a decoder attending from the current state: the logits had every
    step used the expected context. With every row expected they are the logits themselves, even
    under dropout (a second dropout mask would add noise to every advantage); with every row
    sampled they are soft attention's logits."""
    torch.manual_seed(0)
    config = DecoderConfig(8, 9, 7, dropout=0.5, attention="hard", attend_from="current")
    decoder = FusedDecoder(config, V, D).train()
    features, tokens = _batch(5)
    everywhere = decoder.forward_hard(features, tokens, expected_prob=1.0, with_expected_logits=True)
    torch.testing.assert_close(everywhere.expected_logits, everywhere.logits)
    assert not everywhere.expected_logits.requires_grad

    decoder.eval()
    sampled = decoder.forward_hard(features, tokens, expected_prob=0.0, with_expected_logits=True)
    soft_logits, _ = decoder(features, tokens)
    torch.testing.assert_close(sampled.expected_logits, soft_logits)
    assert decoder.forward_hard(features, tokens).expected_logits is None  # not asked for
    assert not torch.allclose(sampled.logits, soft_logits)
    assert _decoder().forward_hard(features, tokens).expected_logits is None  # the paper's order has none


def test_sampled_contexts_pass_no_gradient_to_attention_but_reinforce_does():
    features, tokens = _batch(1)
    targets, inputs = tokens[:, 1:], tokens[:, :-1]

    def attention_grad(reinforce_lambda, entropy_lambda):
        decoder = _decoder(seed=1)
        torch.manual_seed(0)
        out = decoder.forward_hard(features, inputs, expected_prob=0.0)
        objective = HardAttention(0.0, reinforce_lambda=reinforce_lambda, entropy_lambda=entropy_lambda)
        objective.moving_average(torch.tensor([-5.0]))
        total = objective.loss(out, targets)[0]
        total.backward()
        return decoder.attention.score.weight.grad.abs().sum().item(), decoder.out_vocab.weight.grad.abs().sum()

    assert attention_grad(0.0, 0.0)[0] == 0.0  # a sample is not differentiable w.r.t. α
    assert attention_grad(1.0, 0.0)[0] > 0.0  # REINFORCE teaches α
    assert attention_grad(0.0, 0.1)[0] > 0.0  # and so does the entropy term
    assert attention_grad(0.0, 0.0)[1] > 0.0  # cross-entropy trains the rest as usual


@pytest.mark.parametrize("attend_from", ["previous", "current"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_expected_decoding_is_soft_decoding(beam_size, attend_from):
    """The paper's test-time rule: a hard decoder decodes with the expected context, exactly
    as the same weights with soft attention."""
    features, _ = _batch(2)
    settings = DecodingConfig(beam_size=beam_size, max_len=6)
    hard = decode_captions(_decoder(seed=2, attend_from=attend_from).eval(), features, VOCAB, settings)
    soft_decoder = _decoder(attention="soft", seed=2, attend_from=attend_from).eval()
    soft = decode_captions(soft_decoder, features, VOCAB, settings)
    assert [c.tokens for c in hard] == [c.tokens for c in soft]
    for h, s in zip(hard, soft):
        torch.testing.assert_close(h.alphas, s.alphas)


@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_argmax_decoding_attends_the_most_attended_cell(attend_from):
    decoder = _decoder(hard_decoding="argmax", seed=4, attend_from=attend_from).eval()
    features, tokens = _batch(4)
    # Teacher forcing with argmax equals a step-by-step loop that feeds a_{argmax α}.
    logits, alphas = decoder(features, tokens)
    with torch.no_grad():
        projected, state = decoder.prepare(features), decoder.init_state(features)
        for t in range(tokens.size(1)):
            log_probs, state, alpha = decoder.step(tokens[:, t], state, features, projected)
            torch.testing.assert_close(log_probs, logits[:, t].log_softmax(-1))
            torch.testing.assert_close(alpha, alphas[:, t])
    argmax = decode_captions(decoder, features, VOCAB, DecodingConfig(beam_size=2, max_len=6))
    expected_decoder = _decoder(seed=4, attend_from=attend_from).eval()
    expected = decode_captions(expected_decoder, features, VOCAB, DecodingConfig(beam_size=2, max_len=6))
    assert [c.tokens for c in argmax] != [c.tokens for c in expected]
    assert all(torch.allclose(c.alphas.sum(-1), torch.ones(len(c.tokens))) for c in argmax)  # α for overlays


def test_bad_settings_are_clear_errors():
    with pytest.raises(CaptionerError, match="attention='glimpse' is not supported"):
        _decoder(attention="glimpse")
    with pytest.raises(CaptionerError, match="hard_decoding='mode'"):
        _decoder(hard_decoding="mode")
    with pytest.raises(CaptionerError, match='attention="hard"'):
        _decoder(attention="soft").forward_hard(*_batch())
    with pytest.raises(CaptionerError, match="HardAttention baseline 'mean' is not one of"):
        HardAttention(baseline="mean")
    hard_previous = {"attention": "hard", "attend_from": "previous"}
    with pytest.raises(CaptionerError, match='needs model.decoder.attend_from "current"'):
        CaptioningModule(VOCAB.words, 64, decoder=hard_previous, objective=HardAttention(baseline="expected_context"))
    # Each objective refuses a decoder it cannot train: one rule, one place.
    with pytest.raises(CaptionerError, match="needs model.decoder.attention hard"):
        CaptioningModule(VOCAB.words, 64, objective=HardAttention())
    with pytest.raises(CaptionerError, match="trains with the hard-attention objective"):
        CaptioningModule(VOCAB.words, 64, decoder={"attention": "hard"})


@pytest.fixture(scope="module", params=[("previous", "moving_average"), ("current", "expected_context")])
def hard_checkpoint(request, synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hard-attention checkpoint trained through the CLI, attending from each kind of state
    (with "current", training rewards each location with its own word, against the word's
    log-likelihood under the expected context)."""
    attend_from, baseline = request.param
    return train_tiny_checkpoint(
        synth_data,
        tmp_path_factory.mktemp("hard_run"),
        "--model.decoder.attention",
        "hard",
        "--model.decoder.attend_from",
        attend_from,
        "--model.objective",
        "HardAttention",
        "--model.objective.baseline",
        baseline,
    )


def test_a_hard_attention_checkpoint_captions_and_draws_overlays(hard_checkpoint, synth_data, tmp_path, capsys):
    model = load_model(hard_checkpoint)
    assert model.model.decoder.config.attention == "hard" and model.model.decoder.config.hard_decoding == "expected"
    images = sorted((synth_data / "test").glob("*.png"))[:2]
    assert main(["caption", "--ckpt", str(hard_checkpoint), *map(str, images), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == list(map(str, images))
    assert all(line["tokens"] for line in lines)
    out = tmp_path / "overlays"
    assert main(["attend", "--ckpt", str(hard_checkpoint), *map(str, images), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in images)
