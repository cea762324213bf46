"""The fast decoder: the same model as `captioner.models.decoder.Decoder`, fused for speed.

`tests/test_decoder_reference.py` holds the two equal (values and gradients, every gate,
order and attention kind) in float64, and within a stated tolerance under bfloat16 mixed
precision; read `decoder.py` for what is computed and this file for how.

Mixed precision (`--trainer.precision bf16-mixed`, or `16-mixed` on CUDA): when autocast is on,
the decoder turns it off and casts for itself. The matrices it multiplies by (`Matrices`, and
W_a) get a copy in autocast's 16-bit dtype once per forward or decoding loop, and every product
with them runs in it, forward and backward (`_MixedLinear`, `_TimeLoop`). Everything else is
float32: the products' results, the biases, the recurrent state, the attention energies and
softmax, every sum over steps, rows or positions, the logits and every gradient. Σ_i α_i a_i,
bound by reading the features, runs in the features' own dtype, and the LSTM that teacher
forcing from the current state runs in one call is float32 throughout (`_forward_current`).
(Autocast's own op lists, which differ between CPU and CUDA, would round the LSTM's state and
the weights' gradients summed over steps to 16 bits.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from captioner.errors import CaptionerError
from captioner.models.attention import energies_backward
from captioner.models.decoder import Decoder, HardForward, State
from captioner.models.hard_attention import HardChoice


class Weight(NamedTuple):
    """A matrix (Out, In) as a forward or decoding loop multiplies by it: `full` in the parameters'
    dtype, which gradients flow to, and under mixed precision `low`, its copy in 16 bits (no
    gradient), which the products use."""

    full: Tensor
    low: Tensor | None = None

    @property
    def product(self) -> Tensor:
        """The matrix the products use."""
        return self.full if self.low is None else self.low


StepWeights = tuple[Weight, Weight, Tensor]  # see FusedDecoder.step_weights


class Matrices(NamedTuple):
    """What a forward or decoding loop multiplies by (`FusedDecoder.step_weights`): rearranged
    once, not every step, and under mixed precision cast once to the low dtype."""

    embed: Weight | None  # W_ih's embedding half (4H, E); None when attending from the current state
    step: StepWeights | None  # for `_advance`: W_ih's context half (4H, D), [W_hh; W_h; f_β], its bias; or None
    out_hidden: Weight  # L_h (E, H)
    out_context: Weight  # L_z (E, D)
    out_vocab: Weight  # L_o (V, E)


class _Step(NamedTuple):
    """One step of `FusedDecoder._advance`; shapes (B, [K,] ...)."""

    h: Tensor  # (H)
    c: Tensor  # (H)
    context: Tensor  # z after the gate (D)
    alpha: Tensor  # (P)
    on_hidden: Tensor  # [W_hh h; W_h h; f_β h] + biases, of the previous h (4H + A + G)
    attended: Tensor  # Σ_i α_i a_i before the gate (D)
    activations: Tensor  # σ(i), σ(f), tanh(g), σ(o) of the LSTM (4H)
    hard: HardChoice | None = None  # the sampled location's log α and H(α), when sampling


@contextmanager
def _own_precision(features: Tensor) -> Iterator[torch.dtype | None]:
    """Autocast's low dtype if autocast is on for the features' device (else None), with autocast
    off inside: the decoder casts its products itself (see the module docstring)."""
    device = features.device.type
    low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    with torch.autocast(device, enabled=False):
        yield low


def _weight(matrix: Tensor, low: torch.dtype | None) -> Weight:
    return Weight(matrix, None if low is None else matrix.detach().to(low))


def _linear(x: Tensor, weight: Weight, bias: Tensor | None = None) -> Tensor:
    """x (..., In) @ Wᵀ + bias -> (..., Out) in W's full dtype (float32), the product in 16 bits
    under mixed precision (`_MixedLinear`)."""
    if weight.low is None:
        return F.linear(x, weight.full, bias)
    return _MixedLinear.apply(x, weight.full, weight.low, bias)


class _MixedLinear(torch.autograd.Function):
    """x @ Wᵀ + b with the product, forward and backward, in the 16-bit copy `low` of W, and
    everything autograd sees in float32: the result, and the gradients of x, W and b, so that
    autograd sums the gradient of a W used at every step in float32, not in 16 bits (as it would
    through a plain cast). forward(x (..., In), full (Out, In), low (Out, In), bias (Out) or None).
    The products run on (N, In) rows: a 3-d matmul on strided x would copy W per batch entry."""

    @staticmethod
    def forward(ctx, x, full, low, bias):
        rows = x.to(low.dtype, memory_format=torch.contiguous_format).view(-1, x.size(-1))  # (N, In)
        ctx.save_for_backward(rows, low)
        ctx.x_shape, ctx.dtypes = x.shape, (x.dtype, full.dtype)
        out = torch.mm(rows, low.t()).to(full.dtype)  # then add: a mixed-dtype add is several times slower
        if bias is not None:
            out.add_(bias)
        return out.view(*x.shape[:-1], low.size(0))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rows, low = ctx.saved_tensors
        x_dtype, full_dtype = ctx.dtypes
        low_grad = grad.to(low.dtype, memory_format=torch.contiguous_format).view(-1, grad.size(-1))  # (N, Out)
        grad_x = torch.mm(low_grad, low).to(x_dtype).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        grad_full = torch.mm(low_grad.t(), rows).to(full_dtype) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(dim=tuple(range(grad.dim() - 1))) if ctx.needs_input_grad[3] else None
        return grad_x, grad_full, None, grad_bias


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b, the product in b's dtype, the result in a's."""
    return torch.mm(a.to(b.dtype), b).to(a.dtype)


