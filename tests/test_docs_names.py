"""What the README and docs/*.md name exists: every Python name in backticks
(`captioner.inference.checkpoint.model_state`, `FusedDecoder.forward_autograd`,
`Captioner.caption(images, erasure=True)`, called with parameters it has), every setting
(`model.optimizer.decoder_lr`, `runtime.tf32: true`), every file of the repository
(`captioner/models/fused.py`, `tests/test_export.py::test_name`, `fused.py`), and the Python
snippets import what they use and call it as the code defines it.

How a name is looked up: a dotted name from `captioner` (or a module such as `torch`) is
imported; a bare class or function name (`FusedDecoder`, `model_state(...)`) is found wherever
captioner defines it; a name from elsewhere is in `EXTERNAL`. Lower-case words alone
(`beam_size`, `fit`) are not checked: they could be anything.
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import re
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.docs_cli import is_settings_group, problem, setting_keys
from tests.docs_pages import PAGES, ROOT, Code, is_python, page_id, read

# Names from outside captioner that the docs use bare: where each comes from (None: nothing to
# import, e.g. a C function).
EXTERNAL = {
    "nn": "torch.nn",
    "Image": "PIL.Image.Image",
    "TreebankWordTokenizer": "nltk.tokenize.TreebankWordTokenizer",
    "AdaptiveAvgPool2d": "torch.nn.AdaptiveAvgPool2d",
    "LightningDataModule": "pytorch_lightning.LightningDataModule",
    "Trainer": "pytorch_lightning.Trainer",
    "ModelCheckpoint": "pytorch_lightning.callbacks.ModelCheckpoint",
    "HfApi": "huggingface_hub.HfApi",
    "malloc_trim": None,  # glibc's, called through ctypes
    "NaN": None,  # JSON's spellings of non-finite numbers
    "Infinity": None,
    "DatasetDict": None,  # the optional `datasets` package's, which the tests need not have
    "Module": "torch.nn.Module",
    "TorchDispatchMode": "torch.utils._python_dispatch.TorchDispatchMode",
}
# Optional extras a snippet may import; where one is not installed its names go unchecked.
OPTIONAL_PACKAGES = {"datasets"}
# Packages a dotted name may start from.
MODULE_ROOTS = {
    "captioner",
    "benchmarks",
    "inspect",
    "torch",
    "torchvision",
    "pytorch_lightning",
    "PIL",
    "nltk",
}
MODULE_ROOTS |= {"huggingface_hub", "numpy", "safetensors", "jsonargparse", "pycocoevalcap", "fastapi", "uvicorn"}
# The training CLI's sections: `model.decoding`, `trainer.devices`, `runtime.tf32: true` are settings.
SETTING_ROOTS = {"model", "data", "trainer", "runtime", "checkpoint", "last_checkpoint", "predictions"}
# Settings that are gone but that older checkpoints still hold: the docs say so, and the
# checkpoint reader must still know them.
FORMER_SETTINGS = {"model.validation_erasure", "model.scst", "model.hard_attention", "model.attention_lambda"}
CHECKPOINT_READER = "captioner/inference/checkpoint.py"
# Files the code writes (named in the docs, but not in the repository).
WRITTEN_FILES = {"config.yaml"}
# File names the docs give as examples of what a user might type.
EXAMPLE_FILES = {"foo.yaml"}
FILE_NAME = re.compile(r"\.(py|json|jsonl|yaml|yml|png|jpg|ckpt|safetensors|md|txt|npy|html|ipynb|csv)\b")


# -- looking names up ------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A value of type `cls` (what a call returns, a field holds)."""

    cls: type


@dataclass(frozen=True)
class Many:
    """A list, iterator or sequence of `item` values."""

    item: Any


@dataclass(frozen=True)
class Bound:
    """A method reached through an instance, or written `Class.method(...)` for one: `self` is given."""

    function: Any


@dataclass(frozen=True)
class OneOf:
    """A bare name captioner defines in several places (`DEFAULT_RECIPE`): any of `values`."""

    values: tuple


class NotFound(Exception):
    pass


