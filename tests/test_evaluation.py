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


def test_faithfulness_aggregates_join_when_every_image_has_its_test(no_coco_metrics):
    from captioner.evaluation.faithfulness import WordDeletion

    def deletion(no_look: list[float]) -> WordDeletion:
        # Order 0 (by α) loses the word at the first point, the one random order only at the end.
        n = len(no_look)
        curves = torch.tensor([[-3.0, -3.0], [-0.1, -0.1]]).expand(n, 2, 2)
        return WordDeletion(
            torch.full((n,), -0.1), torch.tensor(no_look), torch.tensor([0.25, 0.5]), curves, torch.ones(n)
        )

    first = _image(1, "a red circle")
    second = _image(2, "a circle")
    images = [
        dataclasses.replace(first, faithfulness=deletion([-3.0, -3.0, -0.1])),  # "a" is a function word: left out
        dataclasses.replace(second, faithfulness=deletion([-3.0, -3.0])),
    ]
    boxes = {1: [Box("circle", 0, 0, 8, 8)], 2: [Box("circle", 0, 0, 8, 8)]}
    scores = score_images(images, boxes, (2, 2))
    # Content words: red and the second circle, image-dependent and faithful; the first circle loses
    # nothing without its look.
    assert scores["deletion_words"] == 3 and scores["deletion_dependent_words"] == 2
    assert scores["deletion_faithfulness"] == 1.0 and scores["deletion_dependent_share"] == pytest.approx(2 / 3)
    assert scores["object_deletion_words"] == 2 and scores["object_deletion_dependent_words"] == 1
    assert "deletion_words" not in score_images([first], boxes, (2, 2))  # not run: not reported
