"""Every link between the project's own documents resolves: the file exists, and a `#fragment` names a heading there.

tests/test_repo.py only checked that README's file links exist. A link into a section (`runbooks.md#...`) or a
section of the same page (`#...`) was never checked, nor any link in docs/*.md, so a runbook could point an
on-call engineer at a section that did not exist ("restore from snapshot"). Fragments follow GitHub's heading
anchors: lower case, punctuation other than `-` and `_` dropped, spaces to `-`, a repeated heading gets `-1`,
`-2`; headings and links inside fenced code blocks are not headings or links. (The alerts' `runbook_url`
fragments are checked by tests/infra/test_alert_rules.py.)
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
# [text](target) and [text](target "title"); images too. Not inside inline code (stripped first).
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of everything outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading anchors on its text
    text = text.strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "M", "N"))
    return kept.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    # Explicit HTML anchors (<a id="...">, <a name="...">) are targets too.
    found |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return frozenset(found)


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ... are not ours
                found.append((number, target))
    return found


def broken(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, target in links(path):
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where} (no file {file_part})")
            continue
        if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{where} (no heading #{fragment} in {resolved.relative_to(root)})")
    return problems


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_between_our_documents_resolves(path: Path) -> None:
    assert broken(path) == []


def test_the_checker_finds_a_missing_section_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Restore from a snapshot\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## `qdrant` node: what's up?\n\n## Page\n\n```\n# not a heading\n[x](#not-a-link)\n```\n"
        "[a](other.md#restore-from-a-snapshot) [b](other.md#restore-from-snapshot) [c](#qdrant-node-whats-up)\n"
        "[d](#page-1) [e](missing.md) [f](https://example.com/x#y) `[g](#inline-code)` [h](#not-a-heading)\n",
        encoding="utf-8",
    )
    assert [problem.split(": ", 1)[1] for problem in broken(page, root=tmp_path)] == [
        "other.md#restore-from-snapshot (no heading #restore-from-snapshot in other.md)",
        "missing.md (no file missing.md)",
        "#not-a-heading (no heading #not-a-heading in page.md)",
    ]