def _addmm(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """c + a @ b, the product in b's dtype, the result in c's."""
    if b.dtype == c.dtype:
        return torch.addmm(c, a, b)
    return torch.mm(a.to(b.dtype), b).to(c.dtype).add_(c)


class FusedDecoder(Decoder):
    """`Decoder`'s numbers, computed fast; same parameters, so either loads the other's state dict.

    Only the recurrent part runs inside the time loop. Everything that does not depend on
    h_{t-1} (W_a a, the embedding half of the LSTM's input matmul, L_h, L_z, L_o) runs once over
    the whole batch, and the three matmuls on h_{t-1} (LSTM W_hh, attention W_h, gate f_β) are
    one fused matmul per step (`step_weights`, `_advance`). Energies use the chunked kernels of
    `captioner.models.attention`. In training the paper's order runs the time loop with a
    hand-written backward (`_TimeLoop`), in full and in mixed precision; attending from the
    current state has no image in its recurrence, so teacher forcing runs the LSTM over all
    steps in one call and attends for all steps at once. Argmax contexts take `forward_autograd`.
    """

    def forward(self, features: Tensor, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing: features (B, P, D), input tokens (B, T) (<start> w_1 ... w_{T-1}),
        mask (B, P) bool (True = may attend) or None -> logits (B, T, V) for the next tokens,
        alphas (B, T, P), with α = 0 exactly where the mask is False.

        The hand-written backward (`_TimeLoop`) runs in any precision; a "hard" decoder's argmax
        context runs `forward_autograd`, which gives the same numbers. A "hard" decoder does not
        sample here: it uses its `hard_decoding` context (training one samples with
        `forward_hard`). Attending from the current state has no time loop of its own to
        hand-write (`_forward_current`).
        """
        with _own_precision(features) as low:
            if self.config.attend_from == "current":
                return self._forward_current(features, tokens, mask, low)[:2]
            if self.argmax_context:
                return self._autograd_loop(features, tokens, mask, None, low)[:2]
            weights = self._matrices(low)
            h, c = self.init_state(features, mask)
            projected = self._prepare(features, low)
            embedded = self.embedding(tokens)  # (B, T, E)
            # One matmul for all steps, time-major so that each step reads a contiguous slice.
            input_gates = _linear(embedded.transpose(0, 1), weights.embed)  # (T, B, 4H)
            (context, hidden, bias), score = weights.step, self.attention.score.weight
            loop_weights = (context.full, hidden.full, bias, score, context.low, hidden.low)
            hiddens, contexts, alphas = _TimeLoop.apply(
                self, input_gates, h, c, features, projected, mask, *loop_weights
            )
            logits = self.deep_output(embedded, hiddens.transpose(0, 1), contexts.transpose(0, 1), weights)
            return logits, alphas.transpose(0, 1)

    def forward_autograd(self, features: Tensor, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`forward` as a plain loop over `_advance` that autograd differentiates: the path for
        argmax contexts, and a check on the hand-written backward. Same shapes."""
        with _own_precision(features) as low:
            if self.config.attend_from == "current":
                return self._forward_current(features, tokens, mask, low)[:2]
            return self._autograd_loop(features, tokens, mask, None, low)[:2]

    def _forward_current(
        self,
        features: Tensor,
        tokens: Tensor,
        mask: Tensor | None,
        low: torch.dtype | None,
        expected: Tensor | None = None,
        with_expected_logits: bool = False,
    ) -> tuple[Tensor, Tensor, HardChoice | None, Tensor | None]:
        """Teacher forcing when attending from the current state: the LSTM over all T words in
        one call (its input matmul runs once over all steps, in full precision: one call cannot
        keep its state in float32 and its products in 16 bits), then attention for all steps at
        once, the T steps riding on the attention's beam axis -> logits (B, T, V), alphas
        (B, T, P) and, with `expected` (B,) bool (training hard attention), the sampled choices
        and, if asked, the logits (B, T, V) with the expected context at every step (no gradient)."""
        weights = self._matrices(low)
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
        projected = self._prepare(features, low)
        context, alphas, choice, expected_context = self._attend_current(features, projected, hiddens, mask, expected)
        if not with_expected_logits:
            return self.deep_output(embedded, hiddens, context, weights), alphas, choice, None
        logits, expected_logits = self.deep_output_pair(embedded, hiddens, context, expected_context, weights)
        return logits, alphas, choice, expected_logits

    def _attend_current(
        self, features: Tensor, projected: Tensor, hidden: Tensor, mask: Tensor | None, expected: Tensor | None = None
    ) -> tuple[Tensor, Tensor, HardChoice | None, Tensor | None]:
        """Attention from the current state: hidden (B, [K,] H) -> gated context z (B, [K,] D),
        alpha (B, [K,] P), and with `expected` the sampled locations and the gated expected
        context σ(f_β h) Σ_i α_i a_i (B, [K,] D, no gradient), which a baseline compares them
        with; K may be beams or, in teacher forcing, time steps."""
        soft, alpha = self.attention(features, projected, hidden, mask)
        attended, choice = self.pick_context(features, alpha, soft, expected)
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
        with _own_precision(features) as low:
            if self.config.attend_from == "current":
                logits, alphas, choice, expected_logits = self._forward_current(
                    features, tokens, mask, low, expected, with_expected_logits
                )
                return HardForward(logits, alphas, choice.log_prob, choice.entropy, ~expected, True, expected_logits)
            logits, alphas, choices = self._autograd_loop(features, tokens, mask, expected, low)
        log_probs = torch.stack([choice.log_prob for choice in choices], 1)
        entropies = torch.stack([choice.entropy for choice in choices], 1)
        return HardForward(logits, alphas, log_probs, entropies, ~expected, False)

    def _autograd_loop(
        self, features: Tensor, tokens: Tensor, mask: Tensor | None, expected: Tensor | None, low: torch.dtype | None
    ) -> tuple[Tensor, Tensor, list[HardChoice]]:
        """The teacher-forced loop with autograd; with `expected` (B,) bool, sampling hard
        attention in its False rows -> logits (B, T, V), alphas (B, T, P), each step's choice."""
        weights = self._matrices(low)
        state = self.init_state(features, mask)
        projected = self._prepare(features, low)
        embedded = self.embedding(tokens)  # (B, T, E)
        input_gates = _linear(embedded, weights.embed)  # (B, T, 4H)
        hiddens, contexts, alphas, choices = [], [], [], []
        for t in range(tokens.size(1)):
            step = self._advance(input_gates[:, t], state, features, projected, weights.step, mask, expected)
            state = (step.h, step.c)
            hiddens.append(step.h)
            contexts.append(step.context)
            alphas.append(step.alpha)
            if step.hard is not None:
                choices.append(step.hard)
        logits = self.deep_output(embedded, torch.stack(hiddens, 1), torch.stack(contexts, 1), weights)
        return logits, torch.stack(alphas, 1), choices

    def prepare(self, features: Tensor) -> Tensor:
        """features (B, P, D) -> W_a a + b (B, P, A), float32 (the product in the low dtype under
        mixed precision)."""
        with _own_precision(features) as low:
            return self._prepare(features, low)

    def _prepare(self, features: Tensor, low: torch.dtype | None) -> Tensor:
        projection = self.attention.feature_proj
        return _linear(features, _weight(projection.weight, low), projection.bias)

    def init_state(self, features: Tensor, mask: Tensor | None = None) -> State:
        """`Decoder.init_state` in the parameters' dtype, whatever the features' (16 bits from an
        encoder under autocast): the state is float32 in every precision."""
        with _own_precision(features):
            return super().init_state(features.to(self.embedding.weight.dtype), mask)

    def deep_output(self, embedded: Tensor, h: Tensor, context: Tensor, weights: Matrices | None = None) -> Tensor:
        """`Decoder.deep_output` with `weights` (`step_weights`), the products in their dtype."""
        if weights is None:
            return super().deep_output(embedded, h, context)
        hidden = _linear(h, weights.out_hidden, self.out_hidden.bias)
        mixed = embedded + hidden + _linear(context, weights.out_context)
        return _linear(self.dropout(mixed), weights.out_vocab, self.out_vocab.bias)

    def deep_output_pair(
        self, embedded: Tensor, h: Tensor, context: Tensor, other: Tensor, weights: Matrices | None = None
    ) -> tuple[Tensor, Tensor]:
        """`Decoder.deep_output_pair` with `weights` (`step_weights`), the products in their dtype."""
        if weights is None:
            return super().deep_output_pair(embedded, h, context, other)
        shared = embedded + _linear(h, weights.out_hidden, self.out_hidden.bias)
        keep = self.dropout(torch.ones_like(shared))
        logits = _linear(
            (shared + _linear(context, weights.out_context)) * keep, weights.out_vocab, self.out_vocab.bias
        )
        with torch.no_grad():
            mixed = (shared + _linear(other, weights.out_context)) * keep
            other_logits = _linear(mixed, weights.out_vocab, self.out_vocab.bias)
        return logits, other_logits

    def step(
        self,
        prev_tokens: Tensor,
        state: State,
        features: Tensor,
        projected: Tensor,
        mask: Tensor | None = None,
        weights: Matrices | None = None,
    ) -> tuple[Tensor, State, Tensor]:
        """One decoding step for K hypotheses (beams) per image.

        prev_tokens (B, [K]), state (h, c) each (B, [K,] H), features (B, P, D), projected (B, P, A),
        mask (B, P) bool or None -> log_probs (B, [K,] V), new state (h, c) each (B, [K,] H),
        alpha (B, [K,] P). The K beams of an image share its features and projection (broadcast,
        not copied); without the beam axis the attention and every layer work on (B, ·) alike.
        weights: `step_weights()`, which decoding loops compute once rather than every step (each
        call copies W_hh and W_h into one matrix); their dtype is the products'. The product
        Σ_i α_i a_i runs in the features' dtype.
        """
        with _own_precision(features) as low:
            weights = self._matrices(low) if weights is None else weights
            embedded = self.embedding(prev_tokens)  # (B, [K,] E)
            if self.config.attend_from == "current":
                h, c = self.lstm_step(embedded, state)
                context, alpha, _, _ = self._attend_current(features, projected, h, mask)
                return self.deep_output(embedded, h, context, weights).log_softmax(dim=-1), (h, c), alpha
            out = self._advance(_linear(embedded, weights.embed), state, features, projected, weights.step, mask)
            log_probs = self.deep_output(embedded, out.h, out.context, weights).log_softmax(dim=-1)
            return log_probs, (out.h, out.c), out.alpha

    def compile_step(self) -> None:
        """`torch.compile` the per-step core that every path of this decoder runs."""
        self._advance = torch.compile(self._advance)

    def step_weights(self) -> Matrices:
        """The matrices for one forward or decoding loop (`Matrices`), in autocast's low dtype
        when autocast is on for the parameters' device (the decoding loop then runs in mixed
        precision), else as they are."""
        device = self.out_vocab.weight.device.type
        return self._matrices(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)

    def _matrices(self, low: torch.dtype | None) -> Matrices:
        """Rearranged once per forward or decoding loop (not per time step, which would copy them
        every step and, in training, make the backward materialise a full-size gradient per step):
        W_ih's embedding half (4H, E), and for `_advance` W_ih's context half (4H, D) plus
        [W_hh; W_h; f_β] stacked (4H + A + G, H) with its bias, for one matmul on h_{t-1}.
        The LSTM's two biases ride on W_hh; the attention's bias b lives in W_a a + b.
        No step weights when attending from the current state: that step reads the word with nn.LSTMCell.
        """
        outputs = (_weight(layer.weight, low) for layer in (self.out_hidden, self.out_context, self.out_vocab))
        if self.config.attend_from == "current":
            return Matrices(None, None, *outputs)
        embed_weight, context_weight = self.lstm.weight_ih.split([self.embed_dim, self.feature_dim], dim=1)
        weights = [self.lstm.weight_hh, self.attention.hidden_proj.weight]
        biases = [self.lstm.bias_ih + self.lstm.bias_hh, self.lstm.bias_hh.new_zeros(self.attention_dim)]
        if self.gate is not None:
            weights.append(self.gate.weight)
            biases.append(self.gate.bias)
        step = (_weight(context_weight, low), _weight(torch.cat(weights), low), torch.cat(biases))
        return Matrices(_weight(embed_weight, low), step, *outputs)

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
        sampled location's features in the rows where it is False. The products run in the
        weights' and the features' dtypes, everything else in the state's."""
        h, c = state
        context_weight, hidden_weight, hidden_bias = weights
        on_hidden = _linear(h, hidden_weight, hidden_bias)
        hidden_gates, hidden_att, hidden_gate = on_hidden.split(
            [4 * self.hidden_dim, self.attention_dim, on_hidden.size(-1) - 4 * self.hidden_dim - self.attention_dim],
            dim=-1,
        )
        attended, alpha = self.attention.attend(features, projected, hidden_att, mask)
        attended, hard = self.pick_context(features, alpha, attended, expected)
        context = torch.sigmoid(hidden_gate) * attended if self.gate is not None else attended
        gates = _linear(context, context_weight) + hidden_gates + input_gates
        i, f, g, o = gates.chunk(4, dim=-1)  # LSTMCell's gate order
        activations = torch.cat([torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)], dim=-1)
        i, f, g, o = activations.chunk(4, dim=-1)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return _Step(h, c, context, alpha, on_hidden, attended, activations, hard)


class _TimeLoop(torch.autograd.Function):
    """The teacher-forced time loop of `Decoder.forward`, with a hand-written backward.

    forward(decoder, input_gates (T, B, 4H), h_0, c_0 (B, H), features (B, P, D),
    projected (B, P, A), mask (B, P) bool or None, W_ih[:, E:] (4H, D), [W_hh; W_h; f_β]
    (4H + A + G, H), its bias, score weight (1, A), and under mixed precision the 16-bit copies
    of the two matrices, else None) -> hiddens (T, B, H), gated contexts (T, B, D), alphas (T, B, P).

    Why not autograd: per step it would compute a full-size gradient of every weight from a
    matmul of only B rows and add it up, and allocate several
    (B, P, A) attention intermediates. Here the backward through time computes only the
    gradients that flow between steps; each weight's gradient is then one matmul over all T·B
    rows, the attention's (B, P, A) work runs in cache-sized chunks (`energies_backward`), and
    the gradient of W_a a + b is summed over the steps in one buffer. Masked positions have
    α = 0, so every gradient through them is 0 without looking at the mask again.

    Mixed precision: the backward multiplies by the 16-bit copies of the two matrices, as the
    forward does, and by the features in their own dtype; every gradient that flows between
    steps, and the sums over steps (of W_a a + b's and w's gradients), stay in the state's dtype
    (float32). A weight's gradient is one 16-bit product over all T·B rows, which sums them in
    float32 inside, returned in float32.
    """

    @staticmethod
    def forward(ctx, decoder, input_gates, h, c, features, projected, mask, context_weight, hidden_weight, bias, *rest):
        score, context_low, hidden_low = rest
        weights = (Weight(context_weight, context_low), Weight(hidden_weight, hidden_low), bias)
        h0, c0 = h, c
        steps = []
        for gates_t in input_gates:
            step = decoder._advance(gates_t, (h, c), features, projected, weights, mask)
            h, c = step.h, step.c
            steps.append(step)
        stacked = [torch.stack(x) for x in zip(*(step[:-1] for step in steps))]  # each (T, B, ...); no `hard`
        hiddens, _cells, contexts, alphas, _on_hidden, _attended, _activations = stacked
        ctx.decoder = decoder
        ctx.save_for_backward(h0, c0, features, projected, weights[0].product, weights[1].product, score, *stacked)
        ctx.dtype = context_weight.dtype
        return hiddens, contexts, alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hiddens, grad_contexts, grad_alphas):
        (h0, c0, features, projected, context_weight, hidden_weight, score, hiddens, cells, contexts, alphas,
         on_hidden, attended, activations) = ctx.saved_tensors  # fmt: skip
        decoder = ctx.decoder
        gates_dim, att_dim = 4 * decoder.hidden_dim, decoder.attention_dim
        steps, batch = on_hidden.shape[:2]
        low = hidden_weight.dtype  # the products' dtype (the weights' own in full precision)
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
            d_context = _addmm(grad_contexts[t], d_gates, context_weight)  # (B, D)
            hidden_att = on_hidden[t, :, gates_dim : gates_dim + att_dim]
            if decoder.gate is not None:
                gate = on_hidden[t, :, gates_dim + att_dim :].sigmoid()
                d_gate = (d_context * attended[t]).sum_to_size(gate.shape)
                grad_on_hidden[t, :, gates_dim + att_dim :] = d_gate * gate * (1 - gate)
                d_context = d_context * gate
            grad_attended[t] = d_context
            # α = softmax(e), Σ α a, and e = energies(W_a a + b, W_h h).
            alpha = alphas[t]
            # (B, 1, D) @ (B, D, P): faster on CPU than the (B, P, D) @ (B, D, 1) batched gemv.
            d_alpha = torch.bmm(d_context.unsqueeze(1).to(features.dtype), features.transpose(1, 2)).squeeze(1)
            d_alpha = grad_alphas[t] + d_alpha
            d_scores = alpha * (d_alpha - (alpha * d_alpha).sum(dim=-1, keepdim=True))
            d_hidden_att, d_w = energies_backward(
                d_scores.unsqueeze(1), projected, hidden_att.unsqueeze(1), w, grad_projected
            )
            grad_on_hidden[t, :, gates_dim : gates_dim + att_dim] = d_hidden_att.squeeze(1)
            grad_score += d_w
            dh = _mm(grad_on_hidden[t], hidden_weight)  # (B, H)

        rows = grad_on_hidden.view(steps * batch, -1)
        previous_hiddens = torch.cat([h0.unsqueeze(0), hiddens[:-1]]).view(steps * batch, -1)
        grad_features = None
        if ctx.needs_input_grad[4]:  # Σ_t α_t ⊗ ∂z_t, per image: (P, T) @ (T, D)
            grad_features = torch.bmm(
                alphas.permute(1, 2, 0).to(features.dtype), grad_attended.transpose(0, 1).to(features.dtype)
            )
        low_rows = rows.to(low)
        return (
            None,
            grad_on_hidden[..., :gates_dim],  # input_gates
            dh,
            dc,
            grad_features,
            grad_projected,
            None,  # mask
            (low_rows[:, :gates_dim].t() @ contexts.view(steps * batch, -1).to(low)).to(ctx.dtype),  # context_weight
            (low_rows.t() @ previous_hiddens.to(low)).to(ctx.dtype),  # hidden_weight
            rows.sum(dim=0),  # bias
            grad_score.unsqueeze(0),
            None,  # the 16-bit copies
            None,
        )
