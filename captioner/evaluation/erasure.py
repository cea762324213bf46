"""Erasure: does a word depend on where its attention looked? A test that needs no boxes.

For each word of the model's own caption (teacher-forced on it, eval mode), at that step only:

- *looked*: erase the cells that hold half of the word's attention (`looked_cells`), i.e. mask
  them out of the softmax, so α is renormalised over the other cells, and re-score the word;
- *random*: erase as many cells drawn uniformly from the image (`draws` times) and re-score.

A word is *faithful* when its log-probability falls more after erasing where it looked than
after erasing random cells (mean over the draws); ties count half, so a word that does not
depend on the image at all scores the chance rate, 0.5. Serrano & Smith (2019) test attention
this way in text classifiers; the deletion metric of Petsiuk et al. (2018) is the image analogue.

Batched: the teacher-forced pass runs once (one decoder step per word position, all images
together) and keeps each step's input state; then one decoder step scores every word × every
erasure at once, the erasures riding on the decoder's beam axis with a mask per row (B, K, P).
Both step orders work: attending from the previous state the step starts from h_{t-1}, c_{t-1};
attending from the current state it reads the word first and only the attention is erased.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from captioner.models.decoder import Decoder

__all__ = [
    "FUNCTION_WORDS",
    "WordErasure",
    "attention_spread",
    "erase_words",
    "erasure_scores",
    "looked_cells",
]

# Words that carry no content of their own: erasure aggregates leave them out (their
# attention is rarely meant to point anywhere). Articles, conjunctions, prepositions, forms
# of "be", pronouns and punctuation.
_FUNCTION_WORDS_TEXT = (
    "a an the and or but , . ; of in on at to with by for from into onto over under above below "
    "beside behind near next up down out off through between there here is are was were be been "
    "being it its they their them he his she her this that these those which who"
)
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split(" "))

DEFAULT_DRAWS = 8
LOOKED_SHARE = 0.5  # erase the cells holding half the attention
# Two drops closer than this (nats) count as a tie: a word that ignores the image gets
# equal drops up to float rounding.
TIE_NATS = 1e-4
# Rows × vocabulary of one batched scoring step, at most: bounds the (rows, V) log-probabilities.
MAX_SCORED_FLOATS = 2**24


def looked_cells(alpha: Tensor, share: float = LOOKED_SHARE) -> Tensor:
    """alpha (..., P) -> (..., P) bool: the fewest cells, largest α first, whose α sums to at
    least `share` of the row (ties in α: the first cells). Where the word looked."""
    ordered, order = alpha.float().sort(dim=-1, descending=True, stable=True)
    before = ordered.cumsum(dim=-1) - ordered  # α of the larger cells before each one
    chosen = before < share * ordered.sum(dim=-1, keepdim=True)
    return torch.zeros_like(chosen).scatter(-1, order, chosen)


def attention_spread(alpha: Tensor, mask: Tensor | None = None) -> Tensor:
    """alpha (..., P), mask (..., P) bool or None -> (...) the share of the (allowed) cells
    that hold half of the attention: 1/P for a look at one cell, about 0.5 for a uniform α."""
    cells = looked_cells(alpha).sum(dim=-1).float()
    allowed = alpha.size(-1) if mask is None else mask.sum(dim=-1).float()
    return cells / allowed


@dataclass(frozen=True)
class WordErasure:
    """One caption's erasure results, one entry per word (L words).

    log_p (L,): log p(word) as decoded. looked (L,): after erasing the `cells` where it looked.
    random (L, R): after erasing as many random cells, R draws. cells (L,): how many cells were
    erased. spread (L,): `attention_spread`. Rows where erasing would leave no cell are NaN.
    """

    log_p: Tensor
    looked: Tensor
    random: Tensor
    cells: Tensor
    spread: Tensor

    @property
    def looked_drop(self) -> Tensor:
        """(L,) log p(word) − log p(word | its looked cells erased), nats."""
        return self.log_p - self.looked

    @property
    def random_drop(self) -> Tensor:
        """(L,) the same for the random erasures, averaged over the draws."""
        return self.log_p - self.random.mean(dim=-1)

    @property
    def faithful(self) -> Tensor:
        """(L,) 1 when erasing where it looked lowers p(word) more than erasing random cells,
        0 when less, 0.5 for a tie (within TIE_NATS); NaN where not measured."""
        difference = self.looked_drop - self.random_drop
        score = torch.where(difference > TIE_NATS, 1.0, torch.where(difference < -TIE_NATS, 0.0, 0.5))
        return score.masked_fill(difference.isnan(), math.nan)

    def as_json(self) -> list[dict[str, float | int | None]]:
        """Per word: p as decoded, after erasing where it looked, after random erasures (the
        geometric mean over draws), cells erased, spread and faithful (None where not measured)."""
        p = self.log_p.exp().tolist()
        looked = self.looked.exp().tolist()
        random = self.random.mean(dim=-1).exp().tolist()
        faithful = self.faithful.tolist()
        return [
            {
                "p": p[t],
                "p_looked_erased": _finite(looked[t]),
                "p_random_erased": _finite(random[t]),
                "cells_erased": int(self.cells[t]),
                "spread": float(self.spread[t]),
                "faithful": _finite(faithful[t]),
            }
            for t in range(len(p))
        ]

    def notes(self) -> list[str]:
        """Per word, two lines for a person: p(word) as decoded → after erasing where it looked,
        and → after erasing as many random cells."""
        return [
            f"erase where it looked: {w['p']:.2f} → {_text(w['p_looked_erased'])}\n"
            f"erase random cells: {w['p']:.2f} → {_text(w['p_random_erased'])}"
            for w in self.as_json()
        ]


def _text(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2f}"


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


@torch.inference_mode()
def erase_words(
    decoder: Decoder,
    features: Tensor,
    captions: Sequence[Sequence[int]],
    start_id: int,
    *,
    mask: Tensor | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> list[WordErasure]:
    """Erasure results for B captions (word ids without <start>/<end>) of B images.

    features (B, P, D), mask (B, P) bool or None (e.g. padding of the dates model's inputs).
    The decoder runs in eval mode (dropout off) and is put back as it was. The random cells
    are drawn from a generator seeded with `seed`: the same call gives the same answer.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    batch, positions, device = features.size(0), features.size(1), features.device
    lengths = [len(tokens) for tokens in captions]
    steps = max(lengths, default=0)
    if steps == 0:
        empty = features.new_zeros(0)
        return [WordErasure(empty, empty, empty.view(0, draws), empty.long(), empty) for _ in captions]
    targets = torch.zeros(batch, steps, dtype=torch.long, device=device)
    for b, tokens in enumerate(captions):
        targets[b, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
    inputs = torch.cat([targets.new_full((batch, 1), start_id), targets[:, :-1]], dim=1)  # (B, T)
    allowed = torch.ones(batch, positions, dtype=torch.bool, device=device) if mask is None else mask.bool()
    was_training = decoder.training
    decoder.eval()
    try:
        projected, weights = decoder.prepare(features), decoder.step_weights()
        h, c = decoder.init_state(features, mask)
        state = (h.unsqueeze(1), c.unsqueeze(1))
        states, log_ps, alphas = [], [], []
        for t in range(steps):  # the teacher-forced pass, keeping each step's input state
            states.append(state)
            log_probs, state, alpha = decoder.step(inputs[:, t : t + 1], state, features, projected, mask, weights)
            log_ps.append(log_probs[:, 0].gather(-1, targets[:, t : t + 1]).squeeze(-1))
            alphas.append(alpha[:, 0])
        h_in = torch.cat([s[0] for s in states], dim=1)  # (B, T, H)
        c_in = torch.cat([s[1] for s in states], dim=1)
        log_p, alpha = torch.stack(log_ps, dim=1), torch.stack(alphas, dim=1)  # (B, T), (B, T, P)
        generator = torch.Generator(device).manual_seed(seed)
        erased, cells, measurable = _erasures(alpha, allowed, draws, generator)  # (B, T, 1 + R, P)
        rescored = _score_erased(
            decoder, features, projected, weights, inputs, targets, (h_in, c_in), allowed, erased
        )  # (B, T, 1 + R)
    finally:
        decoder.train(was_training)
    rescored = rescored.masked_fill(~measurable.unsqueeze(-1), math.nan).float().cpu()
    log_p, cells = log_p.float().cpu(), cells.cpu()
    spread = attention_spread(alpha, allowed.unsqueeze(1)).float().cpu()
    return [
        WordErasure(log_p[b, :n], rescored[b, :n, 0], rescored[b, :n, 1:], cells[b, :n], spread[b, :n])
        for b, n in enumerate(lengths)
    ]


def _erasures(alpha: Tensor, allowed: Tensor, draws: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """alpha (B, T, P), allowed (B, P) -> erased (B, T, 1 + R, P) bool (row 0: where the word
    looked, rows 1..R: as many cells drawn uniformly from the allowed ones), the count erased
    (B, T), and (B, T) bool: whether any allowed cell is left after erasing."""
    looked = looked_cells(alpha) & allowed.unsqueeze(1)
    cells = looked.sum(dim=-1)  # (B, T)
    available = allowed.sum(dim=-1, keepdim=True)  # (B, 1)
    batch, steps, positions = alpha.shape
    noise = torch.rand(batch, steps, draws, positions, device=alpha.device, generator=generator)
    noise = noise.masked_fill(~allowed[:, None, None, :], 2.0)  # never drawn: after every allowed cell
    ranks = noise.argsort(dim=-1).argsort(dim=-1)
    random = ranks < cells[..., None, None]
    return torch.cat([looked.unsqueeze(2), random], dim=2), cells, cells < available


def _score_erased(
    decoder: Decoder,
    features: Tensor,
    projected: Tensor,
    weights,
    inputs: Tensor,
    targets: Tensor,
    state: tuple[Tensor, Tensor],
    allowed: Tensor,
    erased: Tensor,
) -> Tensor:
    """log p(target) of every word under every erasure: one decoder step with the T × (1 + R)
    erasures of an image on its beam axis (images in chunks, to bound the (rows, V) output).
    -> (B, T, 1 + R)."""
    batch, steps, variants, positions = erased.shape
    rows = steps * variants
    keep = (allowed[:, None, None, :] & ~erased).view(batch, rows, positions)
    # An erasure that leaves nothing would make the softmax NaN: keep those rows whole (reported NaN).
    keep = torch.where(keep.any(dim=-1, keepdim=True), keep, allowed.unsqueeze(1))
    spread = (batch, steps, variants)
    h, c = (s.unsqueeze(2).expand(*spread, s.size(-1)).reshape(batch, rows, -1) for s in state)
    prev = inputs.unsqueeze(-1).expand(spread).reshape(batch, rows)
    wanted = targets.unsqueeze(-1).expand(spread).reshape(batch, rows, 1)
    chunk = max(1, MAX_SCORED_FLOATS // (rows * decoder.vocab_size))
    out = []
    for lo in range(0, batch, chunk):
        part = slice(lo, lo + chunk)
        log_probs, _, _ = decoder.step(
            prev[part], (h[part], c[part]), features[part], projected[part], keep[part], weights
        )
        out.append(log_probs.gather(-1, wanted[part]).squeeze(-1))
    return torch.cat(out).view(spread)


def erasure_scores(
    captions: Sequence[Sequence[str]],
    erasures: Sequence[WordErasure],
    word_to_category: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Aggregates over the content words (not in FUNCTION_WORDS) of all captions and, with
    `word_to_category`, over the words naming an object category:

    `erasure_faithfulness` (share of faithful words; 0.5 is chance), `erasure_looked_drop` and
    `erasure_random_drop` (mean log-prob drops, nats), `erasure_words` (count); the same with
    the prefix `object_` for object words. NaN means (and count 0) when no word qualifies.
    """
    content, objects = [], []
    for words, erasure in zip(captions, erasures):
        faithful, looked, random = erasure.faithful, erasure.looked_drop, erasure.random_drop
        for t, word in enumerate(words):
            if math.isnan(float(faithful[t])):
                continue
            row = (float(faithful[t]), float(looked[t]), float(random[t]))
            if word.lower() not in FUNCTION_WORDS:
                content.append(row)
            if word_to_category is not None and word.lower() in word_to_category:
                objects.append(row)
    scores = _aggregate(content, "erasure_")
    if word_to_category is not None:
        scores |= _aggregate(objects, "object_erasure_")
    return scores


def _aggregate(rows: list[tuple[float, float, float]], prefix: str) -> dict[str, float]:
    values = np.array(rows, dtype=np.float64).reshape(-1, 3)
    means = values.mean(axis=0) if len(values) else np.full(3, math.nan)
    return {
        f"{prefix}faithfulness": float(means[0]),
        f"{prefix}looked_drop": float(means[1]),
        f"{prefix}random_drop": float(means[2]),
        f"{prefix}words": float(len(values)),
    }
