"""Sparse (BM25) and hybrid (RRF) search in every adapter: the same ranking from qdrant-edge and from qdrant-client
(local mode stands in for the server's Query API), tenant and metadata filters, the cosine score threshold,
paging, and collections created before sparse vectors existed (upgraded in place where the engine allows it,
refused with a reason where it does not)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from service.app.core.errors import Conflict
from service.app.main import open_vector_store
from service.app.store.edge import DENSE_VECTOR, EdgeVectorStore
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.qdrant import QdrantVectorStore
from service.app.store.sparse import SPARSE_VECTOR, SparseEncoder, default_encoder, identifier_terms
from service.app.store.vectors import (
    ChunkPoint,
    MetadataCondition,
    VectorStore,
    collection_name,
    cosine,
)
from tests.service.support import make_settings, running_app, services_of

DIM = 4
# Every chunk has distinct words, so BM25 scores do not tie; dense vectors are distinct too.
TEXTS = [
    "open returns EINVAL when the flags are invalid",
    "read transfers bytes from a file descriptor into a buffer",
    "write may return EAGAIN on a nonblocking socket",
    "fallocate with FALLOC_FL_COLLAPSE_RANGE removes a byte range",
    "mmap maps pages of a file into memory",
    "the signal handler runs when SIGALRM is delivered by the timer",
    "clock_gettime reads the CLOCK_MONOTONIC clock",
    "stat fills st_mtime with the last modification time of a file",
    "an invalid descriptor gives EBADF from read or write",
    "socket creates an endpoint for communication",
]


def vector_of(index: int) -> list[float]:
    return [1.0, (index * 7 % 10) / 10, (index * 3 % 10) / 10 + 0.05, 0.1 * index]


def points(tenant: str = "t1", version: int = 1, metadata_of=lambda i: {"n": i}) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            tenant_id=tenant,
            document_id=f"d{i}",
            version=version,
            chunk_index=0,
            text=text,
            vector=vector_of(i),
            metadata=metadata_of(i),
            content_hash="h",
            model="m",
        )
        for i, text in enumerate(TEXTS)
    ]


def open_store(tmp_path: Path, kind: str) -> VectorStore:
    store = open_vector_store(make_settings(tmp_path, vector_store=kind), model_name="m", dimension=DIM)
    store.ensure_collection()
    return store


@pytest.fixture(params=["edge", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    store = open_store(tmp_path, request.param)
    store.upsert(points())
    yield store
    store.close()


def ranking(store: VectorStore, query: str, mode: str, **options) -> list[tuple[str, float]]:
    hits = store.search(
        "t1",
        vector_of(3),
        limit=options.pop("limit", 10),
        mode=mode,
        sparse=default_encoder().query(query),
        **options,
    )
    return [(hit.document_id, round(hit.score, 4)) for hit in hits]


QUERIES = [
    "EINVAL",
    "read a file descriptor",
    "FALLOC_FL_COLLAPSE_RANGE",
    "st_mtime of a file",
    "timer signal",
]


def test_edge_and_the_qdrant_client_rank_alike_in_every_mode(tmp_path: Path) -> None:
    stores = [open_store(tmp_path / kind, kind) for kind in ("edge", "local")]
    try:
        for store in stores:
            store.upsert(points())
        for mode in ("dense", "sparse", "hybrid"):
            for query in QUERIES:
                edge, local = (ranking(store, query, mode) for store in stores)
                assert edge == local, (mode, query)
                assert edge, (mode, query)
    finally:
        for store in stores:
            store.close()


def test_a_keyword_query_finds_its_chunk_first(store: VectorStore) -> None:
    assert ranking(store, "EINVAL", "sparse")[0][0] == "d0"
    assert ranking(store, "FALLOC_FL_COLLAPSE_RANGE", "sparse")[0][0] == "d3"
    assert ranking(store, "st_mtime", "hybrid")[0][0] == "d7"
    # Sparse mode returns only chunks sharing a term with the query.
    assert {doc for doc, _ in ranking(store, "EBADF", "sparse")} == {"d8"}


def test_hybrid_fuses_both_rankings_with_rrf(store: VectorStore) -> None:
    dense = [doc for doc, _ in ranking(store, "EINVAL", "dense")]
    sparse = [doc for doc, _ in ranking(store, "EINVAL", "sparse")]
    fused = ranking(store, "EINVAL", "hybrid")
    expected: dict[str, float] = {}
    for ranked in (dense, sparse):
        for rank, doc in enumerate(ranked):
            expected[doc] = expected.get(doc, 0.0) + 1 / (2 + rank)
    assert dict(fused) == {doc: round(s, 4) for doc, s in expected.items()}
    assert [score for _, score in fused] == sorted((score for _, score in fused), reverse=True)


@pytest.mark.parametrize("mode", ["sparse", "hybrid"])
def test_tenant_and_metadata_filters_hold_in_every_mode(store: VectorStore, mode: str) -> None:
    store.upsert(points(tenant="t2"))
    assert {doc for doc, _ in ranking(store, "a file", mode)} <= {f"d{i}" for i in range(10)}
    other = store.search("t2", vector_of(3), limit=20, mode=mode, sparse=default_encoder().query("file"))
    assert other
    assert store.count("t2") == 10
    odd = MetadataCondition(field="n", any_of=[1, 3, 5, 7, 9])
    hits = store.search(
        "t1", vector_of(3), limit=20, mode=mode, sparse=default_encoder().query("a file"), conditions=[odd]
    )
    assert hits
    assert {hit.metadata["n"] % 2 for hit in hits} == {1}
    store.delete_document("t2", "d7")
    assert "d7" not in {
        h.document_id
        for h in store.search(
            "t2", vector_of(3), limit=20, mode=mode, sparse=default_encoder().query("st_mtime")
        )
    }


@pytest.mark.parametrize("mode", ["sparse", "hybrid"])
def test_the_score_threshold_is_a_cosine_floor_in_every_mode(store: VectorStore, mode: str) -> None:
    query = vector_of(3)
    cosines = {f"d{i}": cosine(query, vector_of(i)) for i in range(len(TEXTS))}
    ordered = sorted(cosines.values())
    threshold = (ordered[4] + ordered[5]) / 2  # between two chunks: float32 rounding cannot move either
    hits = store.search(
        "t1",
        query,
        limit=20,
        mode=mode,
        sparse=default_encoder().query("a file descriptor read write"),
        score_threshold=threshold,
    )
    unfiltered = store.search(
        "t1",
        query,
        limit=20,
        mode=mode,
        sparse=default_encoder().query("a file descriptor read write"),
    )
    above = {doc for doc, value in cosines.items() if value >= threshold}
    kept = [hit.document_id for hit in hits]
    assert kept
    assert set(kept) <= above
    if mode == "hybrid":  # the dense side brings in every chunk above the floor
        assert set(kept) == above
    else:  # sparse keeps its own order, minus the chunks under the floor
        assert kept == [hit.document_id for hit in unfiltered if hit.document_id in above]


@pytest.mark.parametrize("mode", ["sparse", "hybrid"])
def test_offset_pages_through_the_same_ranking(store: VectorStore, mode: str) -> None:
    query = default_encoder().query("a file read write descriptor socket")
    whole = [h.document_id for h in store.search("t1", vector_of(3), limit=6, mode=mode, sparse=query)]
    pages = [
        h.document_id
        for offset in (0, 2, 4)
        for h in store.search("t1", vector_of(3), limit=2, offset=offset, mode=mode, sparse=query)
    ]
    assert pages == whole


def test_identifiers_gain_a_joined_term_on_both_sides() -> None:
    assert identifier_terms("set FALLOC_FL_COLLAPSE_RANGE and st_mtime") == (
        "set FALLOC_FL_COLLAPSE_RANGE and st_mtime\nfallocflcollapserange stmtime"
    )
    assert identifier_terms("plain words only") == "plain words only"
    encoder = SparseEncoder()
    document = encoder.document("use FALLOC_FL_COLLAPSE_RANGE here")
    query = encoder.query("FALLOC_FL_COLLAPSE_RANGE")
    assert set(query.indices) <= set(document.indices)
    assert encoder.document("x") == SparseEncoder().document("x")  # deterministic across instances


def test_an_edge_shard_from_before_sparse_vectors_is_upgraded_in_place(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    name = collection_name(settings.qdrant_collection_prefix, "m", DIM)
    path = settings.resolved_edge_path / name
    path.mkdir(parents=True)
    old = qe.EdgeShard.create(
        str(path),
        qe.EdgeConfig(vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)}),
    )
    old.update(
        qe.UpdateOperation.upsert_points(
            [
                qe.Point(f"00000000-0000-0000-0000-00000000000{i}", {DENSE_VECTOR: p.vector}, p.payload())
                for i, p in enumerate(points())
            ]
        )
    )
    old.flush()
    old.close()
    assert SPARSE_VECTOR not in (
        json.loads((path / "edge_config.json").read_text()).get("sparse_vectors") or {}
    )
    store = EdgeVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    store.ensure_collection()
    try:
        assert store.has_sparse
        assert ranking(store, "EINVAL", "sparse")[0][0] == "d0"
        assert {doc for doc, _ in ranking(store, "socket", "sparse")} == {"d2", "d9"}
    finally:
        store.close()
    reopened = EdgeVectorStore.from_settings(settings, model_name="m", dimension=DIM)
    reopened.ensure_collection()  # the upgrade persisted: nothing to do the second time
    try:
        assert ranking(reopened, "EINVAL", "sparse")[0][0] == "d0"
    finally:
        reopened.close()


def old_local_collection(tmp_path: Path) -> tuple[QdrantClient, str]:
    """A local-mode collection as the service created it before sparse vectors: one unnamed dense vector."""
    client = QdrantClient(path=str(tmp_path / "qdrant"), force_disable_check_same_thread=True)
    name = "documents__m__4"
    client.create_collection(
        name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    client.upsert(
        name,
        [
            models.PointStruct(
                id=f"00000000-0000-0000-0000-00000000000{i}", vector=p.vector, payload=p.payload()
            )
            for i, p in enumerate(points())
        ],
    )
    return client, name


def test_a_local_collection_from_before_sparse_vectors_is_upgraded_in_place(tmp_path: Path) -> None:
    client, name = old_local_collection(tmp_path)
    store = QdrantVectorStore(
        client, collection=name, dimension=DIM, local=True, settings=make_settings(tmp_path)
    )
    store.ensure_collection()
    try:
        assert store.has_sparse
        assert ranking(store, "EINVAL", "sparse")[0][0] == "d0"
        store.upsert(points(version=2))  # new writes carry both vectors
        assert {
            h.version
            for h in store.search(
                "t1", None, limit=20, mode="sparse", sparse=default_encoder().query("socket")
            )
        } == {1, 2}
    finally:
        store.close()


def test_a_server_collection_without_sparse_vectors_serves_dense_and_refuses_the_rest(tmp_path: Path) -> None:
    """A server (1.15) cannot add a vector to a collection: the store says so and keeps writing dense vectors."""
    client, name = old_local_collection(tmp_path)
    store = QdrantVectorStore(
        client, collection=name, dimension=DIM, local=False, settings=make_settings(tmp_path)
    )
    store.ensure_collection()
    try:
        assert not store.has_sparse
        store.upsert(points(version=2))  # no sparse vector is sent to a collection without one
        assert store.search("t1", vector_of(0), limit=1)[0].document_id == "d0"
        with pytest.raises(Conflict, match="re-index"):
            store.search("t1", vector_of(0), limit=1, mode="hybrid", sparse=default_encoder().query("x"))
    finally:
        store.close()


def test_a_server_index_from_before_sparse_vectors_serves_dense_until_a_reindex_adds_them(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    """Through the API: the default falls back to dense, sparse/hybrid are a 409 naming the re-index; the
    re-index of the same model and chunking builds a collection with both vectors and hybrid works from it."""
    settings = make_settings(tmp_path, reindex_on_config_change=False, gc_enabled=False)
    client_ = QdrantClient(path=str(tmp_path / "server"), force_disable_check_same_thread=True)
    name = collection_name(settings.qdrant_collection_prefix, embedder.model_name, embedder.dimension)
    client_.create_collection(
        name, vectors_config=models.VectorParams(size=embedder.dimension, distance=models.Distance.COSINE)
    )
    # local=False: the store behaves as against a server (no in-place upgrade), on local mode's engine.
    legacy = QdrantVectorStore(
        client_, collection=name, dimension=embedder.dimension, local=False, settings=settings
    )
    with running_app(settings, embedder=embedder, vectors=legacy) as client:
        for i, text in enumerate(TEXTS):
            assert client.put(f"/v1/documents/d{i}", json={"text": text}).status_code == 201
        answer = client.post("/v1/search", json={"query": "FALLOC_FL_COLLAPSE_RANGE"})
        assert answer.status_code == 200
        assert answer.json()["mode"] == "dense"
        refused = client.post("/v1/search", json={"query": "EINVAL", "mode": "hybrid"})
        assert refused.status_code == 409
        assert "re-index" in refused.json()["error"]["message"]

        started = client.post("/v1/admin/reindex", json={})
        assert started.status_code == 202, started.text
        status = services_of(client).reindexer.wait(timeout=120)
        assert status.state == "switched", status
        assert status.current["collection"] != name
        for mode in ("sparse", "hybrid"):
            found = client.post("/v1/search", json={"query": "FALLOC_FL_COLLAPSE_RANGE", "mode": mode})
            assert found.status_code == 200, found.text
            assert found.json()["results"][0]["document_id"] == "d3"
        assert client.post("/v1/search", json={"query": "EINVAL"}).json()["mode"] == "hybrid"
        # Nothing left to add now: the same config is refused again.
        assert client.post("/v1/admin/reindex", json={}).status_code == 422
