"""Write ordering under failures: a Qdrant or registry error at any step leaves no half document visible,
the registry unchanged, and a retry succeeds; concurrent writers never mix versions.

The vector store is the real QdrantVectorStore (embedded Qdrant in tmp) over a client wrapper that raises a
connection error on the chosen call; the registry is the real SQLite registry with failure hooks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from qdrant_client import QdrantClient

from service.app.ingest.service import IngestService, new_version
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.qdrant import QdrantVectorStore
from service.app.store.registry import DocumentRegistry
from service.app.store.vectors import ChunkPoint, collection_name
from tests.service.support import (
    FailingClient,
    FlakyRegistry,
    long_text,
    make_settings,
    running_app,
    services_of,
)


@dataclass
class Env:
    http: TestClient
    client: FailingClient
    vectors: QdrantVectorStore
    registry: FlakyRegistry
    tenant: str

    def points(self, document_id: str) -> int:
        return self.vectors.count(self.tenant, document_id)

    def doc_hits(self, document_id: str, query: str) -> list[dict]:
        response = self.http.post("/v1/search", json={"query": query, "top_k": 100})
        assert response.status_code == 200, response.text
        return [r for r in response.json()["results"] if r["document_id"] == document_id]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, embedder: FastEmbedEmbedder) -> Iterator[Env]:
    """An app over a failure-injecting Qdrant client and registry; upserts go in batches of 2 points."""
    tmp = tmp_path_factory.mktemp("ordering")
    settings = make_settings(tmp, chunk_size=48, chunk_overlap=0)
    client = FailingClient(QdrantClient(path=str(tmp / "qdrant"), force_disable_check_same_thread=True))
    vectors = QdrantVectorStore(
        client,  # type: ignore[arg-type]
        collection=collection_name("documents", embedder.model_name, embedder.dimension),
        dimension=embedder.dimension,
        local=True,
        settings=settings,
    )
    vectors.upsert_batch = 2  # so a failure can land after part of a version is written
    registry = FlakyRegistry(settings.resolved_database_url)
    with running_app(settings, embedder=embedder, vectors=vectors, registry=registry) as http:
        yield Env(http, client, vectors, registry, settings.default_tenant)
    vectors.close()
    registry.close()


@pytest.fixture(autouse=True)
def _no_leftover_failures(env: Env) -> Iterator[None]:
    yield
    env.client.clear()
    env.registry.fail.clear()
    env.registry.before_activate = None


def put(env: Env, document_id: str, text: str) -> tuple[int, dict]:
    response = env.http.put(f"/v1/documents/{document_id}", json={"text": text})
    return response.status_code, response.json()


def test_qdrant_error_mid_update_keeps_the_old_version_and_a_retry_succeeds(env: Env) -> None:
    status, first = put(env, "upd", long_text("ALPHA", 3))
    assert status == 201
    assert first["chunks"] >= 6
    before = env.http.get("/v1/documents/upd").json()

    env.client.fail_on("upsert", on_call=2)  # the first batch of the new version is already written
    status, body = put(env, "upd", long_text("BRAVO", 2))
    assert status == 503
    assert body["error"]["code"] == "service_unavailable"
    assert env.http.get("/v1/documents/upd").json() == before
    hits = env.doc_hits("upd", "BRAVO river ecology paragraph")
    assert hits
    assert all("ALPHA" in h["text"] for h in hits)
    assert env.points("upd") == first["chunks"]  # the partial new version was discarded
    assert put(env, "upd", long_text("ALPHA", 3))[1]["status"] == "unchanged"

    status, second = put(env, "upd", long_text("BRAVO", 2))
    assert status == 200
    assert second["status"] == "updated"
    assert env.points("upd") == second["chunks"]
    hits = env.doc_hits("upd", "ALPHA river ecology paragraph")
    assert sorted(h["chunk_index"] for h in hits) == list(range(second["chunks"]))
    assert all("BRAVO" in h["text"] for h in hits)


def test_leftovers_of_a_failed_write_stay_invisible_until_the_next_write_removes_them(env: Env) -> None:
    _, first = put(env, "left", long_text("ALPHA", 3))
    env.client.fail_on("upsert", on_call=2)
    env.client.fail_on("delete", on_call=1)  # the immediate discard fails too
    status, _ = put(env, "left", long_text("BRAVO", 3))
    assert status == 503
    assert env.points("left") == first["chunks"] + 2  # one batch of the unpublished version is left behind
    hits = env.doc_hits("left", "BRAVO river ecology paragraph")
    assert all("ALPHA" in h["text"] for h in hits)
    assert len({h["chunk_index"] for h in hits}) == len(hits)

    status, retried = put(env, "left", long_text("BRAVO", 3))
    assert status == 200
    assert env.points("left") == retried["chunks"]


def test_registry_error_at_the_commit_point_changes_nothing_visible(env: Env) -> None:
    _, first = put(env, "commit", long_text("ALPHA", 2))
    env.registry.fail.add("activate")
    status, body = put(env, "commit", long_text("BRAVO", 2))
    assert status == 503
    assert "registry" in body["error"]["message"]
    assert env.http.get("/v1/documents/commit").json()["version"] == first["version"]
    assert all("ALPHA" in h["text"] for h in env.doc_hits("commit", "BRAVO river"))
    assert env.points("commit") == first["chunks"]

    env.registry.fail.clear()
    status, second = put(env, "commit", long_text("BRAVO", 2))
    assert status == 200
    assert env.points("commit") == second["chunks"]


def test_failed_cleanup_after_the_commit_still_succeeds_and_hides_the_old_chunks(env: Env) -> None:
    _, first = put(env, "cleanup", long_text("ALPHA", 2))
    env.client.fail_on("delete", on_call=1)
    status, second = put(env, "cleanup", long_text("BRAVO", 1))
    assert status == 200
    assert second["status"] == "updated"
    assert env.points("cleanup") == first["chunks"] + second["chunks"]  # old chunks still stored...
    hits = env.doc_hits("cleanup", "ALPHA river ecology paragraph sentence")
    assert sorted(h["chunk_index"] for h in hits) == list(range(second["chunks"]))
    assert all("BRAVO" in h["text"] for h in hits)  # ...but never returned

    _, third = put(env, "cleanup", long_text("CHARLIE", 1))
    assert env.points("cleanup") == third["chunks"]


def test_a_crash_between_upsert_and_commit_is_invisible(env: Env, embedder: FastEmbedEmbedder) -> None:
    _, first = put(env, "crash", long_text("ALPHA", 1))
    ghost_text = "GHOST chunk written by a writer that crashed before its registry commit."
    # What a crashed writer leaves: points of a newer version the registry never pointed at.
    ghost = ChunkPoint(
        tenant_id=env.tenant,
        document_id="crash",
        version=new_version(first["version"]),
        chunk_index=0,
        text=ghost_text,
        vector=embedder.embed_documents([ghost_text])[0],
        metadata={},
        content_hash="ghost",
        model=embedder.model_name,
    )
    env.vectors.upsert([ghost])
    assert env.points("crash") == first["chunks"] + 1
    hits = env.doc_hits("crash", ghost_text)
    assert all("GHOST" not in h["text"] for h in hits)

    _, second = put(env, "crash", long_text("BRAVO", 1))
    assert env.points("crash") == second["chunks"]


def test_a_failed_create_leaves_no_document_and_a_retry_creates_it(env: Env) -> None:
    env.client.fail_on("upsert", on_call=1)
    status, _ = put(env, "fresh", "Penguins huddle to keep warm.")
    assert status == 503
    assert env.http.get("/v1/documents/fresh").status_code == 404
    assert env.points("fresh") == 0
    status, body = put(env, "fresh", "Penguins huddle to keep warm.")
    assert status == 201
    assert body["status"] == "created"


def test_delete_removes_the_registry_row_first(env: Env) -> None:
    _, first = put(env, "del", long_text("ALPHA", 2))
    env.registry.fail.add("delete")
    assert env.http.delete("/v1/documents/del").status_code == 503
    assert env.http.get("/v1/documents/del").status_code == 200
    assert env.doc_hits("del", "ALPHA river ecology")
    env.registry.fail.clear()

    env.client.fail_on("delete", on_call=1)  # the points outlive the row...
    assert env.http.delete("/v1/documents/del").status_code == 204
    assert env.http.get("/v1/documents/del").status_code == 404
    assert env.points("del") == first["chunks"]
    assert env.doc_hits("del", "ALPHA river ecology") == []  # ...invisibly
    status, again = put(env, "del", "Recreated after a half-failed delete.")
    assert status == 201
    assert env.points("del") == again["chunks"]


def test_a_writer_that_loses_to_another_replica_gets_409_and_leaves_nothing(
    env: Env, embedder: FastEmbedEmbedder
) -> None:
    put(env, "race", long_text("ALPHA", 1))
    services = services_of(env.http)
    # Another replica: its own registry connection, same databases.
    other_registry = DocumentRegistry(services.settings.resolved_database_url)
    other = IngestService(
        registry=other_registry,
        vectors=env.vectors,
        embedder=embedder,
        chunker=services.ingest.chunker,
    )

    def other_replica_writes_first() -> None:
        asyncio.run(other.ingest(env.tenant, "race", text=long_text("GAMMA", 2)))

    env.registry.before_activate = other_replica_writes_first
    status, body = put(env, "race", long_text("BRAVO", 1))
    other_registry.close()
    assert status == 409
    assert body["error"]["code"] == "conflict"
    winner = env.http.get("/v1/documents/race").json()
    assert env.points("race") == winner["chunk_count"]
    hits = env.doc_hits("race", "GAMMA river ecology paragraph")
    assert sorted(h["chunk_index"] for h in hits) == list(range(winner["chunk_count"]))
    assert all("GAMMA" in h["text"] for h in hits)


async def test_concurrent_writes_in_one_process_are_serialised(env: Env) -> None:
    ingest = services_of(env.http).ingest
    results = await asyncio.gather(
        *(
            ingest.ingest(env.tenant, "together", text=long_text(marker, 2))
            for marker in ("ALPHA", "BRAVO", "CHARLIE")
        )
    )
    assert sorted(r.status for r in results) == ["created", "updated", "updated"]
    record = await ingest.get(env.tenant, "together")
    assert record.version == max(r.version for r in results)
    assert env.points("together") == record.chunk_count


def test_a_qdrant_error_during_search_is_503_and_the_next_search_works(env: Env) -> None:
    put(env, "searchable", "Comets have icy nuclei.")
    env.client.fail_on("query_points", on_call=1)
    failed = env.http.post("/v1/search", json={"query": "comet ice"})
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "service_unavailable"
    assert env.doc_hits("searchable", "comet ice")[0]["text"] == "Comets have icy nuclei."


def test_search_pages_past_many_invisible_points_to_fill_top_k(env: Env, embedder: FastEmbedEmbedder) -> None:
    _, live = put(env, "paged", "Lighthouses guide ships along rocky coasts at night.")
    query = "lighthouse beacon for ships"
    vector = embedder.embed_query(query)
    # Twelve unpublished chunks that match the query exactly: more than one page of hits for top_k=2.
    ghosts = [
        ChunkPoint(
            tenant_id=env.tenant,
            document_id="paged",
            version=new_version(live["version"]),
            chunk_index=i,
            text=f"GHOST {i}",
            vector=vector,
            metadata={},
            content_hash="ghost",
            model=embedder.model_name,
        )
        for i in range(12)
    ]
    env.vectors.upsert(ghosts)
    response = env.http.post("/v1/search", json={"query": query, "top_k": 2})
    results = response.json()["results"]
    assert len(results) == 2
    assert results[0]["document_id"] == "paged"
    assert results[0]["text"] == "Lighthouses guide ships along rocky coasts at night."
    assert all("GHOST" not in r["text"] for r in results)


def test_a_newer_job_that_loses_the_commit_race_to_an_older_one_writes_again_and_wins(
    env: Env, embedder: FastEmbedEmbedder
) -> None:
    """Two workers: the job accepted first commits while the newer one is between its read and its commit. The
    newer job's version compare-and-set fails; it must not end failed (its 202 promised the write): it writes
    again and, holding the newer ticket, stays."""
    put(env, "jobs-race", long_text("ALPHA", 1))
    services = services_of(env.http)
    ingest = services.ingest
    older_ticket = env.registry.accept_write(env.tenant, "jobs-race")
    newer_ticket = env.registry.accept_write(env.tenant, "jobs-race")
    other_registry = DocumentRegistry(services.settings.resolved_database_url)
    other = IngestService(
        registry=other_registry, vectors=env.vectors, embedder=embedder, chunker=ingest.chunker
    )

    def older_job_commits_first() -> None:
        asyncio.run(other.ingest(env.tenant, "jobs-race", text=long_text("GAMMA", 2), ticket=older_ticket))

    env.registry.before_activate = older_job_commits_first
    result = asyncio.run(
        ingest.ingest(env.tenant, "jobs-race", text=long_text("BRAVO", 1), ticket=newer_ticket)
    )
    other_registry.close()
    assert result.status == "updated"
    winner = env.http.get("/v1/documents/jobs-race").json()
    assert winner["version"] == result.version
    hits = env.doc_hits("jobs-race", "BRAVO river ecology paragraph")
    assert hits
    assert all("BRAVO" in h["text"] for h in hits)
    assert env.points("jobs-race") == winner["chunk_count"]
