"""Document ids: the pattern every id matches, and the id derived from a file name or path (no dependencies:
the ingest client imports it without the web framework)."""

from __future__ import annotations

import hashlib
import re

DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,256}$"

_document_id = re.compile(DOCUMENT_ID_PATTERN)


def derive_document_id(name: str) -> str:
    """A document id for a name (a file name, a relative path): the name itself when it is a valid id.

    Otherwise characters outside ``[A-Za-z0-9._:-]`` become ``-`` and the first 8 hex digits of the name's
    SHA-256 go before the extension: ``My Trip.md`` -> ``My-Trip-<8 hex>.md``, ``日本.md`` -> ``<8 hex>.md``. The
    replacement alone would give ``a b.txt`` and ``a?b.txt`` one id, and every name written in another script
    the id ``md``: the second upload would silently replace the first document. The digest keeps different
    names apart and the same name on the same id (uploading a file again replaces it).
    """
    if _document_id.fullmatch(name):
        return name
    extension = re.search(r"\.[A-Za-z0-9]{1,16}$", name)
    suffix = extension.group() if extension and extension.start() > 0 else ""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9._:-]+", "-", name[: len(name) - len(suffix)])
    stem = stem[: 256 - len(suffix) - len(digest) - 1].strip("-.")
    return f"{stem}-{digest}{suffix}" if stem else f"{digest}{suffix}"
