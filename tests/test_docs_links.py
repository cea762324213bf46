"""The README and docs/*.md point at files and headings that exist, and list what they should."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
# A file or folder of this repository named in prose: captioner/models/search.py, configs/dates.yaml, captioner/serve/
REPO_PATH = re.compile(r"(?<![\w/.])((?:captioner|configs|benchmarks|studies)/[\w/]*\.(?:py|yaml)|captioner/\w+/)")


def prose(text: str) -> str:
    """The markdown without code, where brackets and parentheses are not links."""
    return INLINE_CODE.sub("", FENCED.sub("", text))


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens, -1, -2 for repeats."""
    ids: set[str] = set()
    repeats: dict[str, int] = {}
    for heading in re.findall(r"^#+\s+(.+?)\s*$", FENCED.sub("", page.read_text(encoding="utf-8")), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        ids.add(f"{slug}-{repeats[slug]}" if slug in repeats else slug)
        repeats[slug] = repeats.get(slug, 0) + 1
    return ids


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Speed (`make bench`)\n## A: b\n## A: b\nA [page](a.md), ![i](b.png), `[not](c.md)`.\n```\n[nor](d.md)\n```\n"
    )
    assert links(page) == ["a.md", "b.png"]
    assert anchors(page) == {"speed-make-bench", "a-b", "a-b-1"}
    named = "`captioner/serve/` and captioner/models/search.py, configs/dates.yaml; not x/captioner/a.py"
    assert REPO_PATH.findall(named) == ["captioner/serve/", "captioner/models/search.py", "configs/dates.yaml"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(
                f"{target} (no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved})"
            )
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_lists_every_docs_page():
    listed = {(ROOT / target).resolve() for target in links(README)}
    unlisted = [p.name for p in PAGES[1:] if p.resolve() not in listed]
    assert not unlisted, f"docs pages missing from README.md's Documentation section: {unlisted}"


def test_the_readme_configs_table_names_every_config():
    table = re.findall(r"^\| `(configs/[^`]+\.yaml)` \|", README.read_text(encoding="utf-8"), re.MULTILINE)
    shipped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(table) == shipped


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_exists(page):
    """Code moves; prose naming `captioner/...`, `configs/...`, `benchmarks/...` or `studies/...` must follow."""
    named = REPO_PATH.findall(page.read_text(encoding="utf-8"))
    missing = sorted({path for path in named if not (ROOT / path).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"
