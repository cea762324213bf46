"""Training recipes by name: `--config shapes` is the YAML file configs/shapes.yaml that ships
with the package, from whatever folder the command runs in; a path still names a file.

The repository's top-level configs/ is the one source. A wheel installs it as data files
(pyproject: `[tool.setuptools.data-files]`) under `<prefix>/share/captioner/configs`; a
source checkout (an editable install, or PYTHONPATH) reads configs/ in place, so an edited
recipe is used at once.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from captioner.errors import CaptionerError

# Where a wheel puts the recipes, relative to the environment's data prefix (see pyproject).
INSTALLED_FOLDER = ("share", "captioner", "configs")


def recipe_folder() -> Path:
    """The folder holding the recipes: the checkout's configs/, else the installed copy."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "configs").is_dir():
        return root / "configs"
    try:
        files = importlib.metadata.distribution("captioner").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.suffix == ".yaml" and file.parent.parts[-3:] == INSTALLED_FOLDER:
            return Path(file.locate()).resolve().parent
    raise CaptionerError(
        "no recipes found: this captioner is neither a source checkout nor installed with its configs; "
        "reinstall it (`pip install captioner`) or pass --config PATH to a YAML file"
    )


def recipes() -> dict[str, Path]:
    """Recipe name (the file's stem) -> its YAML file, sorted by name."""
    return {path.stem: path for path in sorted(recipe_folder().glob("*.yaml"))}


def describe(path: Path) -> str:
    """The first line of the recipe's leading comment, without the '#'."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def resolve(value: str) -> str:
    """The file a --config value names: an existing file, or a path (it has a folder or a
    .yaml/.yml/.json suffix) left for the CLI to check, is itself; so is a config written inline
    (`--config '{}'`: no recipe, only the defaults and the flags given); anything else is a recipe name."""
    if value.lstrip().startswith("{") or ":" in value or "\n" in value:
        return value
    path = Path(value)
    if path.is_file() or len(path.parts) > 1 or path.suffix in (".yaml", ".yml", ".json", ".jsonnet"):
        return value
    known = recipes()
    if value not in known:
        raise CaptionerError(
            f"{value!r} is neither a file nor a recipe name; the recipes: {', '.join(known)} "
            "(`captioner recipes` describes them)"
        )
    return str(known[value])


def resolve_config_args(args: list[str]) -> list[str]:
    """`args` with every `--config NAME` / `--config=NAME` recipe name replaced by its file."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve(arg.removeprefix("--config="))
    return out


def with_default_recipe(args: list[str], subcommand: str, name: str) -> list[str]:
    """`args` (a Lightning CLI's, subcommand first) with `--config NAME` added when `subcommand`
    runs without any --config, saying so in one line on stderr."""
    if args[:1] != [subcommand] or any(a == "--config" or a.startswith("--config=") for a in args):
        return args
    if any(a in ("-h", "--help") for a in args):
        return args
    path = resolve(name)
    print(f"no --config given: using the {name} recipe ({path})", file=sys.stderr, flush=True)
    return [args[0], "--config", path, *args[1:]]
