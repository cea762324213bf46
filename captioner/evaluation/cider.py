"""CIDEr-D rewards for self-critical training: Python and NumPy, no Java, built once per corpus.

`CiderD` computes exactly what pycocoevalcap's `Cider` computes (that scorer is CIDEr-D:
tf-idf n-gram vectors for n = 1..4, the candidate's counts clipped by the reference's, a
Gaussian length penalty with σ = 6, the mean over n, averaged over the references, × 10),
with one difference in how it is used: pycocoevalcap takes document frequencies from the
references of the images it is asked to score, so an image's score depends on its batch;
here they come from a fixed corpus (the training references), computed once, and every
candidate is scored against its own image's references only. Given the same corpus, the two
agree to floating-point rounding (tests/test_rewards.py).

Captions are token lists (`captioner.vocab.tokenize` for references); the reward is over
whatever tokens it is given, punctuation included.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from captioner.errors import CaptionerError

__all__ = ["CiderD", "ngram_counts"]

Ngram = tuple[Hashable, ...]


def ngram_counts(tokens: Sequence[Hashable], n: int = 4) -> Counter[Ngram]:
    """Counts of every 1..n-gram of `tokens` (n-grams are tuples of tokens)."""
    counts: Counter[Ngram] = Counter()
    tokens = tuple(tokens)
    for k in range(1, n + 1):
        counts.update(tokens[i : i + k] for i in range(len(tokens) - k + 1))
    return counts


class _Vector:
    """A caption's tf-idf weights split by n-gram order, their L2 norms, and its length."""

    __slots__ = ("length", "norms", "weights")

    def __init__(self, weights: list[dict[Ngram, float]], norms: np.ndarray, length: int):
        self.weights, self.norms, self.length = weights, norms, length


class CiderD:
    """CIDEr-D of candidate captions against their image's references, with the document
    frequencies of one reference corpus, fixed when the object is built.

    Args:
        references: image id -> that image's reference captions, each a token list (at least
            one per image). They are both the corpus the document frequencies come from and
            what each image's candidates are scored against.
        n: longest n-gram.
        sigma: standard deviation of the Gaussian length penalty, in tokens.

    The reference vectors are computed here too, so scoring a batch only builds the
    candidates' vectors.
    """

    def __init__(self, references: Mapping[int, Sequence[Sequence[Hashable]]], n: int = 4, sigma: float = 6.0):
        if not references:
            raise CaptionerError("CIDEr-D needs reference captions to take document frequencies from; got none")
        empty = [image_id for image_id, refs in references.items() if not refs]
        if empty:
            raise CaptionerError(
                f"images {sorted(empty)[:5]} have no reference caption (first five shown); "
                "leave them out of the CIDEr-D corpus"
            )
        self.n, self.sigma = n, sigma
        counts = {image_id: [ngram_counts(ref, n) for ref in refs] for image_id, refs in references.items()}
        # Document frequency: in how many images' reference sets each n-gram occurs.
        frequency: Counter[Ngram] = Counter()
        for image_counts in counts.values():
            frequency.update({gram for ref in image_counts for gram in ref})
        self._log_images = math.log(len(references))
        self._log_frequency = {gram: math.log(df) for gram, df in frequency.items()}
        self._references = {image_id: [self._vector(c) for c in refs] for image_id, refs in counts.items()}

    def __contains__(self, image_id: int) -> bool:
        return image_id in self._references

    def score(self, image_ids: Sequence[int], candidates: Sequence[Sequence[Hashable]]) -> np.ndarray:
        """CIDEr-D of each candidate against the references of its image.

        image_ids (N,) and candidates (N token lists) pair up; an image may appear any number
        of times (several samples of it). -> (N,) float64.
        """
        if len(image_ids) != len(candidates):
            raise ValueError(f"{len(image_ids)} image ids for {len(candidates)} candidates")
        missing = sorted({i for i in image_ids if i not in self._references})
        if missing:
            raise CaptionerError(
                f"images {missing[:5]} have no references in the CIDEr-D corpus (first five shown); "
                "build it from the references of every image that is scored"
            )
        scores = np.empty(len(candidates), dtype=np.float64)
        for k, (image_id, tokens) in enumerate(zip(image_ids, candidates)):
            vector = self._vector(ngram_counts(tokens, self.n))
            refs = self._references[image_id]
            scores[k] = 10.0 * sum(self._similarity(vector, ref) for ref in refs).mean() / len(refs)
        return scores

    def _vector(self, counts: Counter[Ngram]) -> _Vector:
        weights: list[dict[Ngram, float]] = [{} for _ in range(self.n)]
        for gram, tf in counts.items():
            # An n-gram no reference set holds weighs as if it occurred in one (log 1 = 0).
            weights[len(gram) - 1][gram] = tf * (self._log_images - self._log_frequency.get(gram, 0.0))
        norms = np.array([math.sqrt(sum(w * w for w in order.values())) for order in weights])
        # In tokens. (pycocoevalcap counts bigrams, words − 1: the same differences wherever a
        # difference matters, since an empty caption scores 0 against anything.)
        length = sum(tf for gram, tf in counts.items() if len(gram) == 1)
        return _Vector(weights, norms, length)

    def _similarity(self, candidate: _Vector, reference: _Vector) -> np.ndarray:
        """(n,) clipped cosine similarity per n-gram order, times the length penalty."""
        values = np.zeros(self.n)
        for order, (cand, ref) in enumerate(zip(candidate.weights, reference.weights)):
            values[order] = sum(min(w, ref[gram]) * ref[gram] for gram, w in cand.items() if gram in ref)
        both = (candidate.norms != 0) & (reference.norms != 0)
        values[both] /= candidate.norms[both] * reference.norms[both]
        delta = candidate.length - reference.length
        return values * math.exp(-(delta * delta) / (2 * self.sigma**2))
