"""COCO caption metrics (real pycocoevalcap + Java) and the grounding metrics."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from captioner.data import Box
from captioner.errors import CaptionerError
from captioner.evaluation.captions import caption_scores, per_image_cider
from captioner.evaluation.grounding import GroundingSample, coco_category_words, grounding_scores

REFERENCES = {
    1: ["A dog runs on the grass.", "a brown dog running across a field"],
    2: ["Two cats sleep on a sofa.", "two cats sleeping on a couch"],
    3: ["A red circle above a blue square.", "a circle over a square"],
}
KEYS = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}


def _meteor_children() -> list[int]:
    """Pids of METEOR Java processes started by this test process."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == os.getpid() and b"meteor" in cmdline:
            found.append(int(pid))
    return found


@pytest.fixture(scope="module")
def identical_scores():
    return caption_scores(REFERENCES, {i: refs[0] for i, refs in REFERENCES.items()})


def test_identical_candidates_score_perfect_bleu_and_high_cider(identical_scores):
    assert set(identical_scores) == KEYS
    assert all(isinstance(v, float) for v in identical_scores.values())
    assert identical_scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert identical_scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert identical_scores["CIDEr"] > 1.0
    assert identical_scores["METEOR"] > 0.5
    assert identical_scores["ROUGE-L"] > 0.9


def test_wrong_candidates_score_lower_and_meteor_process_is_closed(identical_scores):
    wrong = {1: "a plate of food on a table", 2: "a man riding a bike", 3: "a red circle"}
    scores = caption_scores(REFERENCES, wrong)
    for key in KEYS:
        assert scores[key] < identical_scores[key], key
    # Each call starts its own METEOR Java process; none may outlive the call.
    assert _meteor_children() == []


def test_empty_candidate_does_not_crash_and_scores_zero_for_its_image():
    candidates = {1: "a dog runs on the grass", 2: "", 3: "."}  # "." tokenizes to nothing
    scores = caption_scores(REFERENCES, candidates)
    assert set(scores) == KEYS
    assert 0.0 < scores["ROUGE-L"] < 1.0
    per_image = per_image_cider(REFERENCES, candidates)
    assert per_image[2] == 0.0 and per_image[3] == 0.0 and per_image[1] > 0.0


def test_mismatched_ids_raise():
    with pytest.raises(CaptionerError, match="one candidate per reference image"):
        caption_scores(REFERENCES, {1: "a dog", 2: "two cats"})
    with pytest.raises(CaptionerError, match="one candidate per reference image"):
        per_image_cider(REFERENCES, {1: "a", 2: "b", 3: "c", 4: "d"})


def test_spice_is_skipped_with_a_warning_when_corenlp_is_missing(monkeypatch):
    from pycocoevalcap.spice import get_stanford_models

    monkeypatch.setattr(get_stanford_models, "JAR", "no-such-corenlp")
    with pytest.warns(UserWarning, match="SPICE skipped"):
        scores = caption_scores({1: ["a dog"]}, {1: "a dog"}, spice=True)
    assert set(scores) == KEYS


# --------------------------------------------------------------------------- grounding

WORDS = {"circle": "circle", "circles": "circle", "square": "square", "triangle": "triangle"}


def test_pointing_game_hit_miss_and_absent_category():
    # 2x2 grid on a 100x100 image: cell centres (25,25) (75,25) (25,75) (75,75).
    boxes = [Box("circle", 0, 0, 50, 50), Box("square", 50, 50, 50, 50)]
    alphas = torch.tensor(
        [
            [0.25, 0.25, 0.25, 0.25],  # "a"  (not a category word)
            [0.70, 0.10, 0.10, 0.10],  # "circle": peak top-left, inside its box -> hit
            [0.10, 0.60, 0.10, 0.20],  # "square": peak top-right, box bottom-right -> miss
            [0.00, 0.00, 0.00, 1.00],  # <end>: extra row, ignored
        ]
    )
    first = GroundingSample(["a", "circle", "Square"], alphas, (2, 2), (100, 100), boxes)
    # No triangle in the second image: a miss on every score.
    second = GroundingSample(["triangle"], np.array([[0.0, 0.0, 1.0, 0.0]]), (2, 2), (100, 100), boxes)

    scores = grounding_scores([first, second], WORDS)

    assert scores["grounded_words"] == 3
    assert scores["pointing_game"] == pytest.approx((1 + 0 + 0) / 3)
    assert scores["attention_in_box"] == pytest.approx((0.7 + 0.2 + 0.0) / 3)
    assert scores["chance_pointing_game"] == pytest.approx((0.25 + 0.25 + 0.0) / 3)


def test_uniform_attention_scores_exactly_the_chance_rate():
    # 4x4 grid on an 80x40 image; the box is the top-left quarter: 4 of 16 cell centres.
    boxes = [Box("circle", 0, 0, 40, 20)]
    uniform = np.full((1, 16), 1 / 16)
    sample = GroundingSample(["circles"], uniform, (4, 4), (80, 40), boxes)

    scores = grounding_scores([sample], WORDS)

    assert scores["chance_pointing_game"] == pytest.approx(0.25)  # the box's share of the image
    assert scores["pointing_game"] == pytest.approx(0.25)
    assert scores["attention_in_box"] == pytest.approx(0.25)


def test_no_category_words_gives_nan():
    sample = GroundingSample(["a", "dog"], np.eye(2, 4), (2, 2), (10, 10), [])
    scores = grounding_scores([sample], WORDS)
    assert scores["grounded_words"] == 0
    assert np.isnan(scores["pointing_game"])


def test_grounding_rejects_alphas_that_do_not_match_the_grid():
    sample = GroundingSample(["circle"], np.ones((1, 5)), (2, 2), (10, 10), [])
    with pytest.raises(CaptionerError, match="grid"):
        grounding_scores([sample], WORDS)


def test_coco_category_words_adds_plurals_and_head_nouns():
    words = coco_category_words(["person", "bus", "dog", "hot dog", "cell phone", "teddy bear", "skis"])
    assert words["person"] == words["people"] == "person"
    assert words["bus"] == words["buses"] == "bus"
    assert words["dog"] == words["dogs"] == "dog"  # "hot dog" does not take "dog"
    assert words["phone"] == words["phones"] == "cell phone"
    assert words["bear"] == "teddy bear"
    assert words["skis"] == "skis"
