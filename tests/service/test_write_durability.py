"""WRITE_DURABILITY: what an acknowledged write survives on the embedded defaults (qdrant-edge + SQLite).

``power_loss`` (the default): the edge store's WAL files are fsynced after an upsert and before the registry
commit that acknowledges the write, and the SQLite registry runs ``synchronous=FULL`` (its WAL synced at every
commit). ``process_crash``: neither. A power loss cannot be staged in a test; what can fail here is the order
(every WAL file the write changed is fsynced before the commit), the outcome of a failed fsync (503, nothing
committed) and the pragmas every registry connection runs with. The process-crash half (kill -9 mid-write) is
tests/service/test_edge_store.py and tests/service/test_crash_ingest.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.app.core.config import Settings
from service.app.store import edge as edge_module
from service.app.store.edge import WAL_DIRECTORY, EdgeVectorStore
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import DocumentRegistry
from tests.service.support import make_settings, running_app, services_of

TEXT = "Employees get 25 days of paid vacation per year.\n\nUnused days expire in March."


def wal_files(store: EdgeVectorStore) -> dict[str, str]:
    """Each WAL file's content digest (read through the page cache, so it sees what the engine wrote through its
    memory map; an mtime would not move for a write to a page that was already dirty)."""
    wal = store.path / WAL_DIRECTORY
    return {name: hashlib.sha256((wal / name).read_bytes()).hexdigest() for name in os.listdir(wal)}


def record_fsyncs(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, str]]) -> None:
    """Every fsync the edge store makes is recorded (with the path it synced), then made for real."""
    real = os.fsync

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(edge_module.os, "fsync", fsync)


def record_commits(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, str]]) -> None:
    real = DocumentRegistry.activate

    def activate(self: DocumentRegistry, *args: Any, **kwargs: Any) -> Any:
        events.append(("activate", args[1]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DocumentRegistry, "activate", activate)


def test_the_wal_files_a_write_changed_are_fsynced_before_the_commit_acknowledges_it(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        store = services_of(client).vectors
        assert isinstance(store, EdgeVectorStore)
        assert store.sync_writes
        before = wal_files(store)
        record_fsyncs(monkeypatch, events)
        record_commits(monkeypatch, events)
        response = client.put("/v1/documents/handbook", json={"text": TEXT})
        assert response.status_code == 201, response.text
        after = wal_files(store)

    changed = {name for name, digest in after.items() if before.get(name) != digest}
    assert changed, "the write changed no WAL file: the test no longer observes the WAL"
    commit = events.index(("activate", "handbook"))
    wal = (store.path / WAL_DIRECTORY).resolve()
    synced_before_commit = {Path(path) for kind, path in events[:commit] if kind == "fsync"}
    for name in changed:
        assert wal / name in synced_before_commit, f"{name} changed but was not fsynced before the commit"
    assert wal in synced_before_commit  # the directory: a WAL segment created by this write keeps its name


def test_a_failed_fsync_answers_503_and_commits_nothing(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        with monkeypatch.context() as patch:
            patch.setattr(edge_module.os, "fsync", broken)
            response = client.put("/v1/documents/handbook", json={"text": TEXT})
        assert response.status_code == 503, response.text
        assert "write-ahead log" in response.json()["error"]["message"]
        assert client.get("/v1/documents/handbook").status_code == 404
        hits = client.post("/v1/search", json={"query": "paid vacation days", "top_k": 5}).json()["results"]
        assert hits == []
        # The disk is back: the same write goes through, once.
        assert client.put("/v1/documents/handbook", json={"text": TEXT}).status_code == 201
        hits = client.post("/v1/search", json={"query": "paid vacation days", "top_k": 5}).json()["results"]
        assert [hit["document_id"] for hit in hits] == ["handbook"]


@pytest.mark.parametrize(("durability", "synchronous"), [("power_loss", 2), ("process_crash", 1)])
def test_every_registry_connection_runs_the_synchronous_mode_of_the_setting(
    tmp_path: Path,
    embedder: FastEmbedEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    durability: str,
    synchronous: int,
) -> None:
    events: list[tuple[str, str]] = []
    settings = make_settings(tmp_path, write_durability=durability)
    with running_app(settings, embedder=embedder) as client:
        services = services_of(client)
        record_fsyncs(monkeypatch, events)
        assert client.put("/v1/documents/handbook", json={"text": TEXT}).status_code == 201
        # SQLAlchemy's pooled connections (writes, jobs) and the kept connections of the search snapshots.
        with services.registry.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == synchronous
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert services.registry._readers is not None
        reader = services.registry._readers.acquire()
        try:
            assert reader.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        finally:
            services.registry._readers.release(reader)
    if durability == "process_crash":
        assert events == []  # no fsync per write
    else:
        assert events


def test_write_durability_refuses_an_unknown_mode_naming_the_variable() -> None:
    with pytest.raises(ValidationError, match="write_durability"):
        Settings(_env_file=None, write_durability="sometimes")
