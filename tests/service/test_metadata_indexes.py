"""Metadata payload indexes are bounded per collection and never built inside a write (issue: a tenant could
freeze the service with new metadata keys, each index built in the request while holding the GIL).

Across the real boundary: the qdrant-edge engine with its background builder thread, a concurrent searcher, a
restart of the store on the same directory; and the Qdrant server path through a client that records what the
server is asked (no Qdrant server runs here)."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe
from prometheus_client import REGISTRY
from qdrant_client import models

from service.app.store import metadata_index
from service.app.store.edge import METADATA_INDEX_FILE, EdgeVectorStore
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.metadata_index import MetadataKeyBudget
from service.app.store.qdrant import QdrantVectorStore
from service.app.store.vectors import ChunkPoint, MetadataCondition
from tests.service.support import make_settings, running_app

DIM = 4
TENANT = "t1"


def doc(name: str, metadata: dict[str, Any], tenant: str = TENANT) -> ChunkPoint:
    return ChunkPoint(
        tenant_id=tenant,
        document_id=name,
        version=1,
        chunk_index=0,
        text=f"text of {name}",
        vector=[1.0, 0.5, float(len(name)), 0.25],
        metadata=metadata,
        content_hash="h",
        model="m",
    )


def unindexed(store: str) -> float:
    return REGISTRY.get_sample_value("rag_metadata_keys_unindexed_total", {"store": store}) or 0.0


def metadata_schema(store: EdgeVectorStore) -> set[str]:
    return {
        k.removeprefix("metadata.") for k in store.shard.info().payload_schema if k.startswith("metadata.")
    }


def found(store: EdgeVectorStore, *conditions: MetadataCondition, tenant: str = TENANT) -> set[str]:
    hits = store.search(tenant, [1.0, 0.5, 1.0, 0.25], limit=100, conditions=conditions)
    return {hit.document_id for hit in hits}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeVectorStore]:
    edge = EdgeVectorStore(
        tmp_path / "c", collection="c", dimension=DIM, optimize_idle_seconds=None, metadata_index_max_keys=3
    )
    edge.metadata_index_pause_ratio = 0.0  # the tests prove the ordering, not the pacing
    edge.ensure_collection()
    yield edge
    edge.close()


# Documents of two tenants, every value type, many distinct keys (only the first three get an index).
DOCS = {
    "a": {"k0": "x", "k1": 1, "k2": True, "k3": 2.5, "k4": ["p", "q"], "k5": "only-a"},
    "b": {"k0": "y", "k1": 2, "k2": False, "k3": 7.5, "k4": ["q"], "k6": 3},
    "c": {"k0": "x", "k1": 2, "k2": True, "k3": 7.5, "k4": ["r"], "k7": False},
}
# (condition, the documents of TENANT it must select)
FILTERS = [
    (MetadataCondition("k0", equals="x"), {"a", "c"}),
    (MetadataCondition("k1", equals=2), {"b", "c"}),
    (MetadataCondition("k2", equals=True), {"a", "c"}),
    (MetadataCondition("k2", equals=False), {"b"}),
    (MetadataCondition("k3", gte=5.0), {"b", "c"}),
    (MetadataCondition("k4", any_of=["q"]), {"a", "b"}),
    (MetadataCondition("k5", equals="only-a"), {"a"}),
    (MetadataCondition("k6", lt=4), {"b"}),
    (MetadataCondition("k7", equals=False), {"c"}),
]


def check_filters(store: EdgeVectorStore) -> None:
    for condition, expected in FILTERS:
        assert found(store, condition) == expected, condition
        assert found(store, condition, tenant="t2") <= {"other"}  # never another tenant's documents


def test_a_write_returns_before_its_keys_are_indexed_and_filters_are_exact_before_and_after(
    store: EdgeVectorStore,
) -> None:
    assert store.indexer is not None
    release = threading.Event()
    store.indexer.before_build = lambda key: release.wait()  # hold the builder: no index may exist yet
    for name, metadata in DOCS.items():
        store.upsert([doc(name, metadata)])
    store.upsert([doc("other", {"k0": "x", "k5": "only-a"}, tenant="t2")])
    # Every write returned with the builder held: no index was built in a write.
    assert metadata_schema(store) == set()
    assert store.indexer.pending == ["k0", "k1", "k2"]  # the first three keys seen, in order; the cap is 3
    check_filters(store)  # filtering works unindexed, exactly
    release.set()
    assert store.indexer.wait_idle(60)
    assert metadata_schema(store) == {"k0", "k1", "k2"}
    check_filters(store)  # indexed (k0-k2) and unindexed (k3-k7) keys select exactly the same documents
    assert found(store, MetadataCondition("k0", equals="x"), tenant="t2") == {"other"}


def test_searches_complete_between_index_builds_while_documents_with_new_keys_arrive(tmp_path: Path) -> None:
    edge = EdgeVectorStore(
        tmp_path / "c", collection="c", dimension=DIM, optimize_idle_seconds=None, metadata_index_max_keys=6
    )
    edge.metadata_index_pause_ratio = 1.0
    edge.ensure_collection()
    try:
        assert edge.indexer is not None
        searches = 0
        errors: list[BaseException] = []
        stop = threading.Event()
        seen_at_build: list[int] = []

        def searcher() -> None:
            nonlocal searches
            try:
                while not stop.is_set():
                    hits = found(edge, MetadataCondition("n", equals=1))
                    assert hits <= {f"d{i}" for i in range(20)}
                    searches += 1
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)

        edge.indexer.before_build = lambda key: seen_at_build.append(searches)
        edge.upsert([doc("seed", {"n": 0})])
        thread = threading.Thread(target=searcher)
        thread.start()
        try:
            # 20 documents, each bringing 3 keys never seen before (60 distinct; 6 get an index).
            for i in range(20):
                edge.upsert([doc(f"d{i}", {"n": 1, f"a{i}": i, f"b{i}": "v", f"c{i}": True})])
            assert edge.indexer.wait_idle(120)
        finally:
            stop.set()
            thread.join()
        assert not errors
        assert len(seen_at_build) == 6  # "n" and the first document's 3 keys, then d1's first two
        # Searches completed between every two builds: the builder never held them off for more than one build.
        assert all(later > earlier for earlier, later in itertools.pairwise(seen_at_build))
        assert metadata_schema(edge) == {"n", "a0", "b0", "c0", "a1", "b1"}
        assert found(edge, MetadataCondition("n", equals=1)) == {f"d{i}" for i in range(20)}
        assert found(edge, MetadataCondition("a7", equals=7)) == {"d7"}  # unindexed key
        assert found(edge, MetadataCondition("c19", equals=True)) == {"d19"}
    finally:
        edge.close()


def test_keys_past_the_cap_are_counted_and_logged_once_each(
    store: EdgeVectorStore, caplog: pytest.LogCaptureFixture
) -> None:
    before = unindexed("edge")
    with caplog.at_level(logging.WARNING, logger="service.app.store.metadata_index"):
        store.upsert([doc("a", {"k0": 1, "k1": 1, "k2": 1, "x": 1, "y": "s"})])
        store.upsert([doc("b", {"x": 2, "y": "t", "z": False})])  # x and y again: not counted again
        store.upsert([doc("a", {"x": 3})])
    assert unindexed("edge") - before == 3
    refused = [r.getMessage() for r in caplog.records if "gets no payload index" in r.getMessage()]
    assert len(refused) == 3
    assert {m.split()[0] for m in refused} == {"metadata.x", "metadata.y", "metadata.z"}
    assert "METADATA_INDEX_MAX_KEYS=3" in refused[0]


def test_the_admitted_keys_survive_a_restart_and_the_queued_ones_are_built_then(tmp_path: Path) -> None:
    first = EdgeVectorStore(
        tmp_path / "c", collection="c", dimension=DIM, optimize_idle_seconds=None, metadata_index_max_keys=3
    )
    first.ensure_collection()
    assert first.indexer is not None
    release = threading.Event()
    first.indexer.before_build = lambda key: release.wait()
    first.upsert([doc("a", {"k0": "x", "k1": 1, "k2": 2.5, "k3": "refused"})])
    assert metadata_schema(first) == set()
    first.indexer._stop.set()  # the store is stopping: the held builder, let go now, must build nothing
    release.set()
    first.close()
    assert (tmp_path / "c" / METADATA_INDEX_FILE).is_file()

    second = EdgeVectorStore(
        tmp_path / "c", collection="c", dimension=DIM, optimize_idle_seconds=None, metadata_index_max_keys=3
    )
    second.metadata_index_pause_ratio = 0.0
    second.ensure_collection()
    try:
        assert second.indexer is not None
        assert second.indexer.wait_idle(60)
        assert metadata_schema(second) == {"k0", "k1", "k2"}  # the queued keys, built after the restart
        before = unindexed("edge")
        second.upsert([doc("b", {"k9": "new"})])  # the restart did not reopen the spent budget
        assert unindexed("edge") - before == 1
        assert found(second, MetadataCondition("k3", equals="refused")) == {"a"}
        assert found(second, MetadataCondition("k2", gt=2.0)) == {"a"}
    finally:
        second.close()

    # A lower limit keeps the indexes that exist (never dropped) and admits nothing new.
    third = EdgeVectorStore(
        tmp_path / "c", collection="c", dimension=DIM, optimize_idle_seconds=None, metadata_index_max_keys=1
    )
    third.ensure_collection()
    try:
        assert third.metadata_budget is not None
        assert set(third.metadata_budget.admitted) == {"k0", "k1", "k2"}
        assert third.metadata_budget.admit([{"fresh": 1}]) == []
    finally:
        third.close()


def test_an_unreadable_admitted_file_falls_back_to_the_built_indexes(tmp_path: Path) -> None:
    edge = EdgeVectorStore(tmp_path / "c", collection="c", dimension=DIM, optimize_idle_seconds=None)
    edge.ensure_collection()
    edge.upsert([doc("a", {"k0": "x"})])
    assert edge.indexer is not None
    assert edge.indexer.wait_idle(60)
    edge.close()
    (tmp_path / "c" / METADATA_INDEX_FILE).write_text("{not json", encoding="utf-8")
    edge = EdgeVectorStore(tmp_path / "c", collection="c", dimension=DIM, optimize_idle_seconds=None)
    edge.ensure_collection()
    try:
        assert edge.metadata_budget is not None
        assert edge.metadata_budget.admitted == {"k0": "keyword"}
        assert found(edge, MetadataCondition("k0", equals="x")) == {"a"}
    finally:
        edge.close()


def test_refused_keys_are_remembered_up_to_a_bound(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        metadata_index, "REMEMBERED_REFUSALS", 20
    )  # the real bound, 10,000, logs as many lines
    budget = MetadataKeyBudget(0, store="edge", collection="c")
    before = unindexed("edge")
    with caplog.at_level(logging.WARNING, logger="service.app.store.metadata_index"):
        budget.admit([{f"k{i}": i for i in range(70)}])
        budget.admit([{f"k{i}": i for i in range(70)}])
    assert budget.refused == 20
    assert unindexed("edge") - before == 20
    assert sum("gets no payload index" in r.getMessage() for r in caplog.records) == 20
    assert sum("neither logged nor counted" in r.getMessage() for r in caplog.records) == 1


class FakeServer:
    """Stands in for a Qdrant server client (none runs here): an existing collection whose payload schema other
    replicas may extend, recording every index the store asks for."""

    def __init__(self, schema: dict[str, str]) -> None:
        self.schema = dict(schema)
        self.requests: list[tuple[str, Any, bool]] = []
        self.refuse: set[str] = set()

    def collection_exists(self, name: str) -> bool:
        return True

    def get_collection(self, name: str) -> models.CollectionInfo:
        return models.CollectionInfo.model_construct(
            config=models.CollectionConfig.model_construct(
                params=models.CollectionParams(
                    vectors=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
                    sparse_vectors={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
                )
            ),
            payload_schema={
                key: models.PayloadIndexInfo(data_type=models.PayloadSchemaType(kind), points=0)
                for key, kind in self.schema.items()
            },
        )

    def create_payload_index(
        self, collection: str, field: str, *, field_schema: Any, wait: bool = True
    ) -> None:
        if field in self.refuse:
            raise RuntimeError("server said no")
        self.requests.append((field, field_schema, wait))
        self.schema[field] = (
            field_schema.value if isinstance(field_schema, models.PayloadSchemaType) else "keyword"
        )

    def delete_payload_index(self, collection: str, field: str) -> None:
        self.requests.append((field, "deleted", True))
        del self.schema[field]

    def upsert(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_the_server_path_shares_the_cap_with_other_replicas_and_never_waits_for_a_build(
    tmp_path: Path,
) -> None:
    server = FakeServer({"tenant_id": "keyword", "metadata.old": "integer"})
    settings = make_settings(tmp_path, metadata_index_max_keys=4)
    store = QdrantVectorStore(server, collection="c", dimension=DIM, local=False, settings=settings)  # type: ignore[arg-type]
    store.ensure_collection()
    assert store.metadata_budget is not None
    # Read from the server; its ``integer`` index (an earlier release's, blind to float values) is replaced.
    assert store.metadata_budget.admitted == {"old": "float"}
    assert [r for r in server.requests if r[0].startswith("metadata.")] == [
        ("metadata.old", "deleted", True),
        ("metadata.old", models.PayloadSchemaType.FLOAT, False),
    ]
    server.requests.clear()
    server.schema["metadata.other_replica"] = "keyword"  # another replica spent one place meanwhile
    server.refuse.add("metadata.flaky")
    before = unindexed("qdrant")
    store.upsert([doc("a", {"old": 1, "lang": "en", "flaky": "x", "year": 2024, "tags": ["a"]})])
    store.upsert([doc("b", {"other_replica": "y", "score": 0.5, "more": True})])
    # Every index is asked for with wait=False: acknowledged when queued, built by the server meanwhile.
    assert server.requests == [
        ("metadata.lang", models.PayloadSchemaType.KEYWORD, False),
        ("metadata.score", models.PayloadSchemaType.FLOAT, False),
    ]
    # old + other_replica (read back from the server before lang was admitted) + lang + flaky filled the cap of
    # 4 (year and tags refused); the server refused flaky's index, which gave its place back, to score.
    assert set(store.metadata_budget.admitted) == {"old", "other_replica", "lang", "score"}
    assert unindexed("qdrant") - before == 3  # year, tags, more


def test_on_a_large_shard_the_consolidation_child_builds_the_index_not_the_serving_process(
    tmp_path: Path,
) -> None:
    # A build scans every point (seconds at 100k, holding the GIL): past metadata_index_inline_points it is left
    # to the consolidation's child process, and the key is filtered unindexed until the swap brings the index.
    edge = EdgeVectorStore(
        tmp_path / "c",
        collection="c",
        dimension=DIM,
        optimize_idle_seconds=None,
        consolidate_idle_seconds=3600.0,  # consolidation on, run by hand here
        metadata_index_max_keys=4,
    )
    edge.metadata_index_inline_points = 1  # two points make this shard "large"
    edge.metadata_index_pause_ratio = 0.0
    edge.ensure_collection()
    try:
        assert edge.indexer is not None
        edge.upsert([doc("a", {}), doc("bb", {})])  # the points exist before the keys' builds are considered
        edge.upsert([doc("a", {"team": "x"}), doc("bb", {"team": "y", "year": 2024})])
        assert edge.indexer.wait_idle(60)
        assert metadata_schema(edge) == set()  # nothing built in the serving process
        assert found(edge, MetadataCondition("team", equals="x")) == {"a"}
        assert edge.consolidation_due()
        assert edge.consolidate()
        assert metadata_schema(edge) == {"team", "year"}
        assert edge.last_consolidation is not None
        assert edge.last_consolidation["metadata_indexes"] == ["team", "year"]
        assert found(edge, MetadataCondition("team", equals="x")) == {"a"}
        assert found(edge, MetadataCondition("year", gte=2000)) == {"bb"}
        assert not edge.consolidation_due()
    finally:
        edge.close()


def test_a_key_whose_admission_cannot_be_persisted_is_not_admitted() -> None:
    failing = True

    def persist(admitted: dict[str, Any]) -> None:
        if failing:
            raise OSError(28, "No space left on device")

    budget = MetadataKeyBudget(2, store="edge", collection="c", persist=persist)
    with pytest.raises(OSError, match="No space"):
        budget.admit([{"a": 1}])
    assert budget.admitted == {}
    failing = False
    assert budget.admit([{"a": 1}]) == [("a", "float")]


def test_through_the_api_keys_past_the_cap_are_filtered_exactly_and_counted(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = make_settings(tmp_path, metadata_index_max_keys=2)
    with running_app(settings, embedder=embedder) as client:
        many = {f"key{i}": f"value{i}" for i in range(64)}
        documents = {
            "first": {"text": "Leave policy for the support team.", "metadata": {"team": "hr", "year": 2024}},
            "second": {"text": "Expense policy for travel.", "metadata": many},  # 64: the most allowed
            "third": {
                "text": "Holiday calendar.",
                "metadata": {"year": 2023, "key7": "value7", "key63": "x"},
            },
        }
        for document_id, body in documents.items():
            assert client.put(f"/v1/documents/{document_id}", json=body).status_code == 201
        for filter_, expected in [
            ({"team": "hr"}, {"first"}),  # indexed (team and year took the two places)
            ({"key0": "value0"}, {"second"}),  # unindexed
            ({"year": {"gte": 2024}}, {"first"}),
            ({"key7": "value7"}, {"second", "third"}),  # unindexed
            ({"key63": "value63"}, {"second"}),
            ({"key63": "x", "year": 2023}, {"third"}),
        ]:
            response = client.post("/v1/search", json={"query": "policy", "top_k": 10, "filter": filter_})
            assert response.status_code == 200, response.text
            assert {hit["document_id"] for hit in response.json()["results"]} == expected, filter_
        metrics = client.get("/metrics").text
        assert 'rag_metadata_keys_unindexed_total{store="edge"}' in metrics


# Integers and floats in one key (either written first), ints past 2**53, negatives: (condition, expected).
MIXED_DOCS = {
    "i12": {"n": 12, "m": 12},
    "f105": {"n": 10.5, "m": 10.5},
    "big": {"n": 2**60 + 1, "m": 2**60 + 1},
    "neg": {"n": -3, "m": -3},
}
MIXED_FILTERS = [
    (MetadataCondition("{key}", gte=10), {"i12", "f105", "big"}),
    (MetadataCondition("{key}", lt=11), {"f105", "neg"}),
    (MetadataCondition("{key}", equals=10.5), {"f105"}),
    (MetadataCondition("{key}", equals=12), {"i12"}),
    (MetadataCondition("{key}", equals=2**60 + 1), {"big"}),
    (MetadataCondition("{key}", lt=0), {"neg"}),
]


def _mixed_store(path: Path, max_keys: int) -> EdgeVectorStore:
    edge = EdgeVectorStore(
        path, collection="c", dimension=DIM, optimize_idle_seconds=None, metadata_index_max_keys=max_keys
    )
    edge.metadata_index_pause_ratio = 0.0
    edge.ensure_collection()
    return edge


def _write_mixed(edge: EdgeVectorStore) -> None:
    # ``n``: an integer first (it used to get an ``integer`` index); ``m``: a float first.
    for name in ("i12", "f105", "big", "neg"):
        edge.upsert([doc(name, {"n": MIXED_DOCS[name]["n"]})])
    for name in ("f105", "i12", "big", "neg"):
        edge.upsert([doc(f"{name}", {"n": MIXED_DOCS[name]["n"], "m": MIXED_DOCS[name]["m"]})])


def _index_kinds(edge: EdgeVectorStore) -> dict[str, str]:
    from service.app.store.edge import _KIND_OF_EDGE

    return {
        k.removeprefix("metadata."): _KIND_OF_EDGE[str(v.data_type)]
        for k, v in edge.shard.info().payload_schema.items()
        if k.startswith("metadata.")
    }


def _check_mixed(edge: EdgeVectorStore, reference: EdgeVectorStore) -> None:
    for key in ("n", "m"):
        for template, expected in MIXED_FILTERS:
            condition = MetadataCondition(
                key,
                equals=template.equals,
                gte=template.gte,
                lt=template.lt,
            )
            assert found(reference, condition) == expected, ("unindexed", condition)
            assert found(edge, condition) == expected, ("indexed", condition)


def test_integer_and_float_values_of_one_key_select_the_same_documents_indexed_and_unindexed(
    tmp_path: Path,
) -> None:
    # One store per directory: the store's lock covers its parent.
    indexed = _mixed_store(tmp_path / "indexed" / "c", 3)
    reference = _mixed_store(tmp_path / "plain" / "c", 0)
    try:
        _write_mixed(indexed)
        _write_mixed(reference)
        assert indexed.indexer is not None
        assert indexed.indexer.wait_idle(60)
        assert _index_kinds(indexed) == {"n": "float", "m": "float"}
        assert _index_kinds(reference) == {}
        _check_mixed(indexed, reference)
    finally:
        indexed.close()
        reference.close()


def test_an_integer_index_of_an_earlier_release_is_rebuilt_as_float(tmp_path: Path) -> None:
    # What an earlier release left: an ``integer`` index on ``n`` (its first value was an int), then floats.
    old = _mixed_store(tmp_path / "old" / "c", 0)
    old.shard.update(qe.UpdateOperation.create_field_index("metadata.n", qe.PayloadSchemaType.Integer))
    _write_mixed(old)
    (tmp_path / "old" / "c" / METADATA_INDEX_FILE).write_text('{"keys": {"n": "integer"}}', encoding="utf-8")
    assert _index_kinds(old) == {"n": "integer"}
    assert found(old, MetadataCondition("n", lt=11)) == {"neg"}  # the defect: 10.5 invisible to the index
    old.close()

    reference = _mixed_store(tmp_path / "plain" / "c", 0)
    reopened = _mixed_store(tmp_path / "old" / "c", 3)
    try:
        _write_mixed(reference)
        assert reopened.indexer is not None
        assert reopened.indexer.wait_idle(60)
        assert _index_kinds(reopened)["n"] == "float"
        assert reopened.metadata_budget is not None
        assert reopened.metadata_budget.admitted["n"] == "float"
        _check_mixed(reopened, reference)
    finally:
        reopened.close()
        reference.close()
