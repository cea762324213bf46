"""The Show, Attend and Tell model as plain nn.Modules (no Lightning, no files)."""

from captioner.models.attention import SoftAttention
from captioner.models.config import ModelConfig, build_decoder, build_encoder
from captioner.models.decoder import GATES, Decoder
from captioner.models.encoder import Encoder, supported_backbones
from captioner.models.loss import LossParts, caption_loss

__all__ = [
    "GATES",
    "Decoder",
    "Encoder",
    "LossParts",
    "ModelConfig",
    "SoftAttention",
    "build_decoder",
    "build_encoder",
    "caption_loss",
    "supported_backbones",
]
