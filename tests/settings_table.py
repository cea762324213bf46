"""The settings table of docs/training.md, made from the code.

    python -m tests.settings_table            # print the table
    python -m tests.settings_table --write    # put it into docs/training.md

Every `model.*`, `data.*`, `runtime.*` and `predictions.*` setting of `captioner train`, grouped
by the class that holds it, with its default. They are read from the same signatures and
dataclasses the Lightning CLI reads, so a setting renamed, added or given another default in
the code changes the table; tests/test_docs_settings.py fails until docs/training.md holds
today's table (and checks it against what the CLI itself accepts).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "training.md"
BEGIN = "<!-- settings table: made by `python -m tests.settings_table --write` from the code; do not edit by hand -->"
END = "<!-- end of the settings table -->"

REQUIRED = inspect.Parameter.empty  # a parameter without a default: linked from the data, not a setting


def roots() -> dict[str, type]:
    """The CLI's sections that captioner defines, and the class each is built from
    (`captioner.training.cli.CaptionerCLI`); `trainer.*` and the checkpoint sections are Lightning's."""
    from captioner.data import CaptionDataModule
    from captioner.training.predictions import CaptionWriter
    from captioner.training.runtime import Runtime
    from captioner.training.system import CaptioningModule

    return {"model": CaptioningModule, "data": CaptionDataModule, "runtime": Runtime, "predictions": CaptionWriter}


@dataclass(frozen=True)
class Group:
    """The settings under `key` (`model.encoder`): held by `owner`, as (name, default) pairs in the
    order the code declares them. `optional`: the group itself defaults to null (off until set);
    `chosen`: `owner` is the default of a setting that takes any subclass of `chosen` by class_path."""

    key: str
    owner: type
    settings: tuple[tuple[str, Any], ...]
    optional: bool = False
    chosen: type | None = None

    def keys(self) -> list[str]:
        return [f"{self.key}.{name}" for name, _ in self.settings]


def groups() -> list[Group]:
    """Every group of settings, each section's own settings first, then its nested groups."""
    out: list[Group] = []
    for key, cls in roots().items():
        hints = typing.get_type_hints(cls.__init__)
        parameters = [
            (p.name, hints.get(p.name), p.default)
            for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        _walk(key, cls, parameters, False, out)
    return out


def settings() -> dict[str, Any]:
    """Every setting's full key (`model.encoder.backbone`) and its default."""
    return {f"{group.key}.{name}": default for group in groups() for name, default in group.settings}


def _walk(key: str, owner: type, parameters: list[tuple[str, Any, Any]], optional: bool, out: list[Group]) -> None:
    own, nested, chosen = [], [], []
    for name, hint, default in parameters:
        if default is REQUIRED:
            continue
        config = _dataclass_in(hint)
        if _lazy_class(default) is not None:
            chosen.append((name, hint, default))
        elif config is None:
            own.append((name, default))
        else:
            nested.append((name, config, default))
    if own:
        out.append(Group(key, owner, tuple(own), optional))
    for name, hint, default in chosen:
        cls = _lazy_class(default)
        arguments = {**_init_defaults(cls), **default._lazy_kwargs}
        out.append(Group(f"{key}.{name}", cls, tuple(arguments.items()), chosen=hint))
    for name, config, default in nested:
        hints = typing.get_type_hints(config)
        fields = [(f.name, hints[f.name], _field_default(f, default)) for f in dataclasses.fields(config)]
        _walk(f"{key}.{name}", config, fields, default is None, out)


def _field_default(field: dataclasses.Field, instance: Any) -> Any:
    """The field's value in the default instance, else the dataclass's own default."""
    if instance is not None:
        return getattr(instance, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


def _lazy_class(value: Any) -> type | None:
    """The class of a `jsonargparse.lazy_instance` default (what `class_path` names), else None."""
    return getattr(value, "_lazy_class_type", None)


def _init_defaults(cls: type) -> dict[str, Any]:
    """The constructor's parameters that have defaults, in order, with them."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p.default for p in parameters if p.default is not REQUIRED}


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass that a type hint names (alone or `X | None`), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [arg for arg in typing.get_args(hint) if _dataclass_in(arg)]
        return found[0] if len(found) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def format_value(value: Any) -> str:
    """A default as it is written in a config or on the command line: null, true, 0.0004, resnet101."""
    if isinstance(value, str):
        return value if value else '""'
    try:
        return json.dumps(value)
    except TypeError:  # an object: its class (a config names it by class_path)
        return type(value).__qualname__


def table() -> str:
    rows = ["| keys | class | settings and their defaults |", "|---|---|---|"]
    for group in groups():
        values = ", ".join(f"`{name}` = {format_value(default)}" for name, default in group.settings)
        if group.optional:
            values = f"null (off) until set; then {values}"
        owner = f"`{group.owner.__module__}.{group.owner.__qualname__}`"
        if group.chosen is not None:
            owner += f" by default; any `{group.chosen.__qualname__}` by class_path"
        rows.append(f"| `{group.key}.*` | {owner} | {values} |")
    return "\n".join(rows)


def replaced(page_text: str, new_table: str) -> str:
    """`page_text` with the table between its BEGIN and END lines replaced by `new_table`."""
    start, end = page_text.find(BEGIN), page_text.find(END)
    if start < 0 or end < start:
        raise SystemExit(
            f"{PAGE.relative_to(ROOT)} has no settings table: put the lines\n{BEGIN}\n{END}\nwhere it goes"
        )
    return page_text[: start + len(BEGIN)] + "\n" + new_table + "\n" + page_text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.settings_table", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write the table into {PAGE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if not args.write:
        print(table())
        return 0
    PAGE.write_text(replaced(PAGE.read_text(encoding="utf-8"), table()), encoding="utf-8")
    print(f"wrote the settings table into {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
