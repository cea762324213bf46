"""A faithful re-creation of the popular sgrvinod-style Show-Attend-Tell decoder, as a baseline.

(github.com/sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning, models.py / train.py.) Its costs:
the image-side attention projection is recomputed at every step, the vocabulary projection
runs inside the time loop, and the batch shrinks step by step over length-sorted captions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence


class NaiveAttention(nn.Module):
    def __init__(self, encoder_dim: int, decoder_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, encoder_out: Tensor, decoder_hidden: Tensor) -> tuple[Tensor, Tensor]:
        att1 = self.encoder_att(encoder_out)  # (B, P, A) — again at every step
        att2 = self.decoder_att(decoder_hidden)
        att = self.full_att(F.relu(att1 + att2.unsqueeze(1))).squeeze(2)
        alpha = att.softmax(dim=1)
        return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha


class NaiveDecoder(nn.Module):
    def __init__(self, attention_dim: int, embed_dim: int, decoder_dim: int, vocab_size: int, encoder_dim: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.attention = NaiveAttention(encoder_dim, decoder_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(0.5)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.fc = nn.Linear(decoder_dim, vocab_size)

    def forward(self, encoder_out: Tensor, captions: Tensor, lengths: Tensor):
        """encoder_out (B, P, D), captions (B, T+1), lengths (B,) -> scores, sorted captions, decode lengths, alphas."""
        lengths, order = lengths.sort(dim=0, descending=True)
        encoder_out, captions = encoder_out[order], captions[order]
        embeddings = self.embedding(captions)
        mean = encoder_out.mean(dim=1)
        h, c = self.init_h(mean), self.init_c(mean)
        decode_lengths = (lengths - 1).tolist()
        batch, steps = encoder_out.size(0), max(decode_lengths)
        predictions = torch.zeros(batch, steps, self.vocab_size, device=encoder_out.device)
        alphas = torch.zeros(batch, steps, encoder_out.size(1), device=encoder_out.device)
        for t in range(steps):
            n = sum(length > t for length in decode_lengths)
            awe, alpha = self.attention(encoder_out[:n], h[:n])
            awe = torch.sigmoid(self.f_beta(h[:n])) * awe
            h, c = self.decode_step(torch.cat([embeddings[:n, t, :], awe], dim=1), (h[:n], c[:n]))
            predictions[:n, t, :] = self.fc(self.dropout(h))
            alphas[:n, t, :] = alpha
        return predictions, captions, decode_lengths, alphas


def naive_loss(decoder: NaiveDecoder, features: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
    """train.py's loss: cross-entropy on packed sequences + ((1 − Σ_t α)²).mean()."""
    scores, captions, decode_lengths, alphas = decoder(features, captions, lengths)
    scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(captions[:, 1:], decode_lengths, batch_first=True).data
    return F.cross_entropy(scores, targets) + ((1.0 - alphas.sum(dim=1)) ** 2).mean()
