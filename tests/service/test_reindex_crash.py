"""A re-index whose builder dies while it is still building (a real SIGKILL of the real process, mid-build).

tests/service/test_crash_ingest.py covers a kill after the build (the start-up re-index of a changed config).
Here the admin asked for the re-index (the settings do not name it), so only the registry's lease remembers it:

- the restart resumes it at once (the dead builder ran on this host: its lease is not waited out, here 600 s),
  into the same half-built collection (no third collection is left behind), and switches;
- search serves the old index, complete, from the restart until the switch;
- the status says what happened: ``resumed_from`` the dead builder, attempt 2;
- a build that died MAX_ATTEMPTS times is not resumed again automatically: the status is ``interrupted`` with
  what to do, search serves the old index, and an admin's POST resumes it into the same collection.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx

from service.app.ingest.index import IndexConfig
from service.app.jobs.reindex import MAX_ATTEMPTS
from service.app.store.embedder import FastEmbedEmbedder
from tests.service.service_process import ServiceProcess, service_process, wait_for
from tests.service.support import make_settings, running_app, services_of
from tests.service.test_crash_ingest import _markers
from tests.service.test_faults import body, env_for

DOCUMENTS = {f"d{i}": f"m{i:04d}" for i in range(6)}


def _search_complete(http: httpx.Client) -> dict[str, set[str]]:
    results = http.post("/v1/search", json={"query": "salmon trout river", "top_k": 100}).json()["results"]
    seen: dict[str, set[str]] = {}
    for hit in results:
        seen.setdefault(hit["document_id"], set()).update(_markers(hit["text"]))
    return seen


def test_kill_9_while_building_then_the_restart_resumes_into_the_same_collection(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    with service_process(env_for(tmp_path, GC_ENABLED="false"), log) as service, service.client() as http:
        for document_id, marker in DOCUMENTS.items():
            assert http.put(f"/v1/documents/{document_id}", json=body(marker)).status_code == 201
        old = http.get("/v1/admin/reindex").json()["current"]
        assert service.stop() in (0, -15)

    # Same settings as before: the admin asks for the re-index; the builder dies after two documents.
    settings = {"GC_ENABLED": "false", "REINDEX_LEASE_SECONDS": "600"}
    doomed = ServiceProcess(env_for(tmp_path, **settings, RAG_FAULT_KILL_AT="reindex_build"), log)
    try:
        doomed.wait_ready()
        with doomed.client() as http:
            try:
                started = http.post("/v1/admin/reindex", json={"chunk_size": 24})
                assert started.status_code == 202, started.text
            except httpx.TransportError:
                pass  # killed before the answer left
        assert doomed.wait_exit() == -9, doomed.tail()
    finally:
        doomed.kill()
    edge = tmp_path / "edge"
    collections_at_kill = {p.name for p in edge.iterdir() if p.is_dir()}
    assert len(collections_at_kill) == 2, collections_at_kill  # the served one and the half-built target

    with service_process(env_for(tmp_path, **settings), log) as service, service.client() as http:
        served = set()

        def switched() -> dict | None:
            status = http.get("/v1/admin/reindex").json()
            seen = _search_complete(http)
            assert seen == {d: {m} for d, m in DOCUMENTS.items()}, (status["state"], seen)
            served.add(status["current"]["collection"])
            return status if status["state"] == "switched" else None

        status = wait_for(switched, "the resumed re-index to switch (not waiting out the 600 s lease)")
        assert status["current"]["chunk_size"] == 24
        assert status["standby"]["collection"] == old["collection"]
        assert status["current"]["collection"] in collections_at_kill  # built on, not started over elsewhere
        assert served <= collections_at_kill
        assert status["attempt"] == 2
        assert status["resumed_from"].startswith(f"{socket.gethostname()}:")
        assert status["documents_done"] == len(DOCUMENTS)
        assert _search_complete(http) == {d: {m} for d, m in DOCUMENTS.items()}
        assert service.stop() in (0, -15)
    assert {p.name for p in edge.iterdir() if p.is_dir()} == collections_at_kill
    assert "was interrupted before it switched" in log.read_text()


def _dead_holder() -> str:
    """A lease holder id of a process on this host that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return f"{socket.gethostname()}:{int(child.stdout)}:deadbeef"


