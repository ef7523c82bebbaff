"""`python -m service.client ingest DIR --url URL --key KEY`: ingest a folder into a running service.

Text files (.txt, .md, .markdown, .html, .htm) go in `POST /v1/documents:bulk` batches (--batch-size documents,
at most --max-batch-bytes of JSON each); PDFs, files that are not UTF-8 and files too large for a batch are
uploaded one by one (`POST /v1/documents`, where the service extracts the text). A text file that is not UTF-8
(and has no byte order mark) is uploaded with its charset declared (`text/plain; charset=cp1252`): --encoding if
given, else an HTML file's own `<meta charset>`, else charset-normalizer's guess (ties go to windows-1252, what
browsers assume for undeclared Western text). When the service's limits are below the client's (a 413 naming
BULK_MAX_DOCUMENTS or BULK_MAX_BYTES, with the limit), the batches shrink to them and the refused batch is sent
again; a file alone over BULK_MAX_BYTES is uploaded instead. The document id is the path
relative to DIR with "/" replaced by ":"; a path with other characters outside [A-Za-z0-9._:-] has them replaced
by "-" and 8 hex digits of its SHA-256 added before the extension (the service's rule for uploads,
`derive_document_id`), so two files never share an id and re-running the command replaces the same documents
(unchanged ones cost no embedding). Files whose ids still coincide (`a:b.txt` beside `a/b.txt`) are reported
and skipped before anything is sent, never sent in one batch the service would refuse whole.

Metadata (for search filters): `--metadata KEY=VALUE` (repeatable) goes with every document, and a sidecar
`FILE.meta.json` beside a file (a JSON object) adds that file's own keys, which win. A sidecar that is not a JSON
object fails its file with the reason; nothing of that file is sent.

A 429 is waited out for its Retry-After and the same request sent again; a connection error or a 503 is retried
a few times with a growing pause; a batch without an answer within --timeout goes again in halves, and later
batches stay that small. The service stops a batch whose client left after the item it was storing: before the
halves go, the client asks which of the batch's files the service holds with this very content (text,
Markdown and HTML files; `GET /v1/documents/{id}`, its content hash), waiting a bounded time for the one it was storing,
and sends only the others (their ingest rate limit was paid once, by the abandoned batch; they count as `stored`).
A 401 or 403 (the key, not the file) stops the run at once with exit 2.
Every file's outcome is counted; failed files are listed with the service's
reason at the end and the exit status is 1 when any failed (0 when all were stored).

Each document costs one request of the key's ingest rate limit (the service's RATE_LIMIT_INGEST, 120 a minute by
default): an import of N files takes at least N/120 minutes however fast the service embeds. The waits are shown
as they happen and summed at the end; raise the limit for a large import (docs/service.md).

Progress is a bar on a terminal; when stderr is not one (a log file, a pipe, cron) it is a plain line every
PROGRESS_LINE_SECONDS instead.

`--prune` (never by default) then deletes the documents this folder's runs stored whose files are gone: the
documents whose metadata holds every `--metadata KEY=VALUE` of the run (which `--prune` requires: the tag that
tells this folder's documents from the tenant's others) and whose file was missing at both the start and the
end of the run and was not sent by it. A folder that cannot be listed stops the run (exit 2, naming it) before
anything is sent, and one that cannot be listed at the end refuses the prune: its files would count as gone.

This is a client-side tool: it needs the development install (`make install`, for rich), not the service image.
"""

from __future__ import annotations

import argparse
import codecs
import email.utils
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import charset_normalizer
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.app.core.ids import derive_document_id

TEXT_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
}
UPLOAD_TYPES = {".pdf": "application/pdf"}
TRANSIENT_RETRIES = 4
# A bulk request is embedded while the client waits: ~1 kB of text is a chunk, and a core embeds 10-25 chunks/s
# (docs/service.md), so 256 kB is ~10-25 s on a quiet core and stays far under DEFAULT_TIMEOUT on a busy one.
# 5 MB (the earlier default) was 4-10 minutes of embedding on a quiet core: every such batch outlasted the timeout.
DEFAULT_MAX_BATCH_BYTES = 256_000
DEFAULT_TIMEOUT = 300.0
# After a batch without an answer: how long the client waits for the file the service was still storing, and how
# often it asks (a GET of one document).
ABANDONED_WAIT_SECONDS = 60.0
POLL_SECONDS = 0.25  # the first wait between two questions about the file being stored; doubled after each
MAX_POLL_SECONDS = 8.0  # ... up to this: ~12 questions in ABANDONED_WAIT_SECONDS (it was 240, each a read)
MAX_RATE_LIMIT_WAITS = 100  # a budget that never frees up is a misconfiguration, not something to wait out
PROGRESS_LINE_SECONDS = 30.0  # a plain progress line this often when stderr is not a terminal
LIST_PAGE = 100  # documents per page of GET /v1/documents (the service's maximum)
# The bytes of a bulk body around its items: {"documents":[ ... ]}, items joined by ",".
BULK_ENVELOPE = len(b'{"documents":[]}')
# Byte order marks the service decodes by themselves (service/app/ingest/extract.py decode_text).
BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # the UTF-32 marks start with these
# An HTML page's own declaration, looked for in its first 1024 bytes as the HTML standard's prescan does.
META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
PREFERRED_LEGACY = "cp1252"
# A file's own metadata: `report.pdf.meta.json` beside `report.pdf` (never sent as a document: not a text type).
SIDECAR_SUFFIX = ".meta.json"


