"""A synthetic captioning data set of coloured shapes, written in the real COCO formats.

    captioner data synth --out data/shapes --train 2000 --val 200 --test 200 --size 128

Each image is a dark, slightly noisy background with 1 to 3 non-overlapping shapes (circle,
square, triangle) in one of four clearly distinct colours, each 20-35% of the image side
(up to 28% when there are three, so they fit side by side).
Its five reference captions name every shape, its colour and where it is: one shape by its
cell of a 3x3 grid ("a red circle in the top left corner"), two shapes by their relation
along the axis on which they are clearly apart ("a red circle to the left of a blue
square"), three shapes left to right ("a red circle , a blue square and a green triangle").
The first reference always follows the same template, so a model can learn it exactly; to
say it, the model must attend to the right region, which makes the set a test of attention.

Layout under `out_dir` (the official COCO layout, plus a Karpathy-split file):

    <split>/<image_id:012d>.png                 split in train, val, test
    annotations/captions_<split>.json           COCO captions
    annotations/instances_<split>.json          COCO instances: box, polygon, area per shape
    dataset_shapes.json                         Karpathy-split file over the same images

`write_dataset` is that writer for any family (`captioner.data.glyphs`, `.scenes` and `.photos` use it too).

Image ids are unique across splits. Image `i` is drawn from its own generator seeded with
`(seed, i)`, so the output is byte-identical for a seed.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw

from captioner.errors import CaptionerError
from captioner.vocab import tokenize

CATEGORIES = ("circle", "square", "triangle")  # COCO category ids 1, 2, 3
COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (50, 200, 70),
    "blue": (50, 100, 240),
    "yellow": (235, 215, 40),
}
SPLITS = ("train", "val", "test")
# Position phrase of a single shape by the 3x3 grid cell [row][column] holding its centre.
GRID_PHRASES = (
    ("in the top left corner", "at the top", "in the top right corner"),
    ("on the left", "in the center", "on the right"),
    ("in the bottom left corner", "at the bottom", "in the bottom right corner"),
)
CAPTIONS_PER_IMAGE = 5
MARGIN = 0.03  # of the image side: gap to the border and between objects (glyphs too)
_COLOUR_JITTER = 12
_NOISE = 3  # background noise amplitude in grey levels; small, so PNGs stay small


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its kind, colour word and square box (centre and side in pixels)."""

    kind: str
    colour: str
    cx: float
    cy: float
    side: float

    @property
    def bbox(self) -> list[float]:
        """COCO xywh box, from rounded corners so that it encloses the rounded polygon exactly."""
        half = self.side / 2
        x0, y0, x1, y1 = (round(v, 2) for v in (self.cx - half, self.cy - half, self.cx + half, self.cy + half))
        return [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]

    @property
    def polygon(self) -> list[tuple[float, float]]:
        """Outline of the shape (a 24-gon for the circle)."""
        cx, cy, h = self.cx, self.cy, self.side / 2
        if self.kind == "circle":
            return [
                (cx + h * math.cos(a), cy + h * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)
            ]
        if self.kind == "square":
            return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]  # triangle, apex up

    @property
    def area(self) -> float:
        factor = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[self.kind]
        return round(factor * self.side**2, 2)

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.kind}"

    @property
    def w(self) -> float:
        return self.side

    @property
    def h(self) -> float:
        return self.side


def _sample_shapes(rng: np.random.Generator, size: int) -> list[Shape]:
    count = int(rng.integers(1, 4))
    high = 0.35 if count < 3 else 0.28  # three shapes need a little more room
    margin = MARGIN * size
    while True:
        shapes = []
        for _ in range(count):
            side = float(rng.uniform(0.20, high)) * size
            lo, hi = side / 2 + margin, size - side / 2 - margin
            if count == 1:
                # Centre near the middle of a random 3x3 cell, pulled inside the image if needed.
                row, col = rng.integers(0, 3, size=2)
                cx, cy = ((np.array([col, row]) + 0.5 + rng.uniform(-0.15, 0.15, size=2)) * size / 3).tolist()
                cx, cy = min(max(cx, lo), hi), min(max(cy, lo), hi)
            else:
                cx, cy = rng.uniform(lo, hi, size=2).tolist()
            kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            colour = list(COLOUR_WORDS)[int(rng.integers(len(COLOUR_WORDS)))]
            shapes.append(Shape(kind, colour, cx, cy, side))
        if layout_ok(shapes, size):
            return shapes


