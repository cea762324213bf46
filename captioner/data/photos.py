"""A synthetic captioning family on real photographs: plain-coloured figures told apart by shape alone.

    captioner data synth --kind photos --out data/photos --train 2000 --val 200 --test 200 --size 96

Each image is a random crop of a real photograph (`photographs/`, public domain or CC0, see
`photographs/LICENSES.md`), zoomed in or out and maybe mirrored, chosen busy: texture and clutter
from edge to edge. On it sit one to four figures of six kinds (`CATEGORIES`), each tilted a
little, maybe mirrored, its long side 15-35% of the image side (at most 30% with three, 26%
with four) and its short side never under 14% (more than a cell of an 8x8 grid). Each is filled
with one colour drawn for it alone, never from its kind, so only the silhouette tells kinds
apart; the colour is redrawn until it stands out from the ground just around the figure (see
`_MIN_CONTRAST`), and a faint linear shading runs across it. Boxes in `instances_*.json` are the
figures' tight frames: every pixel a figure touches lies inside its box, and each edge is touched.

The photographs are held out by split (`PHOTOS`): the test split's grounds come from two photos
that neither training nor validation ever shows, and validation has two of its own, so that
choosing a checkpoint or a setting on val rewards what the test measures: grounding on
photographs the model has never seen.

Captions have a grammar of their own: figures are named by kind only, grouped with counts in
the order of each kind's topmost figure, or one by one from the top or the bottom:

    two hearts and a moon on a photo
    a photo with two hearts and a moon
    three shapes over a photo : two hearts and a moon
    from the top : a heart , then a moon , then a heart
    from the bottom : a heart , then a moon , then a heart

Figure centres are at least `MIN_Y_GAP` of the side apart vertically, so the order is never a
close call. Every reference names every figure once (a count word and a plural name as many),
in at most 20 words; category names and their plurals occur only as names.

The layout, formats and determinism are those of the shapes family (`synth.write_dataset`),
with the Karpathy file `dataset_photos.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from captioner.data.synth import MARGIN, SPLITS, Instance, PixelFrame, all_apart, clearly_ordered, write_dataset
from captioner.errors import CaptionerError

CATEGORIES = ("heart", "moon", "hexagon", "bolt", "hourglass", "arch")  # COCO category ids 1..6
ARTICLES = {"heart": "a", "moon": "a", "hexagon": "a", "bolt": "a", "hourglass": "an", "arch": "an"}
# The plurals the grounding scores map to their kinds (`coco_category_words`).
PLURALS = {
    "heart": "hearts",
    "moon": "moons",
    "hexagon": "hexagons",
    "bolt": "bolts",
    "hourglass": "hourglasses",
    "arch": "arches",
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
# Split -> the photographs its grounds are cropped from (files in PHOTO_DIR); no photo is in two splits.
PHOTOS = {
    "train": ("astronaut", "camera", "grace_hopper", "grass", "hubble_deep_field"),
    "val": ("chelsea", "brick"),
    "test": ("coffee", "gravel"),
}
PHOTO_DIR = Path(__file__).with_name("photographs")
LONG_SIDE = {1: (0.15, 0.35), 2: (0.15, 0.35), 3: (0.15, 0.30), 4: (0.15, 0.26)}  # by figure count, of the side
MIN_EXTENT = 0.14  # a box's shorter side, of the image side: more than an 8x8 grid's cell (0.125)
MIN_Y_GAP = 0.07  # of the image side, between figure centres along y (their order in the captions)
_MAX_TILT = 20  # degrees either way
_SUPERSAMPLE = 4  # outlines are filled at 4x and averaged down: antialiased edges
_ZOOM_IN = 0.75  # the smallest crop, of the image side (read 1.33x enlarged); the largest is the photo's short side
_MIN_CLUTTER = 10.0  # grey levels: mean step between neighbouring pixels of a busy ground
_GROUND_TRIES = 12  # crops tried for one busy enough (else the busiest)
_MIN_CONTRAST = 100.0  # RGB distance the fill keeps from 3 in 4 ground pixels just around its figure
_COLOUR_TRIES = 20
_MAX_SHADING = 0.12  # brightness change over half the figure's frame, at most


def _normalised(points: list[tuple[float, float]]) -> np.ndarray:
    """(N, 2) outline centred on its frame, the frame's longer side 2 (x right, y down)."""
    pts = np.array(points, dtype=np.float64)
    low, high = pts.min(axis=0), pts.max(axis=0)
    return (pts - (low + high) / 2) * 2 / (high - low).max()


