"""After a bulk batch got no answer, the folder client asks which files the service holds: one held with a version
the service started writing before the batch was sent was stored by an earlier run and is counted `unchanged`, one
written since is `stored` (it was counted `stored` either way)."""

from __future__ import annotations

import email.utils
import json
from pathlib import Path

import httpx

from service import client as ingest_client

SERVICE_NOW = 1_800_000_000.0  # the service's clock (its Date header), seconds


def test_a_file_an_earlier_run_stored_counts_as_unchanged_after_an_abandoned_batch(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("old.md", "new.md", "later.md"):
        (folder / name).write_text(f"The text of {name}.")
    prepared = {name: ingest_client.prepare(folder / name, folder, 100_000) for name in ("old.md", "new.md")}
    digests = {name: ingest_client.content_hash_of(item) for name, item in prepared.items()}
    written = {"old.md": SERVICE_NOW - 3600, "new.md": SERVICE_NOW - 0.5}  # an hour ago; during the batch
    bulks: list[list[str]] = []
    now = [0.0]

    def handler(request: httpx.Request) -> httpx.Response:
        date = {"Date": email.utils.formatdate(SERVICE_NOW + now[0], usegmt=True)}
        if request.method == "POST":
            ids = [d["document_id"] for d in json.loads(request.content)["documents"]]
            bulks.append(ids)
            if len(bulks) == 1:
                now[0] += 7  # the client's timeout passes
                raise httpx.ReadTimeout("no answer", request=request)
            items = [
                {
                    "index": i,
                    "document_id": d,
                    "status_code": 201,
                    "result": {"status": "created"},
                    "error": None,
                }
                for i, d in enumerate(ids)
            ]
            return httpx.Response(207, json={"items": items}, headers=date)
        name = request.url.path.rsplit("/", 1)[1]
        if name in written:
            body = {
                "document_id": name,
                "content_hash": digests[name],
                "version": int((written[name] + now[0]) * 1_000_000),
            }
            return httpx.Response(200, json=body, headers=date)
        error = {"code": "not_found", "message": "not found", "document_id": name}
        return httpx.Response(404, json={"error": error}, headers=date)

    report = ingest_client.Report()
    client = ingest_client.IngestClient(
        "http://service",
        None,
        report,
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
        clock=lambda: now[0],
        timeout=7,
    )
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    ingest_client.ingest_folder(
        client, folder, report, batch_size=3, max_batch_bytes=100_000, advance=lambda _n: None
    )
    assert sorted(bulks[0]) == ["later.md", "new.md", "old.md"]
    assert bulks[1:] == [["later.md"]]  # only the file not held goes again
    assert report.outcomes == {"unchanged": 1, "stored": 1, "created": 1}, report.outcomes
