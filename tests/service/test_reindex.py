"""Blue/green re-index to another chunk size under concurrent reads and writes: no failed search, no lost write,
a working rollback, a pointer that survives a restart, and a config change at start-up that re-indexes.

A second model cannot be downloaded here, so the new index differs by chunking (64 -> 24 tokens per chunk): a
different collection, different chunks, the same code path as a model change (the generation carries its own
embedder and chunker).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app.store.edge import DirectoryLock, StoreLocked
from service.app.store.embedder import FastEmbedEmbedder
from tests.service.support import make_settings, running_app, services_of

TOPICS = [
    "volcanoes erupt molten rock and ash from deep below the crust",
    "sourdough bread rises slowly because wild yeast ferments the dough",
    "a compiler translates source code into machine instructions",
    "coral reefs shelter thousands of species of fish in warm shallow seas",
    "the violin has four strings tuned in perfect fifths",
    "glaciers carve valleys as the ice slowly flows downhill",
]


def text_of(index: int, revision: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    return f"Document {index} revision {revision}. " + " ".join([topic] * 4)


def active_versions_held(client: TestClient, generation: object) -> tuple[set, set]:
    """(tenant, document, active version) of the registry, and those the generation's collection holds."""
    services = services_of(client)
    active = set()
    after = None
    while True:
        kept, missing = services.registry.source_page(after, 100)
        assert missing == []
        if not kept:
            break
        active |= {(s.record.tenant_id, s.record.document_id, s.record.version) for s in kept}
        after = max((s.record.tenant_id, s.record.document_id) for s in kept)
    held = {(v.tenant_id, v.document_id, v.version) for v in generation.vectors.versions()}
    return active, held


@pytest.fixture
def settings_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def store_kind() -> str:
    """The embedded store under test; the tests that hold for both are parametrized over it."""
    return "local"


@pytest.fixture
def client(settings_dir: Path, embedder: FastEmbedEmbedder, store_kind: str) -> Iterator[TestClient]:
    settings = make_settings(
        settings_dir, chunk_size=64, chunk_overlap=8, gc_enabled=False, vector_store=store_kind
    )
    with running_app(settings, embedder=embedder) as client:
        yield client


