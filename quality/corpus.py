"""Build the evaluation corpus from the Linux man pages the Debian package `manpages-dev` ships.

    python -m quality.corpus --out .data/eval/corpus.jsonl            # sections 2 (system calls)
    python -m quality.corpus --sections 2 3 --out ...                 # and the C library functions

One document per real page (symlinks and `.so` redirects are aliases of another page and are skipped), rendered
by groff exactly as `man` would (no hyphenation, so identifiers are never split across lines, 100-column lines),
with the running header/footer removed and typographic dashes/quotes folded to ASCII. The NAME section is taken
OUT of the document and kept as the page's ``description``: it is the source of the paraphrase-style queries
("open and possibly create a file" -> open.2), which would otherwise match their page verbatim.

Why this corpus: it is public, versioned by a Debian package (the version is recorded with the corpus, and the
query set names the version it was built from), technical prose full of identifiers (O_CLOEXEC, EPOLLEXCLUSIVE,
PR_SET_NAME) where dense and keyword retrieval differ, and every machine here and in CI can install it offline
from apt. The text is built at eval time, not committed, except the small CI subset (quality/ci_corpus.json).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
PACKAGE = "manpages-dev"

# groff: tables (-t), the man macros, UTF-8 output without bold/underline/overstrike, no hyphenation (HY=0),
# 100-column lines (LL) so fewer sentences wrap.
GROFF = ["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rHY=0", "-rLL=100n"]
_FOLD = str.maketrans(
    {"\u2010": "-", "\u2011": "-", "\u2212": "-", "\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'}
)
_SECTION_HEADING = re.compile(r"^[A-Z][A-Z ]+$")


@dataclass(frozen=True)
class Page:
    """One man page as an evaluation document."""

    document_id: str  # "open.2"
    title: str  # "open(2)"
    description: str  # the NAME line's text after the dash: "open and possibly create a file"
    names: list[str]  # the names the NAME line lists: ["open", "openat", "creat"]
    text: str  # the rendered page without header, footer and NAME section


class CorpusError(RuntimeError):
    """The corpus cannot be built (package missing, groff missing); the message says how to fix it."""


def package_version(package: str = PACKAGE) -> str:
    """The installed Debian version of the package, e.g. ``6.03-2``."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise CorpusError("dpkg-query not found: the corpus is built from a Debian package") from exc
    if result.returncode != 0 or not result.stdout:
        raise CorpusError(f"{package} is not installed: apt-get install {package}")
    return result.stdout.strip()


def page_files(sections: Iterable[str], root: Path = MAN_ROOT) -> list[Path]:
    """The real page files of the sections (symlinks and .so redirects left out), sorted by name."""
    files = []
    for section in sections:
        for path in sorted((root / f"man{section}").glob(f"*.{section}*.gz")):
            if path.is_symlink():
                continue
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
                if handle.read(4) == ".so ":
                    continue
            files.append(path)
    return files


def render(path: Path) -> str:
    """The page as `man` shows it (plain UTF-8 text), with dashes and quotes folded to ASCII."""
    source = gzip.decompress(path.read_bytes())
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    result = subprocess.run(GROFF, input=source, capture_output=True, env=env, check=False)
    if result.returncode != 0:
        raise CorpusError(f"groff failed on {path}: {result.stderr.decode(errors='replace')[:200]}")
    return result.stdout.decode("utf-8", errors="replace").translate(_FOLD)


def parse(document_id: str, rendered: str) -> Page | None:
    """Split a rendered page into NAME (description, names) and the rest; None for a page without NAME."""
    lines = [line.rstrip() for line in rendered.splitlines()]
    # Running header (first non-empty line) and footer (last non-empty line) repeat the title and version.
    content = list(lines)
    while content and not content[0].strip():
        content.pop(0)
    while content and not content[-1].strip():
        content.pop()
    if len(content) < 3:
        return None
    title = content[0].split()[0]
    content = content[1:-1]
    name_lines: list[str] = []
    body: list[str] = []
    section = None
    for line in content:
        if _SECTION_HEADING.match(line):
            section = line.strip()
            if section == "NAME":
                continue
        if section == "NAME":
            name_lines.append(line.strip())
        else:
            body.append(line)
    name = " ".join(part for part in name_lines if part)
    if " - " not in name:
        return None
    names_part, description = name.split(" - ", 1)
    names = [n.strip() for n in names_part.split(",") if n.strip()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip()
    return Page(document_id=document_id, title=title, description=description.strip(), names=names, text=text)


def build(sections: Iterable[str], root: Path = MAN_ROOT, workers: int = 4) -> Iterator[Page]:
    """Every page of the sections, in file-name order."""
    files = page_files(sections, root)

    def one(path: Path) -> Page | None:
        document_id = path.name.removesuffix(".gz")
        return parse(document_id, render(path))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for page in pool.map(one, files):
            if page is not None and page.text:
                yield page


def write_jsonl(pages: Iterable[Page], out: Path, version: str) -> int:
    """Write ``{"package", "version"}`` then one page per line; returns the page count (atomic replace)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(out.suffix + ".partial")
    count = 0
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"package": PACKAGE, "version": version}) + "\n")
        for page in pages:
            handle.write(json.dumps(asdict(page), ensure_ascii=False) + "\n")
            count += 1
    partial.replace(out)
    return count


def read_jsonl(path: Path) -> tuple[dict[str, str], list[Page]]:
    """The header and the pages of a corpus file written by `write_jsonl`."""
    with path.open(encoding="utf-8") as handle:
        header = json.loads(handle.readline())
        pages = [Page(**json.loads(line)) for line in handle if line.strip()]
    return header, pages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the evaluation corpus from the manpages-dev package.")
    parser.add_argument("--sections", nargs="+", default=["2"], help="man sections (default: 2)")
    parser.add_argument("--out", type=Path, required=True, help="corpus file (JSON lines)")
    args = parser.parse_args(argv)
    try:
        version = package_version()
        count = write_jsonl(build(args.sections), args.out, version)
    except CorpusError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{count} pages of {PACKAGE} {version} (sections {' '.join(args.sections)}) -> {args.out}")


if __name__ == "__main__":
    main()
