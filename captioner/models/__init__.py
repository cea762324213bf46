"""The Show, Attend and Tell model as plain nn.Modules (no Lightning, no files), and the
sequence encoder that puts the same decoder to work on text."""

from captioner.models.attention import SoftAttention
from captioner.models.captioner import Annotations, ShowAttendTell
from captioner.models.config import DecoderConfig, EncoderConfig, PlainConfig, SequenceEncoderConfig
from captioner.models.decoder import Decoder
from captioner.models.encoder import Encoder, supported_backbones
from captioner.models.fused import FusedDecoder
from captioner.models.sequence import SequenceEncoder

__all__ = [
    "Annotations",
    "Decoder",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
    "FusedDecoder",
    "PlainConfig",
    "SequenceEncoder",
    "SequenceEncoderConfig",
    "ShowAttendTell",
    "SoftAttention",
    "supported_backbones",
]
