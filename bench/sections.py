"""docs/benchmarks.md is shared by every benchmark: each one rewrites only its own marked section."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, section: str, start: str, end: str, *, heading: str | None = None) -> None:
    """Put ``section`` (itself opening with ``start`` and closing with ``end``) where ``path`` has those markers.

    Without the markers the section is appended, under ``heading`` when one is given ("" appends it bare); with
    ``heading=None`` a missing section is an error naming the markers.
    """
    doc = path.read_text(encoding="utf-8")
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + section + doc[doc.index(end) + len(end) :]
    elif heading is None:
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    else:
        doc = doc.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + section + "\n"
    path.write_text(doc, encoding="utf-8")