def grid_phrase(item: Placed, size: int) -> str:
    """Position phrase of an object from the 3x3 grid cell holding its centre."""
    col, row = (min(int(v * 3 / size), 2) for v in (item.cx, item.cy))
    return GRID_PHRASES[row][col]


class Placed(Protocol):
    """What the layout rule and the caption templates need of an object: its box's centre and
    size (w, h) in pixels, and how to name it."""

    cx: float
    cy: float
    w: float
    h: float

    @property
    def phrase(self) -> str: ...


class PixelFrame:
    """For an object drawn at whole pixels with its top-left corner at (x, y) and its extent
    `w`, `h` (the subclass gives all four): its centre and its COCO box, pixel columns
    x .. x+w-1 and rows y .. y+h-1."""

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def bbox(self) -> list[float]:
        return [float(self.x), float(self.y), float(self.w), float(self.h)]


def layout_ok(items: Sequence[Placed], size: int) -> bool:
    """No two boxes closer than the margin, and the relation the captions will state is
    unambiguous: two objects clearly apart along the stated axis and clearly more than along
    the other; three (named in a row) clearly apart from left to right."""
    gap = MARGIN * size
    if not all_apart(items, gap):
        return False
    if len(items) == 2:
        a, b = items
        dx, dy = abs(a.cx - b.cx), abs(a.cy - b.cy)
        reach = (a.w + b.w) / 2 if dx >= dy else (a.h + b.h) / 2
        return max(dx, dy) >= reach + gap and min(dx, dy) <= 0.5 * max(dx, dy)
    if len(items) == 3:
        return clearly_ordered([item.cx for item in items], 0.18 * size)
    return True


def all_apart(items: Sequence[Placed], gap: float) -> bool:
    """True when every two boxes are at least `gap` apart along x or y."""
    return all(
        abs(a.cx - b.cx) >= (a.w + b.w) / 2 + gap or abs(a.cy - b.cy) >= (a.h + b.h) / 2 + gap
        for a, b in itertools.combinations(items, 2)
    )


def clearly_ordered(positions: Sequence[float], gap: float) -> bool:
    """True when the positions, sorted, are each at least `gap` past the one before."""
    ordered = sorted(positions)
    return all(b - a >= gap for a, b in itertools.pairwise(ordered))


def describe(
    items: Sequence[Placed], size: int, *, alone: Callable[[Any, str], tuple[str, str]], row: tuple[str, str]
) -> list[str]:
    """The five references for an image of one to three objects; the first is the canonical
    template. `alone(item, where)` gives the two family-specific captions of a lone object,
    `row` the two headings of a row of three ("three shapes", ...)."""
    if len(items) == 1:
        (item,) = items
        where = grid_phrase(item, size)
        first, second = alone(item, where)
        return [
            f"{item.phrase} {where}",
            f"there is {item.phrase} {where}",
            first,
            second,
            f"{item.phrase} on a dark background",
        ]
    if len(items) == 2:
        a, b = items
        if abs(a.cx - b.cx) >= abs(a.cy - b.cy):
            first, second = sorted(items, key=lambda i: i.cx)
            relation, reverse = "to the left of", "to the right of"
        else:
            first, second = sorted(items, key=lambda i: i.cy)
            relation, reverse = "above", "below"
        return [
            f"{first.phrase} {relation} {second.phrase}",
            f"{second.phrase} {reverse} {first.phrase}",
            f"{first.phrase} and {second.phrase}",
            f"{first.phrase} next to {second.phrase}",
            f"there is {first.phrase} {relation} {second.phrase}",
        ]
    left, middle, right = sorted(items, key=lambda i: i.cx)
    listing = f"{left.phrase} , {middle.phrase} and {right.phrase}"
    return [
        listing,
        f"{listing} from left to right",
        f"{row[0]} : {listing}",
        f"{left.phrase} on the left , {right.phrase} on the right and {middle.phrase} between them",
        f"{row[1]} : {listing}",
    ]


def captions_for(shapes: list[Shape], size: int) -> list[str]:
    """The five references for an image of shapes; the first is the canonical template."""
    return describe(
        shapes,
        size,
        alone=lambda s, where: (
            f"a single {s.colour} {s.kind} {where}",
            f"one {s.colour} {s.kind} {where} of the image",
        ),
        row=("three shapes", "there are three shapes"),
    )