def upload_type(path: Path) -> str:
    """The part type a file is uploaded with (`POST /v1/documents`): its type by extension, text/plain for none."""
    suffix = path.suffix.lower()
    return UPLOAD_TYPES.get(suffix) or TEXT_TYPES.get(suffix, "text/plain")


def known_codec(name: str) -> str | None:
    """Python's name for the charset ``name``, or None when Python has no such codec."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def text_charset(data: bytes, suffix: str, encoding: str | None = None) -> str | None:
    """The charset to declare when uploading a text file, or None when the service reads it as it is (UTF-8, or
    a byte order mark, which the service honours first) or no charset decodes it (the service then says why).

    ``encoding`` (--encoding) is the user's word for every file that is not UTF-8. Otherwise an HTML file's
    ``<meta charset>`` (if it decodes the bytes), else charset-normalizer's best guess. On short Western text
    charset-normalizer ranks windows-1250 and windows-1252 equal and picks 1250 ("crêpes" came back "crępes"),
    so a tie with windows-1252 goes to it, the default browsers use for undeclared legacy text.
    """
    if data.startswith(BOMS) or _decodes(data, "utf-8"):
        return None
    if encoding:
        return encoding
    if suffix in (".html", ".htm"):
        declared = META_CHARSET.search(data[:1024])
        codec = known_codec(declared.group(1).decode("ascii")) if declared else None
        if codec and codec != "utf-8" and _decodes(data, codec):
            return codec
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    if any(PREFERRED_LEGACY in m.could_be_from_charset for m in tied) and _decodes(data, PREFERRED_LEGACY):
        return PREFERRED_LEGACY
    return best.encoding


def document_id_for(path: Path, root: Path) -> str:
    """The id of a file: its path under `root` with "/" -> ":", made a valid id by ``derive_document_id``."""
    return derive_document_id(path.relative_to(root).as_posix().replace("/", ":"))


@dataclass
class Report:
    """What happened to each file: counts per outcome, and the reason for each failure."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    rate_limited: int = 0  # 429s waited out
    rate_limit_seconds: float = 0.0  # ... and how long they made the run wait
    retried: int = 0  # transient errors retried
    sent: set[str] = field(default_factory=set)  # ids of the files this run sent or found unchanged/failed

    def record(self, item: dict[str, Any], name: str) -> None:
        if item.get("error"):
            self.outcomes["failed"] += 1
            error = item["error"]
            self.failures.append(
                (name, f"{item.get('status_code')} {error.get('code')}: {error.get('message')}")
            )
        else:
            self.outcomes[item["result"]["status"]] += 1

    def fail(self, name: str, reason: str) -> None:
        self.outcomes["failed"] += 1
        self.failures.append((name, reason))


class KeyRefused(Exception):
    """The service refused the API key (401/403): nothing more is sent."""


class NotTheService(Exception):
    """The URL answered 404/405 on the service's own routes: --url is not the service's base URL."""


