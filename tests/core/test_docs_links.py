"""Every documentation reference in the repository resolves.

* A citation ``docs/<page>.md`` or ``docs/<page>.md#<anchor>`` anywhere in code, tests, examples, benchmarks, make
  files, the README or the docs must name a page that exists and, with an anchor, a heading of that page (GitHub's
  anchor rules).
* A relative markdown link ``[text](path#anchor)`` in the README or a docs page must name an existing file, and an
  anchor must exist in the markdown file it points to (or in the same file for ``(#anchor)``).
* Section numbers ("maspo.md §6", "sage.md Part B") are not citations: headings have names, not numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCAN_DIRS = ("rlplugins", "kernels", "integrations", "benchmarks", "examples", "tests", "mk", "docs")
SCAN_FILES = ("Makefile", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".mk", ".toml", ".txt", ".yaml", ".yml", ".cfg", ".ini"}
SKIP_PARTS = {"__pycache__", ".venv", ".venv-verl", ".venv-openrlhf", ".git", ".hypothesis", ".pytest_cache"}
THIS_FILE = Path(__file__).resolve()

# "docs/<page>.md" not preceded by a path character, so "../docs/x.md" or "verl/docs/x.md" are not repo citations.
CITATION = re.compile(r"(?<![\w./-])docs/([\w-]+)\.md(?:#([\w-]+))?", re.UNICODE)
SECTION_NUMBER = re.compile(r"\b[\w-]+\.md[`'\"]?,?\s*(?:§|\(?Part [A-F]\b|[A-F]\d+\b|section \d)")
MD_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
FENCE = re.compile(r"^\s*(```|~~~)")


def github_slug(text: str) -> str:
    """GitHub's heading anchor: markup dropped, lower case, punctuation except '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text, flags=re.UNICODE)
    return text.replace(" ", "-")


def outside_fences(lines: list[str]) -> list[tuple[int, str]]:
    out, fenced = [], False
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


_ANCHORS: dict[Path, set[str]] = {}


def anchors_of(path: Path) -> set[str]:
    """Every anchor GitHub generates for ``path`` (duplicates get -1, -2, ...) plus explicit <a id/name>."""
    if path not in _ANCHORS:
        seen: dict[str, int] = {}
        anchors: set[str] = set()
        for _, line in outside_fences(path.read_text(encoding="utf-8").splitlines()):
            anchors.update(HTML_ANCHOR.findall(line))
            m = HEADING.match(line)
            if not m:
                continue
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            anchors.add(slug if n == 0 else f"{slug}-{n}")
            seen[slug] = n + 1
        _ANCHORS[path] = anchors
    return _ANCHORS[path]


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCAN_FILES if (ROOT / name).is_file()]
    for d in SCAN_DIRS:
        for p in sorted((ROOT / d).rglob("*")):
            if p.is_file() and p.suffix in TEXT_SUFFIXES and not SKIP_PARTS.intersection(p.relative_to(ROOT).parts):
                files.append(p)
    return sorted({p.resolve() for p in files if p.resolve() != THIS_FILE})


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_github_slug_follows_githubs_rules():
    assert github_slug('Data parallelism: what "global" means') == "data-parallelism-what-global-means"
    assert github_slug("Inside `torch.compile`") == "inside-torchcompile"
    assert github_slug("1. Names") == "1-names"
    assert github_slug("Policy losses in PPO/GRPO: `--actor.policy_loss_type`") == (
        "policy-losses-in-ppogrpo---actorpolicy_loss_type")
    assert github_slug("σ_base sweep") == "σ_base-sweep"
    assert github_slug("See [the demo](maspo.md#x)") == "see-the-demo"


def test_every_docs_citation_names_an_existing_page_and_heading():
    broken, found = [], 0
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                found += 1
                page = ROOT / "docs" / f"{m.group(1)}.md"
                if not page.is_file():
                    broken.append(f"{_where(path, number)}: {m.group(0)} (no such page)")
                elif m.group(2) and m.group(2) not in anchors_of(page):
                    broken.append(f"{_where(path, number)}: {m.group(0)} (no heading with that anchor)")
    assert found >= 20, f"the scan found only {found} docs/ citations: is the pattern or the file list broken?"
    assert not broken, "unresolved docs citations:\n" + "\n".join(broken)


def test_no_citation_by_section_number():
    bad = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if SECTION_NUMBER.search(line):
                bad.append(f"{_where(path, number)}: {line.strip()[:120]}")
    assert not bad, "cite docs as docs/<page>.md#<anchor>, not by section number:\n" + "\n".join(bad)


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_markdown_links_resolve(md: Path):
    broken = []
    for number, line in outside_fences(md.read_text(encoding="utf-8").splitlines()):
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold code, not links
        for m in MD_LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (md.parent / path_part).resolve() if path_part else md
            if not dest.exists():
                broken.append(f"{_where(md, number)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors_of(dest):
                broken.append(f"{_where(md, number)}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)
