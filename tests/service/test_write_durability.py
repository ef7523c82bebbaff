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
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from service.app.core.config import Settings
from service.app.core.errors import ServiceUnavailable
from service.app.store import edge as edge_module
from service.app.store.edge import WAL_DIRECTORY, EdgeVectorStore
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import DocumentRegistry
from service.app.store.sparse import SparseVector
from service.app.store.vectors import ChunkPoint
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


def record_commits(
    monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, str]], registry: DocumentRegistry
) -> None:
    """Every registry commit that activates a document is recorded (as ("activate", document)) at the moment the
    transaction commits, not when `activate` is called: the ingest prepares the transaction while the vector
    store syncs, and only its commit acknowledges the write."""
    real = DocumentRegistry.activate
    activating = threading.local()

    def activate(self: DocumentRegistry, *args: Any, **kwargs: Any) -> Any:
        activating.document = args[1]
        try:
            return real(self, *args, **kwargs)
        finally:
            activating.document = None

    def committed(_connection: Any) -> None:
        document = getattr(activating, "document", None)
        if document is not None:
            events.append(("activate", document))

    monkeypatch.setattr(DocumentRegistry, "activate", activate)
    sa.event.listen(registry.engine, "commit", committed)


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
        record_commits(monkeypatch, events, services_of(client).registry)
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


