"""The LSTM decoder of Show, Attend and Tell with soft attention, gate and deep output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.models.attention import SoftAttention

GATES = ("scalar", "channel", "none")

State = tuple[Tensor, Tensor]
StepWeights = tuple[Tensor, Tensor, Tensor]  # see Decoder._weights


class Decoder(nn.Module):
    """LSTM decoder: y_{t-1}, h_{t-1} -> attention over the image grid -> h_t -> p(y_t).

    Per step (Xu et al. 2015):
      α_t, z_t = attention(a, h_{t-1});  z_t <- σ(f_β(h_{t-1})) · z_t          (the gate)
      h_t, c_t = LSTMCell([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))
      logits_t = L_o(dropout(E y_{t-1} + L_h h_t + L_z z_t))                      (deep output, eq. 7)
    with h_0, c_0 = tanh(Linear(mean_i a_i)).

    Shapes: features (B, P, D), tokens (B, T), logits (B, T, V), alphas (B, T, P);
    E = embed_dim, H = hidden_dim, A = attention_dim, V = vocab_size.

    Only the recurrent part runs inside the time loop. Everything that does not depend on
    h_{t-1} (W_a a, the embedding half of the LSTM's input matmul, L_h, L_z, L_o) runs once
    over the whole batch, and the three matmuls on h_{t-1} (LSTM W_hh, attention W_h, gate
    f_β) are one fused matmul per step.
    """

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        *,
        embed_dim: int = 512,
        hidden_dim: int = 512,
        attention_dim: int = 512,
        dropout: float = 0.5,
        gate: str = "scalar",
    ) -> None:
        super().__init__()
        if gate not in GATES:
            raise CaptionerError(f"gate={gate!r} is not supported; use one of {', '.join(GATES)}")
        if not 0.0 <= dropout < 1.0:
            raise CaptionerError(f"dropout={dropout} must be in [0, 1)")
        self.vocab_size, self.feature_dim, self.embed_dim = vocab_size, feature_dim, embed_dim
        self.hidden_dim, self.attention_dim, self.gate_kind = hidden_dim, attention_dim, gate

        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.attention = SoftAttention(feature_dim, hidden_dim, attention_dim)
        self.init_proj = nn.Linear(feature_dim, 2 * hidden_dim)  # -> h_0, c_0
        gate_dim = {"scalar": 1, "channel": feature_dim, "none": 0}[gate]
        self.gate = nn.Linear(hidden_dim, gate_dim) if gate_dim else None  # f_β
        # The parameters of an LSTMCell (same state-dict layout), applied by `_advance` so that
        # the embedding half of W_ih can run once over all steps.
        self.lstm = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.out_hidden = nn.Linear(hidden_dim, embed_dim)  # L_h
        self.out_context = nn.Linear(feature_dim, embed_dim, bias=False)  # L_z
        self.dropout = nn.Dropout(dropout)
        self.out_vocab = nn.Linear(embed_dim, vocab_size)  # L_o

    def prepare(self, features: Tensor) -> Tensor:
        """features (B, P, D) -> projected (B, P, A): the attention's W_a a + b, once per image."""
        return self.attention.project_features(features)

    def init_state(self, features: Tensor) -> State:
        """features (B, P, D) -> (h_0, c_0), each (B, H) = tanh(Linear(mean_i a_i))."""
        return torch.tanh(self.init_proj(features.mean(dim=1))).chunk(2, dim=-1)

    def forward(self, features: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: features (B, P, D), input tokens (B, T) (<start> w_1 ... w_{T-1})
        -> logits (B, T, V) for the next tokens, alphas (B, T, P)."""
        projected = self.prepare(features)
        h, c = self.init_state(features)
        embedded = self.embedding(tokens)  # (B, T, E)
        embed_weight, weights = self._weights()
        # One matmul for all steps; unbind so the backward stacks once instead of per step.
        input_gates = F.linear(embedded, embed_weight).unbind(1)  # T × (B, 4H)
        hiddens, contexts, alphas = [], [], []
        for gates_t in input_gates:
            h, c, context, alpha = self._advance(gates_t, (h, c), features, projected, weights)
            hiddens.append(h)
            contexts.append(context)
            alphas.append(alpha)
        logits = self._deep_output(embedded, torch.stack(hiddens, 1), torch.stack(contexts, 1))
        return logits, torch.stack(alphas, 1)

    def step(
        self, prev_tokens: Tensor, state: State, features: Tensor, projected: Tensor
    ) -> tuple[Tensor, State, Tensor]:
        """One decoding step for K hypotheses (beams) per image.

        prev_tokens (B, K), state (h, c) each (B, K, H), features (B, P, D), projected (B, P, A)
        -> log_probs (B, K, V), new state (h, c) each (B, K, H), alpha (B, K, P).
        The K beams of an image share its features and projection (broadcast, not copied).
        Without the beam axis — prev_tokens (B,), state (B, H) — outputs drop it too.
        """
        single = prev_tokens.dim() == 1
        if single:
            prev_tokens, state = prev_tokens.unsqueeze(1), (state[0].unsqueeze(1), state[1].unsqueeze(1))
        embedded = self.embedding(prev_tokens)  # (B, K, E)
        embed_weight, weights = self._weights()
        h, c, context, alpha = self._advance(F.linear(embedded, embed_weight), state, features, projected, weights)
        log_probs = self._deep_output(embedded, h, context).log_softmax(dim=-1)
        if single:
            return log_probs.squeeze(1), (h.squeeze(1), c.squeeze(1)), alpha.squeeze(1)
        return log_probs, (h, c), alpha

    def _weights(self) -> tuple[Tensor, StepWeights]:
        """Rearranged once per forward/step (not per time step, which would also make the
        backward materialise a full-size gradient per time step):
        W_ih's embedding half (4H, E), and for `_advance` W_ih's context half (4H, D) plus
        [W_hh; W_h; f_β] stacked (4H + A + G, H) with its bias, for one matmul on h_{t-1}.
        The LSTM's two biases ride on W_hh; the attention's bias b lives in W_a a + b.
        """
        embed_weight, context_weight = self.lstm.weight_ih.split([self.embed_dim, self.feature_dim], dim=1)
        weights = [self.lstm.weight_hh, self.attention.hidden_proj.weight]
        biases = [self.lstm.bias_ih + self.lstm.bias_hh, self.lstm.bias_hh.new_zeros(self.attention_dim)]
        if self.gate is not None:
            weights.append(self.gate.weight)
            biases.append(self.gate.bias)
        return embed_weight, (context_weight, torch.cat(weights), torch.cat(biases))

    def _advance(
        self,
        input_gates: Tensor,
        state: State,
        features: Tensor,
        projected: Tensor,
        weights: StepWeights,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The recurrent core. input_gates (B, [K,] 4H) = W_ih[:, :E] E y_{t-1}, state (h, c)
        (B, [K,] H) -> h, c (B, [K,] H), gated context z (B, [K,] D), alpha (B, [K,] P)."""
        h, c = state
        context_weight, hidden_weight, hidden_bias = weights
        on_hidden = F.linear(h, hidden_weight, hidden_bias)
        hidden_gates, hidden_att, hidden_gate = on_hidden.split(
            [4 * self.hidden_dim, self.attention_dim, on_hidden.size(-1) - 4 * self.hidden_dim - self.attention_dim],
            dim=-1,
        )
        context, alpha = self.attention.attend(features, projected, hidden_att)
        if self.gate is not None:
            context = torch.sigmoid(hidden_gate) * context
        gates = F.linear(context, context_weight) + hidden_gates + input_gates
        i, f, g, o = gates.chunk(4, dim=-1)  # LSTMCell's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c, context, alpha

    def _deep_output(self, embedded: Tensor, hidden: Tensor, context: Tensor) -> Tensor:
        """L_o(dropout(E y_{t-1} + L_h h_t + L_z z_t)) for any leading shape (..., E/H/D) -> (..., V)."""
        return self.out_vocab(self.dropout(embedded + self.out_hidden(hidden) + self.out_context(context)))
