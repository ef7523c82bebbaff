"""Search judges all its hits against one registry snapshot and stays correct whatever the share of invisible
points; the orphan collector removes exactly what no registry row can make visible."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app.core.errors import ServiceUnavailable
from service.app.core.metrics import ORPHANS_REMOVED
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.gc import collect_orphans, now_version
from service.app.store.registry import DocumentRegistry
from service.app.store.vectors import ChunkPoint
from tests.service.support import create_database, make_settings, running_app, services_of

TEXT = "Salmon migrate upstream to spawn in the cold gravel beds of mountain rivers."


def _activate(registry: DocumentRegistry, document_id: str, version: int, expected: int | None) -> None:
    registry.activate(
        "t",
        document_id,
        expected_version=expected,
        version=version,
        content_hash=f"h{version}",
        metadata={},
        content_type="text/plain",
        chunk_count=1,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentRegistry]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = create_database(request.getfixturevalue("postgres_url"), "snapshot_test")
    registry = DocumentRegistry(url)
    registry.migrate()
    yield registry
    registry.close()


def test_a_snapshot_does_not_see_writes_committed_after_its_first_read(registry: DocumentRegistry) -> None:
    _activate(registry, "a", 1, None)
    with registry.snapshot() as snapshot:
        assert snapshot.active_versions("t", ["a", "b"]) == {"a": 1}
        _activate(registry, "a", 2, 1)  # another connection commits while the snapshot is open
        _activate(registry, "b", 7, None)
        assert snapshot.active_versions("t", ["a", "b"]) == {"a": 1}
    assert registry.active_versions("t", ["a", "b"]) == {"a": 2, "b": 7}


@pytest.fixture
def client(tmp_path: Path, embedder: FastEmbedEmbedder) -> Iterator[TestClient]:
    with running_app(make_settings(tmp_path, chunk_size=32, chunk_overlap=0), embedder=embedder) as client:
        yield client


def _orphans(client: TestClient, document_id: str, version: int, count: int) -> None:
    """``count`` invisible points nearer to the query than any real chunk (the query text itself)."""
    services = services_of(client)
    vector = services.embedder.embed_documents([TEXT])[0]
    services.vectors.upsert(
        [
            ChunkPoint(
                "default", document_id, version, index, TEXT, vector, {}, "x", services.embedder.model_name
            )
            for index in range(count)
        ]
    )


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_search_finds_every_visible_chunk_however_many_orphans_outrank_them(
    client: TestClient, mode: str
) -> None:
    text = "\n\n".join(f"Chapter {i}: salmon and trout spawn in rivers, part {i}." for i in range(4))
    assert client.put("/v1/documents/real", json={"text": text}).status_code == 201
    chunks = client.get("/v1/documents/real").json()["chunk_count"]
    assert chunks >= 2
    _orphans(client, "ghost", 5, 600)  # never activated
    _orphans(client, "real", 1, 300)  # an older version of the real document
    for top_k in (1, 5, 20):
        response = client.post("/v1/search", json={"query": TEXT, "top_k": top_k, "mode": mode})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == min(top_k, chunks), results
        assert {r["document_id"] for r in results} == {"real"}


def test_the_collector_removes_orphans_and_spares_what_a_write_may_still_publish(client: TestClient) -> None:
    services = services_of(client)
    assert client.put("/v1/documents/doc", json={"text": "Rivers carry salmon."}).status_code == 201
    active = client.get("/v1/documents/doc").json()["version"]
    now = now_version()
    _orphans(client, "doc", active - 1, 3)  # older than active: garbage at once
    _orphans(client, "dead", now - 7_200_000_000, 2)  # unpublished, two hours old
    _orphans(client, "inflight", now, 4)  # unpublished, a write that may still commit
    before = ORPHANS_REMOVED._value.get()

    report = collect_orphans(services.registry, services.vectors, grace_seconds=3600)

    assert (report.versions_removed, report.points_removed) == (2, 5)
    assert ORPHANS_REMOVED._value.get() - before == 5
    assert services.vectors.count("default", "doc") == client.get("/v1/documents/doc").json()["chunk_count"]
    assert services.vectors.count("default", "dead") == 0
    assert services.vectors.count("default", "inflight") == 4
    # With no grace (an operator's choice after a crash, as the fault tests do) the unpublished write goes too.
    assert collect_orphans(services.registry, services.vectors, grace_seconds=0).points_removed == 4
    assert client.post("/v1/search", json={"query": "salmon"}).json()["results"][0]["document_id"] == "doc"


def test_a_write_older_than_the_grace_refuses_to_commit(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    settings = make_settings(tmp_path, gc_grace_seconds=0)
    with running_app(settings, embedder=embedder) as client:
        response = client.put("/v1/documents/slow", json={"text": "too slow to commit"})
        assert response.status_code == 503, response.text
        assert "GC_GRACE_SECONDS" in response.json()["error"]["message"]
        assert client.get("/v1/documents/slow").status_code == 404
        assert services_of(client).vectors.count("default", "slow") == 0


def test_a_kept_sqlite_snapshot_connection_sees_what_another_process_committed(tmp_path: Path) -> None:
    """Search snapshots of a SQLite file reuse plain sqlite3 connections: a reused one must start a fresh
    snapshot each time, so a write by another process (a CLI, a second server on the same file) is seen by the
    very next search, and one still inside a transaction is never kept."""
    path = tmp_path / "registry.db"
    registry = DocumentRegistry(f"sqlite:///{path}")
    registry.migrate()
    try:
        _activate(registry, "a", 1, None)
        with registry.snapshot() as snapshot:
            assert snapshot.active_versions("t", ["a"]) == {"a": 1}
        readers = registry._readers
        assert readers is not None
        assert readers.idle == 1  # kept for the next search
        data_version = registry.data_version(
            "t"
        )  # the search cache's key: read through a kept connection too
        assert data_version > 0
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                "c.execute(\"UPDATE documents SET version = 2 WHERE tenant_id = 't' AND document_id = 'a'\"); "
                "c.execute(\"UPDATE tenants SET data_version = data_version + 1 WHERE tenant_id = 't'\"); "
                "c.commit()",
                str(path),
            ],
            check=True,
            capture_output=True,
        )
        assert other.returncode == 0
        with registry.snapshot() as snapshot:
            assert readers.idle == 0  # the kept connection serves this snapshot
            assert snapshot.active_versions("t", ["a"]) == {"a": 2}
        assert readers.idle == 1
        assert registry.data_version("t") == data_version + 1
        assert registry.data_version("nobody") == 0

        # A connection returned while still inside a transaction would freeze its snapshot: it is closed instead.
        stuck = readers.acquire()
        stuck.execute("BEGIN")
        stuck.execute("SELECT 1 FROM documents").fetchall()
        readers.release(stuck)
        assert readers.idle == 0
        with pytest.raises(sqlite3.ProgrammingError):
            stuck.execute("SELECT 1")
    finally:
        registry.close()
    assert readers.idle == 0  # closed with the registry


def test_a_broken_sqlite_registry_fails_the_snapshot_as_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    registry = DocumentRegistry(f"sqlite:///{path}")
    registry.migrate()
    try:
        _activate(registry, "a", 1, None)
        with registry.snapshot() as snapshot:
            assert snapshot.active_versions("t", ["a"]) == {"a": 1}
        with registry.engine.begin() as connection:  # a registry without its table: an operator's mistake
            connection.exec_driver_sql("ALTER TABLE documents RENAME TO documents_moved")
        with pytest.raises(ServiceUnavailable), registry.snapshot() as snapshot:
            snapshot.active_versions("t", ["a"])
        with registry.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE documents_moved RENAME TO documents")
        with registry.snapshot() as snapshot:  # and the next search reads it again
            assert snapshot.active_versions("t", ["a"]) == {"a": 1}
    finally:
        registry.close()
