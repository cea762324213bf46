"""The README and docs/*.md as the docs tests read them: code blocks and inline code with the
line each starts on, so a failure can name `page:line`.

A page joins the checks by being README.md or a file in docs/ (see `PAGES`); nothing to register.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
LIST_ITEM = re.compile(r"^(\s*)(?:[-*+]|\d+[.)])\s+")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)


@dataclass(frozen=True)
class Code:
    """A piece of code on a page: `text`, starting on `line` (1-based) of `page`."""

    page: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{page_id(self.page)}:{self.line}"


@dataclass(frozen=True)
class Block(Code):
    """A fenced or indented code block; `lang` is the fence's info string ("" when none)."""

    lang: str = ""

    def logical_lines(self) -> list[Code]:
        """The block's lines with backslash continuations joined, each with its first line."""
        out: list[Code] = []
        pending: list[str] = []
        start = 0
        for offset, line in enumerate(self.text.split("\n")):
            if not pending:
                start = self.line + offset
            if line.rstrip().endswith("\\"):
                pending.append(line.rstrip()[:-1])
                continue
            pending.append(line)
            out.append(Code(self.page, start, " ".join(part.strip() for part in pending)))
            pending = []
        if pending:
            out.append(Code(self.page, start, " ".join(part.strip() for part in pending)))
        return out


@dataclass(frozen=True)
class Page:
    path: Path
    blocks: tuple[Block, ...]
    spans: tuple[Code, ...]  # inline code, outside code blocks
    prose: str  # the page with code blocks blanked out (line numbers kept)


@cache
def read(path: Path) -> Page:
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    prose = list(lines)
    i = 0
    content_indent = 0  # where the text of the paragraph or list item above starts
    previous_blank = True
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip(" "))
        fence = FENCE.match(line)
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence.group(2)):
                end += 1
            body = [
                text[len(fence.group(1)) :] if text.startswith(fence.group(1)) else text for text in lines[i + 1 : end]
            ]
            blocks.append(Block(path, i + 2, "\n".join(body), fence.group(3)))
            prose[i : end + 1] = [""] * (min(end, len(lines) - 1) - i + 1)
            i, previous_blank = end + 1, False
            continue
        if line.strip() and previous_blank and indent >= content_indent + 4:
            end = i
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * indent)):
                end += 1
            while not lines[end - 1].strip():
                end -= 1
            blocks.append(Block(path, i + 1, "\n".join(text[indent:] for text in lines[i:end])))
            prose[i:end] = [""] * (end - i)
            i, previous_blank = end, False
            continue
        if line.strip():
            item = LIST_ITEM.match(line)
            content_indent = len(item.group(0)) if item else indent
        previous_blank = not line.strip()
        i += 1
    text = "\n".join(prose)
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.DOTALL)
    spans = []
    for paragraph in re.finditer(r"(?:^[^\n]*\S[^\n]*(?:\n|$))+", text, re.MULTILINE):
        first_line = text.count("\n", 0, paragraph.start()) + 1
        for match in CODE_SPAN.finditer(paragraph.group(0)):
            code = match.group(2).replace("\n", " ")
            if code.startswith(" ") and code.endswith(" ") and code.strip():
                code = code[1:-1]
            spans.append(Code(path, first_line + paragraph.group(0).count("\n", 0, match.start()), code))
    return Page(path, tuple(blocks), tuple(spans), text)


def page_id(path: Path) -> str:
    """README.md, docs/training.md: how failures name a page."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def is_python(block: Block) -> bool:
    """A Python snippet: a ```python block, or a plain one that imports something."""
    if block.lang:
        return block.lang in ("python", "py")
    return any(re.match(r"(from \S+ )?import ", line) for line in block.text.splitlines())
