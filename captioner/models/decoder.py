"""The LSTM decoder of Show, Attend and Tell with soft attention, gate and deep output."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from captioner.errors import CaptionerError, require_positive
from captioner.models.attention import SoftAttention, energies_backward
from captioner.models.config import DecoderConfig
from captioner.models.hard_attention import HARD_DECODING, HardChoice, argmax_context, sample_context

GATES = ("scalar", "channel", "none")
ATTENTIONS = ("soft", "hard")
INITIAL_STATES = ("mean", "zero")
ATTEND_FROM = ("previous", "current")

State = tuple[Tensor, Tensor]
StepWeights = tuple[Tensor, Tensor, Tensor]  # see Decoder.step_weights


class _Step(NamedTuple):
    """One step of `Decoder._advance`; shapes (B, [K,] ...)."""

    h: Tensor  # (H)
    c: Tensor  # (H)
    context: Tensor  # z after the gate (D)
    alpha: Tensor  # (P)
    on_hidden: Tensor  # [W_hh h; W_h h; f_β h] + biases, of the previous h (4H + A + G)
    attended: Tensor  # Σ_i α_i a_i before the gate (D)
    activations: Tensor  # σ(i), σ(f), tanh(g), σ(o) of the LSTM (4H)
    hard: HardChoice | None = None  # the sampled location's log α and H(α), when sampling


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
    """LSTM decoder: y_{t-1}, h_{t-1} -> attention over the image grid -> h_t -> p(y_t).

    Per step (Xu et al. 2015):
      α_t, z_t = attention(a, h_{t-1});  z_t <- σ(f_β(h_{t-1})) · z_t          (the gate)
      h_t, c_t = LSTMCell([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))
      logits_t = L_o(dropout(E y_{t-1} + L_h h_t + L_z z_t))                      (deep output, eq. 7)
    with h_0, c_0 = tanh(Linear(mean_i a_i)) (or 0, `config.initial_state == "zero"`).

    With `config.attend_from == "current"` (Lu et al. 2017) the LSTM reads the word first:
      h_t, c_t = LSTMCell(E y_{t-1}, (h_{t-1}, c_{t-1}));  α_t, z_t = attention(a, h_t);
      z_t <- σ(f_β(h_t)) · z_t;  logits_t as above.
    Nothing in the recurrence depends on the image after h_0, so teacher forcing runs the LSTM
    over all steps in one call and attends for all steps at once (autograd throughout).

    Shapes: features (B, P, D), tokens (B, T), logits (B, T, V), alphas (B, T, P);
    E = embed_dim, H = hidden_dim, A = attention_dim, V = vocab_size.

    Only the recurrent part runs inside the time loop. Everything that does not depend on
    h_{t-1} (W_a a, the embedding half of the LSTM's input matmul, L_h, L_z, L_o) runs once
    over the whole batch, and the three matmuls on h_{t-1} (LSTM W_hh, attention W_h, gate
    f_β) are one fused matmul per step. In training, the time loop has a hand-written
    backward (`_TimeLoop`).

    With `config.attention == "hard"` (Xu et al. section 4.1) the α are the same, but training
    (`forward_hard`) attends to one sampled location per step; decoding uses the expected
    context or the argmax location (`config.hard_decoding`).
    """

    def __init__(self, config: DecoderConfig, vocab_size: int, feature_dim: int) -> None:
        super().__init__()
        if config.gate not in GATES:
            raise CaptionerError(f"gate={config.gate!r} is not supported; use one of {', '.join(GATES)}")
        if not 0.0 <= config.dropout < 1.0:
            raise CaptionerError(f"dropout={config.dropout} must be in [0, 1)")
        if config.attention not in ATTENTIONS:
            raise CaptionerError(f"attention={config.attention!r} is not supported; use one of {', '.join(ATTENTIONS)}")
        if config.hard_decoding not in HARD_DECODING:
            raise CaptionerError(
                f"hard_decoding={config.hard_decoding!r} is not supported; use one of {', '.join(HARD_DECODING)}"
            )
        if config.initial_state not in INITIAL_STATES:
            raise CaptionerError(
                f"initial_state={config.initial_state!r} is not supported; use one of {', '.join(INITIAL_STATES)}"
            )
        if config.attend_from not in ATTEND_FROM:
            raise CaptionerError(
                f"attend_from={config.attend_from!r} is not supported; use one of {', '.join(ATTEND_FROM)}"
            )
        require_positive(embed_dim=config.embed_dim, hidden_dim=config.hidden_dim, attention_dim=config.attention_dim)
        embed_dim, hidden_dim, attention_dim = config.embed_dim, config.hidden_dim, config.attention_dim
        gate = config.gate
        self.config = config
        self.vocab_size, self.feature_dim, self.embed_dim = vocab_size, feature_dim, embed_dim
        self.hidden_dim, self.attention_dim, self.gate_kind = hidden_dim, attention_dim, gate

        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.attention = SoftAttention(feature_dim, hidden_dim, attention_dim)
        # -> h_0, c_0; none when they are 0 (a "zero" decoder's state dict has no init_proj)
        self.init_proj = nn.Linear(feature_dim, 2 * hidden_dim) if config.initial_state == "mean" else None
        gate_dim = {"scalar": 1, "channel": feature_dim, "none": 0}[gate]
        self.gate = nn.Linear(hidden_dim, gate_dim) if gate_dim else None  # f_β
        # The parameters of an LSTMCell (same state-dict layout), applied by `_advance` so that
        # the embedding half of W_ih can run once over all steps. Attending from the current
        # state, the LSTM reads the word alone.
        self.attends_after_reading = config.attend_from == "current"
        lstm_input = embed_dim if self.attends_after_reading else embed_dim + feature_dim
        self.lstm = nn.LSTMCell(lstm_input, hidden_dim)
        self.out_hidden = nn.Linear(hidden_dim, embed_dim)  # L_h
        self.out_context = nn.Linear(feature_dim, embed_dim, bias=False)  # L_z
        self.dropout = nn.Dropout(config.dropout)
        self.out_vocab = nn.Linear(embed_dim, vocab_size)  # L_o

    def prepare(self, features: Tensor) -> Tensor:
        """features (B, P, D) -> projected (B, P, A): the attention's W_a a + b, once per image."""
        return self.attention.project_features(features)

    def init_state(self, features: Tensor, mask: Tensor | None = None) -> State:
        """features (B, P, D), mask (B, P) bool or None -> (h_0, c_0), each (B, H) =
        tanh(Linear(mean_i a_i)), the mean over the positions the mask allows; zeros with
        `initial_state == "zero"`."""
        if self.init_proj is None:
            zeros = features.new_zeros(features.size(0), self.hidden_dim)
            return zeros, zeros.clone()
        if mask is None:
            mean = features.mean(dim=1)
        else:
            weights = mask.to(features.dtype).unsqueeze(-1)  # (B, P, 1)
            mean = (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return torch.tanh(self.init_proj(mean)).chunk(2, dim=-1)

    def forward(self, features: Tensor, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing: features (B, P, D), input tokens (B, T) (<start> w_1 ... w_{T-1}),
        mask (B, P) bool (True = may attend) or None -> logits (B, T, V) for the next tokens,
        alphas (B, T, P), with α = 0 exactly where the mask is False.

        float32 outside autocast runs the hand-written backward (`_TimeLoop`); anything else
        (autocast, other dtypes, a "hard" decoder's argmax context) runs `forward_autograd`,
        which gives the same numbers. A "hard" decoder does not sample here: it uses its
        `hard_decoding` context (training one samples with `forward_hard`). Attending from the
        current state has no time loop of its own to hand-write (`_forward_current`).
        """
        if self.attends_after_reading:
            return self._forward_current(features, tokens, mask)[:2]
        if torch.is_autocast_enabled(features.device.type) or features.dtype != torch.float32 or self._argmax_context():
            return self.forward_autograd(features, tokens, mask)
        projected = self.prepare(features)
        h, c = self.init_state(features, mask)
        embedded = self.embedding(tokens)  # (B, T, E)
        embed_weight, weights = self.step_weights()
        # One matmul for all steps, time-major so that each step reads a contiguous slice.
        input_gates = F.linear(embedded.transpose(0, 1), embed_weight)  # (T, B, 4H)
        hiddens, contexts, alphas = _TimeLoop.apply(
            self, input_gates, h, c, features, projected, mask, *weights, self.attention.score.weight
        )
        logits = self._deep_output(embedded, hiddens.transpose(0, 1), contexts.transpose(0, 1))
        return logits, alphas.transpose(0, 1)

    def forward_autograd(self, features: Tensor, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`forward` as a plain loop over `_advance` that autograd differentiates: the path for
        mixed precision and for anything the hand-written backward does not know. Same shapes."""
        if self.attends_after_reading:
            return self._forward_current(features, tokens, mask)[:2]
        logits, alphas, _ = self._autograd_loop(features, tokens, mask, None)
        return logits, alphas

    def _forward_current(
        self,
        features: Tensor,
        tokens: Tensor,
        mask: Tensor | None,
        expected: Tensor | None = None,
        with_expected_logits: bool = False,
    ) -> tuple[Tensor, Tensor, HardChoice | None, Tensor | None]:
        """Teacher forcing when attending from the current state: the LSTM over all T words in
        one call (its input matmul runs once over all steps), then attention for all steps at
        once, the T steps riding on the attention's beam axis -> logits (B, T, V), alphas
        (B, T, P) and, with `expected` (B,) bool (training hard attention), the sampled choices
        and, if asked, the logits (B, T, V) with the expected context at every step (no gradient)."""
        h, c = self.init_state(features, mask)
        embedded = self.embedding(tokens)  # (B, T, E)
        lstm = self.lstm
        hiddens, _, _ = torch.lstm(
            embedded,
            (h.unsqueeze(0), c.unsqueeze(0)),
            [lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh],
            True,  # has_biases
            1,  # num_layers
            0.0,  # dropout
            self.training,
            False,  # bidirectional
            True,  # batch_first
        )  # (B, T, H)
        projected = self.prepare(features)
        context, alphas, choice, expected_context = self._attend_current(features, projected, hiddens, mask, expected)
        if not with_expected_logits:
            return self._deep_output(embedded, hiddens, context), alphas, choice, None
        logits, expected_logits = self._deep_output_pair(embedded, hiddens, context, expected_context)
        return logits, alphas, choice, expected_logits

    def _attend_current(
        self, features: Tensor, projected: Tensor, hidden: Tensor, mask: Tensor | None, expected: Tensor | None = None
    ) -> tuple[Tensor, Tensor, HardChoice | None, Tensor | None]:
        """Attention from the current state: hidden (B, [K,] H) -> gated context z (B, [K,] D),
        alpha (B, [K,] P), and with `expected` the sampled locations and the gated expected
        context σ(f_β h) Σ_i α_i a_i (B, [K,] D, no gradient), which a baseline compares them
        with; K may be beams or, in teacher forcing, time steps."""
        soft, alpha = self.attention(features, projected, hidden, mask)
        attended, choice = self._pick_context(features, alpha, soft, expected)
        gate = None if self.gate is None else torch.sigmoid(self.gate(hidden))
        context = attended if gate is None else gate * attended
        if choice is None:
            return context, alpha, None, None
        return context, alpha, choice, (soft if gate is None else gate * soft).detach()

    def forward_hard(
        self,
        features: Tensor,
        tokens: Tensor,
        mask: Tensor | None = None,
        expected_prob: float = 0.5,
        with_expected_logits: bool = False,
    ) -> HardForward:
        """Teacher forcing for training a "hard" decoder (Xu et al. 2015, section 4.1): every
        step samples a location s_t ~ Multinoulli(α_t) and attends to a_{s_t}, except in the
        rows (images) that, with probability `expected_prob` each, use the expected context
        Σ_i α_ti a_i throughout. features (B, P, D), tokens (B, T), mask (B, P) -> `HardForward`.
        with_expected_logits (attending from the current state): also the logits with the
        expected context at every step, for the expected-context baseline.
        """
        if self.config.attention != "hard":
            raise CaptionerError('forward_hard samples attention locations: it needs a decoder with attention="hard"')
        expected = torch.rand(features.size(0), device=features.device) < expected_prob
        if self.attends_after_reading:
            logits, alphas, choice, expected_logits = self._forward_current(
                features, tokens, mask, expected, with_expected_logits
            )
            return HardForward(logits, alphas, choice.log_prob, choice.entropy, ~expected, True, expected_logits)
        logits, alphas, choices = self._autograd_loop(features, tokens, mask, expected)
        log_probs = torch.stack([choice.log_prob for choice in choices], 1)
        entropies = torch.stack([choice.entropy for choice in choices], 1)
        return HardForward(logits, alphas, log_probs, entropies, ~expected, False)

    def _autograd_loop(
        self, features: Tensor, tokens: Tensor, mask: Tensor | None, expected: Tensor | None
    ) -> tuple[Tensor, Tensor, list[HardChoice]]:
        """The teacher-forced loop with autograd; with `expected` (B,) bool, sampling hard
        attention in its False rows -> logits (B, T, V), alphas (B, T, P), each step's choice."""
        projected = self.prepare(features)
        state = self.init_state(features, mask)
        embedded = self.embedding(tokens)  # (B, T, E)
        embed_weight, weights = self.step_weights()
        input_gates = F.linear(embedded, embed_weight)  # (B, T, 4H)
        hiddens, contexts, alphas, choices = [], [], [], []
        for t in range(tokens.size(1)):
            step = self._advance(input_gates[:, t], state, features, projected, weights, mask, expected)
            state = (step.h, step.c)
            hiddens.append(step.h)
            contexts.append(step.context)
            alphas.append(step.alpha)
            if step.hard is not None:
                choices.append(step.hard)
        logits = self._deep_output(embedded, torch.stack(hiddens, 1), torch.stack(contexts, 1))
        return logits, torch.stack(alphas, 1), choices

    def step(
        self,
        prev_tokens: Tensor,
        state: State,
        features: Tensor,
        projected: Tensor,
        mask: Tensor | None = None,
        weights: tuple[Tensor, StepWeights] | None = None,
    ) -> tuple[Tensor, State, Tensor]:
        """One decoding step for K hypotheses (beams) per image.

        prev_tokens (B, [K]), state (h, c) each (B, [K,] H), features (B, P, D), projected (B, P, A),
        mask (B, P) bool (or (B, K, P): one per hypothesis) or None -> log_probs (B, [K,] V), new state (h, c) each
        (B, [K,] H),
        alpha (B, [K,] P). The K beams of an image share its features and projection (broadcast,
        not copied); without the beam axis the attention and every layer work on (B, ·) alike.
        weights: `step_weights()`, which decoding loops compute once rather than every step (each
        call copies W_hh and W_h into one matrix: ~5% of a beam-3 step at COCO sizes).
        """
        embedded = self.embedding(prev_tokens)  # (B, [K,] E)
        if self.attends_after_reading:
            h, c = self._read_word(embedded, state)
            context, alpha, _, _ = self._attend_current(features, projected, h, mask)
            return self._deep_output(embedded, h, context).log_softmax(dim=-1), (h, c), alpha
        embed_weight, weights = self.step_weights() if weights is None else weights
        out = self._advance(F.linear(embedded, embed_weight), state, features, projected, weights, mask)
        log_probs = self._deep_output(embedded, out.h, out.context).log_softmax(dim=-1)
        return log_probs, (out.h, out.c), out.alpha

    def _read_word(self, embedded: Tensor, state: State) -> State:
        """One LSTM step on the word alone (attending from the current state): embedded
        (B, [K,] E), state (h, c) each (B, [K,] H) -> new (h, c), same shapes."""
        h, c = state
        rows = h.shape[:-1]
        h, c = self.lstm(embedded.reshape(-1, self.embed_dim), (h.reshape(-1, h.size(-1)), c.reshape(-1, c.size(-1))))
        return h.view(*rows, -1), c.view(*rows, -1)

    def _pick_context(
        self, features: Tensor, alpha: Tensor, attended: Tensor, expected: Tensor | None
    ) -> tuple[Tensor, HardChoice | None]:
        """The context before the gate, from the soft one attended = Σ_i α_i a_i (B, [K,] D):
        with `expected` (B,) bool (training hard attention), a sampled location's features in
        its False rows, and the choice made; for an "argmax" decoder, a_{argmax α}; else as is."""
        if expected is not None:
            choice = sample_context(features, alpha, attended, expected)
            return choice.attended, choice
        if self._argmax_context():
            return argmax_context(features, alpha), None
        return attended, None

    def _argmax_context(self) -> bool:
        """True when this decoder attends to the single most attended location (not sampling)."""
        return self.config.attention == "hard" and self.config.hard_decoding == "argmax"

    def step_weights(self) -> tuple[Tensor, StepWeights] | None:
        """Rearranged once per forward or decoding loop (not per time step, which would copy them
        every step and, in training, make the backward materialise a full-size gradient per step):
        W_ih's embedding half (4H, E), and for `_advance` W_ih's context half (4H, D) plus
        [W_hh; W_h; f_β] stacked (4H + A + G, H) with its bias, for one matmul on h_{t-1}.
        The LSTM's two biases ride on W_hh; the attention's bias b lives in W_a a + b.
        None when attending from the current state: that step reads the word with nn.LSTMCell.
        """
        if self.attends_after_reading:
            return None
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
        mask: Tensor | None = None,
        expected: Tensor | None = None,
    ) -> _Step:
        """The recurrent core. input_gates (B, [K,] 4H) = W_ih[:, :E] E y_{t-1}, state (h, c)
        (B, [K,] H), mask (B, P) bool or None -> h, c (B, [K,] H), gated context z (B, [K,] D),
        alpha (B, [K,] P), and the intermediates that `_TimeLoop.backward` needs.
        With `expected` (B,) bool (hard attention in training, no beam axis), the context is a
        sampled location's features in the rows where it is False."""
        h, c = state
        context_weight, hidden_weight, hidden_bias = weights
        on_hidden = F.linear(h, hidden_weight, hidden_bias)
        hidden_gates, hidden_att, hidden_gate = on_hidden.split(
            [4 * self.hidden_dim, self.attention_dim, on_hidden.size(-1) - 4 * self.hidden_dim - self.attention_dim],
            dim=-1,
        )
        attended, alpha = self.attention.attend(features, projected, hidden_att, mask)
        attended, hard = self._pick_context(features, alpha, attended, expected)
        context = torch.sigmoid(hidden_gate) * attended if self.gate is not None else attended
        gates = F.linear(context, context_weight) + hidden_gates + input_gates
        i, f, g, o = gates.chunk(4, dim=-1)  # LSTMCell's gate order
        activations = torch.cat([torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)], dim=-1)
        i, f, g, o = activations.chunk(4, dim=-1)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return _Step(h, c, context, alpha, on_hidden, attended, activations, hard)

    def _deep_output(self, embedded: Tensor, hidden: Tensor, context: Tensor) -> Tensor:
        """L_o(dropout(E y_{t-1} + L_h h_t + L_z z_t)) for any leading shape (..., E/H/D) -> (..., V)."""
        return self.out_vocab(self.dropout(embedded + self.out_hidden(hidden) + self.out_context(context)))

    def _deep_output_pair(
        self, embedded: Tensor, hidden: Tensor, context: Tensor, other: Tensor
    ) -> tuple[Tensor, Tensor]:
        """`_deep_output` of `context` and, without gradient, of an `other` context, under one
        dropout mask, so the two differ by the context alone -> logits (..., V) twice."""
        shared = embedded + self.out_hidden(hidden)
        keep = self.dropout(torch.ones_like(shared))
        logits = self.out_vocab((shared + self.out_context(context)) * keep)
        with torch.no_grad():
            other_logits = self.out_vocab((shared + self.out_context(other)) * keep)
        return logits, other_logits


class _TimeLoop(torch.autograd.Function):
    """The teacher-forced time loop of `Decoder.forward`, with a hand-written backward.

    forward(decoder, input_gates (T, B, 4H), h_0, c_0 (B, H), features (B, P, D),
    projected (B, P, A), mask (B, P) bool or None, *StepWeights, score weight (1, A))
    -> hiddens (T, B, H), gated contexts (T, B, D), alphas (T, B, P).

    Why not autograd: per step it would compute a full-size gradient of every weight from a
    matmul of only B rows (16 MB for W_ih's context half) and add it up, and allocate several
    (B, P, A) attention intermediates. Here the backward through time computes only the
    gradients that flow between steps; each weight's gradient is then one matmul over all T·B
    rows, the attention's (B, P, A) work runs in cache-sized chunks (`energies_backward`), and
    the gradient of W_a a + b is summed over the steps in one buffer. Masked positions have
    α = 0, so every gradient through them is 0 without looking at the mask again.
    """

    @staticmethod
    def forward(ctx, decoder, input_gates, h, c, features, projected, mask, context_weight, hidden_weight, bias, score):
        weights = (context_weight, hidden_weight, bias)
        h0, c0 = h, c
        steps = []
        for gates_t in input_gates:
            step = decoder._advance(gates_t, (h, c), features, projected, weights, mask)
            h, c = step.h, step.c
            steps.append(step)
        stacked = [torch.stack(x) for x in zip(*(step[:-1] for step in steps))]  # each (T, B, ...); no `hard`
        hiddens, _cells, contexts, alphas, _on_hidden, _attended, _activations = stacked
        ctx.decoder = decoder
        ctx.save_for_backward(h0, c0, features, projected, *weights, score, *stacked)
        return hiddens, contexts, alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hiddens, grad_contexts, grad_alphas):
        (h0, c0, features, projected, context_weight, hidden_weight, _, score, hiddens, cells, contexts, alphas,
         on_hidden, attended, activations) = ctx.saved_tensors  # fmt: skip
        decoder = ctx.decoder
        gates_dim, att_dim = 4 * decoder.hidden_dim, decoder.attention_dim
        steps, batch = on_hidden.shape[:2]
        w = score[0]
        grad_on_hidden = torch.empty_like(on_hidden)  # (T, B, 4H + A + G); its first 4H are the LSTM gates'
        grad_attended = torch.empty_like(attended)
        grad_projected = torch.zeros_like(projected)
        grad_score = torch.zeros_like(w)
        dh, dc = torch.zeros_like(h0), torch.zeros_like(c0)
        for t in reversed(range(steps)):
            # LSTM cell: c_t = f c_{t-1} + i g, h_t = o tanh(c_t).
            i, f, g, o = activations[t].chunk(4, dim=-1)
            c_prev = cells[t - 1] if t else c0
            tanh_c = cells[t].tanh()
            dh = dh + grad_hiddens[t]
            dc = dc + dh * o * (1 - tanh_c * tanh_c)
            d_gates = grad_on_hidden[t, :, :gates_dim]
            torch.cat(
                [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)],
                dim=-1,
                out=d_gates,
            )
            dc = dc * f
            # Gate z = σ(f_β h) · Σ α a, and the LSTM input W_ih[:, E:] z.
            d_context = torch.addmm(grad_contexts[t], d_gates, context_weight)  # (B, D)
            hidden_att = on_hidden[t, :, gates_dim : gates_dim + att_dim]
            if decoder.gate is not None:
                gate = on_hidden[t, :, gates_dim + att_dim :].sigmoid()
                d_gate = (d_context * attended[t]).sum_to_size(gate.shape)
                grad_on_hidden[t, :, gates_dim + att_dim :] = d_gate * gate * (1 - gate)
                d_context = d_context * gate
            grad_attended[t] = d_context
            # α = softmax(e), Σ α a, and e = energies(W_a a + b, W_h h).
            alpha = alphas[t]
            # (B, 1, D) @ (B, D, P): ~4x faster on CPU than the (B, P, D) @ (B, D, 1) batched gemv.
            d_alpha = torch.bmm(d_context.unsqueeze(1), features.transpose(1, 2)).squeeze(1) + grad_alphas[t]
            d_scores = alpha * (d_alpha - (alpha * d_alpha).sum(dim=-1, keepdim=True))
            d_hidden_att, d_w = energies_backward(
                d_scores.unsqueeze(1), projected, hidden_att.unsqueeze(1), w, grad_projected
            )
            grad_on_hidden[t, :, gates_dim : gates_dim + att_dim] = d_hidden_att.squeeze(1)
            grad_score += d_w
            dh = grad_on_hidden[t] @ hidden_weight  # (B, H)

        rows = grad_on_hidden.view(steps * batch, -1)
        previous_hiddens = torch.cat([h0.unsqueeze(0), hiddens[:-1]]).view(steps * batch, -1)
        grad_features = None
        if ctx.needs_input_grad[4]:  # Σ_t α_t ⊗ ∂z_t, per image: (P, T) @ (T, D)
            grad_features = torch.bmm(alphas.permute(1, 2, 0), grad_attended.transpose(0, 1))
        return (
            None,
            grad_on_hidden[..., :gates_dim],  # input_gates
            dh,
            dc,
            grad_features,
            grad_projected,
            None,  # mask
            rows[:, :gates_dim].t() @ contexts.view(steps * batch, -1),  # context_weight
            rows.t() @ previous_hiddens,  # hidden_weight
            rows.sum(dim=0),  # bias
            grad_score.unsqueeze(0),
        )
