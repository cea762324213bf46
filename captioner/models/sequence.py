"""The encoder of the translation model the decoder comes from: a bidirectional LSTM over tokens.

The image encoder turns pixels into a grid of annotation vectors a_i; this one turns a token
sequence into one annotation vector per position, a⟨t'⟩ = [→h⟨t'⟩; ←h⟨t'⟩], each
summarising the whole input with the focus on position t'. Everything after it — attention,
gate, LSTM decoder, greedy and beam search — is the image model's, unchanged, with a mask
so that padding gets no attention.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from captioner.errors import CaptionerError
from captioner.models.config import SequenceEncoderConfig


class SequenceEncoder(nn.Module):
    """tokens (B, T_x) -> features (B, T_x, D), mask (B, T_x) bool (True = a real token, may attend).

    D = 2 · hidden_dim. Padding (`pad_id`) may only follow the real tokens; padded positions
    get zero features. The backward direction starts at each sequence's own last token
    (packed sequences), so padding never leaks into the features of real positions.
    """

    def __init__(self, config: SequenceEncoderConfig, vocab_size: int, pad_id: int = 0) -> None:
        super().__init__()
        self.config, self.pad_id = config, pad_id
        self.out_dim = 2 * config.hidden_dim
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_dim, batch_first=True, bidirectional=True)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, T_x), every row with at least one real token -> features (B, T_x, D), mask (B, T_x)."""
        mask = tokens != self.pad_id
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()):
            # An all-padding row would leave the decoder's softmax nothing to attend to.
            raise CaptionerError("every input sequence needs at least one token; got an empty one")
        packed = pack_padded_sequence(self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        features, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=tokens.size(1))
        return features, mask