def _crescent(inner_radius: float = 0.8, offset: float = 0.5) -> list[tuple[float, float]]:
    """The unit disc less a disc of `inner_radius` shifted right by `offset`: horns to the right."""
    x = (1 + offset**2 - inner_radius**2) / (2 * offset)  # where the two circles cross, at (x, ±y)
    y = math.sqrt(1 - x**2)
    outer_from, inner_from = math.atan2(y, x), math.atan2(y, x - offset)
    outer = [(math.cos(a), math.sin(a)) for a in np.linspace(outer_from, 2 * math.pi - outer_from, 40)]
    inner = [
        (offset + inner_radius * math.cos(a), inner_radius * math.sin(a))
        for a in np.linspace(2 * math.pi - inner_from, inner_from, 32)[1:-1]
    ]
    return outer + inner


def _arch() -> list[tuple[float, float]]:
    """A round arch: legs 0.5 wide under a half ring, open at the bottom."""
    outer = [(0.9 * math.cos(a), -0.1 + 0.9 * math.sin(a)) for a in np.linspace(math.pi, 2 * math.pi, 24)]
    inner = [(0.4 * math.cos(a), -0.1 + 0.4 * math.sin(a)) for a in np.linspace(2 * math.pi, math.pi, 16)]
    return [(-0.9, 1.0), *outer, (0.9, 1.0), (0.4, 1.0), *inner, (-0.4, 1.0)]


def _heart() -> list[tuple[float, float]]:
    return [
        (16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
        for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)
    ]


# Kind -> its outline, upright; chosen to stay distinct at 8-20 px (a notch and a point, a bite,
# a near-disc, a zigzag, a waist, a hole open at the bottom).
OUTLINES = {
    "heart": _normalised(_heart()),
    "moon": _normalised(_crescent()),
    "hexagon": _normalised([(math.cos(a), math.sin(a)) for a in np.arange(6) * math.pi / 3]),
    "bolt": _normalised([(0.14, -1), (0.95, -1), (0.34, -0.15), (0.88, -0.15), (-0.47, 1), (-0.07, 0.2), (-0.61, 0.2)]),
    "hourglass": _normalised([(-0.8, -1), (0.8, -1), (0.12, 0), (0.8, 1), (-0.8, 1), (-0.12, 0)]),
    "arch": _normalised(_arch()),
}


@dataclass(frozen=True, eq=False)
class Figure(PixelFrame):
    """One drawn figure: its kind, and its coverage placed with the top-left corner at (x, y);
    its box is the coverage's."""

    kind: str
    x: int
    y: int
    coverage: np.ndarray  # (h, w) in [0, 1], cropped to the figure: every edge row/column is touched
    outline: np.ndarray  # (N, 2) its outline in the coverage's pixels

    @property
    def w(self) -> int:
        return self.coverage.shape[1]

    @property
    def h(self) -> int:
        return self.coverage.shape[0]

    @property
    def phrase(self) -> str:
        return f"{ARTICLES[self.kind]} {self.kind}"