def render(shapes: list[Shape], size: int, rng: np.random.Generator) -> Image.Image:
    """Draw `shapes` on a dark noisy background; (size, size) RGB image."""
    base = rng.integers(15, 46) + rng.integers(-5, 6, size=3)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in base))
    draw = ImageDraw.Draw(image)
    for s in shapes:
        fill = np.clip(np.array(COLOUR_WORDS[s.colour]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255)
        fill = tuple(int(v) for v in fill)
        if s.kind == "circle":
            x, y, w, _ = s.bbox
            draw.ellipse([x, y, x + w, y + w], fill=fill)
        else:
            draw.polygon(s.polygon, fill=fill)
    # Grey-level noise shared by the three channels: looks like sensor noise, compresses well.
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(size, size, 1), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


@dataclass(frozen=True)
class Instance:
    """One drawn object as the instances file lists it: category name, COCO xywh box, area, polygon."""

    category: str
    bbox: list[float]
    area: float
    polygon: list[tuple[float, float]]


# (generator, size) -> (image, its reference captions, its objects); one call per image.
Sampler = Callable[[np.random.Generator, int], tuple[Image.Image, list[str], list[Instance]]]


def write_dataset(
    out_dir: str | Path,
    *,
    kind: str,
    categories: Sequence[str],
    sample: Sampler | Mapping[str, Sampler],
    counts: dict[str, int],
    size: int,
    seed: int,
) -> Path:
    """Write a synthetic family under `out_dir` (layout in the module docstring, Karpathy file
    `dataset_<kind>.json`); image `i` comes from `sample` called with a generator seeded `(seed, i)`.
    `sample` may be a mapping split -> sampler, for a family whose splits draw from different
    sources (photos: the test split's grounds come from photographs training never sees)."""
    if any(n < 0 for n in counts.values()) or counts["train"] < 1:
        raise CaptionerError(f"image counts must be >= 0 and train >= 1, got {counts}")
    out = Path(out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    category_list = [{"id": i + 1, "name": name, "supercategory": kind} for i, name in enumerate(categories)]
    karpathy_images = []
    image_id = caption_id = instance_id = 0
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
        split_sample = sample[split] if isinstance(sample, Mapping) else sample
        images, captions, instances = [], [], []
        for _ in range(counts[split]):
            image_id += 1
            image, texts, objects = split_sample(np.random.default_rng([seed, image_id]), size)
            file_name = f"{image_id:012d}.png"
            # Level 3 encodes faster than Pillow's default 6 for about the same file size here.
            image.save(out / split / file_name, format="PNG", compress_level=3)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            sentences = []
            for text in texts:
                caption_id += 1
                captions.append({"id": caption_id, "image_id": image_id, "caption": text})
                sentences.append({"raw": text, "tokens": tokenize(text), "imgid": image_id - 1, "sentid": caption_id})
            for obj in objects:
                instance_id += 1
                instances.append(
                    {
                        "id": instance_id,
                        "image_id": image_id,
                        "category_id": categories.index(obj.category) + 1,
                        "bbox": obj.bbox,
                        "area": obj.area,
                        "iscrowd": 0,
                        "segmentation": [[round(v, 2) for point in obj.polygon for v in point]],
                    }
                )
            karpathy_images.append(
                {
                    "filepath": split,
                    "filename": file_name,
                    "imgid": image_id - 1,
                    "cocoid": image_id,
                    "split": split,
                    "sentids": [s["sentid"] for s in sentences],
                    "sentences": sentences,
                }
            )
        info = {"description": f"synthetic {kind} ({split})", "version": "1.0", "seed": seed}
        _write_json(
            out / "annotations" / f"captions_{split}.json", {"info": info, "images": images, "annotations": captions}
        )
        _write_json(
            out / "annotations" / f"instances_{split}.json",
            {"info": info, "images": images, "annotations": instances, "categories": category_list},
        )
    _write_json(out / f"dataset_{kind}.json", {"dataset": kind, "images": karpathy_images})
    return out


def _sample_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[str], list[Instance]]:
    shapes = _sample_shapes(rng, size)
    image = render(shapes, size, rng)
    return image, captions_for(shapes, size), [Instance(s.kind, s.bbox, s.area, s.polygon) for s in shapes]


def generate(
    out_dir: str | Path, *, train: int = 2000, val: int = 200, test: int = 200, size: int = 128, seed: int = 0
) -> Path:
    """Write the synthetic shapes set under `out_dir` (layout in the module docstring); returns `out_dir`.

    Existing files of the same names are overwritten.
    """
    if size < 32:
        raise CaptionerError(f"size must be at least 32 pixels to fit three shapes, got {size}")
    counts = {"train": train, "val": val, "test": test}
    return write_dataset(
        out_dir, kind="shapes", categories=CATEGORIES, sample=_sample_image, counts=counts, size=size, seed=seed
    )
