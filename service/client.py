"""`python -m service.client ingest DIR --url URL --key KEY`: ingest a folder into a running service.

Text files (.txt, .md, .markdown, .html, .htm) go in `POST /v1/documents:bulk` batches (--batch-size documents,
at most --max-batch-bytes of JSON each); PDFs, files that are not UTF-8 and files too large for a batch are
uploaded one by one (`POST /v1/documents`, where the service extracts the text). The document id is the path
relative to DIR with "/" replaced by ":"; a path with other characters outside [A-Za-z0-9._:-] has them replaced
by "-" and 8 hex digits of its SHA-256 added before the extension (the service's rule for uploads,
`derive_document_id`), so two files never share an id and re-running the command replaces the same documents
(unchanged ones cost no embedding). Files whose ids still coincide (`a:b.txt` beside `a/b.txt`) are reported
and skipped before anything is sent, never sent in one batch the service would refuse whole.

A 429 is waited out for its Retry-After and the same request sent again; a connection error or a 503 is retried
a few times with a growing pause; a 401 or 403 (the key, not the file) stops the run at once with exit 2.
Every file's outcome is counted; failed files are listed with the service's
reason at the end and the exit status is 1 when any failed (0 when all were stored).

This is a client-side tool: it needs the development install (`make install`, for rich), not the service image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
MAX_RATE_LIMIT_WAITS = 100  # a budget that never frees up is a misconfiguration, not something to wait out


def upload_type(path: Path) -> str:
    """The part type a file is uploaded with (`POST /v1/documents`): its type by extension, text/plain for none."""
    suffix = path.suffix.lower()
    return UPLOAD_TYPES.get(suffix) or TEXT_TYPES.get(suffix, "text/plain")


def document_id_for(path: Path, root: Path) -> str:
    """The id of a file: its path under `root` with "/" -> ":", made a valid id by ``derive_document_id``."""
    return derive_document_id(path.relative_to(root).as_posix().replace("/", ":"))


@dataclass
class Report:
    """What happened to each file: counts per outcome, and the reason for each failure."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    rate_limited: int = 0  # 429s waited out
    retried: int = 0  # transient errors retried

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


