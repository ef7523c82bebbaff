"""docs/service.md's Errors table lists every error code the API answers, with its status (EYES10: the 405
`method_not_allowed` and the 500 `internal` were answered but not documented)."""

from __future__ import annotations

import re
from pathlib import Path

import service.app.main  # noqa: F401  (imports every module that defines an error)
from service.app.core import errors
from service.app.core.errors import RagError

ROOT = Path(__file__).resolve().parents[2]


def subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(subclasses(sub) for sub in found)) if found else found


def answered() -> set[tuple[int, str]]:
    codes = {(cls.status_code, cls.code) for cls in {RagError, *subclasses(RagError)}}
    # Starlette's own 404/405/413, mapped to codes in the HTTP error handler.
    source = Path(errors.__file__).read_text(encoding="utf-8")
    mapping = re.search(r"code = \{([^}]*)\}\.get\(", source)
    assert mapping, "the HTTP error handler's status -> code map moved"
    codes |= {(int(status), code) for status, code in re.findall(r'(\d{3}): "([a-z_]+)"', mapping.group(1))}
    return codes


def test_every_error_code_is_in_the_errors_table() -> None:
    text = (ROOT / "docs" / "service.md").read_text(encoding="utf-8")
    section = re.search(r"^### Errors\n(.*?)(?=^#)", text, re.M | re.S)
    assert section
    rows = [line for line in section.group(1).splitlines() if line.startswith("| ")]
    codes = answered()
    assert (405, "method_not_allowed") in codes
    missing = {
        (status, code)
        for status, code in codes
        if not any(f"`{code}`" in row and str(status) in row.split("|")[1] for row in rows)
    }
    assert missing == set(), f"not in docs/service.md's Errors table: {sorted(missing)}"
