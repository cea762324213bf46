"""`captioner recipes`: the training recipes shipped with the package, usable by name.

captioner recipes                 list them: name, what it trains, file
captioner recipes shapes          print one (copy it to start your own)
captioner train fit --config shapes
"""

from __future__ import annotations

import argparse

from captioner.recipes import describe, recipe, recipes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="print this recipe's YAML instead of listing them")


def run(args: argparse.Namespace) -> int:
    if args.name is not None:
        print(recipe(args.name).read_text(), end="")
        return 0
    found = recipes()
    width = max(map(len, found))
    for name, path in found.items():
        print(f"{name:<{width}}  {describe(path)}")
    print(f"\n(in {next(iter(found.values())).parent}; use one with --config NAME)")
    return 0
