"""Training recipes by name: `--config shapes` is the YAML file configs/shapes.yaml that ships
with the package, from whatever folder the command runs in; a path still names a file, checked
to be a YAML mapping before the Lightning CLI reads it (a wrong one is one line that never
quotes the file). `captioner recipes NAME` takes names only.

The repository's top-level configs/ is the one source. A wheel installs it as data files
(pyproject: `[tool.setuptools.data-files]`) under `<prefix>/share/captioner/configs`; a
source checkout (an editable install, or PYTHONPATH) reads configs/ in place, so an edited
recipe is used at once.
"""

from __future__ import annotations

import importlib.metadata
import stat
import sys
from pathlib import Path

import yaml

from captioner.errors import CaptionerError
from captioner.files import read_at_most
from captioner.limits import MAX_RECIPE_BYTES, short

# Suffixes that make a --config value a file name rather than a recipe name.
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".jsonnet")
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


def recipe(name: str) -> Path:
    """The YAML file of the recipe called `name`: a file of the recipe folder, never a path
    (`captioner recipes NAME` prints it; a path there would print any file)."""
    known = recipes()
    if name in known:
        return known[name]
    if _looks_like_a_path(name):
        stem = Path(name).stem
        hint = f" (the recipe {stem!r}?)" if stem in known else ""
        raise CaptionerError(
            f"{short(name)} is a path, not a recipe name{hint}; the recipes: {', '.join(known)} "
            "(a YAML file of your own goes to `captioner train fit --config PATH`)"
        )
    raise CaptionerError(f"{short(name)} is not a recipe; the recipes: {', '.join(known)}")


def resolve(value: str) -> str:
    """The file a --config value names: an existing file, or a path (it has a folder or a
    .yaml/.yml/.json suffix), is itself, once `check_config_file` accepts it; so is a config
    written inline (`--config '{}'`: no recipe, only the defaults and the flags given); anything
    else is a recipe name."""
    if value.lstrip().startswith("{") or ":" in value or "\n" in value:
        return value
    path = Path(value)
    if path.exists() or _looks_like_a_path(value):
        check_config_file(path)
        return value
    known = recipes()
    if value not in known:
        raise CaptionerError(
            f"{short(value)} is neither a file nor a recipe name; the recipes: {', '.join(known)} "
            "(`captioner recipes` describes them)"
        )
    return str(known[value])


def check_config_file(path: Path) -> None:
    """Raise CaptionerError unless `path` is a YAML file of settings by name, as a recipe is (a
    mapping, at most MAX_RECIPE_BYTES). The message never quotes the file: a path given by
    mistake (or by someone else) must not have its contents printed. What the settings say is
    the Lightning CLI's to check."""
    where = f"--config {path}"
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            kind = "a folder" if path.is_dir() else "not a regular file (a device, a pipe, ...)"
            raise CaptionerError(f"{where} is {kind}; pass a recipe name or a YAML file")
        data = read_at_most(path, MAX_RECIPE_BYTES)
    except FileNotFoundError:
        raise CaptionerError(f"{where} does not exist; pass a recipe name (`captioner recipes`) or a file") from None
    except OSError as error:
        raise CaptionerError(f"{where} cannot be read ({error.strerror or error})") from None
    if data is None:
        raise CaptionerError(f"{where} is over {MAX_RECIPE_BYTES:,} bytes; a config is a few kB, is it the file meant?")
    try:
        settings = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CaptionerError(f"{where} is not a text file (not UTF-8); pass a YAML file") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise CaptionerError(f"{where} is not valid YAML{at}; pass a recipe name or a YAML file") from None
    except (yaml.YAMLError, RecursionError):
        raise CaptionerError(f"{where} is not valid YAML; pass a recipe name or a YAML file") from None
    if settings is not None and not isinstance(settings, dict):
        kind = "a list" if isinstance(settings, list) else "plain text" if isinstance(settings, str) else "a value"
        raise CaptionerError(
            f"{where} is {kind}, not settings by name (trainer:, model:, data:, ...); "
            "pass a recipe name (`captioner recipes`) or a YAML file like one"
        )


def _looks_like_a_path(value: str) -> bool:
    return len(Path(value).parts) > 1 or Path(value).suffix in CONFIG_SUFFIXES or value in (".", "..")


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
