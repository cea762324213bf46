"""Command lines from the docs, parsed by the real parsers, never run.

`problem(text, fragment)` reads one command line as a shell would (`captioner …`, `python
train.py …`, `python -m MODULE …`, `make TARGET`, with `VAR=value`, `srun` or `torchrun … -m
captioner.cli` in front) and says what is wrong with it, or returns None:

- `captioner train …` and `captioner dates fit|validate|test …` go through `captioner.cli.main`
  as typed (default recipe, recipe names, `--threads`, error handling), with the Lightning CLI
  stopped right after it has parsed its arguments (`parse_only`): no data is read, no checkpoint
  loaded, no model built. Its parser is built once per process.
- every other subcommand is parsed by its own argparse parser (`captioner.cli.command_parser`).

Docs write placeholders and elisions, which are read as follows:
- `[--flag X]`: optional, checked as if given; `a|b` and `{a,b}`: each alternative is checked;
- `...` and `<anything>`: something left out, so the line is a *fragment*;
- an upper-case word (`DIR`, `N`, `FAMILY`): a placeholder, replaced by a sample value from
  `PLACEHOLDERS` (a new placeholder goes there).
Inline code is a fragment too: `captioner attend --scale word` names an option of a command
that needs more to run, so in a fragment required arguments may be missing, and a last option
may come without its value (`captioner train fit --config`); everything given must parse.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from collections.abc import Iterator
from functools import cache
from unittest import mock

import yaml

from captioner.cli import COMMANDS, command_parser
from captioner.errors import CaptionerError
from tests.docs_pages import ROOT

# Placeholder -> a value of the right kind to parse in its place.
PLACEHOLDERS = {
    "N": "2",
    "M": "2",
    "G": "2",
    "R": "0",
    "S": "1",
    "P": "29500",
    "A": "localhost",
    "PX": "64",
    "DIR": "data/mine",
    "PATH": "data/mine",
    "FILE": "data/mine/captions.csv",
    "C": "shapes",
    "NAME": "shapes",
    "RECIPE": "small_scratch",
    "FAMILY": "shapes",
    "K": "shapes",
    "ROW": "paper",
    "CKPT": "runs/demo/checkpoints/best.ckpt",
    "IMAGE": "photo.jpg",
    "IMAGES": "photo.jpg",
}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
ELIDED = re.compile(r"<[^<>\n]*>|\.\.\.")
SHELL_BREAKS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"}
PYTHONS = ("python", "python3")
LAUNCHERS = {"srun", "torchrun", "nice", "time"}  # run the command that follows them
LIGHTNING_OPTIONS = {"--config", "--print_config", "--ckpt_path", "--seed_everything"}


class ParsedOnly(Exception):
    """Raised where a Lightning CLI would go on to build the run: its arguments parsed."""


def problem(text: str, fragment: bool) -> str | None:
    """What is wrong with the command line `text` (None if nothing, or if it runs no program checked here)."""
    found = commands(text, fragment)
    if isinstance(found, str):
        return found
    for kind, args, is_fragment in found:
        error = check_program(kind, args, is_fragment)
        if error:
            return error if len(found) == 1 else f"`{shlex.join(args)}`: {error}"
    return None


def commands(text: str, fragment: bool) -> list[tuple[str, list[str], bool]] | str:
    """(program kind, arguments, fragment) for each command line `text` spells out, or what
    keeps it from being read."""
    if program(text.split()) is None and not text.startswith("--"):
        return []  # prose, or a program not checked here (curl, pytest, ...)
    try:
        variants, elided = words(text)
    except ValueError as error:
        return f"cannot split into shell words: {error}"
    out = []
    for line in variants:
        found = ("captioner", line) if line[:1] and line[0].startswith("--") else program(line)
        if found is None:
            continue
        kind, args = found
        if kind == "captioner":
            unknown = [w for w in args if PLACEHOLDER.fullmatch(w) and w not in PLACEHOLDERS]
            if unknown:
                return f"placeholder {unknown[0]!r} has no sample value: add one to PLACEHOLDERS in tests/docs_cli.py"
            args = [PLACEHOLDERS.get(w, w) for w in args]
        out.append((kind, args, fragment or elided))
    return out


def problems(lines: list[tuple[str, bool]]) -> list[str | None]:
    """`problem` of each (text, fragment), faster: the training CLI's lines of one subcommand
    that name no config are first parsed as one command line (each line's arguments in turn).
    Parsing is what takes the time, and when they parse together, each parses alone; when not,
    each is parsed alone. (Lines with configs are not merged: each config is validated anew.)"""
    together: dict[tuple[str, str], list[list[str]]] = {}
    for text, fragment in lines:
        found = commands(text, fragment)
        for kind, args, _ in found if isinstance(found, list) else []:
            if kind == "captioner" and args[:1] and args[0].startswith("--") and lightning_option(args[0]):
                args = ["train", "fit", *args]
            merge = not {"--config", "--print_config"} & set(args) and not args[-1].startswith("--")
            if kind == "captioner" and is_lightning_run(args) and merge:
                together.setdefault((args[0], args[1]), []).append(args)
    for (command, subcommand), lines_of_it in together.items():
        if len(lines_of_it) > 1:
            merged = [command, subcommand, *(arg for args in lines_of_it for arg in args[2:])]
            if parse_lightning(merged, fragment=False) is None:
                _parsed.update(tuple(args) for args in lines_of_it)
    return [problem(text, fragment) for text, fragment in lines]


_parsed: set[tuple[str, ...]] = set()  # training CLI lines known to parse (`problems`)


def is_lightning_run(args: list[str]) -> bool:
    """Whether `captioner ARGS` runs a Lightning CLI subcommand (`train fit`, `dates test`)."""
    subcommands = {"train": ("fit", "validate", "test", "predict"), "dates": ("fit", "validate", "test")}
    return len(args) > 1 and args[1] in subcommands.get(args[0], ())


def lightning_option(option: str) -> bool:
    """Whether an option named alone is the training CLI's (`--model.spice`, `--config`)."""
    name = option.split("=")[0]
    return ("." in name and not name.endswith(".*")) or name in LIGHTNING_OPTIONS


def words(text: str) -> tuple[list[list[str]], bool]:
    """The command lines `text` spells out, one per alternative, and whether something is left out."""
    stripped = ELIDED.sub(" ", text)
    tokens = shlex.split(stripped, comments=True)
    for i, token in enumerate(tokens):
        if token in SHELL_BREAKS:
            tokens = tokens[:i]
            break
    tokens = [token.removeprefix("[").removesuffix("]") for token in tokens]
    tokens = [token for token in tokens if token]
    return alternatives(tokens), stripped != text


def alternatives(tokens: list[str]) -> list[list[str]]:
    """`a|b` and `{a,b}`: the first alternative everywhere, then each other one in turn."""
    choices = []
    for token in tokens:
        braces = re.fullmatch(r"\{([^{}]*,[^{}]*)\}", token)
        options = braces.group(1).split(",") if braces else token.split("|") if "|" in token[1:-1] else [token]
        choices.append(options)
    first = [options[0] for options in choices]
    variants = [first]
    for i, options in enumerate(choices):
        variants += [[*first[:i], other, *first[i + 1 :]] for other in options[1:]]
    return variants


def program(tokens: list[str]) -> tuple[str, list[str]] | None:
    """("captioner", its arguments), ("module", [name, …]) or ("make", targets) for what `tokens`
    run, or None for any other program."""
    start = 0
    while start < len(tokens) and re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[start]):
        start += 1  # OMP_NUM_THREADS=1 captioner …
    tokens = tokens[start:]
    if not tokens:
        return None
    positions = range(len(tokens)) if tokens[0] in LAUNCHERS else range(1)
    for i in positions:
        word, rest = tokens[i], tokens[i + 1 :]
        if word == "captioner":
            return "captioner", rest
        if word in PYTHONS and rest[:1] == ["train.py"]:
            return "captioner", ["train", *rest[1:]]
        if word in (*PYTHONS, "torchrun") and "-m" in rest:
            module, args = rest[rest.index("-m") + 1], rest[rest.index("-m") + 2 :]
            return ("captioner", args) if module == "captioner.cli" else ("module", [module, *args])
        if word == "make":
            return "make", rest
    return None


