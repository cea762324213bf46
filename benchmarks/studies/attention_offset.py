"""Where attention peaks relative to the object a word names, and where each grid cell's feature comes from.

    python -m benchmarks.studies.attention_offset geometry [--image-sizes 64 96 128] [--stages 1 2 3] [--grid 8]
    python -m benchmarks.studies.attention_offset oracle DATA_DIR [--image-size 64] [--stages 1 2 3] [--grid 8]
    python -m benchmarks.studies.attention_offset peaks CHECKPOINT DATA_DIR [--split test] [--images 200]

`geometry` needs no training: for a ResNet-18 trunk cut after each of `--stages`, at each
image size, it prints one JSON line with the trunk's stride and centre offset, and for every
grid cell the centre of the image region its pooled feature is computed from
(`Encoder.feature_centres`) minus the cell centre that grounding and the overlays draw it at;
with and without `align_grid`. It also checks the other place a shift could come in: a bright
dot resized from the data's size to `image_size` keeps its centre.

`oracle` needs no training either: it scores, on a data set's boxes, a pointer that always
picks the cell whose feature is centred nearest the box centre, with the pointing game's rule
(the cell's drawn centre inside the box): what the geometry alone costs a perfect decoder.

`peaks` captions a split greedily with a checkpoint and, for every word naming a category
with a single box in the image, measures the attention peak against that box's centre: the
peak cell's drawn centre minus the box centre (dx, dy: right and down are positive), in data
pixels and cells, for all such words and for the last object word of each caption (no later
object to look ahead to). The same for the cell's feature centre (where its feature comes from),
and the pointing game with cells at their drawn and at their feature centres. It also prints
the effective receptive-field centres (gradient centroids on the split's images) of the
checkpoint's trunk and of the same trunk freshly initialised, against the drawn centres.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from captioner.data.records import Box
from captioner.models.config import EncoderConfig
from captioner.models.encoder import Encoder


def drawn_centres(grid: int, size: float) -> np.ndarray:
    """(g,) where grounding and the overlays put the cells' centres along a side of `size` px."""
    return (np.arange(grid) + 0.5) * size / grid