def _silhouette(kind: str, long_side: float, tilt: float, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (h, w) in [0, 1] of the kind's outline, mirrored, tilted by `tilt` degrees and
    scaled to a frame whose longer side is `long_side` pixels, cropped to the pixels it touches;
    and the outline in those pixels."""
    a = math.radians(tilt)
    pts = OUTLINES[kind] * [(-1.0 if mirror else 1.0), 1.0]
    pts = pts @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = pts * long_side / (pts.max(axis=0) - pts.min(axis=0)).max()
    pts = pts - pts.min(axis=0) + 1  # a pixel of room on every side
    width, height = (math.ceil(v) + 2 for v in pts.max(axis=0))
    canvas = Image.new("L", (width * _SUPERSAMPLE, height * _SUPERSAMPLE), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts * _SUPERSAMPLE], fill=255)
    mask = canvas.resize((width, height), Image.BOX)
    x0, y0, x1, y1 = mask.getbbox()
    coverage = np.asarray(mask.crop((x0, y0, x1, y1)), dtype=np.float64) / 255
    # The outline in the cropped pixels, kept inside them (rasterising may round a sliver off).
    outline = np.clip(pts - (x0, y0), 0, (x1 - x0, y1 - y0))
    return coverage, outline


def _sample_silhouette(
    rng: np.random.Generator, size: int, long_side: tuple[float, float]
) -> tuple[str, np.ndarray, np.ndarray]:
    kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    while True:
        coverage, outline = _silhouette(
            kind,
            float(rng.uniform(*long_side)) * size,
            float(rng.uniform(-_MAX_TILT, _MAX_TILT)),
            bool(rng.random() < 0.5),
        )
        if min(coverage.shape) >= MIN_EXTENT * size:
            return kind, coverage, outline


def _layout_ok(figures: list[Figure], size: int) -> bool:
    """Frames at least the margin apart, and the top-to-bottom order clear."""
    return all_apart(figures, MARGIN * size) and clearly_ordered([f.cy for f in figures], MIN_Y_GAP * size)


def _sample_figures(rng: np.random.Generator, size: int) -> list[Figure]:
    count = int(rng.integers(1, 5))
    margin = round(MARGIN * size)
    while True:
        silhouettes = [_sample_silhouette(rng, size, LONG_SIDE[count]) for _ in range(count)]
        for _ in range(20):  # places for these silhouettes before drawing new ones
            figures = [
                Figure(
                    kind,
                    int(rng.integers(margin, size - margin - coverage.shape[1] + 1)),
                    int(rng.integers(margin, size - margin - coverage.shape[0] + 1)),
                    coverage,
                    outline,
                )
                for kind, coverage, outline in silhouettes
            ]
            if _layout_ok(figures, size):
                return figures


@cache
def _photo(name: str) -> Image.Image:
    with Image.open(PHOTO_DIR / f"{name}.jpg") as image:
        return image.convert("RGB")


def _clutter(pixels: np.ndarray) -> float:
    """Mean absolute step between neighbouring pixels, in grey levels, of an (H, W, 3) image."""
    grey = pixels.astype(np.float64).mean(axis=2)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()) / 2


def ground(rng: np.random.Generator, size: int, photos: tuple[str, ...]) -> np.ndarray:
    """A busy (size, size, 3) uint8 crop of one of `photos`, at a random place and zoom, maybe mirrored."""
    photo = _photo(photos[int(rng.integers(len(photos)))])
    shortest = min(photo.size)
    low = min(_ZOOM_IN * size, shortest)
    busiest, most = None, -1.0
    for _ in range(_GROUND_TRIES):
        side = math.exp(rng.uniform(math.log(low), math.log(shortest)))
        x0, y0 = rng.uniform(0, photo.width - side), rng.uniform(0, photo.height - side)
        crop = photo.resize((size, size), Image.LANCZOS, box=(x0, y0, x0 + side, y0 + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(crop)
        clutter = _clutter(pixels)
        if clutter >= _MIN_CLUTTER:
            return pixels
        if clutter > most:
            busiest, most = pixels, clutter
    return busiest


def _fill_colour(rng: np.random.Generator, around: np.ndarray) -> np.ndarray:
    """A colour drawn uniformly in RGB until 3 in 4 of the `around` (N, 3) ground pixels lie at
    least `_MIN_CONTRAST` from it (else the best of the draws): the figure's edge stays visible
    on a busy ground, while how much it stands out still varies."""
    best, best_contrast = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.integers(0, 256, size=3).astype(np.float64)
        contrast = float(np.percentile(np.linalg.norm(around - colour, axis=1), 25))
        if contrast >= _MIN_CONTRAST:
            return colour
        if contrast > best_contrast:
            best, best_contrast = colour, contrast
    return best


def paint(ground_pixels: np.ndarray, figures: list[Figure], rng: np.random.Generator) -> np.ndarray:
    """Draw `figures` over a (size, size, 3) uint8 ground; pixels outside them stay as they are."""
    size = ground_pixels.shape[0]
    image = ground_pixels.astype(np.float64)
    for f in figures:
        inside = np.zeros((size, size), dtype=np.uint8)
        inside[f.y : f.y + f.h, f.x : f.x + f.w] = (f.coverage > 0) * 255
        near = np.asarray(Image.fromarray(inside).filter(ImageFilter.MaxFilter(5))) > 0
        colour = _fill_colour(rng, ground_pixels[near & (inside == 0)].astype(np.float64))
        # Light falling from one side: brightness 1 ± _MAX_SHADING·strength across the figure.
        angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(0, _MAX_SHADING)
        rows, cols = np.mgrid[0 : f.h, 0 : f.w]
        along = ((cols - f.w / 2) * math.cos(angle) + (rows - f.h / 2) * math.sin(angle)) / (max(f.w, f.h) / 2)
        fill = np.clip(colour * (1 + strength * along)[..., None], 0, 255)
        cover = f.coverage[..., None]
        window = image[f.y : f.y + f.h, f.x : f.x + f.w]
        window[...] = window * (1 - cover) + fill * cover
    return np.rint(image).astype(np.uint8)


def _listing(figures: list[Figure]) -> str:
    """Kinds with their counts, in the order of each kind's topmost figure: "two hearts and a moon"."""
    kinds = list(dict.fromkeys(f.kind for f in sorted(figures, key=lambda f: f.cy)))
    counts = {kind: sum(f.kind == kind for f in figures) for kind in kinds}
    groups = [
        f"{ARTICLES[kind]} {kind}" if counts[kind] == 1 else f"{COUNT_WORDS[counts[kind]]} {PLURALS[kind]}"
        for kind in kinds
    ]
    return groups[0] if len(groups) == 1 else " , ".join(groups[:-1]) + " and " + groups[-1]


def captions_for(figures: list[Figure]) -> list[str]:
    """The five references for an image (module docstring); the first is the canonical template."""
    listing = _listing(figures)
    count = len(figures)
    head = f"{COUNT_WORDS[count]} {'shape' if count == 1 else 'shapes'} over a photo :"
    if count == 1:
        (figure,) = figures
        one_by_one = [f"just {figure.phrase} over a photo", f"{figure.phrase} pasted on a photograph"]
    else:
        top_down = [f.phrase for f in sorted(figures, key=lambda f: f.cy)]
        one_by_one = [
            f"from the top : {' , then '.join(top_down)}",
            f"from the bottom : {' , then '.join(top_down[::-1])}",
        ]
    return [f"{listing} on a photo", f"a photo with {listing}", f"{head} {listing}", *one_by_one]


def _sample_image(
    rng: np.random.Generator, size: int, *, photos: tuple[str, ...]
) -> tuple[Image.Image, list[str], list[Instance]]:
    pixels = ground(rng, size, photos)
    figures = _sample_figures(rng, size)
    image = Image.fromarray(paint(pixels, figures, rng))
    objects = [
        Instance(
            f.kind, f.bbox, round(float(f.coverage.sum()), 2), [tuple(p) for p in f.outline + np.array([f.x, f.y])]
        )
        for f in figures
    ]
    return image, captions_for(figures), objects


def generate(
    out_dir: str | Path, *, train: int = 2000, val: int = 200, test: int = 200, size: int = 96, seed: int = 0
) -> Path:
    """Write the photos set under `out_dir` (the shapes layout, `dataset_photos.json`); returns it."""
    if size < 64:
        raise CaptionerError(f"size must be at least 64 pixels for four figures a grid can tell apart, got {size}")
    counts = {"train": train, "val": val, "test": test}
    samplers = {split: partial(_sample_image, photos=PHOTOS[split]) for split in SPLITS}
    return write_dataset(
        out_dir, kind="photos", categories=CATEGORIES, sample=samplers, counts=counts, size=size, seed=seed
    )