def check_program(kind: str, args: list[str], fragment: bool) -> str | None:
    if kind == "captioner":
        return check_captioner(args, fragment)
    if kind == "module":
        found = importlib.util.find_spec(args[0]) if args else None
        if found is None or (found.submodule_search_locations and not importlib.util.find_spec(f"{args[0]}.__main__")):
            return f"`python -m {args[0]}`: no such module to run"
        return None
    missing = sorted(set(args) - make_targets())
    return f"no make target {missing} in the Makefile" if missing else None


@cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def check_captioner(args: list[str], fragment: bool) -> str | None:
    """What is wrong with `captioner ARGS`, parsed and not run (each distinct line once)."""
    return _check_captioner(tuple(args), fragment)


@cache
def _check_captioner(args: tuple[str, ...], fragment: bool) -> str | None:
    args = list(args)
    if not args:
        return None
    if args[0].startswith("-"):
        return check_options(args)
    name = args[0]
    if name not in COMMANDS:
        return f"`captioner {name}` is no command; captioner/cli.py has {', '.join(COMMANDS)}"
    if fragment and len(args) == 1:
        return None
    if fragment and name in ("train", "dates") and args[1].startswith("-"):
        args = [name, "fit", *args[1:]]  # `captioner train ... --ckpt_path`: options every subcommand has
    if name == "train":
        return parse_lightning(args, fragment)
    if name == "dates":
        from captioner.commands.dates import take_threads, translate_parser

        try:
            rest = take_threads(args[1:])[1]
        except CaptionerError as error:
            return str(error)
        if rest[:1] == ["translate"]:
            return parse_argparse(translate_parser(), rest[1:], fragment)
        return parse_lightning(args, fragment)
    return parse_argparse(command_parser(name), args[1:], fragment)