def test_every_wal_file_a_write_changed_is_fsynced_across_segment_retires_and_an_idle_preallocated_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes large enough that the WAL's 32 MiB segments retire (renamed to closed-*, the next preallocated
    open-N taking over): after every upsert, each WAL file whose content it changed (the one appended to, the
    retired one under its new name) was fsynced before the upsert returned. While nothing in the directory was
    created, renamed or removed, the preallocated next segment is left alone (a clean file's fsync still flushes
    the device's cache)."""
    store = EdgeVectorStore(tmp_path / "edge" / "c", collection="c", dimension=4, optimize_idle_seconds=None)
    store.ensure_collection()
    events: list[tuple[str, str]] = []
    record_fsyncs(monkeypatch, events)
    wal = (store.path / WAL_DIRECTORY).resolve()
    filler = "x" * (7 << 20)  # one 7 MiB WAL record per upsert: a 32 MiB segment retires every 4-5 upserts
    retires = idle_skipped = 0
    try:
        for n in range(30):
            before = wal_files(store)
            events.clear()
            store.upsert(
                [
                    ChunkPoint(
                        tenant_id="t",
                        document_id=f"d{n}",
                        version=1,
                        chunk_index=0,
                        text=f"{n} {filler}",
                        vector=[1.0, 0.5, 0.25, float(n)],
                        metadata={},
                        content_hash="h",
                        model="m",
                        sparse=SparseVector.of([n], [1.0]),  # not BM25 over 7 MiB of filler
                    )
                ]
            )
            after = wal_files(store)
            synced = {Path(path) for _, path in events}
            for name, digest in after.items():
                # Segments the WAL's creator thread preallocates in the background (new open-N, tmp-*) hold no
                # record; every other file that is new or different holds this write (or the retired one's).
                created = name not in before and not name.startswith("closed-")
                if before.get(name) != digest and not created:
                    assert wal / name in synced, f"upsert {n}: {name} changed but was not fsynced"
            retires += any(name.startswith("closed-") and name not in before for name in after)
            idle_skipped += any(
                name.startswith("open-")
                and name in before
                and before[name] == after[name]
                and wal / name not in synced
                for name in after
            )
            if retires >= 2 and idle_skipped:
                break
    finally:
        store.close()
    assert retires >= 2, "no WAL segment retired twice: the test no longer crosses a retire"
    assert idle_skipped, "every sync fsynced the idle preallocated segment too"


def test_a_failed_fsync_answers_503_commits_nothing_and_refuses_writes_until_a_restart(
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
        # The next fsync would succeed over a WAL that may have lost the failed write's pages (Linux marks them
        # clean after reporting the error), so a replay could stop there: no more writes until a restart. The
        # readiness probes say why; searches go on (so the serving probe stays 200, `degraded`; /readyz fails).
        refused = client.put("/v1/documents/other", json={"text": TEXT})
        assert refused.status_code == 503, refused.text
        assert "writes are refused until the service restarts" in refused.json()["error"]["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "write-ahead log failed" in ready.text
        serving = client.get("/readyz/serving")
        assert serving.status_code == 200, serving.text
        assert serving.json()["status"] == "degraded"
        assert "write-ahead log failed" in serving.text
        assert client.post("/v1/search", json={"query": "paid vacation days", "top_k": 5}).status_code == 200
    # Restarted on the same data: the same write goes through, once.
    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        assert client.get("/readyz/serving").status_code == 200
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


WAIT = 120  # seconds: a hang guard only (a correct run never waits on it)


def test_a_put_whose_wal_sync_is_held_is_not_visible_and_a_failed_sync_answers_503(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry commit (the acknowledgement) waits for the WAL sync: while the sync is held nothing of the
    write is visible; when it fails the PUT gets 503 and nothing ever becomes visible."""
    real = os.fsync
    entered, release = threading.Event(), threading.Event()
    events: list[tuple[str, str]] = []

    def held(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if f"/{WAL_DIRECTORY}/" in path and not entered.is_set():
            entered.set()
            assert release.wait(WAIT)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        record_commits(monkeypatch, events, services_of(client).registry)
        monkeypatch.setattr(edge_module.os, "fsync", held)
        answer: dict[str, Any] = {}
        writer = threading.Thread(
            target=lambda: answer.update(put=client.put("/v1/documents/handbook", json={"text": TEXT}))
        )
        writer.start()
        assert entered.wait(WAIT)
        # The write's points are in the shard, its sync is running: not acknowledged, not visible.
        assert events == []
        assert client.get("/v1/documents/handbook").status_code == 404
        hits = client.post("/v1/search", json={"query": "paid vacation days", "top_k": 5}).json()["results"]
        assert hits == []
        release.set()
        writer.join(WAIT)
        assert answer["put"].status_code == 503, answer["put"].text
        assert events == []  # never committed
        assert client.get("/v1/documents/handbook").status_code == 404
        hits = client.post("/v1/search", json={"query": "paid vacation days", "top_k": 5}).json()["results"]
        assert hits == []


def test_concurrent_puts_share_wal_syncs_and_each_commits_only_after_a_sync_that_covers_it(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: the first WAL sync is held until every other writer has applied its points and asked for a
    sync; they share the next one. Each registry commit comes after a sync that STARTED after that write's
    points were applied, and every write ends acknowledged, readable and searchable."""
    writers = 6
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync = os.fsync

    def note(kind: str, what: str) -> None:
        with lock:
            events.append((kind, what))

    with running_app(make_settings(tmp_path), embedder=embedder) as client:
        store = services_of(client).vectors
        assert isinstance(store, EdgeVectorStore)
        syncer = store._wal_sync
        real_upsert, real_flush = store.upsert, syncer._flush
        held = threading.Event()

        def upsert(points: Any, **kwargs: Any) -> None:
            real_upsert(points, **kwargs)
            note("applied", points[0].document_id)  # in the shard; its sync may still be to come

        def flush() -> None:
            round_ = str(syncer.flushes)
            note("sync-start", round_)
            real_flush()
            note("sync-end", round_)

        def fsync(fd: int) -> None:
            if f"/{WAL_DIRECTORY}/" in os.readlink(f"/proc/self/fd/{fd}") and not held.is_set():
                held.set()
                syncer.wait_for_arrivals(start + writers)  # every writer's points are applied
            real_fsync(fd)

        start = syncer.arrived
        monkeypatch.setattr(store, "upsert", upsert)
        monkeypatch.setattr(syncer, "_flush", flush)
        monkeypatch.setattr(edge_module.os, "fsync", fsync)
        record_commits(monkeypatch, events, services_of(client).registry)
        barrier = threading.Barrier(writers)
        statuses: dict[str, int] = {}

        def put(index: int) -> None:
            barrier.wait(WAIT)
            text = f"Policy {index}: employees in office {index} get {20 + index} days of paid vacation."
            statuses[f"doc{index}"] = client.put(f"/v1/documents/doc{index}", json={"text": text}).status_code

        threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)

        assert statuses == {f"doc{i}": 201 for i in range(writers)}
        # One held sync for the first writer, one shared by the other five.
        assert [kind for kind, _ in events].count("sync-start") == 2
        for i in range(writers):
            document = f"doc{i}"
            applied = events.index(("applied", document))
            commit = events.index(("activate", document))
            covering = [
                round_
                for position, (kind, round_) in enumerate(events)
                if kind == "sync-start"
                and applied < position
                and ("sync-end", round_) in events[position:commit]
            ]
            assert covering, f"{document} was committed without a sync that started after its write: {events}"
            assert client.get(f"/v1/documents/{document}").status_code == 200
            hits = client.post(
                "/v1/search", json={"query": f"office {i} paid vacation", "top_k": writers}
            ).json()["results"]
            assert document in {hit["document_id"] for hit in hits}


def test_a_write_waiting_for_the_next_sync_round_is_not_acknowledged_after_a_failed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: a write applied while the failing round ran waits for the next round. That round's fsync
    would succeed (the kernel reports a write-back error once) over a WAL that may have lost the failed round's
    pages, so it must fail too, whatever fsync says now."""
    from tests.service.test_edge_store import distinct_points

    store = EdgeVectorStore(tmp_path / "edge", collection="c", dimension=16, sync_writes=True)
    store.ensure_collection()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(
                edge_module.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO"))
            )
            with pytest.raises(ServiceUnavailable):
                store.upsert(distinct_points("first", 3))
        assert store.write_failure is not None
        with pytest.raises(ServiceUnavailable, match="writes are refused until the service restarts"):
            store.sync()  # a write that was waiting for the next round: fsync works again, the round still fails
    finally:
        store.close()