class NoAnswer(Exception):
    """The request reached the service but no answer came within the client's timeout.

    Not retried as it was: a batch goes again in halves (the service stops a bulk whose client left after its
    current item, and what it stored comes back unchanged); a single file is reported, and the run goes on."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"no answer within {timeout:g} s: the service may still be storing it; run the same command again "
            "later (files already stored are skipped as unchanged), or send smaller batches (--max-batch-bytes) "
            "or wait longer (--timeout)"
        )


def names_a_missing_document(response: httpx.Response) -> bool:
    """Whether a 404 is the service's answer about a document it does not hold (its error names the document),
    rather than a route that does not exist at that URL."""
    if response.status_code != 404:
        return False
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") == "not_found" and "document_id" in error


class IngestClient:
    """Sends requests to the service, waiting out 429s (Retry-After) and retrying transient failures."""

    def __init__(
        self,
        url: str,
        key: str | None,
        report: Report,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = DEFAULT_TIMEOUT,
        on_wait: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self._timeout = timeout
        self._report = report
        self._sleep = sleep
        self._clock = clock
        self._on_wait = on_wait or (lambda _message: None)

    @property
    def timeout(self) -> float:
        return self._timeout

    def on_wait(self, message: str) -> None:
        self._on_wait(message)

    def now(self) -> float:
        """This client's clock (monotonic seconds)."""
        return self._clock()

    def stored_hash(self, document_id: str) -> str | None:
        """The content hash the service holds for ``document_id`` (None: no such document, or another answer).

        Raises NoAnswer or httpx.TransportError when the service does not answer (after ``send``'s retries)."""
        return self._stored(document_id)[0]

    def _stored(self, document_id: str) -> tuple[str | None, float | None]:
        """(content hash, how many seconds before this answer the service started writing the version it holds,
        on the service's own clock: its ``version`` is that start in microseconds, its Date header the answer's
        time; None when either is missing)."""
        # NotTheService when the URL is not the service's; a 404 naming the document: no such document yet.
        response = self.send("GET", f"/v1/documents/{document_id}")
        if response.status_code != 200:
            return None, None
        body = response.json()
        value = body.get("content_hash")
        version = body.get("version")
        try:
            answered: float | None = http_date_seconds(response.headers["date"])
        except (KeyError, TypeError, ValueError):
            answered = None
        age = answered - version / 1_000_000 if isinstance(version, int) and answered is not None else None
        return (value if isinstance(value, str) else None), age

    def settle_abandoned(
        self, batch: list[Pending], *, sent_at: float | None = None, earlier: list[Pending] | None = None
    ) -> list[Pending]:
        """The files of a batch that got no answer which the service does not hold with this content yet.

        The service goes on with the item it was storing when the client left, then stops the batch. Each file
        whose content hash the service already holds is stored (by that batch, or before it): sending it again
        would pay its rate limit twice for an `unchanged`. The first file not held yet is most likely the one
        still being stored: it is asked again, every POLL_SECONDS, until it is held or ABANDONED_WAIT_SECONDS
        (at most the client's timeout) have passed, so the halves do not run beside it (an HTML page too: its
        hash is that of the text extracted here as the service does). Files whose hash cannot be computed here
        are sent again, as before. A question the service
        does not answer (a read timeout, or connection errors past ``send``'s retries) ends the asking: the files
        not confirmed yet go again at once (asking each in turn cost a full timeout or ~30 s of retries per
        file of the batch, before anything was sent again).

        The service takes a batch's items in order, so the one it was storing comes after the last file it
        holds; a file it refuses at once (text empty once normalised, bad metadata: known here with the service's
        own checks) is never held and never the one being stored: it is neither asked about nor waited for (the
        client polled such a file for ABANDONED_WAIT_SECONDS, 240 reads against the read rate limit), and goes
        again to get its reason. The questions about the file being stored are spaced out (POLL_SECONDS doubling
        up to MAX_POLL_SECONDS).

        ``sent_at`` (`now` when the batch was sent) and ``earlier``: a file held with a version the service started
        writing before the batch was sent (longer ago than the time since, on the service's clock, plus 2 s for
        its Date header's whole seconds) was stored by an earlier run: it is appended to ``earlier`` (reported
        `unchanged`, not `stored`)."""
        expected = [content_hash_of(item) for item in batch]
        refused = [refused_at_once(item) for item in batch]
        held = [False] * len(batch)
        try:
            for index, (item, digest) in enumerate(zip(batch, expected, strict=True)):
                if digest is not None and not refused[index]:
                    found, age = self._stored(item.document["document_id"])  # type: ignore[index]
                    held[index] = found == digest
                    since = None if sent_at is None else self._clock() - sent_at
                    before = held[index] and age is not None and since is not None and age > since + 2
                    if before and earlier is not None:
                        earlier.append(item)
            after = max((index for index, ok in enumerate(held) if ok), default=-1) + 1
            first = next((index for index in range(after, len(batch)) if not refused[index]), None)
            if first is not None and expected[first] is not None:
                document_id = batch[first].document["document_id"]  # type: ignore[index]
                deadline = self._clock() + min(self._timeout, ABANDONED_WAIT_SECONDS)
                pause = POLL_SECONDS
                while self._clock() < deadline:
                    self._sleep(min(pause, max(0.0, deadline - self._clock())))
                    pause = min(pause * 2, MAX_POLL_SECONDS)
                    if self.stored_hash(document_id) == expected[first]:
                        held[first] = True
                        break
        except (NoAnswer, httpx.TransportError):
            self._on_wait("the service does not answer; sending the files not confirmed stored again")
        return [item for item, ok in zip(batch, held, strict=True) if not ok]

    def close(self) -> None:
        self._http.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response to a request, after waiting out 429s and retrying connection errors and 503s."""
        transient = 0
        waits = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.ReadTimeout as exc:
                raise NoAnswer(self._timeout) from exc
            except httpx.TransportError as exc:
                # A URL without http(s):// or https against a plain-HTTP port never succeeds: not retried for
                # 30 s (EYES5 F10).
                if (
                    transient >= TRANSIENT_RETRIES
                    or isinstance(exc, httpx.UnsupportedProtocol)
                    or "SSL" in str(exc)
                ):
                    raise
                transient += 1
                self._report.retried += 1
                self._on_wait(f"{type(exc).__name__}; retrying")
                self._sleep(2**transient)
                continue
            if response.status_code == 429 and waits < MAX_RATE_LIMIT_WAITS:
                waits += 1
                self._report.rate_limited += 1
                delay = retry_after_seconds(response)
                self._report.rate_limit_seconds += delay
                self._on_wait(f"rate limited ({rate_limit_reason(response)}); waiting {delay:g} s")
                self._sleep(delay)
                continue
            if response.status_code in (401, 403):
                # The key, not the file: every other file would be refused the same way.
                raise KeyRefused(error_reason(response))
            if response.status_code in (404, 405) and not names_a_missing_document(response):
                # The routes the client calls exist: a 404 or 405 that is not the service's "no such document"
                # (a GET of one not stored yet) is the URL, not the file (a --url ending in /v1 printed one
                # "404 not_found" per file).
                raise NotTheService(f"{method} {response.request.url} answered {error_reason(response)}")
            if response.status_code == 503 and transient < TRANSIENT_RETRIES:
                transient += 1
                self._report.retried += 1
                self._on_wait("service unavailable; retrying")
                self._sleep(retry_after_seconds(response, default=2.0**transient))
                continue
            return response


def content_hash_of(item: Pending) -> str | None:
    """The content hash the service stores for this batch item (None: it cannot be known here). An HTML page's is
    that of its visible text, extracted here as the service extracts it."""
    document = item.document
    if document is None or document["content_type"] not in ("text/plain", "text/markdown", "text/html"):
        return None
    # The service's own functions (this tool runs in the development install): imported at the first batch
    # without an answer only. A service of another release may hash differently: then nothing matches and every
    # file is sent again, as before.
    from service.app.ingest.extract import normalize_content_type, normalize_text
    from service.app.ingest.models import validate_metadata
    from service.app.ingest.service import content_hash

    try:
        metadata = validate_metadata(document.get("metadata") or {})
        text = document["text"]
        if document["content_type"] == "text/html":
            from service.app.ingest.extract import html_to_text

            text = html_to_text(text)
    except Exception:
        return None  # the service refuses it with its reason when it is sent again
    return content_hash(normalize_text(text), metadata, normalize_content_type(document["content_type"]))


def refused_at_once(item: Pending) -> bool:
    """Whether the service refuses this batch item by itself before storing anything (its text is empty once
    normalised, or has an unpaired surrogate; its metadata is invalid), with the service's own checks."""
    document = item.document
    if document is None:
        return False
    from service.app.ingest.extract import normalize_text
    from service.app.ingest.models import has_lone_surrogate, validate_metadata

    text = document.get("text")
    if isinstance(text, str) and has_lone_surrogate(text):
        return True
    plain = document.get("content_type") in (
        "text/plain",
        "text/markdown",
    )  # HTML: emptiness is known once extracted
    if plain and isinstance(text, str) and not normalize_text(text):
        return True
    try:
        validate_metadata(document.get("metadata") or {})
    except Exception:
        return True
    return False