def effective_centres(encoder: Encoder, images: torch.Tensor) -> np.ndarray:
    """(g, g, 2) (x, y) centroid, in input pixels, of |∂‖f_cell‖²/∂image| summed over the
    images (B, 3, S, S) and colour channels: where each cell's feature actually looks."""
    encoder.eval()
    images = images.clone().requires_grad_(True)
    features = encoder(images)  # (B, P, D)
    g, size = encoder.grid_size, images.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    out = np.zeros((g, g, 2))
    for cell in range(g * g):
        (grad,) = torch.autograd.grad(features[:, cell].pow(2).sum(), images, retain_graph=True)
        weight = grad.abs().sum(dim=(0, 1))  # (S, S)
        out[cell // g, cell % g] = [(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()]
    return out


def resize_shift(data_size: int, image_size: int) -> float:
    """How far (model px) the intensity centroid of a one-pixel dot moves when an image of side
    `data_size` is resized to `image_size` as the data pipeline does, against where the pixel
    centre maps ((x + 0.5)·S/D); 0 means resizing adds no offset."""
    from PIL import Image

    from captioner.data.images import ImageToTensor

    x = data_size // 3
    pixels = np.zeros((data_size, data_size, 3), dtype=np.uint8)
    pixels[x, x] = 255
    tensor = ImageToTensor(image_size)(Image.fromarray(pixels))[0]
    weight = (tensor - tensor.min()).numpy()
    centroid = (weight.sum(0) * (np.arange(image_size) + 0.5)).sum() / weight.sum()
    return float(centroid - (x + 0.5) * image_size / data_size)


def geometry_rows(image_sizes: Sequence[int], stages: Sequence[int], grid: int) -> list[dict]:
    rows = []
    for cut in stages:
        for size in image_sizes:
            row: dict = {"backbone": "resnet18", "stages": cut, "image_size": size, "grid": grid}
            for align in (False, True):
                encoder = Encoder(EncoderConfig("resnet18", stages=cut, grid_size=grid, align_grid=align))
                shift = np.array(encoder.feature_centres(size)) - drawn_centres(grid, size)
                key = "aligned" if align else "plain"
                row["stride"], row["offset"], row["map"] = encoder.stride, encoder.centre_offset, encoder.map_size(size)
                row[f"{key}_shift_px"] = [round(float(v), 2) for v in shift]
                row[f"{key}_mean_shift_px"] = round(float(shift.mean()), 2)
                row[f"{key}_mean_shift_cells"] = round(float(shift.mean()) * grid / size, 3)
            rows.append(row)
    return rows


def oracle_pointing(boxes: Sequence[Box], data_size: int, image_size: int, features: np.ndarray) -> dict:
    """What a decoder that always attends to the cell whose feature is centred nearest the named
    box's centre would score: its pointing game and mean dx, dy (data px) with the cell scored at
    its drawn centre, boxes in a data_size² image resized to image_size². features: (g,) feature
    centres in model pixels (`Encoder.feature_centres`)."""
    grid = len(features)
    scale = data_size / image_size
    drawn, placed = drawn_centres(grid, data_size), features * scale
    hits, dxs, dys = [], [], []
    for box in boxes:
        cx, cy = box.x + box.w / 2, box.y + box.h / 2
        col, row = int(np.argmin(np.abs(placed - cx))), int(np.argmin(np.abs(placed - cy)))
        px, py = drawn[col], drawn[row]
        hits.append(box.x <= px <= box.x + box.w and box.y <= py <= box.y + box.h)
        dxs.append(px - cx)
        dys.append(py - cy)
    return {
        "boxes": len(boxes),
        "pointing_game": round(float(np.mean(hits)), 3),
        "dx_px": round(float(np.mean(dxs)), 2),
        "dy_px": round(float(np.mean(dys)), 2),
    }


def peak_offsets(
    words: Sequence[str],
    alphas: np.ndarray,
    centres: dict[str, tuple[np.ndarray, np.ndarray]],
    boxes: Sequence[Box],
    categories: dict[str, str],
) -> list[dict]:
    """One record per word naming a category that has exactly one box: for each placement of the
    cells in `centres` (name -> (g,) x and (g,) y centres in the boxes' pixels), the peak's
    dx, dy from the box centre and whether it lies in the box; `last` marks the caption's last
    object word. alphas (L, g²) row-major."""
    named = [(t, categories[w.lower()]) for t, w in enumerate(words) if w.lower() in categories]
    records = []
    for index, (t, category) in enumerate(named):
        own = [box for box in boxes if box.category == category]
        if len(own) != 1:
            continue
        (box,) = own
        grid = len(next(iter(centres.values()))[0])
        peak = int(np.argmax(alphas[t]))
        row, col = divmod(peak, grid)
        record: dict = {"last": index == len(named) - 1}
        for name, (xs, ys) in centres.items():
            px, py = xs[col], ys[row]
            record[name] = {
                "dx": px - (box.x + box.w / 2),
                "dy": py - (box.y + box.h / 2),
                "hit": box.x <= px <= box.x + box.w and box.y <= py <= box.y + box.h,
            }
        records.append(record)
    return records


def summarise_offsets(records: list[dict], cell: float) -> dict:
    """Means of dx, dy (data px and cells of `cell` px) and the hit rate, per placement, for all
    records and for the last object words."""
    out: dict = {}
    for subset, chosen in (("all", records), ("last", [r for r in records if r["last"]])):
        out[subset] = {"words": len(chosen)}
        if not chosen:
            continue
        for name in (key for key in chosen[0] if key != "last"):
            dx = np.array([r[name]["dx"] for r in chosen])
            dy = np.array([r[name]["dy"] for r in chosen])
            out[subset][name] = {
                "dx_px": round(float(dx.mean()), 2),
                "dy_px": round(float(dy.mean()), 2),
                "dx_cells": round(float(dx.mean() / cell), 3),
                "dy_cells": round(float(dy.mean() / cell), 3),
                "hit_rate": round(float(np.mean([r[name]["hit"] for r in chosen])), 3),
            }
    return out


def peaks_report(checkpoint: Path, data_dir: Path, split: str, limit: int | None) -> dict:
    from PIL import Image

    from captioner.data.collection import showing
    from captioner.evaluation.grounding import coco_category_words
    from captioner.inference.api import Captioner

    captioner = Captioner.from_checkpoint(checkpoint, device="cpu")
    encoder = captioner.model.encoder
    data = showing(data_dir, split, format="coco")
    images, boxes = data.records("test")[:limit], data.boxes("test")
    categories = coco_category_words(sorted({box.category for image_boxes in boxes.values() for box in image_boxes}))
    results = captioner.caption([image.path for image in images], beam_size=1)
    image_size, grid = captioner.image_size, encoder.grid_size
    model_centres = np.array(encoder.feature_centres(image_size))
    records, data_sizes = [], set()
    for image, result in zip(images, results):
        with Image.open(image.path) as picture:
            width, height = picture.size
        data_sizes.add((width, height))
        centres = {
            "drawn": (drawn_centres(grid, width), drawn_centres(grid, height)),
            "feature": (model_centres * width / image_size, model_centres * height / image_size),
        }
        alphas = result.alphas.numpy()
        records += peak_offsets(result.words, alphas, centres, boxes.get(image.image_id, []), categories)
    width, _ = sorted(data_sizes)[0]
    sample = torch.stack([captioner.to_tensor(image.path) for image in images[:32]])
    return {
        "checkpoint": str(checkpoint),
        "data_dir": str(data_dir),
        "split": split,
        "images": len(images),
        "data_sizes": sorted(data_sizes),
        "image_size": image_size,
        "grid": grid,
        "stages": encoder.config.stages,
        "align_grid": encoder.config.align_grid,
        "feature_minus_drawn_px": [round(float(v), 2) for v in model_centres - drawn_centres(grid, image_size)],
        # Trained, and the same trunk freshly initialised: what training moved, if anything.
        "effective_minus_drawn_px": _effective_shift(encoder, sample),
        "untrained_effective_minus_drawn_px": _effective_shift(Encoder(encoder.config), sample),
        "peaks": summarise_offsets(records, width / grid),
    }


def _effective_shift(encoder: Encoder, images: torch.Tensor) -> dict:
    """`effective_centres` minus the drawn cell centres (model px): means over all cells, over the
    cells off the border (whose receptive fields the image cuts least), per column and per row."""
    effective = effective_centres(encoder, images)
    drawn = drawn_centres(encoder.grid_size, images.shape[-1])
    effective[..., 0] -= drawn[None, :]  # x varies along columns
    effective[..., 1] -= drawn[:, None]  # y along rows
    inner = effective[1:-1, 1:-1]
    return {
        "mean_dx": round(float(effective[..., 0].mean()), 2),
        "mean_dy": round(float(effective[..., 1].mean()), 2),
        "inner_mean_dx": round(float(inner[..., 0].mean()), 2),
        "inner_mean_dy": round(float(inner[..., 1].mean()), 2),
        "per_column_dx": [round(float(v), 2) for v in effective[..., 0].mean(0)],
        "per_row_dy": [round(float(v), 2) for v in effective[..., 1].mean(1)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.attention_offset", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    geometry = sub.add_parser("geometry", help="receptive-field centres against drawn cell centres, no checkpoint")
    geometry.add_argument("--image-sizes", type=int, nargs="+", default=[64, 96, 128])
    geometry.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    geometry.add_argument("--grid", type=int, default=8)
    geometry.add_argument("--data-sizes", type=int, nargs="+", default=[64, 96, 128], help="resized to 64 px")
    oracle = sub.add_parser("oracle", help="a pointer at the feature centred on each box, scored at drawn cells")
    oracle.add_argument("data_dir", type=Path, help="a COCO-layout data set with instances_<split>.json")
    oracle.add_argument("--split", default="test")
    oracle.add_argument("--image-size", type=int, default=64)
    oracle.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    oracle.add_argument("--grid", type=int, default=8)
    peaks = sub.add_parser("peaks", help="attention peaks of a checkpoint against the named boxes")
    peaks.add_argument("checkpoint", type=Path)
    peaks.add_argument("data_dir", type=Path, help="a COCO-layout data set with instances_<split>.json")
    peaks.add_argument("--split", default="test")
    peaks.add_argument("--images", type=int, default=None, help="only the first N images of the split")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.mode == "geometry":
        for row in geometry_rows(args.image_sizes, args.stages, args.grid):
            print(json.dumps(row))
        shifts = {size: round(resize_shift(size, 64), 3) for size in args.data_sizes}
        print(json.dumps({"resize_to_64_dot_shift_px": shifts}))
    elif args.mode == "oracle":
        from captioner.data.readers.coco import coco_layout, read_boxes
        from captioner.data.records import load_json

        instances = coco_layout(args.data_dir, args.split)["instances"]
        (data_size,) = {image["width"] for image in load_json(instances, "COCO instances file")["images"]}
        boxes = [box for image_boxes in read_boxes(instances).values() for box in image_boxes]
        for cut in args.stages:
            for align in (False, True):
                encoder = Encoder(EncoderConfig("resnet18", stages=cut, grid_size=args.grid, align_grid=align))
                features = np.array(encoder.feature_centres(args.image_size))
                row = {"data_dir": str(args.data_dir), "data_size": data_size, "image_size": args.image_size}
                row |= {"stages": cut, "grid": args.grid, "align_grid": align}
                print(json.dumps(row | oracle_pointing(boxes, data_size, args.image_size, features)))
    else:
        print(json.dumps(peaks_report(args.checkpoint, args.data_dir, args.split, args.images)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
