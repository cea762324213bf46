"""The CNN encoder: a torchvision classifier cut before its pooling head, pooled to a grid."""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torchvision
from torch import Tensor, nn

from captioner.errors import CaptionerError, require_positive
from captioner.models.config import EncoderConfig

# Families whose trunk we know how to cut into stages.
_RESNET = re.compile(r"(resnet\d+|resnext\d+_\w+|wide_resnet\d+_\d+)")
_VGG = re.compile(r"vgg\d+(_bn)?")


def supported_backbones() -> list[str]:
    """Torchvision classification models the encoder can cut: ResNet/ResNeXt/Wide-ResNet and VGG."""
    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(n for n in names if _RESNET.fullmatch(n) or _VGG.fullmatch(n))


class Encoder(nn.Module):
    """images (B, 3, H, W) -> annotation vectors a, features (B, P, D) with P = grid_size².

    The trunk is the backbone's stem plus its stages (ResNet: conv1..layer4; VGG: the five
    conv blocks of `features`, without the last max-pool), optionally only the first `stages`
    of them; its map (B, D, h, w) is adaptively average-pooled to grid_size × grid_size.

    fine_tune: "none" freezes everything, including BatchNorm running statistics (frozen
    parts stay in eval mode even after `.train()`); "all" trains everything; an int N trains
    the last N stages only.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        backbone, weights, grid_size, stages = config.backbone, config.weights, config.grid_size, config.stages
        allowed = supported_backbones()
        if backbone not in allowed:
            raise CaptionerError(f"backbone={backbone!r} is not supported; use one of {', '.join(allowed)}")
        require_positive(grid_size=grid_size)
        model = torchvision.models.get_model(backbone, weights=_check_weights(backbone, weights))
        stem, all_stages = _resnet_parts(model) if _RESNET.fullmatch(backbone) else _vgg_parts(model)
        if stages is None:
            stages = len(all_stages)
        if not isinstance(stages, int) or not 1 <= stages <= len(all_stages):
            raise CaptionerError(
                f"stages={stages!r} is out of range for {backbone}; use an integer from 1 to {len(all_stages)} or null"
            )
        kept = all_stages[:stages]
        self.trunk = nn.Sequential(OrderedDict(stem + [m for stage in kept for m in stage]))
        self.pool = nn.AdaptiveAvgPool2d(grid_size)
        self.config = config
        self.grid_size, self.channels_last = grid_size, config.channels_last
        self.out_channels = [m for m in self.trunk.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self._frozen = _frozen_modules(self.trunk, stem, kept, config.fine_tune)
        for module in self._frozen:
            module.requires_grad_(False)
        if self.channels_last:
            self.trunk.to(memory_format=torch.channels_last)
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        """Set train/eval mode; frozen parts always stay in eval mode (BatchNorm stats fixed)."""
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def feature_map(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> the trunk's map (B, D, h, w) before grid pooling."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.trunk(images)

    def map_size(self, image_size: int) -> tuple[int, int]:
        """(h, w) of the trunk's map for square images of side `image_size`, before grid pooling."""
        was_training = self.training
        self.eval()  # a probe must not move BatchNorm statistics
        with torch.no_grad():
            probe = next(self.trunk.parameters()).new_zeros(1, 3, image_size, image_size)
            size = tuple(self.feature_map(probe).shape[-2:])
        self.train(was_training)
        return size

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> features (B, P, D), P = grid_size²."""
        grid = self.pool(self.feature_map(images))  # (B, D, g, g)
        return grid.flatten(2).transpose(1, 2).contiguous()


def _check_weights(backbone: str, weights: str | None) -> str | None:
    """Validate a weights-API name ("DEFAULT", "IMAGENET1K_V2", ...) before torchvision does."""
    if weights is None:
        return None
    names = ["DEFAULT", *torchvision.models.get_model_weights(backbone).__members__]
    if weights not in names:
        raise CaptionerError(
            f"weights={weights!r} does not exist for {backbone}; use one of {', '.join(names)} or null"
        )
    return weights


Parts = tuple[list[tuple[str, nn.Module]], list[list[tuple[str, nn.Module]]]]


def _resnet_parts(model: nn.Module) -> Parts:
    """(stem, stages) of a ResNet, keeping torchvision's module names (state-dict compatible)."""
    stem = [(name, getattr(model, name)) for name in ("conv1", "bn1", "relu", "maxpool")]
    return stem, [[(f"layer{i}", getattr(model, f"layer{i}"))] for i in range(1, 5)]


def _vgg_parts(model: nn.Module) -> Parts:
    """(stem, stages) of a VGG: five conv blocks, each after the previous block's max-pool.

    Module names are the indices in `features`, so weights line up with torchvision's.
    """
    layers = list(model.features.named_children())[:-1]  # the last max-pool belongs to the head
    stages: list[list[tuple[str, nn.Module]]] = [[]]
    for name, layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            stages.append([])
        stages[-1].append((name, layer))
    return [], stages


def _frozen_modules(trunk: nn.Sequential, stem: list, stages: list, fine_tune: str | int) -> list[nn.Module]:
    """The trunk modules that `fine_tune` keeps frozen."""
    if fine_tune == "all":
        return []
    if fine_tune == "none":
        return [trunk]
    if isinstance(fine_tune, bool) or not isinstance(fine_tune, int) or not 0 <= fine_tune <= len(stages):
        raise CaptionerError(
            f"fine_tune={fine_tune!r} is not valid; use 'none', 'all' or an integer from 0 to {len(stages)} "
            "(the number of last stages to train)"
        )
    frozen_stages = stages[: len(stages) - fine_tune]
    return [module for _, module in stem] + [module for stage in frozen_stages for _, module in stage]
