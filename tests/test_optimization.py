"""What the COCO recipes rely on and the demo does not exercise: the plateau schedule, beam
search in validation, weight decay, the encoder's own parameter group, and `allow_unk`."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from captioner.models import Decoder, DecoderConfig, EncoderConfig
from captioner.models import search as decoding
from captioner.models.search import DecodingConfig, decode_captions
from captioner.training.optimization import OptimizerConfig
from captioner.training.system import CaptioningModule
from captioner.vocab import Vocabulary

OPTIMIZER_FIELDS = {field.name for field in dataclasses.fields(OptimizerConfig)}
WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle"]


def _module(**kwargs) -> CaptioningModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 2x2 grid over a tiny map
        return CaptioningModule(
            WORDS,
            image_size=32,
            encoder=kwargs.pop("encoder", EncoderConfig(backbone="resnet18", stages=1, grid_size=2)),
            decoder=DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.0),
            optimizer=OptimizerConfig(**{k: kwargs.pop(k) for k in OPTIMIZER_FIELDS & set(kwargs)}),
            **kwargs,
        )


class _Trainer:
    estimated_stepping_batches = 10


def _configure(module: CaptioningModule) -> dict:
    module._trainer = _Trainer()  # configure_optimizers reads only this for the cosine schedule
    return module.configure_optimizers()


def test_plateau_schedule_decays_on_validation_cider():
    setup = _configure(_module(lr_schedule="plateau", lr_decay=0.5, lr_patience=1, decoder_lr=0.01))
    scheduler = setup["lr_scheduler"]["scheduler"]
    assert setup["lr_scheduler"]["monitor"] == "val/CIDEr"
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.mode == "max"
    optimizer = setup["optimizer"]
    for cider in (1.0, 1.2, 1.1, 1.1):  # improves, then stalls for two epochs (patience 1)
        scheduler.step(cider)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_frozen_encoder_has_no_parameter_group_and_fine_tuning_gets_its_own_rate():
    frozen = _configure(_module(weight_decay=0.01, lr_schedule="constant"))["optimizer"]
    assert len(frozen.param_groups) == 1
    tuned_module = _module(
        encoder=EncoderConfig(backbone="resnet18", stages=1, grid_size=2, fine_tune="all"),
        decoder_lr=0.004,
        encoder_lr=0.0001,
        weight_decay=0.01,
        lr_schedule="constant",
    )
    tuned = _configure(tuned_module)["optimizer"]
    decoder_group, encoder_group = tuned.param_groups
    assert decoder_group["lr"] == 0.004 and encoder_group["lr"] == 0.0001
    assert decoder_group["weight_decay"] == encoder_group["weight_decay"] == 0.01
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in tuned_module.model.encoder.parameters()}


def test_weight_decay_shrinks_weights_without_a_gradient():
    module = _module(weight_decay=0.5, lr_schedule="constant", decoder_lr=0.001)
    optimizer = _configure(module)["optimizer"]
    weight = module.model.decoder.out_vocab.weight
    before = weight.detach().clone()
    for p in module.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    # With a zero loss gradient Adam's gradient is decay·w alone, and its first step is
    # lr·sign(gradient): every weight moves by lr towards 0. Without decay nothing would move.
    torch.testing.assert_close(weight.detach(), before - 0.001 * before.sign())


def test_validation_decodes_with_the_beam_the_settings_name(monkeypatch):
    calls = []
    real = decoding.beam_search
    monkeypatch.setattr(decoding, "beam_search", lambda *a, **k: calls.append(k) or real(*a, **k))
    module = _module(decoding=DecodingConfig(beam_size=3, max_len=4)).eval()
    batch = {
        "features": torch.randn(2, 4, module.model.encoder.out_channels),
        "image_ids": torch.tensor([1, 2]),
        "references": [["a red circle"], ["a circle"]],
        "sizes": torch.tensor([[32, 32], [32, 32]]),
    }
    module.validation_step(batch, 0)
    assert [(k["beam_size"], k["max_len"]) for k in calls] == [(3, 4)]
    assert [image.image_id for image in module._eval_images] == [1, 2]
    assert all(len(image.words) <= 4 for image in module._eval_images)


def test_allow_unk_lets_the_unknown_word_through():
    vocab = Vocabulary(WORDS)
    decoder = Decoder(DecoderConfig(embed_dim=4, hidden_dim=4, attention_dim=4, dropout=0.0), len(vocab), 3).eval()
    with torch.no_grad():
        decoder.out_vocab.bias.fill_(0.0)
        decoder.out_vocab.bias[vocab.unk_id] = 50.0  # <unk> is by far the most likely word
    features = torch.randn(2, 5, 3)
    banned = decode_captions(decoder, features, vocab, DecodingConfig(beam_size=1, max_len=3))
    allowed = decode_captions(decoder, features, vocab, DecodingConfig(beam_size=1, max_len=3, allow_unk=True))
    assert all(vocab.unk_id not in c.tokens for c in banned)
    assert all(c.tokens == [vocab.unk_id] * 3 for c in allowed)
