"""Free-running decoding over a `Decoder`: greedy and batched beam search.

Both return one `Caption` per image with token ids, a score and the attention α behind
every returned word (for overlays and grounding metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from captioner.errors import CaptionerError, require_positive
from captioner.models.config import PlainConfig
from captioner.models.decoder import Decoder
from captioner.vocab import Vocabulary

NEG_INF = float("-inf")
# The most any caller may ask for (the CLI, the Python API, training configs; the service may
# set lower bounds): beam search holds beam_size hypotheses per image for max_len steps, so time
# and memory grow with both, and wider beams or longer captions than these do not caption better.
DECODING_LIMITS = {"beam_size": 10, "max_len": 60}


@dataclass(frozen=True)
class DecodingConfig(PlainConfig):
    """How captions are decoded: one object, stored in the checkpoint, that validation, test,
    predict, the Python API, the service and every command pass down to the decoder (a
    command-line flag or an API keyword changes it at the edge, `replace`).

    beam_size: 1 decodes greedily; the paper decodes with a beam.
    max_len: longest caption, in words; one that has not ended by then stops there.
    length_normalize: rank beam hypotheses by log-probability per token, so short captions are
        not favoured just for being short.
    allow_unk: let the decoder emit <unk>; off, a caption never contains the unknown word.
    """

    beam_size: int = 3
    max_len: int = 30
    length_normalize: bool = True
    allow_unk: bool = False

    def __post_init__(self) -> None:
        """The one check of decoding settings, wherever they come from."""
        require_positive(beam_size=self.beam_size, max_len=self.max_len)
        for name, high in DECODING_LIMITS.items():
            if getattr(self, name) > high:
                raise CaptionerError(
                    f"{name} must be at most {high}, got {getattr(self, name)}; wider beams and longer captions "
                    "cost time and memory without captioning better (captioner.models.search.DECODING_LIMITS)"
                )


@dataclass
class Caption:
    """tokens: word ids without <start>, stopping before <end>; score: log-probability of the
    sequence including its <end> (divided by its length when length-normalised); alphas (L, P):
    one attention row per returned token, L = len(tokens)."""

    tokens: list[int]
    score: float
    alphas: Tensor


@torch.inference_mode()
def greedy_decode(
    decoder: Decoder,
    features: Tensor,
    *,
    start_id: int,
    end_id: int,
    max_len: int,
    banned_ids: Sequence[int] = (),
    mask: Tensor | None = None,
) -> list[Caption]:
    """Pick the most probable word at every step. features (B, P, D), mask (B, P) bool or None
    -> B captions; score is the raw log-probability. A caption that has not emitted <end>
    after max_len words stops."""
    require_positive(max_len=max_len)
    batch = features.size(0)
    projected, weights = decoder.prepare(features), decoder.step_weights()
    h, c = decoder.init_state(features, mask)
    state = (h.unsqueeze(1), c.unsqueeze(1))  # a beam axis of 1, as beam_search with beam_size=1
    prev = torch.full((batch, 1), start_id, dtype=torch.long, device=features.device)
    banned = _banned_mask(decoder.vocab_size, banned_ids, features.device)
    scores = features.new_zeros(batch, 1)
    finished = torch.zeros(batch, dtype=torch.bool, device=features.device)
    lengths = torch.full((batch,), max_len, dtype=torch.long)
    tokens, alphas = [], []
    for t in range(max_len):
        log_probs, state, alpha = decoder.step(prev, state, features, projected, mask, weights)
        best, prev = log_probs.masked_fill(banned, NEG_INF).max(dim=-1)  # (B, 1)
        scores = torch.where(finished.unsqueeze(1), scores, scores + best)
        ended = (prev.squeeze(1) == end_id) & ~finished
        lengths[ended.cpu()] = t
        finished |= ended
        tokens.append(prev.squeeze(1))
        alphas.append(alpha.squeeze(1))
        if finished.all():
            break
    tokens_bt, alphas_btp = torch.stack(tokens, 1).cpu(), torch.stack(alphas, 1).cpu()
    return [
        Caption(tokens_bt[b, :n].tolist(), scores[b, 0].item(), alphas_btp[b, :n].clone())
        for b, n in enumerate(lengths.tolist())
    ]


@torch.inference_mode()
def beam_search(
    decoder: Decoder,
    features: Tensor,
    *,
    start_id: int,
    end_id: int,
    beam_size: int,
    max_len: int,
    length_normalize: bool = True,
    banned_ids: Sequence[int] = (),
    mask: Tensor | None = None,
) -> list[Caption]:
    """Beam search for B images at once. features (B, P, D), mask (B, P) bool or None -> B
    captions (the best hypothesis each).

    All B·K live beams advance as one batch per step; an image's K beams share its features
    and its attention projection (computed once). Each step, an image's candidates that end
    with <end> and rank among its top K become finished hypotheses, which stop growing;
    the K live beams are refilled with the best candidates that do not end. An image is done
    when it has K finished hypotheses (its beams are then masked with -inf); the loop stops
    when every image is done or after max_len steps, when unfinished beams are candidates too.
    Score = log-probability (including <end>), divided by the length in tokens (including
    <end>) when length_normalize.
    """
    require_positive(beam_size=beam_size, max_len=max_len)
    batch, k, vocab, device = features.size(0), beam_size, decoder.vocab_size, features.device
    rows = torch.arange(batch, device=device)
    projected, weights = decoder.prepare(features), decoder.step_weights()
    # Every beam starts from the same <start>: the first step runs one beam per image, and its
    # best K words become the K beams (gathering from beam 0). Unless the vocabulary has fewer
    # than K words: then K copies, all but one dead, so that K candidates exist.
    first = 1 if vocab >= k else k
    h, c = decoder.init_state(features, mask)
    state = (h.unsqueeze(1).repeat(1, first, 1), c.unsqueeze(1).repeat(1, first, 1))  # (B, 1 or K, H)
    prev = torch.full((batch, first), start_id, dtype=torch.long, device=device)
    scores = torch.full((batch, first), NEG_INF, device=device)
    scores[:, 0] = 0.0
    banned = _banned_mask(vocab, banned_ids, device)
    ranks = torch.arange(k, device=device)
    # Finished hypotheses, best K per image: score, and where their prefix sits in `history`
    # (step index of the last kept token, -1 for an empty caption, and the beam slot there).
    pool_scores = torch.full((batch, k), NEG_INF, device=device)
    pool_last = torch.zeros((batch, k), dtype=torch.long, device=device)
    pool_slot = torch.zeros((batch, k), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    history: list[tuple[Tensor, Tensor, Tensor]] = []  # per step: parent, token (B, K), alpha (B, K, P)
    for t in range(max_len):
        log_probs, state, alpha = decoder.step(prev, state, features, projected, mask, weights)
        # In place: (B, K, V) is the largest tensor here after the attention's.
        scores.masked_fill_(done.unsqueeze(1), NEG_INF)
        candidates = log_probs.masked_fill_(banned, NEG_INF).add_(scores.unsqueeze(-1))  # (B, K, V)

        # An image's best 2K candidates hold both its top K and its best K that do not end (at
        # most K candidates end, one per beam): one topk over (B, K·V) per step, not two.
        best = candidates.view(batch, -1).topk(min(2 * k, candidates.size(1) * vocab), dim=1)
        ends = best.indices % vocab == end_id

        # Finished: <end> candidates ranking in an image's top K over all its candidates.
        top_values, top_indices = best.values[:, :k], best.indices[:, :k]
        new_scores = top_values / (t + 1) if length_normalize else top_values
        finished = ends[:, :k] & top_values.isfinite()
        merged = torch.cat([pool_scores, new_scores.masked_fill(~finished, NEG_INF)], 1).topk(k, dim=1)
        pool_scores = merged.values
        pool_last = torch.cat([pool_last, torch.full_like(pool_last, t - 1)], 1).gather(1, merged.indices)
        pool_slot = torch.cat([pool_slot, top_indices // vocab], 1).gather(1, merged.indices)

        # Live: the best K candidates that do not end.
        scores, live = best.values.masked_fill(ends, NEG_INF).topk(k, dim=1)
        top = best.indices.gather(1, live)
        parent, prev = top // vocab, top % vocab
        state = tuple(s.gather(1, parent.unsqueeze(-1).expand(-1, -1, s.size(-1))) for s in state)  # (B, K, H)
        history.append((parent, prev, alpha.gather(1, parent.unsqueeze(-1).expand(-1, -1, alpha.size(-1)))))

        done |= pool_scores[:, -1].isfinite()  # K finished hypotheses
        if done.all():
            break

    # Images still open at max_len: their live beams compete with their finished ones.
    steps = len(history)
    live_scores = scores / steps if length_normalize else scores
    live_scores = live_scores.masked_fill(done.unsqueeze(1), NEG_INF)
    all_scores = torch.cat([pool_scores, live_scores], 1)
    all_last = torch.cat([pool_last, torch.full_like(pool_last, steps - 1)], 1)
    all_slot = torch.cat([pool_slot, ranks.expand(batch, k)], 1)
    best_score, best = all_scores.max(dim=1)
    last, slot = all_last[rows, best], all_slot[rows, best]
    tokens, alphas = _backtrack(history, last, slot)
    return [
        Caption(tokens[b, : n + 1].tolist(), best_score[b].item(), alphas[b, : n + 1].clone())
        for b, n in enumerate(last.tolist())
    ]


def decode_captions(
    decoder: Decoder,
    features: Tensor,
    vocab: Vocabulary,
    settings: DecodingConfig,
    mask: Tensor | None = None,
) -> list[Caption]:
    """The one decoding entry point for validation, the API and the CLI.

    features (B, P, D), mask (B, P) bool or None -> B captions; beam_size 1 decodes greedily.
    <pad> and <start> are never words, and <unk> is emitted only when `allow_unk` asks for it.

    Captions are decoded in float32 even under mixed precision (validation in a bf16-mixed run):
    bfloat16 products change 2% of the demo's captions, greedy or beam 3 (docs/performance.md).
    """
    banned = (vocab.pad_id, vocab.start_id) + (() if settings.allow_unk else (vocab.unk_id,))
    common = dict(start_id=vocab.start_id, end_id=vocab.end_id, max_len=settings.max_len, banned_ids=banned, mask=mask)
    with torch.autocast(features.device.type, enabled=False):
        features = features.to(torch.promote_types(features.dtype, torch.float32))  # from an encoder under autocast
        if settings.beam_size == 1:
            return greedy_decode(decoder, features, **common)
        return beam_search(
            decoder, features, beam_size=settings.beam_size, length_normalize=settings.length_normalize, **common
        )


def _backtrack(history: list[tuple[Tensor, Tensor, Tensor]], last: Tensor, slot: Tensor) -> tuple[Tensor, Tensor]:
    """Follow parent pointers from (step `last`, beam `slot`) per image -> tokens (B, S), alphas (B, S, P)
    on the CPU; entries after `last` are meaningless (callers cut them)."""
    rows = torch.arange(slot.size(0), device=slot.device)
    tokens, alphas = [], []
    for t in reversed(range(len(history))):
        parent, token, alpha = history[t]
        tokens.append(token[rows, slot])
        alphas.append(alpha[rows, slot])
        slot = torch.where(t <= last, parent[rows, slot], slot)
    return torch.stack(tokens[::-1], 1).cpu(), torch.stack(alphas[::-1], 1).cpu()


def _banned_mask(vocab_size: int, banned_ids: Sequence[int], device: torch.device) -> Tensor:
    """(V,) bool, True for ids that must never be emitted."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[list(banned_ids)] = True
    return mask


