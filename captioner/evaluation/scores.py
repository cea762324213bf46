"""Evaluation of free-running captions: gather across ranks -> score -> ground.

The Lightning system decodes each batch into `DecodedImage`s and hands them here at the
end of a validation or test epoch; this unit knows nothing about training.

    images = gather_across_ranks(local_images, world_size)      # every rank calls this
    scores = score_images(images, boxes, grid, spice=False)      # rank 0 only: Java runs here

Scores are the COCO caption metrics, the captions' mean length and the share that end on a
word that cannot end an English caption (`dangling_endings`: "a", "an", "the", "and" or a
comma; what a degenerate caption looks like after self-critical training), plus, where the
split has boxes, the grounding scores and how many words they were computed over
(`grounded_words`), so a pointing game over 3 words is not mistaken for one over 3,000; and,
when the images carry their deletion tests, the faithfulness aggregates (`deletion_faithfulness`,
...; `object_deletion_*` where the split has boxes; see `captioner.evaluation.faithfulness`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from captioner.data.records import Box
from captioner.evaluation.captions import caption_scores
from captioner.evaluation.faithfulness import WordDeletion, faithfulness_scores
from captioner.evaluation.grounding import GroundingSample, coco_category_words, grounding_scores

DANGLING_WORDS = frozenset({"a", "an", "the", "and", ","})


@dataclass(frozen=True)
class DecodedImage:
    """One evaluated image: its caption, references, and the attention behind each word.

    alphas: (L, P) float CPU tensor, one row per word of `words`; size: the image's (W, H)
    before resizing, the pixels its boxes are given in; faithfulness: its words' deletion tests,
    when run.
    """

    image_id: int
    caption: str
    references: tuple[str, ...]
    words: tuple[str, ...]
    alphas: torch.Tensor
    size: tuple[int, int]
    faithfulness: WordDeletion | None = None


def gather_across_ranks(images: list[DecodedImage], world_size: int) -> list[DecodedImage]:
    """Every rank's images, on every rank (a collective: all ranks must call it). The
    distributed sampler's padding duplicates stay in; `score_images` counts each id once."""
    if world_size <= 1:
        return images
    gathered: list[list[DecodedImage]] = [[] for _ in range(world_size)]
    torch.distributed.all_gather_object(gathered, images)
    return [image for rank_images in gathered for image in rank_images]


def score_images(
    images: Sequence[DecodedImage],
    boxes: Mapping[int, Sequence[Box]],
    grid: tuple[int, int],
    *,
    spice: bool = False,
) -> dict[str, float]:
    """COCO caption metrics over the images (each image id once), and with `boxes` (image id ->
    boxes; empty when the split has none) `pointing_game`, `attention_in_box`,
    `chance_pointing_game` and `grounded_words`; always `mean_length` (words) and
    `dangling_endings` (share of captions); the faithfulness aggregates when every image has its
    deletion test. {} when there are no images."""
    by_image = {image.image_id: image for image in images}
    if not by_image:
        return {}
    scores = caption_scores(
        {i: list(image.references) for i, image in by_image.items()},
        {i: image.caption for i, image in by_image.items()},
        spice=spice,
    )
    words = [image.words for image in by_image.values()]
    scores["mean_length"] = sum(map(len, words)) / len(words)
    scores["dangling_endings"] = sum(
        bool(caption) and caption[-1].lower() in DANGLING_WORDS for caption in words
    ) / len(words)
    if boxes:
        scores.update(grounding_of(list(by_image.values()), boxes, grid))
    if all(image.faithfulness is not None for image in by_image.values()):
        deletions = [image.faithfulness for image in by_image.values()]
        categories = sorted({box.category for image_boxes in boxes.values() for box in image_boxes})
        scores.update(faithfulness_scores(words, deletions, coco_category_words(categories) if boxes else None))
    return scores


def grounding_of(
    images: Sequence[DecodedImage], boxes: Mapping[int, Sequence[Box]], grid: tuple[int, int]
) -> dict[str, float]:
    """The grounding scores (`grounding_scores`) of decoded images against their boxes."""
    samples = [
        GroundingSample(image.words, image.alphas, grid, image.size, boxes.get(image.image_id, [])) for image in images
    ]
    categories = sorted({box.category for image_boxes in boxes.values() for box in image_boxes})
    grounding = grounding_scores(samples, coco_category_words(categories))
    return {name: float(value) for name, value in grounding.items()}
