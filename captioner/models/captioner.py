"""The captioner as one nn.Module: an encoder that gives the annotation vectors a_1..a_P and the
attention decoder over them. Training, checkpoints, inference, precision, the service and the
dates example all hold this object.

    model = ShowAttendTell.for_images(EncoderConfig(backbone="resnet18"), DecoderConfig(), len(vocab))
    annotations = model.encode(images)                   # features (B, P, D), mask None
    logits, alphas = model(annotations, tokens[:, :-1])  # teacher forcing
    captions = model.caption(annotations, vocab, DecodingConfig(beam_size=3))
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from captioner.models.config import DecoderConfig, EncoderConfig
from captioner.models.decoder import Decoder, HardForward
from captioner.models.encoder import Encoder
from captioner.models.fused import FusedDecoder
from captioner.models.search import Caption, DecodingConfig, decode_captions
from captioner.vocab import Vocabulary


class Annotations(NamedTuple):
    """What the decoder attends over: features (B, P, D), one a_i per image cell or input
    token, and mask (B, P) bool (True = may attend) or None when every position may."""

    features: Tensor
    mask: Tensor | None = None


class ShowAttendTell(nn.Module):
    """encoder: inputs -> features (B, P, D), or (features, mask) for padded sequences;
    decoder: a `Decoder` (by default the `FusedDecoder`) sized for that D."""

    def __init__(self, encoder: nn.Module, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def for_images(cls, encoder: EncoderConfig, decoder: DecoderConfig, vocab_size: int) -> ShowAttendTell:
        """A CNN grid encoder and the fused decoder over it."""
        cnn = Encoder(encoder)
        return cls(cnn, FusedDecoder(decoder, vocab_size, cnn.out_channels))

    def encode(self, inputs: Tensor) -> Annotations:
        """inputs (images (B, 3, S, S), or tokens (B, T_x) for a sequence encoder) -> `Annotations`."""
        out = self.encoder(inputs)
        return Annotations(*out) if isinstance(out, tuple) else Annotations(out)

    def forward(self, annotations: Annotations, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: tokens (B, T) starting with <start> -> logits (B, T, V), alphas (B, T, P)."""
        return self.decoder(annotations.features, tokens, annotations.mask)

    def forward_hard(self, annotations: Annotations, tokens: Tensor, **options: float | bool) -> HardForward:
        """Teacher forcing with sampled attention locations (`Decoder.forward_hard` options)."""
        return self.decoder.forward_hard(annotations.features, tokens, annotations.mask, **options)

    def caption(self, annotations: Annotations, vocab: Vocabulary, settings: DecodingConfig) -> list[Caption]:
        """Decode freely (greedy or beam search): one `Caption` per row, α per word."""
        return decode_captions(self.decoder, annotations.features, vocab, settings, annotations.mask)
