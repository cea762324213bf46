"""The Show, Attend and Tell model as plain nn.Modules (no Lightning, no files)."""

from captioner.models.attention import SoftAttention
from captioner.models.config import DecoderConfig, EncoderConfig, PlainConfig
from captioner.models.decoder import GATES, Decoder
from captioner.models.encoder import Encoder, supported_backbones
from captioner.models.loss import LossParts, caption_loss

__all__ = [
    "GATES",
    "Decoder",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
    "LossParts",
    "PlainConfig",
    "SoftAttention",
    "caption_loss",
    "supported_backbones",
]
