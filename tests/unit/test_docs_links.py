"""The docs stand on their own: every relative link in README.md and docs/ reaches a file (and heading) in the
repository, every test the docs name exists, and nothing tracked points outside the repository.

Links are read with markdown-it (the parser rich uses), so links inside code blocks are not links; anchors are
checked against GitHub's heading slugs.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

ROOT: Final = Path(__file__).resolve().parents[2]
DOCUMENTS: Final = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").rglob("*.md")])
# A test file, optionally with one test in it: tests/e2e/test_readme.py, tests/e2e/test_x.py::test_y.
TEST_REFERENCE: Final = re.compile(r"\b(tests/[\w/]+\.py)(?:::(\w+))?")
OUTSIDE: Final = "../" + "shared"  # spelled in two parts so this file does not match itself


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(document: Path) -> frozenset[str]:
    tokens = MarkdownIt("commonmark").enable("table").parse(document.read_text())
    seen: Counter[str] = Counter()
    found = set()
    for opening, inline in itertools.pairwise(tokens):
        if opening.type == "heading_open":
            base = slug(inline.content)
            found.add(f"{base}-{seen[base]}" if seen[base] else base)
            seen[base] += 1
    return frozenset(found)


def links(document: Path) -> list[str]:
    found = []
    for token in MarkdownIt("commonmark").enable("table").parse(document.read_text()):
        for child in token.children or ():
            target = child.attrGet("href") if child.type == "link_open" else child.attrGet("src")
            if isinstance(target, str):
                found.append(target)
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=relative)
def test_every_relative_link_reaches_a_file_and_heading(document: Path) -> None:
    broken = []
    for target in links(document):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue  # an external link; not ours to keep alive
        path = (document.parent / unquote(parts.path)).resolve() if parts.path else document
        if not path.exists() or ROOT not in (path, *path.parents):
            broken.append(f"{target}: no such file in the repository")
        elif parts.fragment and path.suffix == ".md" and parts.fragment not in anchors(path):
            broken.append(f"{target}: no heading #{parts.fragment} in {relative(path)}")
    assert broken == [], broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=relative)
def test_every_test_the_docs_name_exists(document: Path) -> None:
    missing = []
    for match in TEST_REFERENCE.finditer(document.read_text()):
        test_file, test_name = ROOT / match[1], match[2]
        if not test_file.is_file():
            missing.append(match[1])
        elif test_name and not re.search(rf"^\s*(async )?def {test_name}\(", test_file.read_text(), re.MULTILINE):
            missing.append(match[0])
    assert missing == [], missing


def test_the_readme_names_its_tests() -> None:
    # The check above means something only if the README does name tests.
    assert "tests/e2e/test_readme.py" in (ROOT / "README.md").read_text()


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in listed.decode().split("\0") if name]
    return [path for path in paths if path.is_file() and b"\0" not in path.read_bytes()[:8192]]


def test_nothing_tracked_points_outside_the_repository() -> None:
    files = tracked_text_files()
    assert len(files) > 100  # git answered with the repository's files
    offending = [relative(path) for path in files if OUTSIDE in path.read_text(errors="replace")]
    assert offending == []
