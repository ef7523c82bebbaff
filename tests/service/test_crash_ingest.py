"""`kill -9` of the service from outside while several clients ingest into the embedded default (qdrant-edge)
and its background optimizer indexes what they write; then a restart.

tests/service/test_faults.py kills one write at each named stage of the write path. This kills the process at
an arbitrary moment of a concurrent ingest (creations and overwrites in flight, the optimizer building HNSW
segments every 64 points), as an OOM kill or a lost node does. After the restart:

- every acknowledged write is the document's active version, or a later write of it that was in flight;
- a document whose every write was in flight is absent or holds one of those writes, never part of one;
- search shows, per document, exactly the active version's chunks: all of them, none of another version,
  no duplicate (nothing half-written is visible, with or without the orphan collector);
- once the collector has run, the store holds exactly the registry's versions (test_faults.audit).

And a re-index killed after building its target (RAG_FAULT_KILL_AT=reindex_catch_up, a real SIGKILL of the real
process, the target shard left open and unswitched): the restart serves the old index, takes the dead builder's
lease once it expires, builds into the half-finished target again and switches, with every document searchable.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import httpx

from tests.service.service_process import ServiceProcess, service_process, wait_for
from tests.service.test_faults import audit, body, env_for

WRITERS = 3
ACKNOWLEDGED_BEFORE_KILL = 24


def test_kill_9_during_concurrent_ingest_loses_no_acknowledged_write_and_shows_nothing_half_written(
    tmp_path: Path,
) -> None:
    log = tmp_path / "service.log"
    optimizer = {
        "EDGE_OPTIMIZE_CHUNK_POINTS": "64",
        "EDGE_SEGMENT_POINTS": "64",
        "EDGE_OPTIMIZE_IDLE_SECONDS": "0.2",
    }
    attempts: dict[str, list[tuple[str, int | None]]] = {}  # document -> (marker, acknowledged version)
    lock = threading.Lock()
    markers = itertools.count(1)
    acknowledged = threading.Semaphore(0)
    failures: list[str] = []

    def writer(index: int, http: httpx.Client) -> None:
        for round_ in itertools.count():
            # Writer 0 creates a new document every time; the others overwrite four documents each.
            document_id = f"new{round_}" if index == 0 else f"w{index}-{round_ % 4}"
            with lock:
                marker = f"m{next(markers):04d}"
                attempts.setdefault(document_id, []).append((marker, None))
                slot = len(attempts[document_id]) - 1
            try:
                response = http.put(f"/v1/documents/{document_id}", json=body(marker))
            except httpx.TransportError:
                return  # the process was killed under this write: it stays unacknowledged
            if response.status_code not in (200, 201):
                failures.append(f"{document_id}: {response.status_code} {response.text[:200]}")
                return
            with lock:
                attempts[document_id][slot] = (marker, response.json()["version"])
            acknowledged.release()

    with service_process(env_for(tmp_path, GC_ENABLED="false", **optimizer), log) as service:
        clients = [service.client() for _ in range(WRITERS)]
        threads = [threading.Thread(target=writer, args=(i, clients[i])) for i in range(WRITERS)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(ACKNOWLEDGED_BEFORE_KILL):
                assert acknowledged.acquire(timeout=120), f"the writers stalled: {failures}\n{service.tail()}"
            service.kill()  # SIGKILL, with every writer's next request in flight or about to be sent
        finally:
            service.kill()
            for thread in threads:
                thread.join(120)
            for client in clients:
                client.close()
    assert failures == []
    assert service.proc.returncode == -9

    # Restart with the collector on and no grace: every process that could still commit is dead.
    with service_process(env_for(tmp_path, GC_GRACE_SECONDS="0", **optimizer), log) as service:
        with service.client() as http:
            results = http.post("/v1/search", json={"query": "salmon trout river", "top_k": 100}).json()[
                "results"
            ]
            _check(http, attempts, results)
            wait_for(lambda: service.metric("rag_orphan_collections_total") >= 1, "the orphan collection")
            # The collector changed nothing that search could see.
            again = http.post("/v1/search", json={"query": "salmon trout river", "top_k": 100}).json()
            _check(http, attempts, again["results"])
        assert service.stop() in (0, -15)
    audit(tmp_path)  # registry and store agree exactly: every row's version complete, no other point


def _check(
    http: httpx.Client, attempts: dict[str, list[tuple[str, int | None]]], results: list[dict]
) -> None:
    hits: dict[str, list[dict]] = {}
    for hit in results:
        hits.setdefault(hit["document_id"], []).append(hit)
    assert len(results) < 100, "the search did not return every visible chunk"
    assert set(hits) <= set(attempts), set(hits) - set(attempts)
    present = 0
    for document_id, tried in attempts.items():
        acked = [i for i, (_, version) in enumerate(tried) if version is not None]
        response = http.get(f"/v1/documents/{document_id}")
        if response.status_code == 404:
            assert not acked, f"{document_id}: acknowledged {tried} but gone after the crash"
            assert document_id not in hits, f"{document_id}: chunks visible without a registry row"
            continue
        assert response.status_code == 200, response.text
        present += 1
        active = response.json()
        if acked:
            marker, version = tried[acked[-1]]
            assert active["version"] >= version, f"{document_id}: acknowledged {version}, active {active}"
            # The acknowledged marker, or one of the writes after it that were in flight at the kill.
            allowed = {marker} if active["version"] == version else {m for m, _ in tried[acked[-1] + 1 :]}
        else:
            allowed = {m for m, _ in tried}  # committed just before the kill, its response lost
        chunks = hits.get(document_id, [])
        seen = {m for hit in chunks for m in _markers(hit["text"])}
        assert len(seen) == 1, f"{document_id}: {len(chunks)} hits with markers {seen}"
        assert seen <= allowed, f"{document_id}: shows {seen}, may show only {allowed}"
        indexes = sorted(hit["chunk_index"] for hit in chunks)
        assert indexes == list(range(active["chunk_count"])), f"{document_id}: chunks {indexes} of {active}"
    assert present >= 1


def _markers(text: str) -> set[str]:
    return {
        word
        for word in text.replace(".", " ").split()
        if len(word) == 5 and word[0] == "m" and word[1:].isdigit()
    }


def test_kill_9_mid_reindex_then_restart_switches_with_every_document(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    documents = {f"d{i}": f"m{i:04d}" for i in range(6)}
    with service_process(env_for(tmp_path, GC_ENABLED="false"), log) as service, service.client() as http:
        for document_id, marker in documents.items():
            assert http.put(f"/v1/documents/{document_id}", json=body(marker)).status_code == 201
        old = http.get("/v1/admin/reindex").json()["current"]
        assert service.stop() in (0, -15)

    # A changed chunking re-indexes at start-up; this process dies once its target is built.
    changed = {"CHUNK_SIZE": "24", "REINDEX_LEASE_SECONDS": "2", "GC_ENABLED": "false"}
    doomed = ServiceProcess(env_for(tmp_path, **changed, RAG_FAULT_KILL_AT="reindex_catch_up"), log)
    try:
        assert doomed.wait_exit() == -9, doomed.tail()
    finally:
        doomed.kill()

    with service_process(env_for(tmp_path, **changed), log) as service, service.client() as http:
        status = wait_for(
            lambda: (s := http.get("/v1/admin/reindex").json())["state"] == "switched" and s,
            "the re-index to switch after the restart",
        )
        assert status["current"]["chunk_size"] == 24
        assert status["current"]["collection"] != old["collection"]
        assert status["standby"]["collection"] == old["collection"]
        assert status["documents_done"] == len(documents)
        results = http.post("/v1/search", json={"query": "salmon trout river", "top_k": 100}).json()[
            "results"
        ]
        seen: dict[str, set[str]] = {}
        for hit in results:
            seen.setdefault(hit["document_id"], set()).update(_markers(hit["text"]))
        assert seen == {document_id: {marker} for document_id, marker in documents.items()}
        assert service.stop() in (0, -15)