def retry_after_seconds(response: httpx.Response, default: float = 1.0) -> float:
    """Retry-After in seconds: the delta form (the service's), or an HTTP date (a proxy's) counted from the
    answer's Date header (else from now); `default` when absent or unreadable, and never more than an hour."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return min(float(value), 3600.0)
    try:
        until = http_date_seconds(value)
    except (TypeError, ValueError, IndexError):
        return default
    try:
        now = http_date_seconds(response.headers["date"])
    except (KeyError, TypeError, ValueError, IndexError):
        now = time.time()
    # At least a second: a date already past (a proxy's skewed clock) must not turn the waits into a burst.
    return min(max(1.0, until - now), 3600.0)


def http_date_seconds(value: str) -> float:
    """An HTTP date as a Unix time; a date without a zone or with "-0000" is UTC (RFC 5322 section 3.3), not
    this machine's local time (``parsedate_to_datetime`` returns it naive)."""
    moment = email.utils.parsedate_to_datetime(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def rate_limit_reason(response: httpx.Response) -> str:
    """The service's words for a 429 ("rate limit exceeded for ingest: 120 per 1 minute"), without its retry."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "429"
    return str(message).split("; retry in", 1)[0] if message else "429"


def error_reason(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:200]}"


@dataclass
class Pending:
    """A file read and ready to send."""

    name: str
    document: dict[str, Any] | None  # a bulk item, or None for a one-by-one upload
    size: int  # the bytes it adds to a bulk body (its JSON as httpx sends it, and a comma)
    charset: str | None = None  # declared on its upload part, for a text file that is not UTF-8
    error: str | None = None  # why it could not be read: reported as its failure, nothing sent
    metadata: dict[str, Any] = field(default_factory=dict)  # --metadata, then its sidecar's (SIDECAR_SUFFIX)


def is_hidden(path: Path, root: Path) -> bool:
    """Whether `path` is, or lies under, a hidden file or folder below `root` (a name starting with '.')."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def walk(
    root: Path, include_hidden: bool = False, errors: list[OSError] | None = None
) -> tuple[list[Path], list[Path]]:
    """Every file under `root` in a stable order, and the hidden files and folders left out (not descended into).

    A folder that cannot be listed (EACCES, EIO, a stale network handle, renamed during the walk) or a file that
    cannot be looked at adds its error to ``errors``: its files are missing from the answer, so a caller that
    deletes what is missing (``--prune``) must not go on.

    Hidden entries (.git, .venv, .env, .ssh, an editor's swap files) are not documents: sending them put a
    `.hidden/secret.md` into search (EYES4 E5), and walking `.venv` or `.git` costs more than the folder itself.
    Dependency folders (node_modules, a virtual environment, site-packages) are left out with them.
    """
    files: list[Path] = []
    hidden: list[Path] = []
    failed = errors if errors is not None else []
    for directory, dirs, names in os.walk(root, onerror=failed.append):
        here = Path(directory)
        if not include_hidden:
            left = [d for d in dirs if d.startswith(".") or _tool_directory(here / d)]
            hidden.extend(here / d for d in left)
            hidden.extend(here / n for n in names if n.startswith("."))
            dirs[:] = [d for d in dirs if d not in left]
            names = [n for n in names if not n.startswith(".")]
        dirs.sort()
        for path in (here / n for n in names):
            try:
                if path.is_file():
                    files.append(path)
            except OSError as exc:
                failed.append(exc)
    return sorted(files), sorted(hidden)


def walk_errors(errors: list[OSError], root: Path) -> str:
    """The folders (or files) a walk could not read, named under `root`, with why: for one error line."""
    named = []
    for exc in errors:
        where = Path(exc.filename) if exc.filename else root
        try:
            shown = where.relative_to(root).as_posix() or "."
        except ValueError:
            shown = str(where)
        named.append(f"{shown} ({exc.strerror or exc})")
    return shown_names(named)


#: Folders tools fill with other people's files (EYES5 F8: node_modules and a venv's site-packages were sent).
TOOL_DIRECTORIES = frozenset({"node_modules", "__pycache__", "site-packages", "bower_components"})