def test_a_build_that_died_max_attempts_times_waits_for_an_admin(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8, gc_enabled=False, vector_store="edge")
    with running_app(settings, embedder=embedder) as client:
        for document_id, marker in DOCUMENTS.items():
            assert client.put(f"/v1/documents/{document_id}", json=body(marker)).status_code == 201
        services = services_of(client)
        old = services.ingest.index.current.collection
        target = services.reindexer.make_generation(IndexConfig(embedder.model_name, 24, 4))
        # What a builder that died for the MAX_ATTEMPTS-th time leaves: its lease (live: 600 s), half a target.
        services.registry.acquire_index_lease(
            _dead_holder(),
            target.collection,
            {**target.config.as_dict(), "attempt": MAX_ATTEMPTS, "allow_missing": False},
            600,
        )

    with running_app(settings, embedder=embedder) as client:
        services = services_of(client)
        status = client.get("/v1/admin/reindex").json()
        assert status["state"] == "interrupted", status
        assert status["attempt"] == MAX_ATTEMPTS
        assert status["target"]["collection"] == target.collection
        assert status["target"]["chunk_size"] == 24
        assert f"not resumed automatically after {MAX_ATTEMPTS} interrupted attempts" in status["error"]
        assert "POST /v1/admin/reindex" in status["error"]
        assert not services.reindexer.running()
        assert status["current"]["collection"] == old
        assert _search_complete(client) == {d: {m} for d, m in DOCUMENTS.items()}
        assert _interrupted_gauge(client) == 1.0  # what RagReindexInterrupted fires on

        # The admin resumes it: into the same collection, as the next attempt.
        started = client.post("/v1/admin/reindex", json={"chunk_size": 24, "chunk_overlap": 4})
        assert started.status_code == 202, started.text
        done = services.reindexer.wait(120).as_dict()
        assert done["state"] == "switched", done
        assert done["current"]["collection"] == target.collection
        assert done["attempt"] == MAX_ATTEMPTS + 1
        assert client.get("/v1/admin/reindex").json()["error"] is None
        assert _search_complete(client) == {d: {m} for d, m in DOCUMENTS.items()}
        assert _interrupted_gauge(client) == 0.0


def _interrupted_gauge(client: httpx.Client) -> float:
    """rag_reindex_interrupted as /metrics exposes it (the scrape follows the pointer and lease first)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("rag_reindex_interrupted "):
            return float(line.split()[1])
    raise AssertionError("/metrics has no rag_reindex_interrupted")


def test_an_abandoned_target_and_a_replaced_standby_are_dropped(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = make_settings(tmp_path, chunk_size=64, chunk_overlap=8, gc_enabled=False, vector_store="edge")
    edge = settings.resolved_edge_path

    def on_disk() -> set[str]:
        return {p.name for p in edge.iterdir() if p.is_dir()}

    with running_app(settings, embedder=embedder) as client:
        for document_id, marker in DOCUMENTS.items():
            assert client.put(f"/v1/documents/{document_id}", json=body(marker)).status_code == 201
        services = services_of(client)
        base = services.ingest.index.current.collection
        # A build of 24-token chunks that died half-way, one document in its target.
        abandoned = services.reindexer.make_generation(IndexConfig(embedder.model_name, 24, 4))
        abandoned.vectors.ensure_collection()
        source = services.registry.source("default", "d0")
        record = source.record
        services.ingest.write_version(
            abandoned, "default", "d0", record.version, source.text, record.metadata, record.content_hash
        )
        services.registry.acquire_index_lease(
            _dead_holder(), abandoned.collection, {**abandoned.config.as_dict(), "attempt": MAX_ATTEMPTS}, 600
        )
        assert abandoned.collection in on_disk()

        def reindex(chunk_size: int) -> str:
            started = client.post("/v1/admin/reindex", json={"chunk_size": chunk_size})
            assert started.status_code == 202, started.text
            done = services.reindexer.wait(120).as_dict()
            assert done["state"] == "switched", done
            assert _search_complete(client) == {d: {m} for d, m in DOCUMENTS.items()}
            return done["current"]["collection"]

        first = reindex(32)  # replaces the interrupted build: its target goes
        assert on_disk() == {base, first}
        second = reindex(40)  # the standby it replaces is the settings' own collection: kept
        assert on_disk() == {base, first, second}
        third = reindex(48)  # the standby it replaces (32) goes; 40 stays the rollback target
        assert on_disk() == {base, second, third}
        assert client.post("/v1/admin/reindex/rollback").status_code == 200
        assert services.ingest.index.current.collection == second
        assert _search_complete(client) == {d: {m} for d, m in DOCUMENTS.items()}
