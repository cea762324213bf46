"""All model settings in one dataclass, and the builders that turn it into modules."""

from __future__ import annotations

from dataclasses import dataclass

from captioner.models.decoder import Decoder
from captioner.models.encoder import Encoder


@dataclass
class ModelConfig:
    """Encoder and decoder settings (plain data: travels in checkpoints as a dict)."""

    backbone: str = "resnet101"
    weights: str | None = None  # torchvision weights name: "DEFAULT", "IMAGENET1K_V2", ... or None
    stages: int | None = None  # keep the first N stages of the trunk; None = all
    grid_size: int = 14
    fine_tune: str | int = "none"  # "none" | "all" | last N stages
    channels_last: bool = False
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    gate: str = "scalar"  # "scalar" | "channel" | "none"


def build_encoder(cfg: ModelConfig) -> Encoder:
    return Encoder(
        cfg.backbone,
        weights=cfg.weights,
        grid_size=cfg.grid_size,
        fine_tune=cfg.fine_tune,
        stages=cfg.stages,
        channels_last=cfg.channels_last,
    )


def build_decoder(cfg: ModelConfig, vocab_size: int, feature_dim: int) -> Decoder:
    return Decoder(
        vocab_size,
        feature_dim,
        embed_dim=cfg.embed_dim,
        hidden_dim=cfg.hidden_dim,
        attention_dim=cfg.attention_dim,
        dropout=cfg.dropout,
        gate=cfg.gate,
    )
