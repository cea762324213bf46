import dataclasses

import pytest
import torch

from captioner.data.records import Box
from captioner.evaluation import scores as evaluation
from captioner.evaluation.scores import DecodedImage, score_images


def _image(image_id: int, caption: str) -> DecodedImage:
    words = tuple(caption.split())
    return DecodedImage(image_id, caption, ("a red circle",), words, torch.full((len(words), 4), 0.25), (8, 8))


@pytest.fixture
def no_coco_metrics(monkeypatch):
    # The caption metrics are pycocoevalcap's (tested elsewhere); these tests are about what is added.
    monkeypatch.setattr(evaluation, "caption_scores", lambda references, captions, spice: {})


def test_mean_length_and_dangling_endings_count_each_image_once(no_coco_metrics):
    images = [
        _image(1, "a red circle"),
        _image(2, "a red circle and"),
        _image(3, "a circle ,"),
        _image(4, "The"),
        _image(2, "a red circle and"),  # a distributed sampler's duplicate
    ]
    scores = score_images(images, {}, (2, 2))
    assert scores["mean_length"] == pytest.approx((3 + 4 + 3 + 1) / 4)
    assert scores["dangling_endings"] == pytest.approx(3 / 4)
    assert "pointing_game" not in scores


def test_grounding_scores_join_when_the_split_has_boxes(no_coco_metrics):
    boxes = {1: [Box("circle", 0, 0, 8, 8)]}
    scores = score_images([_image(1, "a red circle")], boxes, (2, 2))
    assert scores["grounded_words"] == 1 and scores["dangling_endings"] == 0.0


def test_erasure_aggregates_join_when_every_image_has_its_test(no_coco_metrics):
    from captioner.evaluation.erasure import WordErasure

    def erasure(looked: list[float]) -> WordErasure:
        n = len(looked)
        log_p = torch.full((n,), -0.1)
        return WordErasure(log_p, torch.tensor(looked), torch.full((n, 2), -0.2), torch.ones(n), torch.full((n,), 0.25))

    first = _image(1, "a red circle")
    second = _image(2, "a circle")
    images = [
        dataclasses.replace(first, erasure=erasure([-0.1, -3.0, -0.1])),  # "a" is a function word: left out
        dataclasses.replace(second, erasure=erasure([-3.0, -3.0])),
    ]
    boxes = {1: [Box("circle", 0, 0, 8, 8)], 2: [Box("circle", 0, 0, 8, 8)]}
    scores = score_images(images, boxes, (2, 2))
    # Content words: red (faithful), circle (not: 0 < 0.1), circle (faithful).
    assert scores["erasure_words"] == 3 and scores["erasure_faithfulness"] == pytest.approx(2 / 3)
    assert scores["erasure_looked_drop"] == pytest.approx((2.9 + 0.0 + 2.9) / 3)
    assert scores["erasure_random_drop"] == pytest.approx(0.1)
    assert scores["object_erasure_words"] == 2 and scores["object_erasure_faithfulness"] == 0.5
    assert "erasure_words" not in score_images([first], boxes, (2, 2))  # not run: not reported
