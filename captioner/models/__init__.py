"""The Show, Attend and Tell model as plain nn.Modules (no Lightning, no files), and the
sequence encoder that puts the same decoder to work on text."""

from captioner.models.attention import SoftAttention
from captioner.models.config import DecoderConfig, EncoderConfig, PlainConfig, SequenceEncoderConfig
from captioner.models.decoder import GATES, Decoder
from captioner.models.encoder import Encoder, supported_backbones
from captioner.models.sequence import SequenceEncoder

__all__ = [
    "GATES",
    "Decoder",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
    "PlainConfig",
    "SequenceEncoder",
    "SequenceEncoderConfig",
    "SoftAttention",
    "supported_backbones",
]
