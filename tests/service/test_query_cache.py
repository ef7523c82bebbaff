"""The query-vector cache (QUERY_EMBEDDING_CACHE_SIZE): bounded, exact under concurrency, keyed by model (a
re-index switch and its rollback never mix vectors of two models), and independent of the result cache (a write
is seen at once while the query's embedding is reused)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service.app.ingest.index import ActiveIndex, IndexConfig, IndexGeneration, IndexState
from service.app.search.models import SearchRequest
from service.app.search.query_cache import QueryVectorCache
from service.app.search.service import SearchService
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import DocumentRegistry
from service.app.store.sparse import SparseEncoder, SparseVector, default_encoder
from tests.service.support import make_settings, running_app, services_of


def counter(kind: str, result: str) -> float:
    labels = {"kind": kind, "result": result}
    return REGISTRY.get_sample_value("rag_query_vector_cache_requests_total", labels) or 0.0


class HashEmbedder:
    """A deterministic stand-in model: the vector is derived from (model name, text); counts its calls."""

    def __init__(self, model_name: str, dimension: int = 8) -> None:
        self.model_name = model_name
        self.dimension = dimension
        self.max_tokens = 256
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        raise NotImplementedError

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.embed_query(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            self.calls += 1
        digest = hashlib.sha256(f"{self.model_name}\0{text}".encode()).digest()
        # float64 values (not float32-exact): the cache must keep them exactly too.
        return [byte / 255 + 1e-9 * index for index, byte in enumerate(digest[: self.dimension])]


def test_lru_bound_and_order() -> None:
    cache = QueryVectorCache(max_entries=3)
    model = HashEmbedder("m")
    for text in ("a", "b", "c"):
        cache.dense(model, text)
    cache.dense(model, "a")  # now the most recent: "b" is the least
    cache.dense(model, "d")
    assert len(cache) == 3
    calls = model.calls
    cache.dense(model, "a")
    cache.dense(model, "c")
    cache.dense(model, "d")
    assert model.calls == calls  # all three kept
    cache.dense(model, "b")
    assert model.calls == calls + 1  # "b" was the one evicted


def test_hits_return_the_embedders_exact_vector_as_a_fresh_list() -> None:
    cache = QueryVectorCache(max_entries=8)
    model = HashEmbedder("m")
    expected = HashEmbedder("m").embed_query("query")
    hits, misses = counter("dense", "hit"), counter("dense", "miss")

    first = cache.dense(model, "query")
    first[0] = 42.0  # a caller changing its list must not change what the cache serves
    second = cache.dense(model, "query")

    assert second == expected
    assert type(second) is list
    assert all(type(x) is float for x in second)
    assert model.calls == 1
    assert (counter("dense", "hit"), counter("dense", "miss")) == (hits + 1, misses + 1)


def test_keyed_by_model_and_exact_text() -> None:
    cache = QueryVectorCache(max_entries=8)
    old, new = HashEmbedder("old/model"), HashEmbedder("new/model")
    assert cache.dense(old, "q") == HashEmbedder("old/model").embed_query("q")
    assert cache.dense(new, "q") == HashEmbedder("new/model").embed_query("q")
    assert cache.dense(old, "q ") == HashEmbedder("old/model").embed_query("q ")
    assert cache.dense(old, "Q") == HashEmbedder("old/model").embed_query("Q")
    assert (old.calls, new.calls) == (3, 1)


def test_sparse_vectors_are_cached_per_encoder() -> None:
    cache = QueryVectorCache(max_entries=8)
    encoder = default_encoder()

    class OtherEncoder(SparseEncoder):
        encoder_id = "another-encoding"

        def query(self, text: str) -> SparseVector:
            return SparseVector.of([1], [1.0])

    hits = counter("sparse", "hit")
    assert cache.sparse(encoder, "FALLOC_FL_COLLAPSE_RANGE") == encoder.query("FALLOC_FL_COLLAPSE_RANGE")
    assert cache.sparse(encoder, "FALLOC_FL_COLLAPSE_RANGE") == encoder.query("FALLOC_FL_COLLAPSE_RANGE")
    assert counter("sparse", "hit") == hits + 1
    assert cache.sparse(OtherEncoder(), "FALLOC_FL_COLLAPSE_RANGE") == SparseVector.of([1], [1.0])


def test_many_threads_on_same_and_different_texts_always_get_their_models_vector() -> None:
    # A small cache (constant eviction), two models, texts shared by all threads and texts of one thread: every
    # answer must be the direct embedding of that text by that model.
    cache = QueryVectorCache(max_entries=5)
    models = [HashEmbedder("model/a"), HashEmbedder("model/b")]
    shared = [f"shared {i}" for i in range(7)]
    expected = {(m.model_name, t): HashEmbedder(m.model_name).embed_query(t) for m in models for t in shared}
    wrong: list[tuple[str, str]] = []
    start = threading.Barrier(16)

    def hammer(worker: int) -> int:
        start.wait()
        done = 0
        for step in range(1500):
            model = models[(worker + step) % 2]
            text = shared[step % 7] if step % 3 else f"own {worker} {step % 11}"
            want = expected.get((model.model_name, text)) or HashEmbedder(model.model_name).embed_query(text)
            if cache.dense(model, text) != want:
                wrong.append((model.model_name, text))
            done += 1
        return done

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(hammer, range(16))) == 16 * 1500
    assert wrong == []
    assert len(cache) <= 5


def test_real_model_from_many_threads_matches_direct_embeddings(embedder: FastEmbedEmbedder) -> None:
    texts = [f"how do {topic} work" for topic in ("glaciers", "compilers", "vaccines", "violins", "reefs")]
    direct = {text: embedder.embed_query(text) for text in texts}
    cache = QueryVectorCache(max_entries=3)  # smaller than the text set: misses run the model concurrently

    def lookups(worker: int) -> list[bool]:
        return [
            cache.dense(embedder, texts[(worker + i) % 5]) == direct[texts[(worker + i) % 5]]
            for i in range(8)
        ]

    with ThreadPoolExecutor(6) as pool:
        results = [ok for batch in pool.map(lookups, range(6)) for ok in batch]
    assert len(results) == 48
    assert all(results)


class RecordingStore:
    """A vector store that records the query vectors it is asked with and holds nothing."""

    has_sparse = True

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.asked: list[tuple[list[float] | None, SparseVector | None]] = []

    def search(self, tenant_id: str, vector: Any, *, sparse: Any = None, **_: Any) -> list:
        self.asked.append((None if vector is None else list(vector), sparse))
        return []


def test_a_model_switch_and_its_rollback_never_mix_vectors(tmp_path: Path) -> None:
    registry = DocumentRegistry(f"sqlite:///{(tmp_path / 'registry.db').as_posix()}")
    registry.migrate()
    old_model, new_model = HashEmbedder("old/model"), HashEmbedder("new/model")
    old_store, new_store = RecordingStore("docs__old"), RecordingStore("docs__new")
    old = IndexGeneration(IndexConfig("old/model", 200, 32), old_store, old_model, None)  # type: ignore[arg-type]
    new = IndexGeneration(IndexConfig("new/model", 200, 32), new_store, new_model, None)  # type: ignore[arg-type]
    index = ActiveIndex(old)
    search = SearchService(
        registry=registry,
        vectors=old_store,
        embedder=old_model,
        index=index,
        query_cache=QueryVectorCache(16),
    )
    request = SearchRequest(query="how many holidays", mode="hybrid")
    old_vector = HashEmbedder("old/model").embed_query(request.query)
    new_vector = HashEmbedder("new/model").embed_query(request.query)

    import asyncio

    asyncio.run(search.search("t", request))
    asyncio.run(search.search("t", request))
    index.set(IndexState(current=new))  # the re-index switch
    asyncio.run(search.search("t", request))
    index.set(IndexState(current=old))  # the rollback
    asyncio.run(search.search("t", request))

    assert [vector for vector, _ in old_store.asked] == [old_vector] * 3
    assert [vector for vector, _ in new_store.asked] == [new_vector]
    assert (old_model.calls, new_model.calls) == (1, 1)  # the rollback found the old model's entry
    sparse = default_encoder().query(request.query)
    assert all(asked_sparse == sparse for _, asked_sparse in old_store.asked + new_store.asked)
    registry.close()


def test_without_the_cache_every_search_embeds(tmp_path: Path) -> None:
    registry = DocumentRegistry(f"sqlite:///{(tmp_path / 'registry.db').as_posix()}")
    registry.migrate()
    model, store = HashEmbedder("m"), RecordingStore("docs")
    search = SearchService(registry=registry, vectors=store, embedder=model)
    import asyncio

    for _ in range(3):
        asyncio.run(search.search("t", SearchRequest(query="same", mode="dense")))
    assert model.calls == 3
    registry.close()


@pytest.mark.parametrize("result_cache", [True, False])
def test_a_write_is_seen_at_once_while_the_query_embedding_is_reused(
    tmp_path: Path, embedder: FastEmbedEmbedder, result_cache: bool
) -> None:
    settings = make_settings(tmp_path, vector_store="edge", cache_enabled=result_cache)
    query = {"query": "which mountains have glaciers", "top_k": 5}
    with running_app(settings, embedder=embedder) as client:
        assert services_of(client).search.query_cache is not None
        put = client.put("/v1/documents/coast", json={"text": "Sandy beaches and tides along the coast."})
        assert put.status_code == 201
        first = client.post("/v1/search", json=query).json()["results"]
        assert [r["document_id"] for r in first] == ["coast"]
        misses, hits = counter("dense", "miss"), counter("dense", "hit")

        body = {"text": "Alpine glaciers cover the high mountains of the Alps."}
        assert client.put("/v1/documents/alps", json=body).status_code == 201
        after = client.post("/v1/search", json=query).json()["results"]

        assert after[0]["document_id"] == "alps"  # the write is in the results: nothing stale was served
        assert counter("dense", "miss") == misses  # ... and the query was not embedded again
        assert counter("dense", "hit") == hits + 1

        assert client.delete("/v1/documents/alps").status_code == 204
        assert [r["document_id"] for r in client.post("/v1/search", json=query).json()["results"]] == [
            "coast"
        ]


def test_size_zero_turns_the_cache_off(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    settings = make_settings(tmp_path, vector_store="edge", query_embedding_cache_size=0)
    with running_app(settings, embedder=embedder) as client:
        assert services_of(client).search.query_cache is None
        misses = counter("dense", "miss")
        assert client.post("/v1/search", json={"query": "anything"}).status_code == 200
        assert counter("dense", "miss") == misses


def test_a_cache_of_no_entries_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        QueryVectorCache(0)


class ArrayEmbedder(HashEmbedder):
    """A model with the array query path (`embed_query_array`), as FastEmbedEmbedder has: float32 rows, some of
    them views of a bigger batch array (as a coalesced batch's rows are)."""

    def __init__(self, model_name: str, *, dtype: Any = None, as_row: bool = False) -> None:
        super().__init__(model_name)
        import numpy as np

        self.dtype = dtype or np.float32
        self.as_row = as_row
        self.arrays = 0

    def embed_query_array(self, text: str) -> Any:
        import numpy as np

        self.arrays += 1
        vector = np.asarray(self.embed_query(text), dtype=self.dtype)
        return np.stack([vector, vector])[0] if self.as_row else vector


def test_the_array_path_is_used_and_a_hit_equals_the_models_list() -> None:
    import numpy as np

    cache = QueryVectorCache(max_entries=4)
    model = ArrayEmbedder("m")
    first = cache.dense(model, "glaciers")
    second = cache.dense(model, "glaciers")
    expected = np.asarray(model.embed_query("glaciers"), dtype=np.float32).tolist()
    assert first == second == expected
    assert model.arrays == 1  # the second was a hit
    first.append(1.0)  # a caller's list is its own
    assert cache.dense(model, "glaciers") == expected


def test_a_kept_array_is_read_only_and_never_a_view_of_a_batch() -> None:
    cache = QueryVectorCache(max_entries=4)
    model = ArrayEmbedder("m", as_row=True)
    cache.dense(model, "reefs")
    (stored,) = cache._entries.values()
    assert stored.base is None  # the row was copied: the batch array is not kept alive by the entry
    assert not stored.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        stored[0] = 0.0


def test_an_array_of_another_dtype_is_kept_exactly() -> None:
    import numpy as np

    cache = QueryVectorCache(max_entries=4)
    model = ArrayEmbedder("m", dtype=np.float64)  # float64 values not exact in float32
    assert cache.dense(model, "violins") == model.embed_query("violins")


def test_the_real_models_array_path_equals_its_list_path(embedder: FastEmbedEmbedder) -> None:
    cache = QueryVectorCache(max_entries=4)
    for text in ("how do glaciers move", "a violin's bridge"):
        assert cache.dense(embedder, text) == embedder.embed_query(text)
        assert embedder.embed_query_array(text).tolist() == embedder.embed_query(text)