def check_options(args: list[str]) -> str | None:
    """Options named on their own (`--beam-size`, `--model.decoder.attention hard`): they must
    parse in the training CLI (dotted ones and its own) or in some subcommand."""
    first = args[0].split("=")[0]
    if first.endswith(".*"):
        return None if is_settings_group(first[2:-2]) else f"no settings under `{first[2:-2]}`"
    if lightning_option(first):
        return parse_lightning(["train", "fit", *args], fragment=True)
    tried = []
    for parser in argparse_parsers():
        if first in option_strings(parser):
            error = parse_argparse(parser, args, fragment=True)
            if error is None:
                return None
            tried.append(error)
    if tried:
        return "; ".join(tried)
    if first == "--threads":
        return parse_lightning(["dates", "fit", *args], fragment=True)
    return None if first in benchmark_flags() else f"no command has an option {first}"


def argparse_parsers() -> Iterator[argparse.ArgumentParser]:
    """Every argparse parser of a captioner subcommand, subcommands of subcommands included."""
    from captioner.commands.dates import translate_parser

    stack = [command_parser(name) for name in COMMANDS if name not in ("train", "dates")] + [translate_parser()]
    while stack:
        parser = stack.pop(0)
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(dict.fromkeys(action.choices.values()))


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


@cache
def benchmark_flags() -> set[str]:
    """Flags the benchmarks' own parsers define (`--rows` of the grounding study)."""
    pattern = re.compile(r"add_argument\(\s*\"(--[\w-]+)\"")
    return {flag for path in (ROOT / "benchmarks").rglob("*.py") for flag in pattern.findall(path.read_text())}


def is_settings_group(prefix: str) -> bool:
    """Whether some setting of the training CLI lives under `prefix` (`model.decoding`, or a part
    of a key such as `hard_attention`)."""
    return any(f".{key}.".find(f".{prefix}.") >= 0 for key in setting_keys())


@cache
def setting_keys() -> frozenset[str]:
    """The full key of every setting of `captioner train` (`model.encoder.backbone`): those
    `--print_config` shows, and those of groups that are off (null) until set."""
    from tests.settings_table import settings

    return frozenset(cli_settings()) | frozenset(settings())


@cache
def cli_settings() -> dict[str, object]:
    """What `captioner train fit --config '{}' --print_config` prints: each setting's full key and value."""
    status, out, err = run_parse_only(["train", "fit", "--config", "{}", "--print_config"])
    if status != 0:
        raise AssertionError(f"captioner train fit --print_config failed: {error_text(err)}")
    flat: dict[str, object] = {}

    def walk(key: str, value: object) -> None:
        if isinstance(value, dict) and value:
            for name, inner in value.get("init_args", value).items() if "class_path" in value else value.items():
                walk(f"{key}.{name}" if key else name, inner)
        else:
            flat[key] = value

    walk("", yaml.safe_load(out))
    return flat


