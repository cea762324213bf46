"""`captioner data synth`: write a synthetic data set (COCO + Karpathy formats).

captioner data synth --out data/shapes --train 2000 --val 200 --test 200 --size 128 --seed 0
captioner data synth --kind glyphs --out data/glyphs --size 96
captioner data synth --kind scenes --out data/scenes --size 96
"""

from __future__ import annotations

import argparse

from captioner.data import glyphs, scenes, synth

# --kind -> (generator module, what it draws); shapes is the demo's family.
KINDS = {
    "shapes": (synth, "coloured shapes"),
    "glyphs": (glyphs, "grey digits, told apart by shape alone"),
    "scenes": (scenes, "two to four objects of two sizes on a cluttered ground"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = sub.add_parser(
        "synth", help="write a synthetic data set (shapes, glyphs or scenes)", description=__doc__.splitlines()[0]
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


def run(args: argparse.Namespace) -> int:
    module, _ = KINDS[args.kind]
    out = module.generate(args.out, train=args.train, val=args.val, test=args.test, size=args.size, seed=args.seed)
    total = args.train + args.val + args.test
    print(
        f"wrote {total} {args.kind} images ({args.train} train / {args.val} val / {args.test} test, {args.size} px)"
        f" to {out}\n"
        f"  COCO:     {out}/annotations/captions_<split>.json, instances_<split>.json\n"
        f"  Karpathy: {out}/dataset_{args.kind}.json"
    )
    return 0
