"""`captioner data`: make a synthetic data set, or check one before training on it.

captioner data check my_photos/                        what training would see (no image decoded)
captioner data check my_photos/ --config small_scratch --decode --json
captioner data synth --out data/shapes --train 2000 --val 200 --test 200 --size 128 --seed 0
captioner data synth --kind glyphs --out data/glyphs --size 96
captioner data synth --kind scenes --out data/scenes --size 96
captioner data synth --kind photos --out data/photos --size 96
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import yaml

from captioner.data.check import CheckSettings, check, problems
from captioner.data.collection import CaptionCollection
from captioner.data.readers import FORMATS
from captioner.data.splits import Holdout, Split
from captioner.recipes import resolve

# --kind -> (generator module, what it draws), one line per synthetic family; shapes is the demo's.
KINDS = {
    "shapes": ("captioner.data.synth", "coloured shapes"),
    "glyphs": ("captioner.data.glyphs", "grey digits, told apart by shape alone"),
    "scenes": ("captioner.data.scenes", "two to four objects of two sizes on a cluttered ground"),
    "photos": ("captioner.data.photos", "one to four figures told apart by shape alone, on crops of real photographs"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = sub.add_parser(
        "synth", help="write a synthetic data set (" + ", ".join(KINDS) + ")", description=__doc__.splitlines()[0]
    )
    make.add_argument("--out", required=True, help="output folder (created if needed)")
    make.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="shapes",
        help="; ".join(f"{kind}: {what}" for kind, (_, what) in KINDS.items()) + " (default: shapes)",
    )
    make.add_argument("--train", type=int, default=2000, help="training images (default: 2000)")
    make.add_argument("--val", type=int, default=200, help="validation images (default: 200)")
    make.add_argument("--test", type=int, default=200, help="test images (default: 200)")
    make.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    make.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")

    look = sub.add_parser(
        "check",
        help="what training would see in a data set: format, images, captions, vocabulary, split",
        description="Read a data set as `captioner train fit --data.data_dir PATH` would and report what "
        "training would see. Settings come from the recipe (--config) and the flags, else the data "
        "module's defaults. Exit status 2 when training could not start.",
    )
    look.add_argument("path", help="the data set: a folder, or the file of a one-file format")
    look.add_argument("--config", help="recipe name or YAML file whose data settings to apply")
    look.add_argument("--format", choices=FORMATS, help="data.format (default auto)")
    look.add_argument("--annotations", help="data.annotations: the captions file when apart from PATH")
    look.add_argument("--min-word-count", type=int, help="data.min_word_count")
    look.add_argument("--max-caption-len", type=int, help="data.max_caption_len")
    look.add_argument("--holdout-val", type=float, help="data.holdout.val: fraction or number of images")
    look.add_argument("--holdout-test", type=float, help="data.holdout.test")
    look.add_argument("--holdout-seed", type=int, help="data.holdout.seed")
    look.add_argument("--split-path", help="data.split_path: a split file to use")
    look.add_argument("--skip-missing-images", action="store_true", help="data.skip_missing_images")
    look.add_argument("--decode", action="store_true", help="open every image to find unreadable ones (slow)")
    look.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    return check_command(args) if args.action == "check" else synth_command(args)


def synth_command(args: argparse.Namespace) -> int:
    module = importlib.import_module(KINDS[args.kind][0])
    out = module.generate(args.out, train=args.train, val=args.val, test=args.test, size=args.size, seed=args.seed)
    total = args.train + args.val + args.test
    print(
        f"wrote {total} {args.kind} images ({args.train} train / {args.val} val / {args.test} test, {args.size} px)"
        f" to {out}\n"
        f"  COCO:     {out}/annotations/captions_<split>.json, instances_<split>.json\n"
        f"  Karpathy: {out}/dataset_{args.kind}.json"
    )
    return 0


# The data settings the check applies, each by its name under `data:` in a recipe.
CHECKED = ("format", "annotations", "karpathy_json", "split_path", "skip_missing_images", "min_word_count")
CHECKED += ("max_caption_len", "holdout", "train", "val", "test")


def data_settings(args: argparse.Namespace) -> dict:
    """The data settings given: the recipe's (--config), then the flags; the rest keep their defaults."""
    settings = {}
    if args.config:
        recipe = yaml.safe_load(Path(resolve(args.config)).read_text(encoding="utf-8")) or {}
        data = (recipe.get("data") or {}) if isinstance(recipe, dict) else {}
        settings = {key: value for key, value in data.items() if key in CHECKED}
    flags = {"format": args.format, "annotations": args.annotations, "split_path": args.split_path}
    flags |= {"min_word_count": args.min_word_count, "max_caption_len": args.max_caption_len}
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.skip_missing_images:
        settings["skip_missing_images"] = True
    holdout = {**settings.get("holdout", {}), "val": args.holdout_val, "test": args.holdout_test}
    holdout["seed"] = args.holdout_seed
    settings["holdout"] = Holdout(**{k: v for k, v in holdout.items() if v is not None})
    for role in ("train", "val", "test"):
        settings[role] = Split(**{"name": role, **settings.get(role, {})})
    return settings


