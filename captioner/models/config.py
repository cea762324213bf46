"""Model settings: the one place each default lives.

`Encoder`, `Decoder`, the Lightning system, checkpoints and the CLI all take these
dataclasses; none of them repeats a default. They are plain data, so they travel in
checkpoints as dicts (`asdict`) and come back with `from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from captioner.errors import CaptionerError, require_positive
from captioner.limits import MAX_GRID_SIZE, MAX_WIDTH, require_at_most

Config = TypeVar("Config", bound="PlainConfig")


class PlainConfig:
    """Base of the settings dataclasses: to and from plain dicts."""

    @classmethod
    def from_dict(cls: type[Config], values: Config | dict[str, Any] | None) -> Config:
        """An instance from an instance (returned as is), a dict of fields, or None (defaults).

        Unknown keys are an error naming them; missing ones take the defaults, so settings added
        later keep older checkpoints loadable."""
        if values is None:
            return cls()
        if isinstance(values, cls):
            return values
        if not isinstance(values, dict):
            raise CaptionerError(f"{cls.__name__} settings must be a mapping, got {type(values).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CaptionerError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: Config, **changes: Any) -> Config:
        """A copy with `changes`, checked as the class checks any settings (unknown names are an error)."""
        return type(self).from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True)
class EncoderConfig(PlainConfig):
    """The CNN trunk and its grid.

    backbone: a torchvision ResNet/ResNeXt/Wide-ResNet/VGG name.
    weights: torchvision weights name ("DEFAULT", "IMAGENET1K_V2", ...) or None for random init.
    stages: keep the first N stages of the trunk (a shallower cut sees less of the image per
        cell); None keeps all.
    grid_size: the feature map is adaptively pooled to grid_size x grid_size (14 in the paper).
    fine_tune: "none" (frozen, BatchNorm statistics too), "all", or the last N stages.
    channels_last: channels-last convolutions (faster on GPUs with tensor cores; same numbers).
    coord_channels: append each cell's centre (x, y) in [-1, 1] to its features (D grows by 2),
        so the context z_t says where the attended cells are; not in the paper. A CNN barely
        knows where a cell is, so without them a caption's place words ("top left") must come
        from features that see the whole image, and attending to the object named buys nothing.
    align_grid: centre each cell's feature on the cell it is drawn over. A ResNet's stride-s
        map has its k-th feature centred at pixel s·k + 0.5, (s − 1)/2 px up and left of cell
        k's centre (3.5 px at stride 8, 15.5 at 32); with this on, the image is padded by about
        s/2 on each side and the map's first row and column (centred outside the image) are
        dropped, so the features sit within 0.5 px of the cell centres (about (1 + s/S)² the
        trunk's work, S the image side). VGG's maps are centred already. Not in the paper (the
        `paper` recipe turns it off); on by default: without it even a decoder that attends
        exactly to the object's feature is scored, and drawn, a fraction of a cell right of and
        below it (docs/grounding_offset.md).
    """

    backbone: str = "resnet101"
    weights: str | None = None
    stages: int | None = None
    grid_size: int = 14
    fine_tune: str | int = "none"
    channels_last: bool = False
    coord_channels: bool = False
    align_grid: bool = True

    def __post_init__(self) -> None:
        require_positive(grid_size=self.grid_size)
        require_at_most(MAX_GRID_SIZE, grid_size=self.grid_size)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the attention grid; α rows of length P = rows·cols are row-major over it."""
        return (self.grid_size, self.grid_size)

    def feature_settings(self) -> dict[str, Any]:
        """The fields that decide what the encoder computes for an image: every field but those in
        `NOT_IN_FEATURES`, so a field added later counts unless it is listed there. Cached features
        (`captioner.data.features`) made with other values do not fit the model."""
        return {name: value for name, value in self.to_dict().items() if name not in NOT_IN_FEATURES}


# `EncoderConfig` fields that leave the features of an image unchanged (in eval mode, where
# features are extracted): what is trained, and the memory layout of the convolutions.
NOT_IN_FEATURES = ("fine_tune", "channels_last")


@dataclass(frozen=True)
class DecoderConfig(PlainConfig):
    """The attention LSTM decoder (Xu et al. 2015). The defaults are the settings that ground best
    (docs/grounding_study.md); the paper's are `initial_state: mean`, `attend_from: previous`
    (the `paper` recipe).

    embed_dim, hidden_dim, attention_dim: widths of the word embedding, the LSTM and the
        attention's hidden layer.
    dropout: before the deep output layer L_o.
    gate: "scalar" σ(f_β(h)) as in the paper, "channel" (one gate per feature channel) or "none".
    attention: "soft" (z = Σ_i α_i a_i, trained by backpropagation) or "hard" (the paper's
        stochastic attention, section 4.1: in training z = a_s with s ~ Multinoulli(α), trained
        with REINFORCE; see `captioner.models.hard_attention`).
    hard_decoding: the context a "hard" decoder uses when it is not sampling (decoding, eval):
        "expected" Σ_i α_i a_i, as the paper does at test time, or "argmax" a_{argmax α}.
    initial_state: "zero", h_0 = c_0 = 0, so the decoder learns what is in the image only
        through attention, or "mean", h_0, c_0 = tanh(Linear(mean_i a_i)) as in the paper.
    attend_from: the state that chooses where to look for word y_t. "previous" as in the paper:
        α_t comes from h_{t-1}, before the LSTM has read y_{t-1}, and z_t feeds the LSTM (so it
        can serve later words too) and the deep output. "current" (the spatial attention of
        Lu et al. 2017): the LSTM reads y_{t-1} first, α_t comes from h_t, and z_t feeds only
        the deep output of y_t, so what a word's attention gathers can serve that word alone.
        With hard attention each sampled location then affects only its own word, and is
        rewarded with that word's log-likelihood alone (`HardAttention.terms`, per_step).
    """

    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    gate: str = "scalar"
    attention: str = "soft"
    hard_decoding: str = "expected"
    initial_state: str = "zero"
    attend_from: str = "current"

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise CaptionerError(
                    f"decoder {name}={getattr(self, name)!r} is not supported; use one of {', '.join(allowed)}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise CaptionerError(f"decoder dropout={self.dropout} must be in [0, 1)")
        widths = dict(embed_dim=self.embed_dim, hidden_dim=self.hidden_dim, attention_dim=self.attention_dim)
        require_positive(**widths)
        require_at_most(MAX_WIDTH, **widths)


# The values each `DecoderConfig` choice may take.
CHOICES = {
    "gate": ("scalar", "channel", "none"),
    "attention": ("soft", "hard"),
    "hard_decoding": ("expected", "argmax"),
    "initial_state": ("mean", "zero"),
    "attend_from": ("previous", "current"),
}


@dataclass(frozen=True)
class SequenceEncoderConfig(PlainConfig):
    """The bidirectional LSTM over characters of the date example (`SequenceEncoder`).

    embed_dim: width of the character embedding.
    hidden_dim: LSTM width per direction; features are 2 · hidden_dim wide. Narrow keeps each
        annotation about its own neighbourhood, so attention points at the characters an
        output comes from.
    """

    embed_dim: int = 32
    hidden_dim: int = 32

    def __post_init__(self) -> None:
        require_positive(embed_dim=self.embed_dim, hidden_dim=self.hidden_dim)
        require_at_most(MAX_WIDTH, embed_dim=self.embed_dim, hidden_dim=self.hidden_dim)