@cache
def captioner_definitions() -> dict[str, list[tuple[str, str | None]]]:
    """Name -> [(module, class or None)] for every top-level name and method defined in captioner/."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    for path in sorted((ROOT / "captioner").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            for name in names:
                found.setdefault(name, []).append((module, None))
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        found.setdefault(item.name, []).append((module, node.name))
    return found


def import_path(dotted: str) -> Any:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            value = getattr(value, part)
        return value
    raise NotFound(f"cannot import {dotted}")


def global_name(name: str) -> Any:
    """What a bare name in the docs names: a module, something captioner defines, or an EXTERNAL."""
    if name in EXTERNAL:
        return None if EXTERNAL[name] is None else import_path(EXTERNAL[name])
    if name in MODULE_ROOTS:
        return importlib.import_module(name)
    found = []
    for module, owner in captioner_definitions().get(name, []):
        value = importlib.import_module(module)
        found.append(getattr(value, name) if owner is None else Bound(getattr(getattr(value, owner), name)))
    if not found:
        raise NotFound(f"`{name}` is defined nowhere in captioner/ (a name from elsewhere goes into EXTERNAL)")
    return found[0] if len(found) == 1 else OneOf(tuple(found))


def has_member(cls: type, name: str) -> bool:
    """Whether instances of `cls` have `name`: an attribute, a field, or one `__init__` sets."""
    if hasattr(cls, name):
        return True
    if dataclasses.is_dataclass(cls) and name in {field.name for field in dataclasses.fields(cls)}:
        return True
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return True
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(rf"self\.{name}\b\s*(:[^=]+)?=(?!=)", source):
            return True
    return False


def type_of(hint: Any) -> Any:
    """An annotation as a value the checker follows: Instance, Many, or None when unknown."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple, set, collections.abc.Iterator, collections.abc.Iterable, collections.abc.Sequence):
        args = typing.get_args(hint)
        return Many(type_of(args[0])) if args and origin is not tuple else None
    if origin in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return type_of(kinds[0]) if len(kinds) == 1 else None
    return Instance(hint) if isinstance(hint, type) else None


def hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # annotations that only a type checker resolves
        return {}


def member(base: Any, name: str) -> Any:
    """`base.name` for a module, class, instance or plain value; NotFound when it has none."""
    if isinstance(base, OneOf):
        found = []
        for value in base.values:
            with contextlib.suppress(NotFound):
                found.append(member(value, name))
        if not found:
            raise NotFound(f"none of the {len(base.values)} definitions of that name has `{name}`")
        return found[0]
    if isinstance(base, types.ModuleType):
        if hasattr(base, name):
            return getattr(base, name)
        try:
            return importlib.import_module(f"{base.__name__}.{name}")
        except ImportError:
            raise NotFound(f"module {base.__name__} has no `{name}`") from None
    if isinstance(base, (type, Instance)):
        cls = base if isinstance(base, type) else base.cls
        if not has_member(cls, name):
            raise NotFound(f"{cls.__module__}.{cls.__qualname__} has no `{name}`")
        static = inspect.getattr_static(cls, name, None)
        if isinstance(static, property):
            return type_of(hints(static.fget).get("return"))
        if inspect.isfunction(static):  # a method: `Class.method(...)` in the docs means on an instance
            return Bound(static)
        field = hints(cls).get(name)
        if field is not None and (isinstance(base, Instance) or static is None):
            return type_of(field)
        return getattr(cls, name, None)
    if isinstance(base, (Many, Bound)) or base is None:
        return None
    if not hasattr(base, name):
        raise NotFound(f"{base!r} has no `{name}`")
    return getattr(base, name)


def signature_of(callee: Any) -> tuple[inspect.Signature, bool] | None:
    """(signature, whether its first parameter is given already) of something called."""
    try:
        if isinstance(callee, Bound):
            return inspect.signature(callee.function), True
        if isinstance(callee, Instance):  # an nn.Module called: its forward
            forward = getattr(callee.cls, "forward", None)
            return (inspect.signature(forward), True) if forward else None
        if callable(callee):
            return inspect.signature(callee), False
    except (TypeError, ValueError):
        return None
    return None


def returned(callee: Any) -> Any:
    if isinstance(callee, type):
        return Instance(callee)
    function = callee.function if isinstance(callee, Bound) else callee
    if isinstance(callee, Instance):
        function = getattr(callee.cls, "forward", None)
    return type_of(hints(function).get("return")) if callable(function) else None


