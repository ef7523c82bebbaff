"""Writes of one document are ordered by ACCEPTANCE (the 202, 201 or 204), not by when a queued job runs.

The production shape: the API with a Redis queue and a real registry database (Postgres, and SQLite as the
embedded registry), and the worker (`service.worker.run`, what `python -m service.worker` runs) started only
after the writes, so every job is deterministically still queued when the later write or delete is acknowledged.
An async PUT queued before a DELETE must not bring the document back; before a sync PUT, must not replace it;
two async PUTs: the second wins. Then a checker reading while async and sync PUTs interleave with the worker
running never sees an older write after a newer one.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app.main import create_app
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import DocumentRegistry, Superseded
from service.worker import run
from tests.service.prod_support import fresh_database
from tests.service.service_process import wait_for
from tests.service.support import make_settings


def _put(client: TestClient, document_id: str, text: str, *, seq: int, queued: bool) -> str | None:
    suffix = "?async=true" if queued else ""
    response = client.put(
        f"/v1/documents/{document_id}{suffix}", json={"text": text, "metadata": {"seq": seq}}
    )
    assert response.status_code == (202 if queued else 201), response.text
    return response.json()["status_url"] if queued else None


def _finished(client: TestClient, url: str) -> dict[str, Any] | None:
    body = client.get(url).json()
    return body if body["status"] in ("succeeded", "failed") else None


def _search_ids(client: TestClient, query: str) -> list[str]:
    response = client.post("/v1/search", json={"query": query, "top_k": 10})
    assert response.status_code == 200, response.text
    return [hit["document_id"] for hit in response.json()["results"]]


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return fresh_database(request.getfixturevalue("postgres_url"), f"order_{uuid.uuid4().hex[:10]}")


def test_writes_acknowledged_after_a_queued_job_win_over_it(
    tmp_path: Path, embedder: FastEmbedEmbedder, redis_url: str, database_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url=redis_url, database_url=database_url, jobs_sweep_seconds=0.2)
    with TestClient(create_app(settings, embedder=embedder)) as client:
        services = client.app.state.services
        # 1) async PUT, then DELETE (204) while the job is queued: it stays deleted.
        _put(client, "gdpr", "personal data of Jane Roe, phone 555-0100", seq=0, queued=False)
        resurrect = _put(client, "gdpr", "Jane Roe updated record, phone 555-0199", seq=1, queued=True)
        assert client.delete("/v1/documents/gdpr").status_code == 204
        # 2) async PUT of a new id, then DELETE before it ever existed (404): the job must not create it.
        ghost = _put(
            client, "ghost", "A ghost record that was deleted before it existed.", seq=1, queued=True
        )
        assert client.delete("/v1/documents/ghost").status_code == 404
        # 3) async PUT, then a sync PUT (201): the sync version stays.
        older = _put(client, "order-sa", "OLD text from the async upload about tides.", seq=1, queued=True)
        assert (
            client.put(
                "/v1/documents/order-sa", json={"text": "NEW sync text", "metadata": {"seq": 2}}
            ).status_code
            == 201
        )
        # 4) two async PUTs: the second wins.
        first = _put(client, "twice", "first async version about volcanoes", seq=1, queued=True)
        second = _put(client, "twice", "second async version about glaciers", seq=2, queued=True)
        # 5) async PUT, then a sync re-send of the content already active (200 unchanged): it still wins.
        _put(client, "same", "the same text every time", seq=0, queued=False)
        stale = _put(client, "same", "a different text queued first", seq=1, queued=True)
        assert (
            client.put(
                "/v1/documents/same", json={"text": "the same text every time", "metadata": {"seq": 0}}
            ).json()["status"]
            == "unchanged"
        )

        stop = asyncio.Event()
        worker = client.portal.start_task_soon(
            lambda: run(settings, services, stop=stop, install_signals=False)
        )
        try:
            jobs = [resurrect, ghost, older, first, second, stale]
            results = {url: wait_for(lambda url=url: _finished(client, url), f"job {url}") for url in jobs}
        finally:
            client.portal.call(stop.set)
            worker.result(timeout=120)

        # The first of two queued PUTs commits if it runs first (the second then replaces it), else it loses.
        assert results[first]["result"]["status"] in ("created", "superseded"), results[first]
        for url in (resurrect, ghost, older, stale):
            assert results[url]["status"] == "succeeded", results[url]
            assert results[url]["result"]["status"] == "superseded", (url, results[url])
            assert results[url]["result"]["version"] is None
        assert results[second]["result"]["status"] in ("created", "updated"), results[second]

        assert client.get("/v1/documents/gdpr").status_code == 404
        assert client.get("/v1/documents/ghost").status_code == 404
        assert "gdpr" not in _search_ids(client, "Jane Roe phone")
        assert client.get("/v1/documents/order-sa").json()["metadata"] == {"seq": 2}
        assert client.get("/v1/documents/twice").json()["metadata"] == {"seq": 2}
        assert client.get("/v1/documents/same").json()["metadata"] == {"seq": 0}
        assert "order-sa" in _search_ids(client, "NEW sync text")


def test_a_reader_never_sees_an_older_write_after_a_newer_one_was_acknowledged(
    tmp_path: Path, embedder: FastEmbedEmbedder, redis_url: str, postgres_url: str
) -> None:
    database = fresh_database(postgres_url, f"order_{uuid.uuid4().hex[:10]}")
    settings = make_settings(
        tmp_path, redis_url=redis_url, database_url=database, jobs_sweep_seconds=0.2, jobs_max_concurrency=2
    )
    with TestClient(create_app(settings, embedder=embedder)) as client:
        services = client.app.state.services
        stop = asyncio.Event()
        worker = client.portal.start_task_soon(
            lambda: run(settings, services, stop=stop, install_signals=False)
        )
        seen: list[int] = []
        acknowledged: list[int] = []  # seq of every sync write, in the order acknowledged
        done = threading.Event()
        violations: list[str] = []

        def check() -> None:
            while not done.is_set():
                floor = acknowledged[-1] if acknowledged else 0  # acknowledged before this read began
                response = client.get("/v1/documents/hot")
                if response.status_code != 200:
                    continue
                seq = response.json()["metadata"]["seq"]
                if seen and seq < seen[-1]:
                    violations.append(f"saw seq {seq} after {seen[-1]}")
                if seq < floor:
                    violations.append(f"saw seq {seq} after seq {floor} was acknowledged")
                seen.append(seq)

        checker = threading.Thread(target=check)
        checker.start()
        jobs = []
        try:
            for seq in range(1, 13):
                text = f"hot document revision {seq} " + "about rivers and deltas " * (seq % 4 * 8)
                if seq % 3 == 0:
                    response = client.put("/v1/documents/hot", json={"text": text, "metadata": {"seq": seq}})
                    assert response.status_code in (200, 201), response.text
                    acknowledged.append(seq)
                else:
                    jobs.append(_put(client, "hot", text, seq=seq, queued=True))
            final = 13
            jobs.append(_put(client, "hot", "hot document final revision", seq=final, queued=True))
            results = [wait_for(lambda url=url: _finished(client, url), "job") for url in jobs]
        finally:
            done.set()
            checker.join()
            client.portal.call(stop.set)
            worker.result(timeout=120)
        assert not violations, violations[:5]
        assert all(r["status"] == "succeeded" for r in results), results
        assert client.get("/v1/documents/hot").json()["metadata"] == {"seq": final}
        assert seen, "the checker read nothing"


def test_registry_write_order_on_sqlite(tmp_path: Path) -> None:
    """The registry's compare-and-set alone: tickets, tombstones, sync commits, unchanged confirmations."""
    registry = DocumentRegistry(f"sqlite:///{tmp_path / 'r.db'}")
    registry.migrate()
    common = {"content_hash": "h", "metadata": {}, "content_type": "text/plain", "chunk_count": 1}
    older = registry.accept_write("t", "d")
    newer = registry.accept_write("t", "d")
    assert newer == older + 1
    registry.activate("t", "d", expected_version=None, version=10, ticket=newer, **common)
    with pytest.raises(Superseded):
        registry.activate("t", "d", expected_version=10, version=11, ticket=older, **common)
    assert registry.get("t", "d").version == 10
    queued = registry.accept_write("t", "d")
    registry.delete("t", "d")  # the tombstone
    with pytest.raises(Superseded):
        registry.activate("t", "d", expected_version=None, version=12, ticket=queued, **common)
    assert registry.get("t", "d") is None
    # A sync write (no ticket) always commits after every accepted ticket.
    pending = registry.accept_write("t", "d")
    registry.activate("t", "d", expected_version=None, version=13, **common)
    with pytest.raises(Superseded):
        registry.activate("t", "d", expected_version=13, version=14, ticket=pending, **common)
    # An unchanged sync re-send while a write is pending also wins over it.
    pending = registry.accept_write("t", "d")
    registry.confirm_unchanged("t", "d", 13)
    with pytest.raises(Superseded):
        registry.activate("t", "d", expected_version=13, version=15, ticket=pending, **common)
    registry.close()
