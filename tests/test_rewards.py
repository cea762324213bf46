"""CIDEr-D rewards: equal to pycocoevalcap's CIDEr-D on the same tokens and corpus."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from captioner.errors import CaptionerError
from captioner.evaluation.cider import CiderD, ngram_counts
from captioner.vocab import tokenize

WORDS = [
    "a",
    "the",
    "red",
    "blue",
    "green",
    "yellow",
    "circle",
    "square",
    "triangle",
    "on",
    "left",
    "right",
    "top",
    "bottom",
    "of",
    "to",
    "and",
    ",",
    "in",
    "corner",
]


def _corpus(seed: int, images: int = 30) -> tuple[dict[int, list[list[str]]], dict[int, list[str]]]:
    """Random references (2-5 per image, from a small vocabulary so n-grams repeat across
    images) and one candidate per image: a copy of a reference, a perturbed one, an empty one,
    one with words no reference has, one with a repeated n-gram."""
    rng = random.Random(seed)
    references, candidates = {}, {}
    for image_id in range(100, 100 + images):
        refs = [[rng.choice(WORDS) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(2, 5))]
        references[image_id] = refs
        kind = image_id % 5
        if kind == 0:
            candidates[image_id] = list(refs[0])
        elif kind == 1:
            candidates[image_id] = [w if rng.random() < 0.7 else rng.choice(WORDS) for w in refs[-1]] + ["and"]
        elif kind == 2:
            candidates[image_id] = []
        elif kind == 3:
            candidates[image_id] = ["zebra", *refs[0][:3], "unicorn"]
        else:
            candidates[image_id] = ["a", "red", "a", "red", "a", "red", "circle"]
    return references, candidates


def _pycocoevalcap(references: dict[int, list[list[str]]], candidates: dict[int, list[str]]) -> np.ndarray:
    gts = {i: [" ".join(r) for r in refs] for i, refs in references.items()}
    res = {i: [" ".join(candidates[i])] for i in references}
    _, per_image = Cider().compute_score(gts, res)
    return np.asarray(per_image)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocoevalcap_cider_d(seed):
    references, candidates = _corpus(seed)
    expected = _pycocoevalcap(references, candidates)
    ids = list(references)
    got = CiderD(references).score(ids, [candidates[i] for i in ids])
    assert expected.max() > 1.0  # the copies score high: a real comparison, not one of zeros
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_equals_pycocoevalcap_on_tokenized_captions():
    """References through the package's tokenizer (punctuation kept as tokens)."""
    raw = {
        1: ["A red circle in the top left corner.", "a red circle , top left", "Red circle at the top-left."],
        2: ["a blue square to the left of a green triangle", "a blue square and a green triangle"],
        3: ["a yellow triangle , a red circle and a blue square", "three shapes: triangle, circle, square"],
    }
    references = {i: [tokenize(c) for c in caps] for i, caps in raw.items()}
    candidates = {1: tokenize("a red circle in the top left"), 2: tokenize("a blue square ,"), 3: tokenize("a a a")}
    ids = list(references)
    np.testing.assert_allclose(
        CiderD(references).score(ids, [candidates[i] for i in ids]),
        _pycocoevalcap(references, candidates),
        rtol=0,
        atol=1e-6,
    )


def test_document_frequencies_fixed_by_the_corpus_not_the_batch():
    """A candidate's score depends only on its image and the corpus: scoring it alone, in a
    batch, or as one of several samples of its image gives the same number, equal to
    pycocoevalcap's over the whole corpus."""
    references, candidates = _corpus(3)
    ids = list(references)
    scorer = CiderD(references)
    corpus_scores = dict(zip(ids, _pycocoevalcap(references, candidates)))
    chosen = [ids[1], ids[0], ids[1], ids[6]]
    got = scorer.score(chosen, [candidates[i] for i in chosen])
    np.testing.assert_allclose(got, [corpus_scores[i] for i in chosen], rtol=0, atol=1e-6)
    # pycocoevalcap over a smaller set takes other document frequencies, hence other scores.
    subset = {i: references[i] for i in ids[:4]}
    assert not np.allclose(_pycocoevalcap(subset, candidates), [corpus_scores[i] for i in ids[:4]])


def test_perfect_candidate_beats_a_truncated_one():
    references = {1: [tokenize("a red circle on the left")] * 3, 2: [tokenize("a blue square at the top")] * 3}
    scorer = CiderD(references)
    full, truncated = scorer.score([1, 1], [tokenize("a red circle on the left"), tokenize("a red circle on the")])
    assert full > truncated > 0


def test_ngram_counts():
    counts = ngram_counts(["a", "b", "a", "b"], n=2)
    assert counts == {("a",): 2, ("b",): 2, ("a", "b"): 2, ("b", "a"): 1}


def test_errors_name_the_problem():
    with pytest.raises(CaptionerError, match="no reference caption"):
        CiderD({1: [["a"]], 2: []})
    with pytest.raises(CaptionerError, match=r"images \[7\] have no references"):
        CiderD({1: [["a"]]}).score([7], [["a"]])
