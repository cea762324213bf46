import warnings

import pytest
import torch

from captioner.errors import CaptionerError
from captioner.models import Encoder, EncoderConfig
from captioner.training.system import CaptioningModule


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


def test_coord_channels_append_each_cells_centre_and_the_context_carries_it():
    from captioner.models import DecoderConfig, FusedDecoder

    torch.manual_seed(0)
    plain = Encoder(EncoderConfig("resnet18", stages=1, grid_size=4)).eval()
    assert EncoderConfig().coord_channels is False  # the paper's encoder by default
    with_coords = Encoder(EncoderConfig("resnet18", stages=1, grid_size=4, coord_channels=True)).eval()
    with_coords.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base, features = plain(images), with_coords(images)
    assert with_coords.out_channels == plain.out_channels + 2 == features.shape[2]
    assert torch.equal(features[..., :-2], base)  # the image features are untouched
    centres = [-0.75, -0.25, 0.25, 0.75]
    expected = torch.tensor([[x, y] for y in centres for x in centres])  # row-major: x varies fastest
    assert torch.allclose(features[0, :, -2:], expected) and torch.allclose(features[1, :, -2:], expected)
    # Soft attention on one cell gives a context whose last two channels say where that cell is.
    decoder = FusedDecoder(DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8), 10, features.shape[2])
    alpha = torch.zeros(2, 16)
    alpha[0, 3], alpha[1, 12] = 1.0, 1.0  # top right, bottom left
    context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)
    assert context[:, -2:].tolist() == [[0.75, -0.75], [-0.75, 0.75]]
    _, alphas = decoder(features, torch.randint(0, 10, (2, 5)))
    assert alphas.shape == (2, 5, 16)


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


def _receptive_field_centre(encoder: Encoder, image_size: int, cell: tuple[int, int]) -> tuple[float, float]:
    """(x, y) pixel centre of the input region that feature `cell` (row, col) depends on, found by
    back-propagating through the trunk made linear (identity ReLUs, max-pools as average pools,
    same geometry), so that every pixel in the receptive field gets a non-zero gradient."""
    for module in list(encoder.trunk.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(module, child_name, torch.nn.Identity())
            elif isinstance(child, torch.nn.MaxPool2d):
                setattr(module, child_name, torch.nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    encoder.eval()
    images = torch.rand(1, 3, image_size, image_size, requires_grad=True)
    row, col = cell
    encoder(images)[0, row * encoder.grid_size + col].sum().backward()
    support = images.grad[0].abs().sum(0) > 0  # (H, W)
    ys, xs = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    return (xs.min() + xs.max() + 1).item() / 2, (ys.min() + ys.max() + 1).item() / 2


@pytest.mark.parametrize("backbone,stages,stride", [("resnet18", 2, 8), ("resnet50", 3, 16)])
def test_align_grid_centres_each_feature_on_its_cell(backbone, stages, stride):
    # 20 cells: cell 9's receptive field (99 px for ResNet-18's first two stages) fits inside the image.
    image_size, cell = 20 * stride, (9, 11)
    centre = [(k + 0.5) * stride for k in reversed(cell)]  # (x, y) of the cell's centre
    plain = Encoder(EncoderConfig(backbone=backbone, stages=stages, grid_size=20, align_grid=False))
    aligned = Encoder(EncoderConfig(backbone=backbone, stages=stages, grid_size=20, align_grid=True))
    offset = (stride - 1) / 2
    assert _receptive_field_centre(plain, image_size, cell) == pytest.approx([c - offset for c in centre])
    assert _receptive_field_centre(aligned, image_size, cell) == pytest.approx(centre, abs=0.5)


def test_align_grid_leaves_vgg_alone():
    # VGG's 2x2 max-pools already centre feature k on (k + 0.5)·stride: nothing to shift.
    encoder = Encoder(EncoderConfig(backbone="vgg11", stages=3, grid_size=20, align_grid=True))
    assert (encoder.stride, encoder.centre_offset) == (4, 2.0)
    assert encoder.map_size(80) == (20, 20)
    assert _receptive_field_centre(encoder, 80, (9, 11)) == pytest.approx([(11 + 0.5) * 4, (9 + 0.5) * 4])


@pytest.mark.parametrize(
    "stages,image_size,plain,aligned",
    [
        (2, 64, [-3.5] * 8, [0.5] * 8),  # the recipe: stride 8, its 8x8 map is the grid
        (2, 128, [-3.5] * 8, [0.5] * 8),  # a 16x16 map averaged in 2x2 bins: the bins' mean
        (3, 64, [-3.5, -11.5] * 4, [4.5, -3.5] * 4),  # a 4x4 map spread over 8 cells
    ],
)
def test_feature_centres_against_the_cells_grounding_draws(stages, image_size, plain, aligned):
    for align, expected in ((False, plain), (True, aligned)):
        encoder = Encoder(EncoderConfig("resnet18", stages=stages, grid_size=8, align_grid=align))
        drawn = [(i + 0.5) * image_size / 8 for i in range(8)]
        shift = [f - d for f, d in zip(encoder.feature_centres(image_size), drawn)]
        assert shift == pytest.approx(expected)


def test_feature_centres_are_where_the_pooled_features_look():
    # A 30x30 map pooled to 20 cells: bins of one and two map cells, centred off the drawn cells.
    encoder = Encoder(EncoderConfig("resnet18", stages=2, grid_size=20, align_grid=False))
    centres = encoder.feature_centres(240)
    for cell in (9, 10):
        x, y = _receptive_field_centre(encoder, 240, (cell, cell))
        assert x == y == pytest.approx(centres[cell])
    assert centres[9] != pytest.approx((9 + 0.5) * 12)