@pytest.mark.parametrize("store_kind", ["local", "edge"])
def test_reindex_under_concurrent_reads_and_writes_then_rollback(
    client: TestClient, settings_dir: Path, embedder: FastEmbedEmbedder
) -> None:
    services = services_of(client)
    for index in range(12):
        assert client.put(f"/v1/documents/d{index}", json={"text": text_of(index, 0)}).status_code == 201
    old = services.ingest.index.current
    stop = threading.Event()
    failures: list[str] = []
    acknowledged: dict[str, int] = {}
    states_seen: set[str] = set()
    searches = [0]
    switched = threading.Event()
    after_switch = {100: 0, 200: 0}
    enough = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            response = client.post("/v1/search", json={"query": "how do glaciers shape valleys", "top_k": 3})
            if response.status_code != 200 or not response.json()["results"]:
                failures.append(f"search {response.status_code}: {response.text[:200]}")
            searches[0] += 1

    def writer(offset: int) -> None:
        revision = 0
        while not stop.is_set():
            revision += 1
            document_id = f"w{offset}-{revision % 5}"
            response = client.put(
                f"/v1/documents/{document_id}", json={"text": text_of(offset + revision, revision)}
            )
            if response.status_code not in (200, 201):
                failures.append(f"write {response.status_code}: {response.text[:200]}")
            else:
                acknowledged[document_id] = response.json()["version"]
                states_seen.add(services.reindexer.status().state)
                if switched.is_set():
                    after_switch[offset] += 1
                    if min(after_switch.values()) >= 2:
                        enough.set()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    threads += [threading.Thread(target=writer, args=(offset,)) for offset in (100, 200)]
    for thread in threads:
        thread.start()
    try:
        response = client.post("/v1/admin/reindex", json={"chunk_size": 24, "chunk_overlap": 4})
        assert response.status_code == 202, response.text
        assert response.json()["state"] == "building"
        assert client.post("/v1/admin/reindex", json={"chunk_size": 32}).status_code == 409
        status = services.reindexer.wait(timeout=600)
        assert status.state == "switched", status
        # Keep reading and writing across the switch, until each writer has landed writes after it.
        switched.set()
        assert enough.wait(timeout=600), failures
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert failures == []
    assert searches[0] > 0
    assert "building" in states_seen or "catching_up" in states_seen, "no write happened during the build"
    new = services.ingest.index.current
    assert new.collection != old.collection
    assert new.config.chunk_size == 24
    assert services.ingest.index.state.shadow is old  # standby for a rollback
    status_body = client.get("/v1/admin/reindex").json()
    assert status_body["current"]["collection"] == new.collection
    assert status_body["standby"]["collection"] == old.collection
    assert status_body["documents_done"] >= 12

    # No lost write: every acknowledged version is the active one and is in BOTH collections.
    for document_id, version in acknowledged.items():
        assert services.registry.get("default", document_id).version >= version
    active, held_new = active_versions_held(client, new)
    assert active <= held_new
    _, held_old = active_versions_held(client, old)
    assert active <= held_old
    # The new collection really is re-chunked: smaller chunks, so more of them per document.
    assert new.vectors.count("default", "d0") > old.vectors.count("default", "d0")
    assert services.registry.index_pointer().collection == new.collection

    # Writes after the switch, then a rollback: the old collection has them too and serves again.
    assert client.put("/v1/documents/after-switch", json={"text": text_of(3, 9)}).status_code == 201
    rolled = client.post("/v1/admin/reindex/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["state"] == "rolled_back"
    assert services.ingest.index.current is old
    assert services.registry.index_pointer().collection == old.collection
    active, held_old = active_versions_held(client, old)
    assert active <= held_old
    hits = client.post("/v1/search", json={"query": "volcano eruption", "top_k": 20}).json()["results"]
    assert {hit["document_id"] for hit in hits} & {"d0", "after-switch"}


@pytest.mark.parametrize("store_kind", ["local", "edge"])
def test_the_pointer_survives_a_restart_and_a_config_change_reindexes(
    settings_dir: Path, embedder: FastEmbedEmbedder, store_kind: str
) -> None:
    settings = make_settings(
        settings_dir, chunk_size=64, chunk_overlap=8, gc_enabled=False, vector_store=store_kind
    )
    with running_app(settings, embedder=embedder) as client:
        for index in range(4):
            client.put(f"/v1/documents/d{index}", json={"text": text_of(index, 0)})
        first = services_of(client).ingest.index.current.collection
    # The stack changes CHUNK_SIZE: start-up keeps serving the old index and re-indexes in the background.
    changed = make_settings(
        settings_dir, chunk_size=24, chunk_overlap=4, gc_enabled=False, vector_store=store_kind
    )
    with running_app(changed, embedder=embedder) as client:
        services = services_of(client)
        status = services.reindexer.wait(timeout=600)
        assert status.state == "switched", status
        second = services.ingest.index.current.collection
        assert second != first
        results = client.post("/v1/search", json={"query": "sourdough yeast", "top_k": 1}).json()["results"]
        assert results[0]["document_id"] == "d1"
        if store_kind == "edge":
            # Two shards (served + rollback target) share one EDGE_PATH lock: another process is still refused.
            with pytest.raises(StoreLocked):
                DirectoryLock(services.settings.resolved_edge_path).acquire()
    if store_kind == "edge":
        # ... and closing both released it (the shared lock counts its holders).
        lock = DirectoryLock(changed.resolved_edge_path)
        lock.acquire()
        lock.release()
    # Same settings again: the persisted pointer is served, nothing is re-indexed, the standby is restored.
    with running_app(changed, embedder=embedder) as client:
        services = services_of(client)
        assert services.ingest.index.current.collection == second
        assert services.ingest.index.state.shadow.collection == first
        assert services.reindexer.status().state == "idle"


def test_with_auth_disabled_a_set_admin_key_is_still_checked(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    """`make serve` (AUTH_DISABLED) with an ADMIN_API_KEY set: the admin routes need it (EYES9 L4: any bearer and
    no header re-indexed); without one they stay open, as docs/service.md says."""
    keyed = make_settings(tmp_path / "keyed", admin_api_key="admin-key-0123456789abcdef")
    with running_app(keyed, embedder=embedder) as client:
        assert client.get("/v1/admin/reindex").status_code == 401
        wrong = client.get("/v1/admin/reindex", headers={"Authorization": "Bearer totally-wrong"})
        assert wrong.status_code == 401
        admin = {"Authorization": "Bearer admin-key-0123456789abcdef"}
        assert client.get("/v1/admin/reindex", headers=admin).json()["state"] == "idle"
        # Tenant routes stay open: auth is off for them.
        assert client.get("/v1/documents").status_code == 200
    with running_app(make_settings(tmp_path / "open"), embedder=embedder) as client:
        assert client.get("/v1/admin/reindex").json()["state"] == "idle"


def test_admin_routes_need_the_admin_key(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    keyed = make_settings(
        tmp_path,
        auth_disabled=False,
        api_keys={"tenant-key-0123456789abcdef": "t1"},
        admin_api_key="admin-key-0123456789abcdef",
    )
    with running_app(keyed, embedder=embedder) as client:
        assert client.get("/v1/admin/reindex").status_code == 401
        tenant = {"Authorization": "Bearer tenant-key-0123456789abcdef"}
        assert client.get("/v1/admin/reindex", headers=tenant).status_code == 401
        admin = {"Authorization": "Bearer admin-key-0123456789abcdef"}
        assert client.get("/v1/admin/reindex", headers=admin).json()["state"] == "idle"
        bad = client.post("/v1/admin/reindex", headers=admin, json={"chunk_size": "big"})
        assert bad.status_code == 422
        same = client.post("/v1/admin/reindex", headers=admin, json={})
        assert same.status_code == 422
        assert "already built" in same.text
        assert client.post("/v1/admin/reindex/rollback", headers=admin).status_code == 422
        unknown = client.post("/v1/admin/reindex", headers=admin, json={"model": "no/such-model"})
        assert unknown.status_code == 422
        # The start-up rule CHUNK_OVERLAP < CHUNK_SIZE holds here too, against the serving config for a field left
        # out (it was accepted, and the live index switched to chunks that never advance).
        for config in ({"chunk_size": 100, "chunk_overlap": 100}, {"chunk_size": 16, "chunk_overlap": 8192}):
            overlapping = client.post("/v1/admin/reindex", headers=admin, json=config)
            assert overlapping.status_code == 422, overlapping.text
            assert "chunk_overlap" in overlapping.json()["error"]["message"]
        assert client.get("/v1/admin/reindex", headers=admin).json()["state"] == "idle"
        # The default embedded store (qdrant-edge) builds the new collection in a second shard beside the first.
        edge = client.post("/v1/admin/reindex", headers=admin, json={"chunk_size": 48})
        assert edge.status_code == 202
        assert services_of(client).reindexer.wait(timeout=600).state == "switched"


def test_another_process_adopts_the_switch_at_its_next_write(
    client: TestClient, embedder: FastEmbedEmbedder
) -> None:
    import anyio

    from service.app.main import build_services

    services = services_of(client)
    client.put("/v1/documents/d0", json={"text": text_of(0, 0)})
    # A second process (a worker, another replica) sharing the registry and the store, built before the switch.
    other = build_services(
        services.settings,
        embedder=embedder,
        vectors=services.vectors,
        registry=services.registry,
        start_reindex=False,
    )
    old = other.ingest.index.current
    assert client.post("/v1/admin/reindex", json={"chunk_size": 24, "chunk_overlap": 4}).status_code == 202
    assert services.reindexer.wait(timeout=600).state == "switched"
    new = services.ingest.index.current

    result = anyio.run(lambda: other.ingest.ingest("default", "from-other", text=text_of(4, 1)))
    assert other.ingest.index.current.collection == new.collection
    assert other.ingest.index.state.shadow.collection == old.collection
    # Counted in Qdrant itself: the two "processes" each hold their own store objects.
    assert new.vectors.count("default", "from-other") == result.chunks
    assert old.vectors.count("default", "from-other") > 0  # the rollback target has it too
    hits = client.post("/v1/search", json={"query": "coral reef fish", "top_k": 5}).json()["results"]
    assert "from-other" in {hit["document_id"] for hit in hits}
    # The other process wrote both vectors into the new collection (its store there learnt it has sparse ones).
    keyword = client.post("/v1/search", json={"query": "violin fifths", "top_k": 5, "mode": "sparse"})
    assert "from-other" in {hit["document_id"] for hit in keyword.json()["results"]}


def test_the_cli_starts_watches_and_rolls_back(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.reindex import main

    for index in range(3):
        client.put(f"/v1/documents/d{index}", json={"text": text_of(index, 0)})
    assert (
        main(
            ["--interval", "0.05", "start", "--chunk-size", "24", "--chunk-overlap", "4", "--wait"],
            client=client,
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "switched: serving" in out
    assert "chunk 24/4" in out
    assert main(["start", "--chunk-size", "24", "--chunk-overlap", "4"], client=client) == 1
    assert "already built" in capsys.readouterr().out
    assert main(["rollback"], client=client) == 0
    assert "rolled_back: serving" in capsys.readouterr().out
    assert main(["status"], client=client) == 0
    assert "chunk 64/8" in capsys.readouterr().out


def test_the_cli_takes_url_and_key_before_or_after_the_sub_command() -> None:
    """docs/quality.md writes `python -m service.reindex start --url URL ...`; it exited 2 ("unrecognized
    arguments") because --url/--key were the top-level parser's alone."""
    from service.reindex import parser

    after = parser().parse_args(["start", "--url", "http://svc:8000", "--key", "k", "--chunk-size", "128"])
    before = parser().parse_args(["--url", "http://svc:8000", "--key", "k", "start", "--chunk-size", "128"])
    for args in (after, before):
        assert (args.url, args.key, args.chunk_size, args.command) == ("http://svc:8000", "k", 128, "start")
    # Not repeating them after the sub-command keeps what came before (or the defaults).
    assert parser().parse_args(["--url", "http://a:1", "status"]).url == "http://a:1"
    assert parser().parse_args(["rollback"]).interval == 2.0