def check_command(args: argparse.Namespace) -> int:
    settings = data_settings(args)
    collection = CaptionCollection(
        args.path,
        format=settings.get("format", "auto"),
        annotations=settings.get("annotations") or settings.get("karpathy_json"),
        splits={role: settings[role] for role in ("train", "val", "test")},
        holdout=settings["holdout"],
        split_path=settings.get("split_path"),
        skip_missing=True,  # counted and named here; training stops on them unless told to skip
    )
    given = {key: settings[key] for key in ("min_word_count", "max_caption_len") if key in settings}
    report = check(collection, CheckSettings(**given, decode=args.decode))
    stops = problems(report)
    if report["images"]["missing"] and not settings.get("skip_missing_images"):
        stops.append(f"{report['images']['missing']} listed images are missing; set data.skip_missing_images true")
    report["problems"] = stops
    print(json.dumps(report, indent=1) if args.json else "\n".join(describe(report)))
    for problem in stops:
        print(f"error: training would stop: {problem}", file=sys.stderr)
    return 2 if stops else 0


def _examples(names: list[str]) -> str:
    return f" (e.g. {', '.join(names)})" if names else ""


def describe(report: dict) -> list[str]:
    """The report as lines for people."""
    images, captions, dups = report["images"], report["captions"], report["duplicate_images"]
    decoded = "decoded" if images["decoded"] else "not decoded; --decode opens each"
    lines = [
        f"data: {report['found']}",
        f"images: {images['found']} found, {images['missing']} missing{_examples(images['missing_examples'])}, "
        f"{images['unreadable']} unreadable{_examples(images['unreadable_examples'])} ({decoded})",
    ]
    for role, split in report["splits"].items():
        per = split["captions_per_image"]
        spread = f", captions per image {per['min']}-{per['max']} (mean {per['mean']})" if per else ""
        bare = f", {split['images_without_captions']} without captions" if split["images_without_captions"] else ""
        lines.append(
            f"{role}: {split['images']} images, {split['captions']} captions{spread}{bare} ({split['source']})"
        )
    if report["split_made"]:
        lines.append(f"split made: {report['split_made']}; training writes it as split.json beside the run")
    length = captions["length_words"]
    if length:
        lines.append(
            f"caption length in words (train): median {length['p50']:g}, p90 {length['p90']:g}, "
            f"p99 {length['p99']:g}, max {length['max']}; {captions['over_long']} "
            f"({100 * captions['over_long_share']:.1f}%) longer than max_caption_len {captions['max_caption_len']} "
            "(training truncates them)"
        )
    lines.append(
        f"vocabulary: {captions['vocabulary']} words (4 special) at min_word_count {captions['min_word_count']}, "
        f"covering {100 * captions['token_coverage']:.2f}% of training caption words"
    )
    lines.append(
        f"duplicate images: {dups['groups']} groups of identical files ({dups['files']} files)"
        + (f", e.g. {' = '.join(dups['examples'][0])}" if dups["examples"] else "")
    )
    lines.append(
        f"images in two splits: {report['images_in_two_splits']}" + _examples(report["images_in_two_splits_examples"])
    )
    lines += [f"skipped: {message}" for message in report["skipped"]]
    lines.append("training can start" if not report["problems"] else "training would stop (see below)")
    return lines
