"""The CNN encoder: a torchvision classifier cut before its pooling head, pooled to a grid."""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from captioner.errors import CaptionerError
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
        self.out_channels += 2 if config.coord_channels else 0
        self.stride, self.centre_offset = trunk_geometry(self.trunk)
        self._align_pad = _align_padding(self.stride, self.centre_offset) if config.align_grid else None
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
        """images (B, 3, H, W) -> the trunk's map (B, D, h, w) before grid pooling; with
        `align_grid`, map cell k is centred on pixel (k + 0.5)·stride (within 0.5 px)."""
        if self._align_pad is not None:
            before, after = self._align_pad
            images = F.pad(images, (before, after, before, after))  # 0 = the mean colour after normalising
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.trunk(images)
        if self._align_pad is not None:
            features = features[:, :, 1:, 1:]  # centred above and left of the image
        return features

    def map_size(self, image_size: int) -> tuple[int, int]:
        """(h, w) of the trunk's map for square images of side `image_size`, before grid pooling."""
        was_training = self.training
        self.eval()  # a probe must not move BatchNorm statistics
        with torch.no_grad():
            probe = next(self.trunk.parameters()).new_zeros(1, 3, image_size, image_size)
            size = tuple(self.feature_map(probe).shape[-2:])
        self.train(was_training)
        return size

    def warn_if_grid_repeats(self, image_size: int) -> None:
        """Warn when the grid is finer than the trunk's map at `image_size`: adaptive pooling then
        copies map cells into several grid cells, and attention over copies adds nothing."""
        rows, cols = self.map_size(image_size)
        grid, config = self.grid_size, self.config
        if grid > min(rows, cols):
            warnings.warn(
                f"grid_size={grid} is finer than the {rows}x{cols} map that {config.backbone} "
                f"(stages={config.stages}) gives at image_size={image_size}: only {rows * cols} of the "
                f"{grid * grid} grid cells differ. Raise data.image_size or lower model.encoder.grid_size "
                "(or keep more of the map with model.encoder.stages)",
                stacklevel=3,
            )

    def feature_centres(self, image_size: int) -> list[float]:
        """(grid_size,) pixel coordinate, along either side of an image_size² input, of the centre
        of the region each grid cell's feature is computed from: the trunk's centres s·k + c (moved
        by align_grid) averaged over the cell's adaptive-pooling bin. Grounding and overlays draw
        cell i at (i + 0.5)·image_size/grid_size; align_grid brings the two within 0.5 px when
        the map divides into the grid."""
        height, _ = self.map_size(image_size)
        centres = [self.stride * k + self.centre_offset for k in range(height)]
        if self._align_pad is not None:  # padded `before` px, then the first map cell dropped
            centres = [c + self.stride - self._align_pad[0] for c in centres]
        g = self.grid_size
        bins = [(i * height // g, -(-(i + 1) * height // g)) for i in range(g)]  # AdaptiveAvgPool2d's
        return [sum(centres[start:end]) / (end - start) for start, end in bins]

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> features (B, P, D), P = grid_size²; with coord_channels the
        last two of the D channels are each cell's centre (x, y) in [-1, 1]."""
        grid = self.pool(self.feature_map(images))  # (B, D, g, g)
        features = grid.flatten(2).transpose(1, 2)
        if self.config.coord_channels:
            features = torch.cat([features, cell_centres(self.grid_size, features)], dim=2)
        return features.contiguous()


def trunk_geometry(trunk: nn.Module) -> tuple[int, float]:
    """(stride s, offset c) of a conv trunk's map: its k-th feature is centred at input pixel
    coordinate s·k + c (pixel i spans [i, i + 1)), from the kernels, strides and paddings along
    the main path (ResNet shortcuts, `downsample`, are skipped: they keep the same centres)."""
    stride, offset = 1, 0.0
    for name, module in trunk.named_modules():
        if "downsample" in name.split(".") or not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        kernel, step, padding = (_first(getattr(module, key)) for key in ("kernel_size", "stride", "padding"))
        dilation = _first(getattr(module, "dilation", 1))
        offset += stride * (dilation * (kernel - 1) / 2 - padding)
        stride *= step
    return stride, offset + 0.5


def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


def _align_padding(stride: int, offset: float) -> tuple[int, int] | None:
    """Zero padding (before, after) that, with the map's first row and column dropped, moves the
    features from s·k + offset to within 0.5 px of (k + 0.5)·s; None when they are there already."""
    shift = stride / 2 - offset  # how far right/down the features must move
    if abs(shift) <= 0.5:
        return None
    before = round(stride - shift)  # padding moves them up/left; dropping one map cell, s right/down
    return before, stride - before


def cell_centres(grid_size: int, like: Tensor) -> Tensor:
    """(B, P, 2) with B and dtype/device of `like`: each cell's centre (x, y) in [-1, 1], row-major."""
    centres = (torch.arange(grid_size, dtype=like.dtype, device=like.device) + 0.5) * 2 / grid_size - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=1).expand(like.size(0), -1, -1)


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