def _tool_directory(path: Path) -> bool:
    """A dependency or build folder: a TOOL_DIRECTORIES name, or a Python virtual environment (its pyvenv.cfg)."""
    if path.name in TOOL_DIRECTORIES:
        return True
    try:
        return (path / "pyvenv.cfg").is_file()
    except OSError:
        return False  # a folder that cannot be looked into: the walk then reports it (it cannot list it)


def collect(root: Path, include_hidden: bool = False) -> list[Path]:
    """The files under `root` the service can ingest, in a stable order (hidden ones only when asked)."""
    kinds = TEXT_TYPES | UPLOAD_TYPES
    return [p for p in walk(root, include_hidden)[0] if p.suffix.lower() in kinds]


def shown_names(names: list[str], limit: int = 10) -> str:
    """The first `limit` names, and how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def json_body(value: Any) -> bytes:
    """``value`` as JSON bytes, exactly as httpx's ``json=`` encodes it (so sizes are the sent sizes)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def metadata_option(value: str) -> tuple[str, Any]:
    """``--metadata key=value``: a JSON number, true/false stay typed (``year=2024`` filters as a number),
    anything else is a string."""
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not key=value")
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    if not isinstance(parsed, (int, float, bool)):
        parsed = raw
    return key.strip(), parsed


def sidecar_metadata(path: Path) -> dict[str, Any]:
    """The metadata of ``path``'s sidecar (``report.pdf.meta.json``: a JSON object), {} without one; ValueError
    saying what is wrong with one that is not a JSON object."""
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"its metadata file {sidecar.name} cannot be read: {exc}") from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"its metadata file {sidecar.name} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(
            f"its metadata file {sidecar.name} must hold a JSON object, not {type(value).__name__}"
        )
    return value