def parse_lightning(args: list[str], fragment: bool) -> str | None:
    """Run `captioner ARGS` up to the end of the Lightning CLI's parsing."""
    if tuple(args) in _parsed:
        return None
    status, _, err = run_parse_only(args)
    if status == 0:
        return None
    error = error_text(err)
    if fragment and args[-1].startswith("--") and "expected one argument" in error:
        # `captioner train fit --config`: an option named without its value
        key = args[-1][2:]
        if "." in key and key not in setting_keys() and not is_settings_group(key):
            return f"no setting {key}"
        return parse_lightning(args[:-1], fragment)
    return error


def parse_argparse(parser: argparse.ArgumentParser, args: list[str], fragment: bool) -> str | None:
    if fragment:
        relax(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            namespace = parser.parse_args(args)
    except SystemExit as exit:
        if exit.code == 0:  # --help
            return None
        error = error_text(err.getvalue())
        if fragment and args and args[-1].startswith("--") and "expected" in error:
            return parse_argparse(parser, args[:-1], fragment)
        return error
    overrides = getattr(namespace, "overrides", None)  # `captioner features extract`: the rest is the training CLI's
    if overrides:
        return parse_lightning(["train", "fit", "--config", namespace.config, *overrides], fragment)
    return None


def relax(parser: argparse.ArgumentParser) -> None:
    """Make every argument optional, so that a fragment is checked for what it gives."""
    for group in parser._mutually_exclusive_groups:
        group.required = False
    for action in parser._actions:
        action.required = False
        if not action.option_strings and action.nargs == "+":
            action.nargs = "*"
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                relax(sub)


def error_text(stderr: str) -> str:
    """The `error:` part of a parser's complaint, without the usage it prints first."""
    lines = stderr.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"([\w .-]+: )?error:", line)), max(len(lines) - 1, 0))
    text = " ".join(line.strip() for line in lines[start:])
    return text[:400] or "failed without a message"


def run_parse_only(args: list[str]) -> tuple[int, str, str]:
    """`captioner ARGS` through `captioner.cli.main` with the Lightning CLI stopped once it has
    parsed: (0 if it parsed, else the exit status; stdout; stderr). Each line is parsed once."""
    return _run_parse_only(tuple(args))


@cache
def _run_parse_only(args: tuple[str, ...]) -> tuple[int, str, str]:
    from captioner.cli import main

    out, err = io.StringIO(), io.StringIO()
    with parse_only(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except ParsedOnly:
            status = 0
        except SystemExit as exit:  # parse errors exit 2; --help and --print_config exit 0
            status = exit.code if isinstance(exit.code, int) else 1
    return status, out.getvalue(), err.getvalue()


_parsers: dict[tuple, dict] = {}  # (CLI class, parser settings) -> the attributes setup_parser made


@contextlib.contextmanager
def parse_only() -> Iterator[None]:
    """Lightning CLIs that stop after parsing (`ParsedOnly`), reuse the parser they built before,
    and `captioner dates` leaving torch's thread count as it is."""
    from captioner.training.cli import CaptionerCLI

    setup, parse = CaptionerCLI.setup_parser, CaptionerCLI.parse_arguments

    def setup_once(self, add_subcommands, main_kwargs, subparser_kwargs):
        key = (type(self), add_subcommands, repr(main_kwargs), repr(subparser_kwargs))
        if key not in _parsers:
            before = set(vars(self))
            setup(self, add_subcommands, main_kwargs, subparser_kwargs)
            _parsers[key] = {name: value for name, value in vars(self).items() if name not in before}
        vars(self).update(_parsers[key])

    def parse_and_stop(self, parser, args):
        parse(self, parser, args)
        raise ParsedOnly

    with (
        mock.patch.object(CaptionerCLI, "setup_parser", setup_once),
        mock.patch.object(CaptionerCLI, "parse_arguments", parse_and_stop),
        mock.patch("captioner.commands.dates.use_threads", lambda threads: None),
    ):
        yield