class IngestClient:
    """Sends requests to the service, waiting out 429s (Retry-After) and retrying transient failures."""

    def __init__(
        self,
        url: str,
        key: str | None,
        report: Report,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 300.0,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self._report = report
        self._sleep = sleep
        self._on_wait = on_wait or (lambda _message: None)

    def close(self) -> None:
        self._http.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response to a request, after waiting out 429s and retrying connection errors and 503s."""
        transient = 0
        waits = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if transient >= TRANSIENT_RETRIES:
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
                self._on_wait(f"rate limited; waiting {delay:g} s")
                self._sleep(delay)
                continue
            if response.status_code in (401, 403):
                # The key, not the file: every other file would be refused the same way.
                raise KeyRefused(error_reason(response))
            if response.status_code == 503 and transient < TRANSIENT_RETRIES:
                transient += 1
                self._report.retried += 1
                self._on_wait("service unavailable; retrying")
                self._sleep(retry_after_seconds(response, default=2.0**transient))
                continue
            return response


def retry_after_seconds(response: httpx.Response, default: float = 1.0) -> float:
    """Retry-After in seconds (delta form; the service never sends the HTTP-date form), else `default`."""
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else default


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
    size: int


def collect(root: Path) -> list[Path]:
    """The files under `root` the service can ingest, in a stable order."""
    kinds = TEXT_TYPES | UPLOAD_TYPES
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in kinds)


def prepare(path: Path, root: Path, max_batch_bytes: int) -> Pending:
    document_id = document_id_for(path, root)
    name = path.relative_to(root).as_posix()
    content_type = TEXT_TYPES.get(path.suffix.lower())
    size = path.stat().st_size
    if content_type is None or size > max_batch_bytes:
        return Pending(name=name, document=None, size=size)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return Pending(name=name, document=None, size=size)  # the upload route detects the charset
    document = {"document_id": document_id, "text": text, "content_type": content_type}
    return Pending(name=name, document=document, size=len(json.dumps(document).encode()))


def batches(items: list[Pending], batch_size: int, max_batch_bytes: int) -> Iterator[list[Pending]]:
    batch: list[Pending] = []
    size = 0
    for item in items:
        if batch and (len(batch) >= batch_size or size + item.size > max_batch_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.size
    if batch:
        yield batch


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


def ingest_folder(
    client: IngestClient,
    root: Path,
    report: Report,
    *,
    batch_size: int,
    max_batch_bytes: int,
    advance: Callable[[int], None],
) -> None:
    """Send every file under `root`; outcomes go to `report`, progress to `advance(files_done)`."""
    prepared = [prepare(path, root, max_batch_bytes) for path in collect(root)]
    pending = without_shared_ids(prepared, root, report)
    advance(len(prepared) - len(pending))
    for item in (p for p in pending if p.document is None):
        path = root / item.name
        with path.open("rb") as handle:
            response = client.send(
                "POST",
                "/v1/documents",
                # A text file too big for a batch keeps its own type: sent as text/plain, an .html page was stored
                # as markup, <script> bodies and all.
                files={"file": (path.name, handle, upload_type(path))},
                data={"document_id": document_id_for(path, root)},
            )
        if response.status_code in (200, 201):
            report.outcomes[response.json()["status"]] += 1
        else:
            report.fail(item.name, error_reason(response))
        advance(1)
    queue = [p for p in pending if p.document is not None]
    while queue:
        batch = next(batches(queue, batch_size, max_batch_bytes))
        response = client.send("POST", "/v1/documents:bulk", json={"documents": [p.document for p in batch]})
        # Each item costs one ingest request: a batch must fit the key's limit, which every answer states.
        limit = response.headers.get("RateLimit-Limit", "")
        if limit.isdigit() and 0 < int(limit) < batch_size:
            batch_size = int(limit)
            if response.status_code == 422 and len(batch) > batch_size:
                continue  # refused whole as too large for the limit: send it again in smaller batches
        del queue[: len(batch)]
        if response.status_code in (200, 207):
            for item in response.json()["items"]:
                report.record(item, batch[item["index"]].name)
        else:
            for item in batch:
                report.fail(item.name, error_reason(response))
        advance(len(batch))


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
        "--max-batch-bytes", type=int, default=5_000_000, help="JSON bytes per bulk request (default 5 MB)"
    )
    args = parser.parse_args(argv)
    console = console or Console(stderr=True)
    root: Path = args.directory
    if not root.is_dir():
        console.print(f"[red]error:[/red] {root} is not a directory")
        return 2
    if args.batch_size < 1:
        console.print("[red]error:[/red] --batch-size must be at least 1")
        return 2
    key = args.key or os.environ.get("RAG_API_KEY")
    files = collect(root)
    report = Report()
    progress = Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("ingest", total=len(files), note="")
        client = IngestClient(
            args.url, key, report, on_wait=lambda message: progress.update(task, note=message)
        )
        try:
            ingest_folder(
                client,
                root,
                report,
                batch_size=args.batch_size,
                max_batch_bytes=args.max_batch_bytes,
                advance=lambda n: progress.update(task, advance=n, note=""),
            )
        except httpx.HTTPError as exc:
            console.print(f"[red]error:[/red] cannot reach {args.url}: {exc}")
            return 2
        except KeyRefused as exc:
            console.print(
                f"[red]error:[/red] {args.url} refused the API key ({exc}); nothing more was sent: "
                "check --key or RAG_API_KEY"
            )
            return 2
        finally:
            client.close()
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(report.outcomes.items()))
    console.print(
        f"{len(files)} files: {summary or 'nothing to do'}; "
        f"{report.rate_limited} rate-limit waits, {report.retried} retries"
    )
    for name, reason in report.failures:
        console.print(f"[red]failed[/red] {name}: {reason}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