@dataclass
class Samples:
    """Captions drawn from the decoder, n per image. tokens (B, n, T): words, then <end> (unless
    cut at max_len), then <pad>; log_probs (B, n, T): log-probability of each drawn token under
    the distribution it was drawn from, 0 after <end>, differentiable; mask (B, n, T) bool: the
    drawn tokens, <end> included; lengths (B, n): words, <end> not included."""

    tokens: Tensor
    log_probs: Tensor
    mask: Tensor
    lengths: Tensor


def sample_captions(
    decoder: Decoder,
    features: Tensor,
    *,
    start_id: int,
    end_id: int,
    pad_id: int,
    samples: int = 1,
    max_len: int = 30,
    banned_ids: Sequence[int] = (),
    mask: Tensor | None = None,
) -> Samples:
    """Draw `samples` captions per image, each word from p(y_t | y_<t, a) with the banned ids
    removed (renormalised). features (B, P, D), mask (B, P) bool or None -> `Samples`.

    Runs with autograd (call it outside inference mode) so the log-probabilities can carry a
    policy gradient (REINFORCE); dropout follows the decoder's train/eval mode. The n samples
    of an image ride on the beam axis of `Decoder.step`, sharing its features and projection.
    A caption stops at <end> or, cut without one, after max_len tokens (as greedy decoding).
    """
    require_positive(samples=samples, max_len=max_len)
    batch, device = features.size(0), features.device
    projected, weights = decoder.prepare(features), decoder.step_weights()
    h, c = decoder.init_state(features, mask)
    state = (h.unsqueeze(1).expand(-1, samples, -1), c.unsqueeze(1).expand(-1, samples, -1))  # (B, n, H)
    prev = torch.full((batch, samples), start_id, dtype=torch.long, device=device)
    banned = _banned_mask(decoder.vocab_size, banned_ids, device)
    finished = torch.zeros(batch, samples, dtype=torch.bool, device=device)
    tokens, log_probs, masks = [], [], []
    for _ in range(max_len):
        step_log_probs, state, _ = decoder.step(prev, state, features, projected, mask, weights)
        policy = step_log_probs.masked_fill(banned, NEG_INF).log_softmax(dim=-1)  # (B, n, V)
        drawn = torch.multinomial(policy.detach().exp().view(batch * samples, -1), 1).view(batch, samples)
        live = ~finished
        prev = drawn.masked_fill(finished, pad_id)
        tokens.append(prev)
        log_probs.append(policy.gather(-1, drawn.unsqueeze(-1)).squeeze(-1) * live)
        masks.append(live)
        finished = finished | (drawn == end_id)
        if finished.all():
            break
    tokens_t, mask_t = torch.stack(tokens, -1), torch.stack(masks, -1)
    lengths = (mask_t & (tokens_t != end_id)).sum(-1)
    return Samples(tokens_t, torch.stack(log_probs, -1), mask_t, lengths)