# -- checking code ---------------------------------------------------------------------------


class Checker:
    """Follows a snippet statement by statement: names bound by imports and assignments, the
    types calls return (from their annotations), and checks each attribute and call on the way.
    `bare_names`: look names up in captioner (inline code); a snippet must import its own."""

    def __init__(self, bare_names: bool) -> None:
        self.bare_names = bare_names
        self.names: dict[str, Any] = {}
        self.problems: list[tuple[int, str]] = []

    def run(self, tree: ast.Module) -> list[tuple[int, str]]:
        for statement in tree.body:
            self.statement(statement)
        return self.problems

    def complain(self, node: ast.AST, message: str) -> None:
        self.problems.append((getattr(node, "lineno", 1), message))

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.bind_import(node, alias.name, alias.asname or alias.name.split(".")[0], whole=alias.asname)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                self.bind_import(node, f"{node.module}.{alias.name}", alias.asname or alias.name, whole=True)
        elif isinstance(node, ast.Assign):
            value = self.value(node.value)
            for target in node.targets:
                self.assign(target, value)
        elif isinstance(node, ast.For):
            items = self.value(node.iter)
            self.assign(node.target, items.item if isinstance(items, Many) else None)
            for inner in node.body:
                self.statement(inner)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.value(child)
                elif isinstance(child, ast.stmt):
                    self.statement(child)

    def bind_import(self, node: ast.AST, dotted: str, name: str, whole: Any) -> None:
        root = dotted.split(".")[0]
        if root in OPTIONAL_PACKAGES and importlib.util.find_spec(root) is None:
            self.names[name] = None
            return
        try:
            value = import_path(dotted)
        except (NotFound, AttributeError):
            self.complain(node, f"cannot import `{dotted}`")
            value = None
        self.names[name] = value if whole else importlib.import_module(dotted.split(".")[0])

    def assign(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.names[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.assign(element, None)
        elif isinstance(target, ast.Attribute):
            self.value(target.value)

    def value(self, node: ast.expr, called: bool = False) -> Any:
        """What `node` evaluates to, as far as can be known (None when unknown); `called`: it is
        the function of a call."""
        try:
            return self._value(node, called)
        except NotFound as error:
            self.complain(node, str(error))
            return None

    def _value(self, node: ast.expr, called: bool = False) -> Any:
        if isinstance(node, ast.Name):
            return self.name(node, called)
        if isinstance(node, ast.Attribute):
            base = self._value(node.value)
            return None if base is None else member(base, node.attr)
        if isinstance(node, ast.Call):
            callee = self.value(node.func, called=True)
            for argument in [*node.args, *(keyword.value for keyword in node.keywords)]:
                if not (self.bare_names and isinstance(argument, ast.Name)):  # `feature_centres(S)`: the reader's S
                    self.value(argument)
            self.check_call(node, callee)
            return returned(callee) if callee is not None else None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.value(child)
        return None

    def name(self, node: ast.Name, called: bool) -> Any:
        if node.id in self.names:
            return self.names[node.id]
        if hasattr(builtins, node.id):
            return getattr(builtins, node.id)
        if self.bare_names:
            if called or node.id[0].isupper() or node.id.startswith("_") or node.id in MODULE_ROOTS | set(EXTERNAL):
                return global_name(node.id)
            return None
        if node.id[0].isupper():
            raise NotFound(f"uses `{node.id}` without importing it")
        return None  # a variable the reader supplies (images, vocab)

    def check_call(self, node: ast.Call, callee: Any) -> None:
        found = signature_of(callee)
        if found is None or any(isinstance(a, ast.Starred) for a in node.args):
            return
        signature, self_given = found
        parameters = list(signature.parameters.values())[1 if self_given else 0 :]
        try:
            signature.replace(parameters=parameters).bind_partial(
                *node.args, **{k.arg: k.value for k in node.keywords if k.arg}
            )
        except TypeError as error:
            self.complain(node, f"`{ast.unparse(node)}`: {error}")


# -- what each page names --------------------------------------------------------------------


def span_problems(span: Code) -> list[str]:
    """What is wrong with the name, setting or call one piece of inline code writes."""
    text = span.text.strip()
    if text.startswith("--") or (" " in text.split("(")[0].strip() and "=" not in text):
        return []  # options and command lines: tests/test_docs_commands.py
    if FILE_NAME.search(text.split("(")[0]) or "/" in text.split("(")[0]:
        return []  # files: test_every_file_named_exists
    root = re.match(r"[A-Za-z_]\w*", text)
    if root is None:
        return []
    if root.group(0) in SETTING_ROOTS and "(" not in text:
        return setting_problems(text)
    if re.fullmatch(r"\w+(\.\w+)*\.\*", text):
        return [] if is_settings_group(text[:-2]) else [f"no settings under `{text[:-2]}`"]
    setting = re.fullmatch(r"(\w+): (\S+)", text)  # `attend_from: current`
    if setting:
        return relative_setting_problems(*setting.groups())
    try:
        tree = ast.parse(text)
    except SyntaxError:
        call = re.match(r"([A-Za-z_][\w.]*)\(", text)  # `Captioner.from_pretrained(folder or Hub id)`
        return span_problems(Code(span.page, span.line, call.group(1))) if call else []
    if not _worth_checking(tree, root.group(0)):
        return []
    return [message for _, message in Checker(bare_names=True).run(tree)]


def _worth_checking(tree: ast.Module, root: str) -> bool:
    """Names and calls that can only be code: dotted names, calls, class-like and private names."""
    if len(tree.body) != 1:
        return False
    node = tree.body[0]
    if isinstance(node, ast.Assign):  # `model.decoder = Decoder(...)`, not `erasure=1`
        return isinstance(node.value, ast.Call)
    if not isinstance(node, ast.Expr) or not isinstance(node.value, (ast.Name, ast.Attribute, ast.Call)):
        return False
    if root in EXTERNAL or root in MODULE_ROOTS or root.startswith("_"):
        return True
    if root.isupper():
        return False  # a constant, an environment variable, a weights name: cannot tell
    return root[0].isupper() or isinstance(node.value, ast.Call)


def setting_problems(text: str) -> list[str]:
    """`model.optimizer.decoder_lr`, `model.encoder.*`, `model.spice: true`, `trainer.devices 4`."""
    key, _, value = re.sub(r":\s*", " ", text, count=1).partition(" ")
    if key.endswith((".*", ".")):  # `model.*`, or `model.` as a prefix
        prefix = key.rstrip("*").rstrip(".")
        return [] if is_settings_group(prefix) else [f"no settings under `{prefix}`"]
    if key in FORMER_SETTINGS:
        if key in setting_keys() or f'"{key.split(".")[-1]}"' not in (ROOT / CHECKPOINT_READER).read_text():
            return [f"`{key}` is listed as a former setting, yet it is a setting or {CHECKPOINT_READER} forgot it"]
        return []
    if key not in setting_keys() and not is_settings_group(key):
        return [f"`{key}` is no setting of `captioner train` (`--print_config` lists them)"]
    error = problem(f"--{key} {value}", fragment=True) if value.strip() else None
    return [error] if error else []


def relative_setting_problems(name: str, value: str) -> list[str]:
    """`attend_from: current`: if `name` ends a setting's key, the value must suit that setting."""
    keys = sorted(key for key in setting_keys() if key.endswith(f".{name}"))
    if not keys:
        return []  # another file's key (a model card's header), or not a setting at all
    error = problem(f"--{keys[0]} {value}", fragment=True)
    return [error] if error and all(problem(f"--{key} {value}", fragment=True) for key in keys[1:]) else []


def snippet_problems(page: Path) -> list[str]:
    out = []
    for block in read(page).blocks:
        if not is_python(block):
            continue
        try:
            tree = ast.parse(block.text)
        except SyntaxError as error:
            out.append(f"{page_id(page)}:{block.line + (error.lineno or 1) - 1}: does not compile: {error.msg}")
            continue
        out += [f"{page_id(page)}:{block.line + line - 1}: {message}" for line, message in Checker(False).run(tree)]
    return out


def name_problems(page: Path) -> list[str]:
    return [f"{span.where}: `{span.text}`: {message}" for span in read(page).spans for message in span_problems(span)]


# -- files -----------------------------------------------------------------------------------

# A path from the repository's root: captioner/models/search.py, configs/dates.yaml, captioner/serve/,
# tests/test_export.py::test_name, tests/test_docs_*.py
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:captioner|configs|benchmarks|tests|docs|notebooks|tools)/[\w./*-]*(?:::\w+)?|train\.py|Makefile)"
)
# A file named by the end of its path: fused.py, models/attention.py, small_scratch.yaml
FILE_END = re.compile(r"(?<![\w/.-])([\w-]+(?:/[\w-]+)*\.(?:py|yaml))\b")


@cache
def repository_files() -> tuple[str, ...]:
    files = (path.relative_to(ROOT) for path in ROOT.rglob("*") if path.is_file())
    return tuple(
        str(path)
        for path in files
        if path.parts[0] not in ("runs", "data") and not {".git", ".venv", "__pycache__"} & set(path.parts)
    )


def file_problems(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        for named in REPO_PATH.findall(line):
            path, _, test = named.rstrip(".,;:)").partition("::")
            if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                out.append(f"{page_id(page)}:{number}: `{path}` does not exist")
            elif test and not re.search(rf"^def {test}\(", (ROOT / path).read_text(), re.MULTILINE):
                out.append(f"{page_id(page)}:{number}: {path} has no `{test}`")
        for named in FILE_END.findall(line):
            if named.startswith(REPO_PATH_ROOTS) or named in WRITTEN_FILES | EXAMPLE_FILES:
                continue
            if not any(file == named or file.endswith(f"/{named}") for file in repository_files()):
                out.append(f"{page_id(page)}:{number}: no file `{named}` in the repository")
    return out


REPO_PATH_ROOTS = ("captioner/", "configs/", "benchmarks/", "tests/", "docs/", "notebooks/")


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_name_in_backticks_exists(page):
    problems = name_problems(page)
    assert not problems, "names the code does not have (fix the page, or the code):\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_snippets_import_what_they_use(page):
    problems = snippet_problems(page)
    assert not problems, "Python snippets that do not match the code:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_file_named_exists(page):
    problems = file_problems(page)
    assert not problems, "files the docs name that are not there:\n" + "\n".join(problems)


def test_the_checkers_name_what_the_code_lacks_with_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Names\n\n"
        "`captioner.inference.checkpoint.model_state`, `FusedDecoder.forward_autograd`, `model.optimizer.decoder_lr`,\n"
        "`captioner.inference.export.model_state`, `Decoder.forward_autograd`, `model.decoder_lr`, `runtime.compile`,\n"
        "`HeatmapStyle(scales='word')`, `model_states(state)`, `CaptionResult.erasures`, `attend_from: later`,\n"
        "`model.encode(images)`, `beam_size`, `val/CIDEr`, `nn.Module`, `Encoder.feature_centres(S)`.\n\n"
        "```python\n"
        "from captioner.inference.api import Captioner\n\n"
        'captioner = Captioner.from_checkpoint("best.ckpt", devices="auto")\n'
        'for result in captioner.caption(["photo.jpg"]):\n'
        "    print(result.caption, result.captions)\n"
        "model = ShowAttendTell.for_images(1, 2, 3)\n"
        "```\n\n"
        "Files: captioner/models/fused.py, `fused.py`, `tests/test_export.py::test_nothing_like_this`,\n"
        "captioner/models/fussed.py, `fussed.py`, `config.yaml`.\n"
    )
    assert [problem.split(": ")[0] for problem in name_problems(page)] == ["page.md:4"] * 3 + ["page.md:5"] * 3
    names = "\n".join(name_problems(page))
    for wrong in ("export.model_state", "Decoder.forward_autograd", "model.decoder_lr", "scales", "model_states"):
        assert wrong in names
    assert "erasures" not in names.split("page.md:5")[0]
    snippets = snippet_problems(page)
    assert [problem.split(": ")[0] for problem in snippets] == ["page.md:11", "page.md:13", "page.md:14"]
    assert "devices" in snippets[0] and "`captions`" in snippets[1] and "without importing" in snippets[2]
    files = file_problems(page)
    assert [problem.split(": ")[0] for problem in files] == ["page.md:17", "page.md:18", "page.md:18"]
    assert "test_nothing_like_this" in files[0] and "fussed.py" in files[1] and "fussed.py" in files[2]
