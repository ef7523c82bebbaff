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

import errno
import io
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

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


def _unreadable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `folder` behave as `chmod 000` does for a user other than root (the tests run as root, which reads
    it anyway): listing it and looking at anything inside it fail with EACCES."""
    real_scandir, real_is_file = os.scandir, Path.is_file

    def denied(path: object) -> OSError:
        return PermissionError(errno.EACCES, "Permission denied", str(path))

    def scandir(path: Any = ".") -> Any:
        if Path(os.fsdecode(path)) == folder:
            raise denied(path)
        return real_scandir(path)

    def is_file(self: Path) -> bool:
        if folder in self.parents:
            raise denied(self)
        return real_is_file(self)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Path, "is_file", is_file)


def test_a_folder_that_cannot_be_listed_stops_the_run_and_the_prune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REVIEW_SERVICE21 H1: os.walk skipped a folder it could not list without a word, and --prune then deleted
    every document under it; `chmod 000` on it died in a PermissionError traceback."""
    folder = tmp_path / "handbook"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.md", "sub/s1.md", "sub/s2.md"):
        (folder / name).write_text(f"# {name}\n\nWhat the handbook says about {name}.\n")
    with api_process(
        tmp_path,
        api_keys=API_KEYS,
        environment="test",
        data_dir=str(tmp_path / "data"),
        cache_enabled="false",
    ) as url:
        code, first = _run(url, folder, "--metadata", "source=handbook")
        assert code == 0, first
        every = {"a.md", "sub:s1.md", "sub:s2.md"}
        assert _ids(url, KEY_A) == every
        (folder / "b.md").write_text("# b\n\nA new file.\n")

        with monkeypatch.context() as patch:
            _unreadable(patch, folder / "sub")
            for extra in ((), ("--prune",)):
                code, text = _run(url, folder, "--metadata", "source=handbook", *extra)
                text = " ".join(text.split())  # as one line, however the console wrapped it
                assert code == 2, text
                assert text.startswith("error: cannot read sub (Permission denied) in "), text
                assert ("nothing was sent or pruned" if extra else "nothing was sent:") in text, text
                assert "Traceback" not in text
                assert _ids(url, KEY_A) == every  # nothing deleted, and b.md not sent either

        # Readable at the start but not at the end of the run: the prune is refused, the ingest stands.
        real_ingest = ingest_client.ingest_folder

        def then_unreadable(*args: Any, **kwargs: Any) -> None:
            real_ingest(*args, **kwargs)
            _unreadable(patch, folder / "sub")

        with monkeypatch.context() as patch:
            patch.setattr(ingest_client, "ingest_folder", then_unreadable)
            code, text = _run(url, folder, "--metadata", "source=handbook", "--prune")
        text = " ".join(text.split())
        assert code == 2, text
        assert "error: cannot read sub (Permission denied) in " in text, text
        assert "their files would count as gone; nothing was pruned" in text, text
        assert _ids(url, KEY_A) == every | {"b.md"}


def test_prune_keeps_the_document_of_a_file_missing_only_at_one_end_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REVIEW_SERVICE21 H2: the ids kept came from one walk after the ingest, so a file briefly moved away then
    (an editor's save, git checkout, rsync) had its document deleted though the run had just found it."""
    folder = tmp_path / "handbook"
    folder.mkdir()
    for name in ("a1.md", "a2.md", "a3.md", "gone.md"):
        (folder / name).write_text(f"# {name}\n\nWhat the handbook says about {name}.\n")
    with api_process(
        tmp_path,
        api_keys=API_KEYS,
        environment="test",
        data_dir=str(tmp_path / "data"),
        cache_enabled="false",
    ) as url:
        code, first = _run(url, folder, "--metadata", "source=handbook")
        assert code == 0, first
        (folder / "gone.md").unlink()
        real_ingest = ingest_client.ingest_folder

        def with_gaps(client: Any, root: Path, *args: Any, **kwargs: Any) -> None:
            # late.md appears after the start walk (this run sends it), a3.md is away from then on, and late.md
            # and a2.md are away at the end walk.
            (root / "late.md").write_text("# late\n\nA file written during the run.\n")
            (root / "a3.md").rename(root / "a3.md~")
            real_ingest(client, root, *args, **kwargs)
            (root / "late.md").rename(root / "late.md~")
            (root / "a2.md").rename(root / "a2.md~")

        monkeypatch.setattr(ingest_client, "ingest_folder", with_gaps)
        code, text = _run(url, folder, "--metadata", "source=handbook", "--prune")
        assert code == 0, text
        assert "3 files: 1 created, 2 unchanged" in text, text
        assert "pruned 1 document whose files are gone: gone.md" in text, text
        assert _ids(url, KEY_A) == {"a1.md", "a2.md", "a3.md", "late.md"}


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("zone", ["-0000", "+0000", ""])
def test_a_retry_after_date_without_a_zone_is_utc_and_one_in_the_past_waits_a_second(
    new_york: None, zone: str
) -> None:
    """REVIEW_SERVICE21 L5: a "-0000" or zone-less date was read in local time (60 s became the 3600 s cap under
    New York time), and a date already past gave 0 s, so up to 100 retries back to back."""
    assert time.localtime(0).tm_gmtoff != 0  # the local time differs from UTC here
    date = {"Date": "Wed, 21 Oct 2015 07:27:00 GMT"}

    def waited(retry_after: str) -> float:
        return ingest_client.retry_after_seconds(
            httpx.Response(429, headers={"Retry-After": retry_after, **date})
        )

    assert waited(f"Wed, 21 Oct 2015 07:28:00 {zone}".strip()) == 60.0
    assert waited(f"Wed, 21 Oct 2015 07:26:00 {zone}".strip()) == 1.0
    date = {"Date": f"Wed, 21 Oct 2015 07:27:00 {zone}".strip()}
    assert waited("Wed, 21 Oct 2015 07:27:30 GMT") == 30.0
