"""Faithfulness: does a word lose its probability first where its attention ranks the image first?

A deletion test per word (the deletion curve of RISE, Petsiuk et al. 2018; the erasure framing of
Serrano & Smith 2019), on the model's own caption, teacher-forced, eval mode, at that word's
step only:

- **The curve.** Erase the word's cells in order of descending α, and in `RANDOM_ORDERS` random
  orders, and read p(word) after `ERASED_FRACTIONS` of the image's n cells (then all but one) are
  gone. Erasing a cell masks it out of the softmax: α is renormalised over the rest, so the
  word still looks, only not there. The end of every curve is the word with no look at all:
  its context z_t set to zero at that step ("no look").
- **Does the word depend on the image?** It is *image-dependent* when log p(word) −
  log p(word | no look) ≥ `DEPENDENCE_NATS` (ln 2: without its look the word is at most half
  as likely). Words that are not are reported as their own share and never scored: a word the
  caption already implies ("triangle" after "a green") says nothing about its attention.
- **The test.** Each curve's area (p relative to the decoded p, over the share of the image
  erased, trapezoids; 0 for a word whose probability vanishes at once, about 1 for one that
  never moves). An image-dependent word is *faithful* when no random order's area is smaller
  than its α order's (up to `AREA_TIE`, float rounding): a one-sided permutation test. Attention
  no better than a random ranking passes with chance 1/(R + 1) = 0.05; attention whose first
  cells hold what the word reads passes, whether that is one cell or several cells of one object
  (erasing them first takes the word away; a random order leaves some of them for longer).
- **A graded number**, `lead`: (mean random area − α area) / (1 − p(no look)/p), how much of
  what the look gives the word the α order takes away sooner than random orders: about 0 at
  chance, up to 1 when the α order takes everything away at once and random orders nothing
  until the end. It is for reading a word or a model; the test is the headline.

Why this schedule: the curve's points are the cells erased after 1/64, 1/32, 1/16, 1/8, 1/4, 1/2
and 3/4 of the n cells (at least one), then n − 1: 1, 2, 4, 8, 16, 32, 48, 63 cells on the demo's
8×8 grid. Doubling puts the resolution where the α order and random orders part, in the first
cells (a sharp look at a small object is over within a few); from half the image on, no
trapezoid spans more than a quarter of it, so the bottom of the α ranking (the cells it says
matter least) counts in proportion and not through one point; the last point sees the look held
on one cell, and the end point, no look, is shared by every order. Eight points × 20 orders is
160 scored variants per word (plus the no-look one); more points would cost in proportion and
add resolution where the orders hardly part. Why 19 random orders: chance 0.05, a low stated
number, at a cost linear in R. Ties: a random order that happens to erase a one-cell look first
is exactly as good as the α order; that counts for α (the α order was the best possible), which
the tolerance allows. Why no look is a zero context and not a uniform look: a uniform look is
still a look, and for a diffuse model almost the one it took.

Batched as the decoding is: the teacher-forced pass runs once (one decoder step per word
position, all images together) and keeps each step's input state; one decoder step scores every
word with no look; then, for the image-dependent words only, decoder steps score every word ×
order × point at once, the variants riding on the decoder's beam axis with a keep-mask (B, K, P)
each, in chunks of at most MAX_SCORED_FLOATS floats of output and attention activations. Both
step orders work: attending from the previous state the step starts from h_{t-1}, c_{t-1} and the
erased context also feeds the LSTM; attending from the current state it reads the word first and
only the look is changed. Hard-attention decoders decode with the expected context or the argmax
cell over the kept cells. Padding (the dates model's mask) is never erased nor drawn, and counts
are fractions of each image's own n.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from captioner.models.decoder import Decoder

__all__ = [
    "DEPENDENCE_NATS",
    "ERASED_FRACTIONS",
    "FUNCTION_WORDS",
    "RANDOM_ORDERS",
    "WordDeletion",
    "attention_spread",
    "deletion_curves",
    "erased_counts",
    "faithfulness_scores",
    "looked_cells",
]

# Words that carry no content of their own: the aggregates leave them out (their attention is
# rarely meant to point anywhere). Articles, conjunctions, prepositions, forms of "be",
# pronouns and punctuation.
_FUNCTION_WORDS_TEXT = (
    "a an the and or but , . ; of in on at to with by for from into onto over under above below "
    "beside behind near next up down out off through between there here is are was were be been "
    "being it its they their them he his she her this that these those which who"
)
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split(" "))

RANDOM_ORDERS = 19  # R: an attention at chance passes with 1/(R + 1) = 0.05
# The curve's points: these shares of the n cells erased (rounded, at least one), then n − 1.
ERASED_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4)
# A word is image-dependent when removing its look at least halves its probability.
DEPENDENCE_NATS = math.log(2)
# Areas closer than this are equal: float32 rounding of p, far below any difference that means something.
AREA_TIE = 1e-5
SPREAD_SHARE = 0.5  # the spread: the share of the image holding half the attention
# Rows × (vocabulary + cells × attention width) of one batched scoring step, at most: bounds the
# (rows, V) log-probabilities and the (rows, P, A) attention activations.
MAX_SCORED_FLOATS = 2**24


def looked_cells(alpha: Tensor, share: float = SPREAD_SHARE) -> Tensor:
    """alpha (..., P) -> (..., P) bool: the fewest cells, largest α first, whose α sums to at
    least `share` of the row (ties in α: the first cells)."""
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


def erased_counts(cells: Tensor) -> Tensor:
    """cells (B,) the number n of cells each image may attend to -> (B, S) how many are erased at
    each point of the curve: `ERASED_FRACTIONS` of n (rounded, at least 1), then n − 1; never
    more than n − 1 (0 when n < 2: nothing can be erased and a look kept)."""
    n = cells.double().unsqueeze(-1)
    fractions = torch.tensor(ERASED_FRACTIONS, dtype=torch.float64, device=cells.device)
    counts = torch.cat([(fractions * n).round(), n - 1], dim=-1).clamp(min=1)
    return torch.minimum(counts, (n - 1).clamp(min=0)).long()


@dataclass(frozen=True)
class WordDeletion:
    """One caption's deletion curves, one entry per word (L words), S points, 1 + R orders.

    log_p (L,): log p(word) as decoded. no_look (L,): with its context z_t zero. erased (S,):
    the share of the image erased at each point (the same for every word of the image).
    curves (L, 1 + R, S): log p(word) at each point, order 0 by descending α, then the random
    orders; NaN for the words that are not image-dependent (they are never scored). spread (L,):
    `attention_spread`. An image with fewer than two cells has NaN `erased`: not measured.
    """

    log_p: Tensor
    no_look: Tensor
    erased: Tensor
    curves: Tensor
    spread: Tensor

    @property
    def drop(self) -> Tensor:
        """(L,) log p(word) − log p(word | no look), nats."""
        return self.log_p - self.no_look

    @property
    def measured(self) -> Tensor:
        """(L,) bool: whether the test could run (the image has at least two cells)."""
        return self.erased.isfinite().all().expand(len(self.log_p))

    @property
    def dependent(self) -> Tensor:
        """(L,) bool: image-dependent, the drop without a look at least `DEPENDENCE_NATS`."""
        return (self.drop >= DEPENDENCE_NATS) & self.measured

    @property
    def areas(self) -> Tensor:
        """(L, 1 + R) float64: the area under each order's curve of p / p(as decoded) over the
        share erased, from (0, 1) to (1, p(no look)/p); NaN where there are no curves."""
        relative = (self.curves.double() - self.log_p.double()[:, None, None]).exp()
        end = (self.no_look.double() - self.log_p.double()).exp()
        words, orders, _ = relative.shape
        y = torch.cat([relative.new_ones(words, orders, 1), relative, end[:, None, None].expand(-1, orders, 1)], -1)
        x = torch.cat([self.erased.new_zeros(1), self.erased, self.erased.new_ones(1)]).double()
        return ((y[..., 1:] + y[..., :-1]) / 2 * x.diff()).sum(dim=-1)

    @property
    def faithful(self) -> Tensor:
        """(L,) 1 when no random order's area is below the α order's (within AREA_TIE), else 0;
        NaN for a word that is not image-dependent (or not measured)."""
        areas = self.areas
        passed = (areas[:, 0] <= areas[:, 1:].min(dim=-1).values + AREA_TIE).double()
        return passed.masked_fill(~self.dependent, math.nan)

    @property
    def lead(self) -> Tensor:
        """(L,) (mean random area − α area) / (1 − p(no look)/p): the share of what the look gives
        the word that the α order takes away sooner than random orders; NaN where not dependent."""
        areas = self.areas
        total = 1 - (self.no_look.double() - self.log_p.double()).exp()
        lead = (areas[:, 1:].mean(dim=-1) - areas[:, 0]) / total
        return lead.masked_fill(~self.dependent, math.nan)

    def as_json(self) -> list[dict[str, object]]:
        """Per word: p as decoded and with no look, whether it is image-dependent, the share of
        the image erased at each point, p at each point by α order and averaged over the random
        orders, the areas (α order; random orders' mean and smallest), faithful and lead (None
        for each of these where the word is not image-dependent), and spread."""
        p, no_look = self.log_p.exp().tolist(), self.no_look.exp().tolist()
        by_alpha = self.curves[:, 0].exp()
        by_random = self.curves[:, 1:].exp().mean(dim=1)
        areas, faithful, lead, dependent = (
            self.areas,
            self.faithful.tolist(),
            self.lead.tolist(),
            self.dependent.tolist(),
        )
        erased = [_finite(x) for x in self.erased.tolist()]
        return [
            {
                "p": p[t],
                "p_no_look": no_look[t],
                "image_dependent": dependent[t],
                "erased": erased,
                "p_attention_order": [_finite(x) for x in by_alpha[t].tolist()],
                "p_random_orders": [_finite(x) for x in by_random[t].tolist()],
                "area_attention": _finite(float(areas[t, 0])),
                "area_random": _finite(float(areas[t, 1:].mean())),
                "area_random_min": _finite(float(areas[t, 1:].min())),
                "faithful": None if math.isnan(faithful[t]) else bool(faithful[t]),
                "lead": _finite(lead[t]),
                "spread": float(self.spread[t]),
            }
            for t in range(len(p))
        ]

    def notes(self) -> list[str]:
        """Per word, two short lines for a person: p as decoded → with no look, and the verdict."""
        notes = []
        for word, measured in zip(self.as_json(), self.measured.tolist()):
            looked = f"no look: {word['p']:.2f} → {word['p_no_look']:.2f}"
            if word["faithful"] is None:
                verdict = "not image-dependent" if measured else "not measured"
            else:
                verdict = f"deletion {word['area_attention']:.2f} vs random ≥ {word['area_random_min']:.2f}: " + (
                    "faithful" if word["faithful"] else "not faithful"
                )
            notes.append(f"{looked}\n{verdict}")
        return notes


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


@torch.inference_mode()
def deletion_curves(
    decoder: Decoder,
    features: Tensor,
    captions: Sequence[Sequence[int]],
    start_id: int,
    *,
    mask: Tensor | None = None,
    orders: int = RANDOM_ORDERS,
    seed: int = 0,
) -> list[WordDeletion]:
    """The deletion curves of B captions (word ids without <start>/<end>) of B images.

    features (B, P, D), mask (B, P) bool or None (e.g. padding of the dates model's inputs).
    The decoder runs in eval mode (dropout off) and is put back as it was. The random orders come
    from a generator seeded with `seed`: the same call gives the same answer.
    """
    if orders < 1:
        raise ValueError(f"orders must be at least 1, got {orders}")
    batch, positions, device = features.size(0), features.size(1), features.device
    lengths = [len(tokens) for tokens in captions]
    steps = max(lengths, default=0)
    points = len(ERASED_FRACTIONS) + 1
    if steps == 0:
        empty = features.new_zeros(0)
        return [
            WordDeletion(empty, empty, features.new_zeros(points), empty.view(0, 1 + orders, points), empty)
            for _ in captions
        ]
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
        kept = (torch.cat([s[0] for s in states], dim=1), torch.cat([s[1] for s in states], dim=1))  # (B, T, H)
        log_p, alpha = torch.stack(log_ps, dim=1), torch.stack(alphas, dim=1)  # (B, T), (B, T, P)
        scorer = _Scorer(decoder, weights, inputs, targets, kept)
        zeros = torch.zeros_like(features)  # no look: every context Σ_i α_i a_i (or a_argmax) is 0
        no_look = scorer.no_look(zeros, decoder.prepare(zeros), allowed)  # (B, T)
        cells = allowed.sum(dim=-1)  # (B,)
        words = torch.arange(steps, device=device) < torch.tensor(lengths, device=device).unsqueeze(-1)
        # Only the image-dependent words get curves: the others are never scored. In float32, as
        # WordDeletion.dependent decides it again from the same numbers.
        drop = log_p.float() - no_look.float()
        dependent = (drop >= DEPENDENCE_NATS) & words & (cells >= 2).unsqueeze(-1)  # (B, T)
        counts = erased_counts(cells)  # (B, S)
        generator = torch.Generator(device).manual_seed(seed)
        ranks = _deletion_ranks(alpha, allowed, orders, generator)  # (B, T, 1 + R, P)
        curves = torch.full((batch, steps, 1 + orders, points), math.nan, device=device)
        curves[dependent] = scorer.erased(features, projected, allowed, ranks, counts, dependent)
    finally:
        decoder.train(was_training)
    measured = (cells >= 2).cpu()
    erased = (counts.double() / cells.double().unsqueeze(-1)).cpu().masked_fill(~measured.unsqueeze(-1), math.nan)
    curves, log_p, no_look = curves.float().cpu(), log_p.float().cpu(), no_look.float().cpu()
    spread = attention_spread(alpha, allowed.unsqueeze(1)).float().cpu()
    return [
        WordDeletion(log_p[b, :n], no_look[b, :n], erased[b], curves[b, :n], spread[b, :n])
        for b, n in enumerate(lengths)
    ]


def _deletion_ranks(alpha: Tensor, allowed: Tensor, orders: int, generator: torch.Generator) -> Tensor:
    """alpha (B, T, P), allowed (B, P) -> (B, T, 1 + R, P) long: when each cell is erased in each
    order (0 first): order 0 by descending α (ties: the first cell), orders 1..R uniformly random
    over the allowed cells. Cells not allowed come after every allowed one."""
    batch, steps, positions = alpha.shape
    key = alpha.float().masked_fill(~allowed.unsqueeze(1), -1.0)
    by_alpha = key.sort(dim=-1, descending=True, stable=True).indices.unsqueeze(2)
    noise = torch.rand(batch, steps, orders, positions, device=alpha.device, generator=generator)
    random = noise.masked_fill(~allowed[:, None, None, :], 2.0).argsort(dim=-1)
    return torch.cat([by_alpha, random], dim=2).argsort(dim=-1)


class _Scorer:
    """log p(target) of words under changed looks. A unit is an image with K variants (rows) of
    its words on the decoder's beam axis; units are scored together, or one unit in slices of
    rows, within MAX_SCORED_FLOATS."""

    def __init__(self, decoder: Decoder, weights, inputs: Tensor, targets: Tensor, state: tuple[Tensor, Tensor]):
        self.decoder, self.weights = decoder, weights
        self.inputs, self.targets, self.state = inputs, targets, state  # (B, T), (B, T), (B, T, H) each

    def no_look(self, features: Tensor, projected: Tensor, allowed: Tensor) -> Tensor:
        """-> (B, T): each word with the given (zero) features in place of the image's; one unit
        per image, one row per word."""
        batch, steps = self.inputs.shape
        image = torch.arange(batch, device=features.device)
        step = torch.arange(steps, device=features.device).expand(batch, steps)
        return self._score(features, projected, image, step, lambda units, rows: allowed[image[units]])

    def erased(
        self, features: Tensor, projected: Tensor, allowed: Tensor, ranks: Tensor, counts: Tensor, words: Tensor
    ) -> Tensor:
        """ranks (B, T, O, P), counts (B, S), words (B, T) bool: the words to score -> (N, O, S)
        for the N words, each with the first counts[s] cells of each order erased; one unit per
        word, one row per order and point."""
        _, _, orders, _ = ranks.shape
        points = counts.size(1)
        image, at = words.nonzero(as_tuple=True)  # (N,) each
        row = torch.arange(orders * points, device=ranks.device)
        order, point = row // points, row % points
        step = at.unsqueeze(-1).expand(-1, row.numel())

        def keep(units: slice, rows: slice) -> Tensor:
            b, t = image[units], at[units]
            erased = ranks[b, t][:, order[rows]] < counts[b][:, point[rows]].unsqueeze(-1)
            return allowed[b].unsqueeze(1) & ~erased  # (n, r, P)

        return self._score(features, projected, image, step, keep).view(-1, orders, points)

    def _score(self, features: Tensor, projected: Tensor, image: Tensor, step: Tensor, keep) -> Tensor:
        """image (N,): each unit's image; step (N, K): the word position of each of its rows;
        keep(units, rows) -> their masks -> (N, K) log p(target)."""
        units, rows = step.shape
        positions = features.size(1)
        per_row = self.decoder.vocab_size + positions * self.decoder.attention_dim
        per_unit = positions * (features.size(2) + projected.size(2))  # its copy of the image
        out = features.new_empty(units, rows, dtype=torch.float32)
        h, c = self.state
        for part, rows_part in _chunks(units, rows, per_row, per_unit):
            b, t = image[part].unsqueeze(-1), step[part, rows_part]
            log_probs, _, _ = self.decoder.step(
                self.inputs[b, t],
                (h[b, t], c[b, t]),
                features[image[part]],
                projected[image[part]],
                keep(part, rows_part),
                self.weights,
            )
            out[part, rows_part] = log_probs.gather(-1, self.targets[b, t].unsqueeze(-1)).squeeze(-1).float()
        return out


def _chunks(units: int, rows: int, per_row: int, per_unit: int) -> Iterator[tuple[slice, slice]]:
    """(units, rows) slices covering (units, rows), each within MAX_SCORED_FLOATS: whole units
    together while they fit, else one unit at a time in slices of rows."""
    whole = rows * per_row + per_unit
    if whole <= MAX_SCORED_FLOATS:
        size = MAX_SCORED_FLOATS // whole
        for lo in range(0, units, size):
            yield slice(lo, lo + size), slice(None)
        return
    size = max(1, (MAX_SCORED_FLOATS - per_unit) // per_row)
    for unit in range(units):
        for lo in range(0, rows, size):
            yield slice(unit, unit + 1), slice(lo, lo + size)


def faithfulness_scores(
    captions: Sequence[Sequence[str]],
    deletions: Sequence[WordDeletion],
    word_to_category: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Aggregates over the content words (not in FUNCTION_WORDS) of all captions and, with
    `word_to_category`, over the words naming an object category (prefix `object_`):

    `deletion_faithfulness`: the share of faithful words among the image-dependent ones (chance
    1/(R + 1)); `deletion_dependent_share`: the share of measured words that are image-dependent;
    `deletion_area_attention`, `deletion_area_random`, `deletion_lead`: means over the
    image-dependent words; `deletion_words`, `deletion_dependent_words`: the counts. NaN (and
    count 0) when no word qualifies.
    """
    content, objects = [], []
    for words, deletion in zip(captions, deletions):
        measured, dependent = deletion.measured.tolist(), deletion.dependent.tolist()
        areas, faithful, lead = deletion.areas, deletion.faithful.tolist(), deletion.lead.tolist()
        for t, word in enumerate(words):
            if not measured[t]:
                continue
            row = (float(dependent[t]), faithful[t], float(areas[t, 0]), float(areas[t, 1:].mean()), lead[t])
            if word.lower() not in FUNCTION_WORDS:
                content.append(row)
            if word_to_category is not None and word.lower() in word_to_category:
                objects.append(row)
    scores = _aggregate(content, "deletion_")
    if word_to_category is not None:
        scores |= _aggregate(objects, "object_deletion_")
    return scores


def _aggregate(rows: list[tuple[float, ...]], prefix: str) -> dict[str, float]:
    values = np.array(rows, dtype=np.float64).reshape(-1, 5)
    dependent = values[values[:, 0] == 1]
    means = dependent[:, 1:].mean(axis=0) if len(dependent) else np.full(4, math.nan)
    return {
        f"{prefix}faithfulness": float(means[0]),
        f"{prefix}dependent_share": float(values[:, 0].mean()) if len(values) else math.nan,
        f"{prefix}area_attention": float(means[1]),
        f"{prefix}area_random": float(means[2]),
        f"{prefix}lead": float(means[3]),
        f"{prefix}words": float(len(values)),
        f"{prefix}dependent_words": float(len(dependent)),
    }
