"""The folder client's `--prune` (never by default), its progress lines when stderr is not a terminal, and its
rate-limit waits (EYES10): against a real service process for the prune, with a scripted transport and a fake
clock for the rest.

- A file deleted from the folder leaves its document in the service on a plain re-run; `--prune` without a
  `--metadata` tag is a usage error that deletes nothing; `--prune --metadata source=X` deletes exactly the
  documents tagged source=X whose files are gone, never an untagged document, one tagged otherwise, or one of
  another tenant.
- With a console that is not a terminal, progress is plain `ingest: N/M files` lines (rich drew nothing there).
- A 429's Retry-After is waited in the delta form and the HTTP-date form, and the wait names the service's
  limit; the summary sums the waits and says which setting throttled the run.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from service import client as ingest_client
from tests.service.prod_support import API_KEYS, KEY_A, KEY_B, bearer
from tests.support.processes import api_process


def _ids(url: str, key: str) -> set[str]:
    listed = httpx.get(f"{url}/v1/documents?limit=100", headers=bearer(key), timeout=60).json()
    return {document["document_id"] for document in listed["documents"]}


def _run(url: str, folder: Path, *extra: str) -> tuple[int, str]:
    output = io.StringIO()
    code = ingest_client.main(
        ["ingest", str(folder), "--url", url, "--key", KEY_A, *extra],
        console=Console(file=output, width=200),  # a file: not a terminal
    )
    return code, output.getvalue()


def test_prune_deletes_only_this_folders_documents_whose_files_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_client, "PROGRESS_LINE_SECONDS", 0.0)  # a line for every step
    folder = tmp_path / "handbook"
    (folder / "hr").mkdir(parents=True)
    for name in ("leave.md", "hr/pay.md", "hr/travel.txt"):
        (folder / name).write_text(f"# {name}\n\nWhat the handbook says about {name}.\n")
    with api_process(
        tmp_path,
        api_keys=API_KEYS,
        environment="test",
        data_dir=str(tmp_path / "data"),
        cache_enabled="false",
    ) as url:
        headers = bearer(KEY_A)
        # Documents the prune must never touch: written by hand (untagged), by another folder's run (another
        # tag), and another tenant's with the same id and tag.
        for document_id, metadata in (("manual", {}), ("hr:pay-old.md", {"source": "wiki"})):
            body = {"text": f"{document_id} text", "metadata": metadata}
            assert (
                httpx.put(f"{url}/v1/documents/{document_id}", json=body, headers=headers).status_code == 201
            )
        other = {"text": "tenant b", "metadata": {"source": "handbook"}}
        assert httpx.put(f"{url}/v1/documents/leave.md", json=other, headers=bearer(KEY_B)).status_code == 201

        code, first = _run(url, folder, "--metadata", "source=handbook")
        assert code == 0, first
        assert "3 files: 3 created" in first, first
        # Plain progress lines (stderr not a terminal): the start and each step, up to the whole folder.
        lines = [line for line in first.splitlines() if line.startswith("ingest: ")]
        assert lines[0].startswith("ingest: 0/3 files, 0 min "), first
        assert lines[-1].startswith("ingest: 3/3 files, "), first
        every = {"manual", "hr:pay-old.md", "leave.md", "hr:pay.md", "hr:travel.txt"}
        assert _ids(url, KEY_A) == every

        (folder / "hr" / "pay.md").unlink()
        code, plain = _run(url, folder, "--metadata", "source=handbook")
        assert code == 0, plain
        assert "pruned" not in plain
        assert _ids(url, KEY_A) == every  # never by default

        code, untagged = _run(url, folder, "--prune")
        assert code == 2
        assert "--prune needs --metadata KEY=VALUE" in untagged
        assert _ids(url, KEY_A) == every

        code, pruned = _run(url, folder, "--metadata", "source=handbook", "--prune")
        assert code == 0, pruned
        assert "2 files: 2 unchanged" in pruned, pruned
        assert "pruned 1 document whose files are gone: hr:pay.md" in pruned, pruned
        assert _ids(url, KEY_A) == every - {"hr:pay.md"}
        assert _ids(url, KEY_B) == {"leave.md"}
        # A second prune finds nothing more.
        code, again = _run(url, folder, "--metadata", "source=handbook", "--prune")
        assert code == 0, again
        assert "pruned 0 documents whose files are gone" in again, again


def test_plain_progress_prints_a_line_at_most_every_interval() -> None:
    now = [100.0]
    output = io.StringIO()
    progress = ingest_client.PlainProgress(Console(file=output, width=200), 10, clock=lambda: now[0])
    progress.advance(0)
    now[0] += 5
    progress.advance(4)  # within the interval: no line
    progress.note("rate limited (rate limit exceeded for ingest: 120 per 1 minute); waiting 20 s")
    now[0] += ingest_client.PROGRESS_LINE_SECONDS
    progress.advance(3)
    assert output.getvalue().splitlines() == [
        "ingest: 0/10 files, 0 min 00 s",
        "ingest: 7/10 files, 0 min 35 s; last wait: rate limited (rate limit exceeded for ingest: 120 per 1 "
        "minute); waiting 20 s",
    ]


def test_a_429_is_waited_out_in_either_retry_after_form_and_the_summary_names_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    error = {
        "code": "rate_limited",
        "message": "rate limit exceeded for ingest: 2 per 1 minute; retry in 40 s",
    }
    answers = [
        httpx.Response(429, headers={"Retry-After": "40"}, json={"error": error}),
        httpx.Response(
            429,
            headers={
                "Retry-After": format_datetime(answered + timedelta(seconds=50), usegmt=True),
                "Date": format_datetime(answered, usegmt=True),
            },
            json={"error": error},
        ),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        if answers:
            return answers.pop(0)
        return httpx.Response(
            201, json={"document_id": "a.md", "status": "created", "chunks": 1, "version": 1}
        )

    slept: list[float] = []
    notes: list[str] = []
    report = ingest_client.Report()
    client = ingest_client.IngestClient(
        "http://service", "k", report, sleep=slept.append, on_wait=notes.append
    )
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    assert client.send("POST", "/v1/documents").status_code == 201
    assert slept == [40.0, 50.0]
    assert report.rate_limited == 2
    assert report.rate_limit_seconds == 90.0
    assert notes[0] == "rate limited (rate limit exceeded for ingest: 2 per 1 minute); waiting 40 s"

    # The summary of a run that waited: the waits, their total and the setting to raise.
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("one")

    class Scripted(ingest_client.IngestClient):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs, sleep=lambda _s: None)  # type: ignore[arg-type]
            self._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(bulk))

    limited = [True]

    def bulk(request: httpx.Request) -> httpx.Response:
        if limited.pop() if limited else False:
            return httpx.Response(429, headers={"Retry-After": "30"}, json={"error": error})
        item = {"index": 0, "document_id": "a.md", "status_code": 201, "result": {"status": "created"}}
        return httpx.Response(200, json={"succeeded": 1, "failed": 0, "items": [item]})

    monkeypatch.setattr(ingest_client, "IngestClient", Scripted)
    output = io.StringIO()
    code = ingest_client.main(
        ["ingest", str(folder), "--url", "http://service"], console=Console(file=output, width=200)
    )
    text = output.getvalue()
    assert code == 0, text
    assert "1 files: 1 created; 1 rate-limit waits (0.5 min), 0 retries" in text
    assert "RATE_LIMIT_INGEST" in text
