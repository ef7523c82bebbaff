"""Fault suite against the real service process: concurrent writers and readers with a consistency checker on
every response, and `kill -9` at each stage of a write followed by a restart and an audit of registry vs store.

The kills are real SIGKILLs, delivered by the process to itself at a named stage of the real write path
(RAG_FAULT_KILL_AT, service.app.core.faults), so the crash lands exactly between two steps every time.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from service.app.core.config import Settings
from service.app.main import open_vector_store
from service.app.store.registry import DocumentRegistry
from tests.service.service_process import service_process, wait_for

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MARKER = re.compile(r"\b(m\d{4})\b")


def body(marker: str) -> dict[str, str]:
    """A three-chunk document whose every chunk names its version marker."""
    paragraphs = [
        f"{marker} section {p}. "
        + " ".join(f"{marker} salmon and trout spawn in river {p} bed {s}." for s in range(6))
        for p in range(3)
    ]
    return {"text": "\n\n".join(paragraphs)}


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    return {"DATA_DIR": str(data_dir), "CHUNK_SIZE": "64", "CHUNK_OVERLAP": "0", **extra}


def check_response(results: list[dict], committed: dict[str, set[str]]) -> None:
    """No mixed versions, no duplicates, no uncommitted version, best first."""
    markers: dict[str, set[str]] = defaultdict(set)
    keys = set()
    for result in results:
        key = (result["document_id"], result["chunk_index"])
        assert key not in keys, f"duplicate hit {key}"
        keys.add(key)
        found = MARKER.search(result["text"])
        assert found, result
        markers[result["document_id"]].add(found.group(1))
    for document_id, seen in markers.items():
        assert len(seen) == 1, f"{document_id} mixes versions {sorted(seen)} in one response"
        assert seen <= committed[document_id], f"{document_id}: {seen} was never committed"
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_concurrent_writers_and_readers_never_see_mixed_or_uncommitted_versions(tmp_path: Path) -> None:
    documents = ["alpha", "beta", "gamma"]
    committed: dict[str, set[str]] = defaultdict(set)
    started: dict[str, set[str]] = defaultdict(set)
    lock = threading.Lock()
    errors: list[BaseException] = []
    searches = [0]
    writes_per_document = 4
    with service_process(env_for(tmp_path), tmp_path / "service.log") as service:
        with service.client() as http:
            for document_id in documents:
                assert http.put(f"/v1/documents/{document_id}", json=body("m0000")).status_code == 201
                committed[document_id].add("m0000")
        done = threading.Event()

        def writer(document_id: str, offset: int) -> None:
            try:
                with service.client() as http:
                    for n in range(1, writes_per_document + 1):
                        marker = f"m{offset + n:04d}"
                        with lock:
                            started[document_id].add(marker)
                        response = http.put(f"/v1/documents/{document_id}", json=body(marker))
                        assert response.status_code == 200, response.text
                        with lock:
                            committed[document_id].add(marker)
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                with service.client() as http:
                    while not done.is_set():
                        response = http.post(
                            "/v1/search", json={"query": "salmon trout spawn river bed", "top_k": 12}
                        )
                        assert response.status_code == 200, response.text
                        with lock:
                            # A version may become visible before its writer hears 200: accept started ones.
                            visible = {d: committed[d] | started[d] for d in documents}
                        check_response(response.json()["results"], visible)
                        searches[0] += 1
            except BaseException as exc:
                errors.append(exc)

        writers = [threading.Thread(target=writer, args=(d, 100 * i)) for i, d in enumerate(documents)]
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for thread in (*writers, *readers):
            thread.start()
        for thread in writers:
            thread.join()
        done.set()
        for thread in readers:
            thread.join()
        assert not errors, errors[0]
        assert searches[0] > 0
        with service.client() as http:
            # Once the writers are done every document shows exactly its last version, complete.
            results = http.post("/v1/search", json={"query": "salmon trout", "top_k": 100}).json()["results"]
            for index, document_id in enumerate(documents):
                last = f"m{100 * index + writes_per_document:04d}"
                mine = [r for r in results if r["document_id"] == document_id]
                chunks = http.get(f"/v1/documents/{document_id}").json()["chunk_count"]
                assert len(mine) == chunks
                assert all(last in r["text"] for r in mine)


def audit(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Registry vs store after the service stopped: every row's version complete, no other point at all."""
    settings = Settings(_env_file=None, data_dir=data_dir, environment="test")
    registry = DocumentRegistry.from_settings(settings)
    vectors = open_vector_store(settings, model_name=MODEL, dimension=384)  # the adapter the service used
    try:
        vectors.ensure_collection()
        rows = {r.document_id: r for r in registry.list("default", limit=100).items}
        stored = {(v.document_id, v.version): v.points for v in vectors.versions()}
        expected = {(r.document_id, r.version): r.chunk_count for r in rows.values()}
        assert stored == expected, f"store {stored} != registry {expected}"
        return {d: (r.version, r.chunk_count) for d, r in rows.items()}
    finally:
        vectors.close()
        registry.close()


def test_kill_9_at_every_write_stage_then_restart_leaves_registry_and_store_in_agreement(
    tmp_path: Path,
) -> None:
    log = tmp_path / "service.log"
    with service_process(env_for(tmp_path, GC_ENABLED="false"), log) as service, service.client() as http:
        for document_id in ("a", "b", "c", "d"):
            assert http.put(f"/v1/documents/{document_id}", json=body("m0001")).status_code == 201
        versions = {d: http.get(f"/v1/documents/{d}").json()["version"] for d in "abcd"}
        service.stop()

    crashes = [
        ("before_upsert", "PUT", "a"),
        ("before_activate", "PUT", "b"),
        ("before_cleanup", "PUT", "c"),
        ("after_registry_delete", "DELETE", "d"),
    ]
    for stage, method, document_id in crashes:
        env = env_for(tmp_path, GC_ENABLED="false", RAG_FAULT_KILL_AT=stage)
        with service_process(env, log) as service, service.client() as http:
            with pytest.raises(httpx.TransportError):
                http.request(method, f"/v1/documents/{document_id}", json=body("m0002"))
            assert service.wait_exit() == -9, f"{stage}: the process was not killed\n{service.tail()}"

    # Restart with the collector on and no grace (every process that could still commit is dead).
    with service_process(env_for(tmp_path, GC_GRACE_SECONDS="0"), log) as service, service.client() as http:
        wait_for(
            lambda: service.metric("rag_orphan_collections_total") >= 1, "the start-up orphan collection"
        )
        assert service.metric("rag_orphan_points_removed_total") > 0
        state = {d: http.get(f"/v1/documents/{d}") for d in "abcd"}
        assert state["a"].json()["version"] == versions["a"]  # died before writing anything
        assert state["b"].json()["version"] == versions["b"]  # died before the commit point
        assert state["c"].json()["version"] > versions["c"]  # died after it
        assert state["d"].status_code == 404  # the delete had committed
        results = http.post("/v1/search", json={"query": "salmon trout river", "top_k": 100}).json()[
            "results"
        ]
        check_response(results, {"a": {"m0001"}, "b": {"m0001"}, "c": {"m0002"}, "d": set()})
        assert service.stop() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    rows = audit(tmp_path)
    assert sorted(rows) == ["a", "b", "c"]
