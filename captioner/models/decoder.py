"""The decoder of Show, Attend and Tell, written as the paper's equations.

Read this file against Xu et al. (2015), section 3.1.2. Per word y_t, with the image's
annotation vectors a_1..a_P (the encoder's grid, features (B, P, D)):

    e_ti = w · tanh(W_a a_i + b + W_h h_{t-1})            attention energies   (eq. 4)
    α_t  = softmax_i(e_t)                                  where to look        (eq. 5)
    z_t  = σ(f_β(h_{t-1})) · Σ_i α_ti a_i                  gated context        (eq. 6, 4.2.1)
    h_t, c_t = LSTM([E y_{t-1}; z_t], h_{t-1}, c_{t-1})                         (eq. 1-3)
    p(y_t) = softmax(L_o(E y_{t-1} + L_h h_t + L_z z_t))   deep output          (eq. 7)

with h_0, c_0 = tanh(Linear(mean_i a_i)). With `attend_from: current` (Lu et al. 2017) the
LSTM reads E y_{t-1} first and the attention looks from h_t, so z_t serves y_t alone.

This is the model's definition and the reference for `captioner.models.fused.FusedDecoder`,
which computes the same numbers faster (one matmul per step on h, chunked energies, a
hand-written backward through time) and is what the models use by default. Both have the same
parameters, so a state dict loads into either.

Shapes: features (B, P, D), tokens (B, T), logits (B, T, V), alphas (B, T, P); decoding adds a
beam axis K after B to states (B, K, H) and attention (B, K, P). E = embed_dim, H = hidden_dim,
A = attention_dim, V = vocab_size. A mask (B, P) or (B, K, P) bool marks where attention may go.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.models.attention import SoftAttention
from captioner.models.config import DecoderConfig
from captioner.models.hard_attention import HardChoice, argmax_context, sample_context

State = tuple[Tensor, Tensor]


class HardForward(NamedTuple):
    """`Decoder.forward_hard`: teacher forcing with sampled attention locations."""

    logits: Tensor  # (B, T, V)
    alphas: Tensor  # (B, T, P)
    location_log_probs: Tensor  # (B, T): log α_t[s_t]; 0 in the expected rows
    entropies: Tensor  # (B, T): H(α_t); 0 in the expected rows
    sampled: Tensor  # (B,) bool: rows that sampled locations (the others used the expected context)
    independent_steps: bool  # each step's location affects only its own word (attend_from="current")
    # (B, T, V), independent steps only, when asked: the logits had every step used the expected context, with
    # the same hidden states and dropout mask (no gradient); a per-word baseline for REINFORCE
    expected_logits: Tensor | None = None


class Decoder(nn.Module):
    """The attention LSTM decoder, one plain step at a time (see the module docstring)."""

    def __init__(self, config: DecoderConfig, vocab_size: int, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size, self.feature_dim = vocab_size, feature_dim
        self.embed_dim, self.hidden_dim, self.attention_dim = config.embed_dim, config.hidden_dim, config.attention_dim
        self.embedding = nn.Embedding(vocab_size, config.embed_dim)  # E
        self.attention = SoftAttention(feature_dim, config.hidden_dim, config.attention_dim)  # W_a, b, W_h, w
        # h_0, c_0; none when they are 0 (a "zero" decoder's state dict has no init_proj)
        self.init_proj = nn.Linear(feature_dim, 2 * config.hidden_dim) if config.initial_state == "mean" else None
        gate_dim = {"scalar": 1, "channel": feature_dim, "none": 0}[config.gate]
        self.gate = nn.Linear(config.hidden_dim, gate_dim) if gate_dim else None  # f_β
        lstm_input = config.embed_dim + (0 if config.attend_from == "current" else feature_dim)
        self.lstm = nn.LSTMCell(lstm_input, config.hidden_dim)
        self.out_hidden = nn.Linear(config.hidden_dim, config.embed_dim)  # L_h
        self.out_context = nn.Linear(feature_dim, config.embed_dim, bias=False)  # L_z
        self.dropout = nn.Dropout(config.dropout)
        self.out_vocab = nn.Linear(config.embed_dim, vocab_size)  # L_o

    # -------------------------------------------------------------- per image
    def prepare(self, features: Tensor) -> Tensor:
        """features (B, P, D) -> W_a a + b (B, P, A): the part of e_ti that no step changes."""
        return self.attention.project_features(features)

    def init_state(self, features: Tensor, mask: Tensor | None = None) -> State:
        """features (B, P, D), mask (B, P) or None -> h_0, c_0 (B, H) = tanh(Linear(mean_i a_i)),
        the mean over the positions the mask allows; zeros with `initial_state: zero`."""
        if self.init_proj is None:
            zeros = features.new_zeros(features.size(0), self.hidden_dim)
            return zeros, zeros.clone()
        if mask is None:
            mean = features.mean(dim=1)
        else:
            weights = mask.to(features.dtype).unsqueeze(-1)  # (B, P, 1)
            mean = (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return torch.tanh(self.init_proj(mean)).chunk(2, dim=-1)

    # -------------------------------------------------------------- one step
    def look(self, features: Tensor, projected: Tensor, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """α and Σ_i α_i a_i from the state h (B, [K,] H) -> attended (B, [K,] D), alpha (B, [K,] P)."""
        beams = h.dim() == 3
        h = h if beams else h.unsqueeze(1)  # (B, K, H)
        energies = self.attention.score(torch.tanh(projected.unsqueeze(1) + self.attention.hidden_proj(h).unsqueeze(2)))
        energies = energies.squeeze(-1)  # (B, K, P)
        if mask is not None:
            energies = energies.masked_fill(~(mask if mask.dim() == 3 else mask.unsqueeze(1)), float("-inf"))
        alpha = energies.softmax(dim=-1)
        attended = torch.bmm(alpha.to(features.dtype), features)  # (B, K, D)
        return (attended, alpha) if beams else (attended.squeeze(1), alpha.squeeze(1))

    def gated(self, attended: Tensor, h: Tensor) -> Tensor:
        """z = σ(f_β(h)) · attended, the paper's gate (one per channel with `gate: channel`)."""
        return attended if self.gate is None else torch.sigmoid(self.gate(h)) * attended

    def pick_context(
        self, features: Tensor, alpha: Tensor, attended: Tensor, expected: Tensor | None = None
    ) -> tuple[Tensor, HardChoice | None]:
        """The context before the gate. Soft attention: attended = Σ_i α_i a_i as is. Hard
        attention: in training (`expected` (B,) bool given) a sampled location's a_s in the
        rows where `expected` is False; in decoding a_{argmax α} with `hard_decoding: argmax`."""
        if expected is not None:
            choice = sample_context(features, alpha, attended, expected)
            return choice.attended, choice
        if self.argmax_context:
            return argmax_context(features, alpha), None
        return attended, None

    @property
    def argmax_context(self) -> bool:
        """True when this decoder attends to the single most attended location (not sampling)."""
        return self.config.attention == "hard" and self.config.hard_decoding == "argmax"

    def lstm_step(self, x: Tensor, state: State) -> State:
        """nn.LSTMCell over any leading shape: x (..., In), state (..., H) each -> (h, c)."""
        h, c = state
        rows = h.shape[:-1]
        h, c = self.lstm(x.reshape(-1, x.size(-1)), (h.reshape(-1, h.size(-1)), c.reshape(-1, c.size(-1))))
        return h.view(*rows, -1), c.view(*rows, -1)

    def deep_output(self, embedded: Tensor, h: Tensor, context: Tensor) -> Tensor:
        """L_o(dropout(E y_{t-1} + L_h h_t + L_z z_t)) for any leading shape -> logits (..., V)."""
        return self.out_vocab(self.dropout(embedded + self.out_hidden(h) + self.out_context(context)))

    def deep_output_pair(self, embedded: Tensor, h: Tensor, context: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:
        """`deep_output` of `context` and, without gradient, of an `other` context, under one
        dropout mask, so the two differ by the context alone -> logits (..., V) twice."""
        shared = embedded + self.out_hidden(h)
        keep = self.dropout(torch.ones_like(shared))
        logits = self.out_vocab((shared + self.out_context(context)) * keep)
        with torch.no_grad():
            other_logits = self.out_vocab((shared + self.out_context(other)) * keep)
        return logits, other_logits

    def advance(
        self,
        prev_tokens: Tensor,
        state: State,
        features: Tensor,
        projected: Tensor,
        mask: Tensor | None = None,
        expected: Tensor | None = None,
    ) -> tuple[Tensor, State, Tensor, HardChoice | None, Tensor | None]:
        """One step of the equations: prev_tokens (B, [K]), state (B, [K,] H) each -> logits
        (B, [K,] V), the new state, alpha (B, [K,] P), and when training hard attention
        (`expected`), the choice made and the gated expected context (B, [K,] D, no gradient)."""
        embedded = self.embedding(prev_tokens)
        if self.config.attend_from == "current":  # read the word first, then look from h_t
            state = self.lstm_step(embedded, state)
        look_from = state[0]
        attended, alpha = self.look(features, projected, look_from, mask)
        picked, choice = self.pick_context(features, alpha, attended, expected)
        context = self.gated(picked, look_from)
        if self.config.attend_from == "previous":
            state = self.lstm_step(torch.cat([embedded, context], dim=-1), state)
        expected_context = None if choice is None else self.gated(attended, look_from).detach()
        return self.deep_output(embedded, state[0], context), state, alpha, choice, expected_context

    # ------------------------------------------------------------ interfaces
    def step_weights(self) -> Any:
        """Weights a decoding loop computes once and passes to every `step`; none here
        (`FusedDecoder` rearranges its matrices)."""
        return None

    def step(
        self,
        prev_tokens: Tensor,
        state: State,
        features: Tensor,
        projected: Tensor,
        mask: Tensor | None = None,
        weights: Any = None,
    ) -> tuple[Tensor, State, Tensor]:
        """One decoding step for K hypotheses (beams) per image: prev_tokens (B, [K]), state
        (B, [K,] H) each, features (B, P, D), projected (B, P, A), mask (B, P) or (B, K, P)
        -> log_probs (B, [K,] V), new state, alpha (B, [K,] P). The beams of an image share
        its features (broadcast, not copied). `weights`: from `step_weights()`."""
        logits, state, alpha, _, _ = self.advance(prev_tokens, state, features, projected, mask)
        return logits.log_softmax(dim=-1), state, alpha

    def forward(self, features: Tensor, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing: features (B, P, D), input tokens (B, T) (<start> w_1 ... w_{T-1}),
        mask (B, P) or None -> logits (B, T, V) for the next tokens, alphas (B, T, P)."""
        logits, alphas, _, _ = self._teacher_forced(features, tokens, mask)
        return logits, alphas

    def forward_hard(
        self,
        features: Tensor,
        tokens: Tensor,
        mask: Tensor | None = None,
        expected_prob: float = 0.5,
        with_expected_logits: bool = False,
    ) -> HardForward:
        """Teacher forcing for training a "hard" decoder (Xu et al. section 4.1): each step
        samples s_t ~ Multinoulli(α_t) and attends to a_{s_t}, except in the rows (images) that,
        with probability `expected_prob` each, use the expected context Σ_i α_ti a_i throughout.
        with_expected_logits (attending from the current state): also the logits had every step
        used the expected context, for the per-word baseline."""
        if self.config.attention != "hard":
            raise CaptionerError('forward_hard samples attention locations: it needs a decoder with attention="hard"')
        expected = torch.rand(features.size(0), device=features.device) < expected_prob
        logits, alphas, choices, expected_logits = self._teacher_forced(
            features, tokens, mask, expected, with_expected_logits
        )
        return HardForward(
            logits,
            alphas,
            torch.stack([choice.log_prob for choice in choices], 1),
            torch.stack([choice.entropy for choice in choices], 1),
            ~expected,
            self.config.attend_from == "current",
            expected_logits,
        )

    def _teacher_forced(
        self,
        features: Tensor,
        tokens: Tensor,
        mask: Tensor | None,
        expected: Tensor | None = None,
        with_expected_logits: bool = False,
    ) -> tuple[Tensor, Tensor, list[HardChoice], Tensor | None]:
        """The steps over the given words -> logits (B, T, V), alphas (B, T, P), each step's
        hard choice (training hard attention) and, if asked, the expected-context logits."""
        projected = self.prepare(features)
        state = self.init_state(features, mask)
        logits, alphas, choices, expected_logits = [], [], [], []
        for t in range(tokens.size(1)):
            step_logits, state, alpha, choice, expected_context = self.advance(
                tokens[:, t], state, features, projected, mask, expected
            )
            if with_expected_logits:  # the step's output again, one dropout mask for both contexts
                context = self.gated(choice.attended, state[0])
                step_logits, other = self.deep_output_pair(
                    self.embedding(tokens[:, t]), state[0], context, expected_context
                )
                expected_logits.append(other)
            logits.append(step_logits)
            alphas.append(alpha)
            if choice is not None:
                choices.append(choice)
        stacked = torch.stack(expected_logits, 1) if with_expected_logits else None
        return torch.stack(logits, 1), torch.stack(alphas, 1), choices, stacked