def prepare(
    path: Path,
    root: Path,
    max_batch_bytes: int,
    encoding: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Pending:
    document_id = document_id_for(path, root)
    name = path.relative_to(root).as_posix()
    suffix = path.suffix.lower()
    content_type = TEXT_TYPES.get(suffix)
    try:
        metadata = {**(metadata or {}), **sidecar_metadata(path)}  # the file's own keys win
    except ValueError as exc:
        return Pending(name=name, document=None, size=0, error=str(exc))
    try:
        size = path.stat().st_size
        if content_type is None:
            return Pending(name=name, document=None, size=size, metadata=metadata)
        data = path.read_bytes()
    except OSError as exc:  # unreadable, or gone since the folder was listed: this file fails, not the run
        return Pending(name=name, document=None, size=0, error=f"could not read it: {exc.strerror or exc}")
    charset = text_charset(data, suffix, encoding)
    if (
        not data  # the bulk schema refuses an empty text, and with it the whole batch: alone, it fails alone
        or charset is not None
        or data.startswith(BOMS)
        or size > max_batch_bytes
        or not _decodes(data, "utf-8")
    ):
        # Uploaded on its own, as its bytes: with no charset that decodes it (a binary file under a text
        # name), the service refuses it with its reason, which the report lists.
        return Pending(name=name, document=None, size=size, charset=charset, metadata=metadata)
    document = {"document_id": document_id, "text": data.decode("utf-8"), "content_type": content_type}
    if metadata:
        document["metadata"] = metadata
    return Pending(name=name, document=document, size=len(json_body(document)) + 1, metadata=metadata)


def batches(items: list[Pending], batch_size: int, max_batch_bytes: int) -> Iterator[list[Pending]]:
    """``items`` in order, in batches of at most ``batch_size`` items and ``max_batch_bytes`` of body."""
    batch: list[Pending] = []
    size = BULK_ENVELOPE
    for item in items:
        if batch and (len(batch) >= batch_size or size + item.size > max_batch_bytes):
            yield batch
            batch, size = [], BULK_ENVELOPE
        batch.append(item)
        size += item.size
    if batch:
        yield batch


def refused_item(response: httpx.Response, size: int) -> int | None:
    """The index of the one item a whole-batch 422 blames ("documents[3].text is empty"), else None."""
    if response.status_code != 422:
        return None
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
    match = re.match(r"documents\[(\d+)\]", message) if isinstance(message, str) else None
    if match is None or int(match.group(1)) >= size:
        return None
    return int(match.group(1))


def refused_limit(response: httpx.Response) -> tuple[str, int] | None:
    """(setting, limit) of a 413 the service gave for a bulk limit: BULK_MAX_DOCUMENTS or BULK_MAX_BYTES."""
    if response.status_code != 413:
        return None
    try:
        error = response.json()["error"]
        setting, limit = error.get("setting"), error.get("limit")
        if setting is None:  # a release before the setting was named: "...; BULK_MAX_DOCUMENTS is 3"
            match = re.search(r"BULK_MAX_DOCUMENTS is (\d+)", error.get("message", ""))
            setting, limit = ("BULK_MAX_DOCUMENTS", int(match.group(1))) if match else (None, None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if setting in ("BULK_MAX_DOCUMENTS", "BULK_MAX_BYTES") and isinstance(limit, int) and limit > 0:
        return setting, limit
    return None


def without_shared_ids(pending: list[Pending], root: Path, report: Report) -> list[Pending]:
    """`pending` minus the files whose document ids coincide, each of those reported as failed with the other.

    The service refuses a bulk request with a repeated id whole, so one such pair would fail every file of its
    batch under an unrelated message; and sent apart, the second file would silently replace the first.
    """
    owners: dict[str, list[str]] = {}
    for item in pending:
        owners.setdefault(document_id_for(root / item.name, root), []).append(item.name)
    clashes = {document_id: names for document_id, names in owners.items() if len(names) > 1}
    kept = []
    for item in pending:
        document_id = document_id_for(root / item.name, root)
        if document_id in clashes:
            others = ", ".join(name for name in clashes[document_id] if name != item.name)
            report.fail(
                item.name, f"skipped: its document id {document_id!r} is also the id of {others}; rename one"
            )
        else:
            kept.append(item)
    return kept


def upload(client: IngestClient, root: Path, item: Pending, report: Report) -> None:
    """Send one file to ``POST /v1/documents``; its outcome goes to ``report``."""
    path = root / item.name
    # A text file too big for a batch keeps its own type: sent as text/plain, an .html page was stored as
    # markup, <script> bodies and all. A text file that is not UTF-8 declares its charset.
    part_type = upload_type(path)
    if item.charset:
        part_type = f"{part_type}; charset={item.charset}"
    try:
        handle = path.open("rb")
    except OSError as exc:  # gone or unreadable since it was listed
        report.fail(item.name, f"could not read it: {exc.strerror or exc}")
        return
    with handle:
        try:
            response = client.send(
                "POST",
                "/v1/documents",
                files={"file": (path.name, handle, part_type)},
                data={"document_id": document_id_for(path, root)}
                | ({"metadata": json.dumps(item.metadata)} if item.metadata else {}),
            )
        except NoAnswer as exc:
            report.fail(item.name, str(exc))
            return
    if response.status_code in (200, 201):
        report.outcomes[response.json()["status"]] += 1
    else:
        report.fail(item.name, error_reason(response))


def ingest_folder(
    client: IngestClient,
    root: Path,
    report: Report,
    *,
    batch_size: int,
    max_batch_bytes: int,
    advance: Callable[[int], None],
    encoding: str | None = None,
    include_hidden: bool = False,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Send every file under `root` (with ``metadata`` and its sidecar's); outcomes go to `report`, progress to
    `advance(files_done)`."""
    paths = collect(root, include_hidden)
    report.sent.update(document_id_for(path, root) for path in paths)  # never pruned by this run
    prepared = [prepare(path, root, max_batch_bytes, encoding, metadata) for path in paths]
    pending = without_shared_ids(prepared, root, report)
    advance(len(prepared) - len(pending))
    for item in (p for p in pending if p.document is None):
        if item.error is not None:
            report.fail(item.name, item.error)
        else:
            upload(client, root, item, report)
        advance(1)
    queue = [p for p in pending if p.document is not None]
    while queue:
        batch = next(batches(queue, batch_size, max_batch_bytes))
        if len(batch) == 1 and BULK_ENVELOPE + batch[0].size > max_batch_bytes:
            # Alone over the service's BULK_MAX_BYTES (learnt from a 413): the upload route takes up to
            # MAX_DOCUMENT_BYTES.
            del queue[:1]
            upload(client, root, batch[0], report)
            advance(1)
            continue
        sent_at = client.now()
        try:
            response = client.send(
                "POST",
                "/v1/documents:bulk",
                content=json_body({"documents": [p.document for p in batch]}),
                headers={"Content-Type": "application/json"},
            )
        except NoAnswer as exc:
            if len(batch) > 1:
                # The service is slower than this batch needs (a busy host: EYES7 M6 saw a 256 kB batch take
                # 487 s). It stops an abandoned batch after its current item (the client left): the files it
                # holds with this content are done (not sent again: their rate limit was paid), the others go
                # again, in halves, once the one it was storing is done, and the rest of the run keeps the
                # smaller batches.
                batch_size = max(1, len(batch) // 2)
                report.retried += 1
                client.on_wait(
                    f"no answer within {client.timeout:g} s; asking which files the service stored"
                )
                earlier: list[Pending] = []
                remaining = client.settle_abandoned(batch, sent_at=sent_at, earlier=earlier)
                kept = {id(item) for item in remaining}
                before = {id(item) for item in earlier}  # held from an earlier run: the batch changed nothing
                for item in batch:
                    if id(item) not in kept:
                        report.outcomes["unchanged" if id(item) in before else "stored"] += 1
                queue[: len(batch)] = remaining
                advance(len(batch) - len(remaining))
                client.on_wait(f"no answer within {client.timeout:g} s; sending {batch_size} files per batch")
                continue
            del queue[:1]
            report.fail(batch[0].name, str(exc))
            advance(1)
            continue
        # Each item costs one ingest request: a batch must fit the key's limit, which every answer states.
        limit = response.headers.get("RateLimit-Limit", "")
        if limit.isdigit() and 0 < int(limit) < batch_size:
            batch_size = int(limit)
            if response.status_code == 422 and len(batch) > batch_size:
                continue  # refused whole as too large for the limit: send it again in smaller batches
        refused = refused_limit(response)
        if refused is not None:
            # The service takes less per request than this client sends (a stack's bulkMaxDocuments, say):
            # nothing was stored, so the same files go again in batches within its limit. Each limit only shrinks.
            setting, service_limit = refused
            if setting == "BULK_MAX_DOCUMENTS" and len(batch) > service_limit:
                batch_size = service_limit
                continue
            if setting == "BULK_MAX_BYTES" and service_limit < max_batch_bytes:
                max_batch_bytes = service_limit
                continue
        culprit = refused_item(response, len(batch))
        if culprit is not None:
            # The service refused the batch whole for one item's shape (nothing was stored): that file fails
            # with the reason, the others go again without it.
            report.fail(batch[culprit].name, error_reason(response))
            del queue[culprit]
            advance(1)
            continue
        del queue[: len(batch)]
        if response.status_code in (200, 207):
            for item in response.json()["items"]:
                report.record(item, batch[item["index"]].name)
        else:
            for item in batch:
                report.fail(item.name, error_reason(response))
        advance(len(batch))


class PlainProgress:
    """Progress as plain lines, for a stderr that is not a terminal (rich draws no bar there, and a 12-minute
    import printed nothing until its summary: EYES10): the first line at once, then one every
    PROGRESS_LINE_SECONDS with the count, the elapsed time and the latest wait (a rate limit, a retry)."""

    def __init__(self, console: Console, total: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console
        self._total = total
        self._clock = clock
        self._start = clock()
        self._done = 0
        self._note = ""
        self._last: float | None = None

    def advance(self, count: int) -> None:
        self._done += count
        self._show()

    def note(self, message: str) -> None:
        self._note = message
        self._show()

    def _show(self) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < PROGRESS_LINE_SECONDS:
            return
        self._last = now
        elapsed = int(now - self._start)
        line = f"ingest: {self._done}/{self._total} files, {elapsed // 60} min {elapsed % 60:02d} s"
        if self._note:
            line += f"; last wait: {self._note}"
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)


def folder_ids(root: Path, include_hidden: bool) -> set[str]:
    """The ids of every file in the folder the client would send now (those it failed included).

    PruneRefused when a folder (or file) could not be read: its files would count as gone."""
    errors: list[OSError] = []
    kinds = TEXT_TYPES | UPLOAD_TYPES
    files = [p for p in walk(root, include_hidden, errors)[0] if p.suffix.lower() in kinds]
    if errors:
        raise PruneRefused(
            f"cannot read {walk_errors(errors, root)} in {root}: their files would count as gone"
        )
    return {document_id_for(path, root) for path in files}


def stale_documents(client: IngestClient, tag: dict[str, Any], keep: set[str]) -> list[str]:
    """The ids of the tenant's documents whose metadata holds every pair of ``tag`` and whose id is not in
    ``keep``: what the folder's earlier runs stored for files that are gone (GET /v1/documents, page by page)."""
    stale: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": LIST_PAGE} | ({"cursor": cursor} if cursor else {})
        try:
            response = client.send("GET", "/v1/documents", params=params)
        except NoAnswer as exc:
            raise PruneRefused(f"listing the documents: {exc}") from exc
        if response.status_code != 200:
            raise PruneRefused(f"listing the documents answered {error_reason(response)}")
        page = response.json()
        for document in page["documents"]:
            metadata = document.get("metadata") or {}
            tagged = all(
                key in metadata
                and metadata[key] == value
                and isinstance(metadata[key], bool) == isinstance(value, bool)  # True == 1 in Python
                for key, value in tag.items()
            )
            if tagged and document["document_id"] not in keep:
                stale.append(document["document_id"])
        cursor = page.get("next_cursor")
        if not cursor:
            return stale


def prune(client: IngestClient, stale: list[str], report: Report) -> list[str]:
    """DELETE each of ``stale`` (a 404: already gone, fine); the ids deleted. Failures go to ``report``."""
    deleted = []
    for document_id in stale:
        try:
            response = client.send("DELETE", f"/v1/documents/{document_id}")
        except NoAnswer as exc:
            report.fail(f"(prune) {document_id}", str(exc))
            continue
        if response.status_code in (204, 404):
            deleted.append(document_id)
            report.outcomes["pruned"] += 1
        else:
            report.fail(f"(prune) {document_id}", error_reason(response))
    return deleted


class PruneRefused(Exception):
    """The documents could not be listed: nothing is pruned."""


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ingest = commands.add_parser("ingest", help="ingest every .txt/.md/.html/.pdf file under DIR")
    ingest.add_argument("directory", type=Path, metavar="DIR")
    ingest.add_argument("--url", required=True, help="the service's base URL, e.g. https://rag.example.com")
    ingest.add_argument(
        "--key", default=None, help="API key (default: $RAG_API_KEY; none for an open service)"
    )
    ingest.add_argument("--batch-size", type=int, default=20, help="documents per bulk request (default 20)")
    ingest.add_argument(
        "--max-batch-bytes",
        type=int,
        default=DEFAULT_MAX_BATCH_BYTES,
        help=f"JSON bytes per bulk request (default {DEFAULT_MAX_BATCH_BYTES // 1000} kB: a batch is embedded "
        "within one request, at 10-25 chunks/s per core)",
    )
    ingest.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )
    ingest.add_argument(
        "--encoding",
        default=None,
        help="charset of the text files that are not UTF-8, e.g. cp1252 or latin-1 (default: an HTML file's "
        "<meta charset>, else detected per file)",
    )
    ingest.add_argument(
        "--include-hidden",
        action="store_true",
        help="also send hidden files and folders (names starting with '.', e.g. .github/) and dependency folders "
        "(node_modules/, __pycache__/, site-packages/, virtualenvs); left out by default: they hold repositories' "
        "and tools' files, and secrets",
    )
    ingest.add_argument(
        "--metadata",
        action="append",
        type=metadata_option,
        default=[],
        metavar="KEY=VALUE",
        help="metadata for every document, repeatable (--metadata team=hr --metadata year=2024: numbers and "
        f"true/false stay typed, for filters); a file's sidecar FILE{SIDECAR_SUFFIX} (a JSON object) adds to it "
        "and wins",
    )
    ingest.add_argument(
        "--prune",
        action="store_true",
        help="after the run, delete the documents tagged with every --metadata pair of this run (required "
        "with --prune) whose files are no longer in DIR; never done without it",
    )
    args = parser.parse_args(argv)
    console = console or Console(stderr=True)
    if args.prune and not args.metadata:
        console.print(
            "[red]error:[/red] --prune needs --metadata KEY=VALUE (e.g. --metadata source=handbook): it deletes "
            "only documents carrying this run's tag, so the tenant's other documents are never touched"
        )
        return 2
    root: Path = args.directory
    if not root.is_dir():
        console.print(f"[red]error:[/red] {root} is not a directory")
        return 2
    if args.batch_size < 1:
        console.print("[red]error:[/red] --batch-size must be at least 1")
        return 2
    if not args.timeout > 0:
        console.print("[red]error:[/red] --timeout must be a positive number of seconds")
        return 2
    encoding = None
    if args.encoding is not None:
        encoding = known_codec(args.encoding)
        if encoding is None:
            console.print(f"[red]error:[/red] --encoding {args.encoding!r} is not a charset Python knows")
            return 2
    key = args.key or os.environ.get("RAG_API_KEY")
    # One walk for the count and the summary (ingest_folder lists what it sends itself).
    unread: list[OSError] = []
    every, hidden = walk(root, args.include_hidden, unread)
    if unread:
        # Its files would be silently left out, and with --prune their documents deleted (REVIEW_SERVICE21 H1).
        console.print(
            f"[red]error:[/red] cannot read {walk_errors(unread, root)} in {root}; nothing was sent"
            + (" or pruned" if args.prune else "")
            + ": fix the permissions (or move it out of the folder) and run the same command again"
        )
        return 2
    kinds = TEXT_TYPES | UPLOAD_TYPES
    files = [p for p in every if p.suffix.lower() in kinds]
    report = Report()
    progress = Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    task = progress.add_task("ingest", total=len(files), note="")
    plain = None if console.is_terminal else PlainProgress(console, len(files))
    pruned: list[str] = []
    with progress:
        client = IngestClient(
            args.url,
            key,
            report,
            timeout=args.timeout,
            on_wait=plain.note if plain else lambda message: progress.update(task, note=message),
        )
        try:
            ingest_folder(
                client,
                root,
                report,
                batch_size=args.batch_size,
                max_batch_bytes=args.max_batch_bytes,
                advance=plain.advance if plain else lambda n: progress.update(task, advance=n, note=""),
                encoding=encoding,
                include_hidden=args.include_hidden,
                metadata=dict(args.metadata),
            )
            if args.prune:
                # Gone means missing from the start walk AND the end walk, and not sent by this run: a file
                # briefly missing at either moment (an editor's save, git checkout, rsync) keeps its document.
                keep = (
                    {document_id_for(p, root) for p in files}
                    | folder_ids(root, args.include_hidden)
                    | report.sent
                )
                pruned = prune(client, stale_documents(client, dict(args.metadata), keep), report)
        except PruneRefused as exc:
            console.print(f"[red]error:[/red] {exc}; nothing was pruned")
            return 2
        except httpx.HTTPError as exc:
            console.print(
                f"[red]error:[/red] cannot reach {args.url}: {exc}; start the service (or fix --url) and run the "
                "same command again: what was already stored is skipped"
            )
            return 2
        except NotTheService as exc:
            console.print(
                f"[red]error:[/red] {exc}; nothing more was sent: --url must be the service's base URL "
                "(e.g. https://rag.example.com, without /v1)"
            )
            return 2
        except KeyRefused as exc:
            console.print(
                f"[red]error:[/red] {args.url} refused the API key ({exc}); nothing more was sent: "
                "check --key or RAG_API_KEY"
            )
            return 2
        finally:
            client.close()
    summary = ", ".join(
        f"{count} {outcome}" for outcome, count in sorted(report.outcomes.items()) if outcome != "pruned"
    )
    waited = f" ({report.rate_limit_seconds / 60:.1f} min)" if report.rate_limited else ""
    console.print(
        f"{len(files)} files: {summary or 'nothing to do'}; "
        f"{report.rate_limited} rate-limit waits{waited}, {report.retried} retries"
    )
    if report.rate_limited:
        console.print(
            "the API key's rate limit slowed this run (each document costs one request of RATE_LIMIT_INGEST, "
            "120 a minute by default): raise it for a large import (docs/service.md)"
        )
    if args.prune:
        console.print(
            f"pruned {len(pruned)} document{'s' if len(pruned) != 1 else ''} whose files are gone"
            + (f": {shown_names(pruned)}" if pruned else "")
        )
    left_out = [p for p in every if p.suffix.lower() not in kinds]
    if left_out:
        names = [p.relative_to(root).as_posix() for p in left_out]
        plural = "s" if len(names) != 1 else ""
        types = "/".join(sorted(kinds))
        console.print(f"{len(names)} file{plural} skipped (not {types}): {shown_names(names)}")
    if hidden:
        names = [p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in hidden]
        console.print(
            f"{len(names)} hidden or dependency file{'s' if len(names) != 1 else ''} and folders left out "
            f"(--include-hidden sends them): {shown_names(names)}"
        )
    for name, reason in report.failures:
        console.print(f"[red]failed[/red] {name}: {reason}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
