"""One small captioned collection written in every form `captioner.data.readers` reads."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from PIL import Image

# name -> (captions, split); split "" = the collection is one pile.
Collection = dict[str, tuple[tuple[str, ...], str]]
SPLIT_FOLDERS = {"train": "train", "val": "validation", "test": "test"}


def collection(count: int = 12, *, splits: bool = True) -> Collection:
    """`count` images, two captions each (one with a comma, one with non-ASCII letters); with
    `splits`, 2 val and 2 test images and the rest train."""
    items: Collection = {}
    for i in range(count):
        role = ("val" if i % 6 == 1 else "test" if i % 6 == 4 else "train") if splits else ""
        colour = ("red", "green", "blue", "grey")[i % 4]
        items[f"img{i:02d}.png"] = ((f"a {colour} square, number {i}", f"ein {colour}es Quadrat Nr {i} é"), role)
    return items


def write_image(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    i = int(name[3:5])
    Image.new("RGB", (32, 32), (i * 20 % 256, 40, 200 - i * 10)).save(path)


def _json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def write_coco(root: Path, items: Collection) -> Path:
    by_split: dict[str, list[str]] = {}
    for name, (_, split) in items.items():
        by_split.setdefault(split, []).append(name)
    ids = {name: i for i, name in enumerate(sorted(items), start=1)}
    for split, names in by_split.items():
        for name in names:
            write_image(root / split / name, name)
        annotations = [{"id": 0, "image_id": ids[n], "caption": c} for n in names for c in items[n][0]]
        data = {"images": [{"id": ids[n], "file_name": n} for n in names], "annotations": annotations}
        _json(root / "annotations" / f"captions_{split}.json", data)
    return root


def write_karpathy(root: Path, items: Collection) -> Path:
    images = []
    for i, (name, (captions, split)) in enumerate(sorted(items.items()), start=1):
        write_image(root / "images" / name, name)
        sentences = [{"raw": c} for c in captions]
        images.append({"filepath": "images", "filename": name, "imgid": i, "split": split, "sentences": sentences})
    _json(root / "dataset_mine.json", {"images": images})
    return root


def write_csv(root: Path, items: Collection) -> Path:
    out = io.StringIO()
    table = csv.writer(out)
    table.writerow(["image", "caption", "split"] if any(s for _, s in items.values()) else ["image", "caption"])
    for name, (captions, split) in items.items():
        write_image(root / "Images" / name, name)
        for caption in captions:
            table.writerow([name, caption, split] if split else [name, caption])
    (root / "captions.csv").write_text(out.getvalue(), encoding="utf-8")
    return root / "captions.csv"


def write_flickr8k(root: Path, items: Collection) -> Path:
    lines, lists = [], {}
    for name, (captions, split) in items.items():
        write_image(root / "Flicker8k_Dataset" / name, name)
        lines += [f"{name}#{n}\t{caption}" for n, caption in enumerate(captions)]
        if split:
            lists.setdefault(split, []).append(name)
    (root / "Flickr8k_text").mkdir(parents=True)
    (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}
    for split, listed in lists.items():
        (root / "Flickr8k_text" / names[split]).write_text("\n".join(listed) + "\n", encoding="utf-8")
    return root


def write_imagefolder(root: Path, items: Collection) -> Path:
    per_folder: dict[Path, list[str]] = {}
    for name, (captions, split) in items.items():
        folder = root / SPLIT_FOLDERS[split] if split else root
        write_image(folder / name, name)
        line = json.dumps({"file_name": name, "text": list(captions)}, ensure_ascii=False)
        per_folder.setdefault(folder, []).append(line)
    for folder, lines in per_folder.items():
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_sidecar(root: Path, items: Collection) -> Path:
    for name, (captions, split) in items.items():
        folder = root / split if split else root
        write_image(folder / name, name)
        (folder / name).with_suffix(".txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    return root


def write_hf_saved(root: Path, items: Collection) -> Path:
    import datasets

    staging = root.parent / f"{root.name}_images"
    parts: dict[str, dict[str, list]] = {}
    for name, (captions, split) in sorted(items.items()):
        write_image(staging / name, name)
        part = parts.setdefault(SPLIT_FOLDERS[split] if split else "", {"image": [], "text": []})
        part["image"].append(str(staging / name))
        part["text"].append(list(captions))
    made = {
        split: datasets.Dataset.from_dict(part).cast_column("image", datasets.Image()) for split, part in parts.items()
    }
    saved = made[""] if "" in made else datasets.DatasetDict(made)
    saved.save_to_disk(str(root))
    for path in staging.iterdir():  # the bytes are inside the saved set now
        path.unlink()
    staging.rmdir()
    return root


WRITERS = {
    "coco": write_coco,
    "karpathy": write_karpathy,
    "csv": write_csv,
    "flickr8k": write_flickr8k,
    "imagefolder": write_imagefolder,
    "sidecar": write_sidecar,
    "hf_saved": write_hf_saved,
}
