import warnings

import pytest
import torch

from captioner.errors import CaptionerError
from captioner.models import Encoder, EncoderConfig
from captioner.module import CaptioningModule


@pytest.mark.parametrize(
    ("backbone", "channels"),
    [
        ("resnet18", 512),
        ("resnet34", 512),
        ("resnet50", 2048),
        ("resnet101", 2048),
        ("resnet152", 2048),
        ("vgg16", 512),
    ],
)
def test_every_backbone_builds_and_gives_a_grid(backbone, channels):
    encoder = Encoder(EncoderConfig(backbone, grid_size=3)).eval()
    with torch.no_grad():
        features = encoder(torch.randn(2, 3, 64, 64))
    assert encoder.out_channels == channels
    assert features.shape == (2, 9, channels)


def test_stages_cut_the_trunk():
    encoder = Encoder(EncoderConfig(backbone="resnet18", stages=3, grid_size=14)).eval()
    with torch.no_grad():
        assert encoder.feature_map(torch.randn(1, 3, 128, 128)).shape == (1, 256, 8, 8)  # stride 16
        assert encoder(torch.randn(1, 3, 128, 128)).shape == (1, 196, 256)
    assert not any(name.startswith("layer4") for name, _ in encoder.trunk.named_children())


def test_grid_is_the_pooled_feature_map():
    encoder = Encoder(EncoderConfig("resnet18", grid_size=2, channels_last=True)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap, features = encoder.feature_map(images), encoder(images)
    pooled = torch.nn.functional.adaptive_avg_pool2d(fmap, 2).flatten(2).transpose(1, 2)
    assert torch.allclose(features, pooled, atol=1e-5)


def _trainable_grads(encoder):
    """Names of parameters that get a non-zero gradient from a train-mode forward/backward."""
    encoder.train()
    features = encoder(torch.randn(2, 3, 64, 64))
    if features.requires_grad:
        features.sum().backward()
    return {name for name, p in encoder.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_frozen_encoder_gets_no_grads_and_keeps_batchnorm_stats():
    encoder = Encoder(EncoderConfig("resnet18", grid_size=2, fine_tune="none"))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert _trainable_grads(encoder) == set()
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(not m.training for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fine_tune_all_and_last_stages():
    assert {
        n.split(".")[1] for n in _trainable_grads(Encoder(EncoderConfig("resnet18", grid_size=2, fine_tune="all")))
    } == {
        "conv1",
        "bn1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    }
    encoder = Encoder(EncoderConfig("resnet18", grid_size=2, fine_tune=2))
    assert {n.split(".")[1] for n in _trainable_grads(encoder)} == {"layer3", "layer4"}
    assert encoder.trunk.layer4.training and not encoder.trunk.layer2.training and not encoder.trunk.bn1.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(backbone="resnet19"), "backbone='resnet19'.*resnet18"),
        (dict(grid_size=0), "grid_size must be an integer >= 1, got 0"),
        (dict(fine_tune="some"), "fine_tune='some'.*'none', 'all'"),
        (dict(fine_tune=5), "fine_tune=5.*0 to 4"),
        (dict(stages=0), "stages=0.*1 to 4"),
        (dict(stages=5), "stages=5.*1 to 4"),
        (dict(weights="IMAGENET9K"), "weights='IMAGENET9K'.*IMAGENET1K_V1"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(CaptionerError, match=message):
        Encoder(EncoderConfig(**{"backbone": "resnet18", **kwargs}))


def test_map_size_and_a_grid_finer_than_the_map_is_warned_about():
    encoder = Encoder(EncoderConfig("resnet18", grid_size=14))
    assert encoder.map_size(224) == (7, 7)  # ResNet's stride 32
    assert encoder.training  # the probe leaves the mode as it was
    words = ["<pad>", "<start>", "<end>", "<unk>", "a"]
    with pytest.warns(UserWarning, match=r"only 49 of the 196 grid cells differ"):
        CaptioningModule(words, image_size=224, encoder=EncoderConfig("resnet18", grid_size=14))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CaptioningModule(words, image_size=448, encoder=EncoderConfig("resnet18", grid_size=14))
