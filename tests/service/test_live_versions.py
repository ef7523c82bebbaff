"""Search through a registry outage (service.app.store.live_versions): answered from the process's copy of the live
versions it looked up, for at most REGISTRY_OUTAGE_SEARCH_SECONDS after the copy's last registry read, then a 503
with the reason, never a 500; and a document deleted or replaced while the registry answered is never served once
the process has seen the change (docs/service.md#search-during-a-registry-outage)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app.core.errors import ServiceUnavailable
from service.app.store.embedder import FastEmbedEmbedder
from service.app.store.registry import DocumentRegistry
from tests.service.service_process import service_process, wait_for
from tests.service.support import make_settings, running_app, services_of
from tests.support.servers import restartable_postgres

QUERY = {"query": "salmon swim up the river", "top_k": 20}
TEXTS = {
    "kept": "Salmon swim up the river to spawn. KEPT-ONE",
    "replaced": "Salmon leap over the river weirs. REPLACED-OLD",
    "mine": "Salmon rest in the river pools. DELETED-HERE",
    "theirs": "Salmon feed in the river estuary. DELETED-ELSEWHERE",
}
NEW_TEXT = "Salmon leap over the river weirs again. REPLACED-NEW"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ids(response: Any) -> set[str]:
    return {hit["document_id"] for hit in response.json()["results"]}


def check(response: Any, *, outage: bool) -> bool:
    """Every response: 200 with exactly the live documents (the replaced one's new text), or, during an outage
    only, a 503 naming the registry. True for a 200."""
    body = response.json()
    if response.status_code == 503 and outage:
        assert body["error"]["code"] == "service_unavailable", body
        assert "document registry unavailable" in body["error"]["message"], body
        return False
    assert response.status_code == 200, response.text
    assert ids(response) == {"kept", "replaced"}, body
    texts = {hit["document_id"]: hit["text"] for hit in body["results"]}
    assert "REPLACED-NEW" in texts["replaced"], body
    assert "REPLACED-OLD" not in texts["replaced"], body
    return True


@pytest.fixture
def app(tmp_path: Path, embedder: FastEmbedEmbedder) -> Iterator[tuple[TestClient, Clock]]:
    settings = make_settings(tmp_path, registry_outage_search_seconds=60)
    with running_app(settings, embedder=embedder) as client:
        clock = Clock()
        services_of(client).search.live._clock = clock
        for document_id, text in TEXTS.items():
            assert client.put(f"/v1/documents/{document_id}", json={"text": text}).status_code == 201
        yield client, clock


def registry_down(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> None:
        raise ServiceUnavailable("document registry unavailable; retry later")

    monkeypatch.setattr(services_of(client).registry, "snapshot", refused)


def test_changes_seen_are_never_served_from_the_copy_and_it_expires_at_the_bound(
    app: tuple[TestClient, Clock], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SQLite (the embedded path): the copy fills from searches; a replace and a delete made here, and a delete
    made by another process (its own registry connection: the vector points stay), are all seen by the next
    search and never served from the copy afterwards; past the bound, a 503 naming the setting."""
    client, clock = app
    assert ids(client.post("/v1/search", json=QUERY)) == set(TEXTS)
    assert client.put("/v1/documents/replaced", json={"text": NEW_TEXT}).status_code == 200
    assert client.delete("/v1/documents/mine").status_code == 204
    other = DocumentRegistry(services_of(client).registry.url)
    try:
        assert other.delete("default", "theirs") is not None
    finally:
        other.close()
    assert (
        services_of(client).vectors.count("default", "theirs") > 0
    )  # still in the store: the registry decides
    check(client.post("/v1/search", json=QUERY), outage=False)

    registry_down(client, monkeypatch)
    for _ in range(3):
        assert check(client.post("/v1/search", json=QUERY), outage=True)

    clock.now += 60  # the bound itself: still answered
    assert check(client.post("/v1/search", json=QUERY), outage=True)
    clock.now += 1
    expired = client.post("/v1/search", json=QUERY)
    assert expired.status_code == 503, expired.text
    assert "REGISTRY_OUTAGE_SEARCH_SECONDS=60" in expired.json()["error"]["message"]

    monkeypatch.undo()
    clock.now += 5  # past the retry pause: the registry is read again, and the copy confirmed anew
    check(client.post("/v1/search", json=QUERY), outage=False)
    registry_down(client, monkeypatch)
    assert check(client.post("/v1/search", json=QUERY), outage=True)


def test_a_search_needing_a_document_the_copy_lacks_is_a_503_with_the_reason(
    app: tuple[TestClient, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _clock = app
    rare = {"text": "Salmon ladders help the fish upstream.", "metadata": {"group": "rare"}}
    assert client.put("/v1/documents/rare", json=rare).status_code == 201
    assert ids(client.post("/v1/search", json=QUERY)) == {*TEXTS, "rare"}  # the copy holds all five
    assert client.put("/v1/documents/kept", json={"text": TEXTS["kept"] + " again"}).status_code == 200
    narrow = QUERY | {"filter": {"group": {"any": ["none", "other"]}}}
    assert client.post("/v1/search", json=narrow).json()["results"] == []
    registry_down(client, monkeypatch)
    assert client.post("/v1/search", json=narrow).json()["results"] == []  # nothing to judge
    unknown = client.post("/v1/search", json=QUERY | {"filter": {"group": {"any": ["rare"]}}})
    assert unknown.status_code == 503, unknown.text  # the write emptied the copy; nothing refilled it
    assert "does not hold 1 of the documents" in unknown.json()["error"]["message"]


def test_a_write_of_this_process_drops_the_copy_even_when_its_outcome_is_unknown(
    app: tuple[TestClient, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose answer was lost may have happened: the copy cannot tell, so it is dropped."""
    client, _clock = app
    services = services_of(client)
    assert ids(client.post("/v1/search", json=QUERY)) == set(TEXTS)
    assert services.search.live.held("default") is not None

    def lost() -> None:
        raise ServiceUnavailable("the commit's answer was lost")

    record = services.registry.get("default", "kept")
    assert record is not None
    with pytest.raises(ServiceUnavailable):
        services.registry.activate(
            "default",
            "kept",
            expected_version=record.version,
            version=record.version + 1,
            content_hash="x",
            metadata={},
            content_type="text/plain",
            chunk_count=1,
            before_commit=lost,
        )
    assert services.search.live.held("default") is None
    registry_down(client, monkeypatch)
    refused = client.post("/v1/search", json=QUERY)
    assert refused.status_code == 503
    assert "holds no copy" in refused.json()["error"]["message"]


def test_zero_turns_the_copy_off(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, registry_outage_search_seconds=0)
    with running_app(settings, embedder=embedder) as client:
        assert client.put("/v1/documents/kept", json={"text": TEXTS["kept"]}).status_code == 201
        assert client.post("/v1/search", json=QUERY).status_code == 200
        registry_down(client, monkeypatch)
        assert client.post("/v1/search", json=QUERY).status_code == 503


def test_search_answers_through_a_postgres_stop_and_start_with_every_response_checked(tmp_path: Path) -> None:
    """A real Postgres registry stopped and started again while clients search a service process: every response
    is the live documents (never a deleted or replaced one) or a 503 naming the registry, never a 500; searches
    are answered during the outage, the bound ends that with its reason, and after the start search and writes
    work with no restart."""
    with restartable_postgres("live") as postgres:
        env = {
            "DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": postgres.url,
            "REGISTRY_OUTAGE_SEARCH_SECONDS": "20",
            "GC_ENABLED": "false",
        }
        with service_process(env, tmp_path / "service.log") as service, service.client() as http:
            for document_id, text in TEXTS.items():
                assert http.put(f"/v1/documents/{document_id}", json={"text": text}).status_code == 201
            assert ids(http.post("/v1/search", json=QUERY)) == set(TEXTS)
            assert http.put("/v1/documents/replaced", json={"text": NEW_TEXT}).status_code == 200
            assert http.delete("/v1/documents/mine").status_code == 204
            other = DocumentRegistry(postgres.url)
            try:
                assert other.delete("default", "theirs") is not None
            finally:
                other.close()
            check(http.post("/v1/search", json=QUERY), outage=False)  # the process sees every change

            outage = threading.Event()
            stop = threading.Event()
            seen: dict[str, int] = {"ok": 0, "refused": 0, "outage_ok": 0}
            failures: list[BaseException] = []
            reasons: list[str] = []

            def searcher() -> None:
                with httpx.Client(base_url=service.url, timeout=60) as own:
                    while not stop.is_set():
                        try:
                            response = own.post("/v1/search", json=QUERY)
                            # Set before the stop: a response that could have met the outage sees it set.
                            during = outage.is_set()
                            answered = check(response, outage=during)
                            if answered:
                                seen["ok"] += 1
                                seen["outage_ok"] += during
                            else:
                                seen["refused"] += 1
                                reasons.append(response.json()["error"]["message"])
                        except BaseException as exc:
                            failures.append(exc)
                            return

            threads = [threading.Thread(target=searcher) for _ in range(3)]
            for thread in threads:
                thread.start()
            try:
                wait_for(lambda: seen["ok"] >= 10 or failures, "searches before the outage")
                outage.set()
                postgres.stop()
                wait_for(lambda: seen["outage_ok"] >= 10 or failures, "searches answered during the outage")
                wait_for(
                    lambda: any("REGISTRY_OUTAGE_SEARCH_SECONDS=20" in r for r in reasons) or failures,
                    "the bound's 503",
                )
                postgres.start()
                count = seen["ok"]
                wait_for(lambda: seen["ok"] >= count + 10 or failures, "searches after the start")
            finally:
                stop.set()
                for thread in threads:
                    thread.join(120)
            assert failures == [], failures[0]
            assert (
                http.put("/v1/documents/after", json={"text": "Salmon return to the sea."}).status_code == 201
            )
            final = http.post("/v1/search", json=QUERY)
            assert final.status_code == 200, final.text
            assert "after" in ids(final)


def test_a_result_cache_hit_keeps_the_copy_confirmed(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit of the search result cache never reaches the inner search; the data_version the cache read for its
    key still confirms the copy, so the bound counts from the tenant's last search, cached or not."""
    settings = make_settings(tmp_path, registry_outage_search_seconds=60, cache_enabled=True)
    with running_app(settings, embedder=embedder) as client:
        clock = Clock()
        services_of(client).search.live._clock = clock
        assert client.put("/v1/documents/kept", json={"text": TEXTS["kept"]}).status_code == 201
        first = client.post("/v1/search", json=QUERY)
        assert ids(first) == {"kept"}
        clock.now += 50
        assert client.post("/v1/search", json=QUERY).json() == first.json()  # from the result cache
        clock.now += 30  # 80 s after the copy's last search, 30 s after the cache's read
        registry_down(client, monkeypatch)
        monkeypatch.setattr(
            services_of(client).registry,
            "data_version",
            lambda tenant_id: (_ for _ in ()).throw(ServiceUnavailable("registry down")),
        )
        answered = client.post("/v1/search", json=QUERY)
        assert answered.status_code == 200, answered.text
        assert answered.json() == first.json()


def test_the_result_cache_does_not_ask_a_registry_that_just_failed(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed registry read, searches answer from the copy for the retry pause without asking the
    registry; the result cache's key read skips it too (on a lost host each read costs the connect timeout)."""
    settings = make_settings(tmp_path, registry_outage_search_seconds=60, cache_enabled=True)
    with running_app(settings, embedder=embedder) as client:
        clock = Clock()
        services = services_of(client)
        services.search.live._clock = clock
        assert client.put("/v1/documents/kept", json={"text": TEXTS["kept"]}).status_code == 201
        first = client.post("/v1/search", json=QUERY)
        reads: list[str] = []

        def data_version(tenant_id: str) -> int:
            reads.append(tenant_id)
            raise ServiceUnavailable("registry down")

        registry_down(client, monkeypatch)
        monkeypatch.setattr(services.registry, "data_version", data_version)
        assert (
            client.post("/v1/search", json={**QUERY, "top_k": 19}).json()["results"]
            == first.json()["results"]
        )
        assert len(reads) == 1  # the first search met the failure
        for _ in range(3):  # within the pause: neither the copy nor the cache asks
            assert client.post("/v1/search", json=QUERY).json() == first.json()
        assert len(reads) == 1
        clock.now += 2  # past the pause: asked again
        assert client.post("/v1/search", json=QUERY).json() == first.json()
        assert len(reads) == 2


def test_a_search_answered_from_an_older_copy_is_never_cached_under_the_newer_version(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process deletes a document; the cache's key read sees the new data_version but the search's
    snapshot fails, so the search is answered from the copy at the older version (the deleted document legitimately
    within the bound). That response must not be cached under the new version: with the registry up again, every
    identical search (every replica sharing the cache) would get the deleted document for CACHE_TTL_SECONDS."""
    settings = make_settings(tmp_path, registry_outage_search_seconds=60, cache_enabled=True)
    with running_app(settings, embedder=embedder) as client:
        clock = Clock()
        services = services_of(client)
        services.search.live._clock = clock
        for document_id, text in TEXTS.items():
            assert client.put(f"/v1/documents/{document_id}", json={"text": text}).status_code == 201
        assert ids(client.post("/v1/search", json=QUERY)) == set(TEXTS)  # the copy filled (and cached)
        other = DocumentRegistry(services.registry.url)  # another process deletes 'theirs'
        try:
            assert other.delete("default", "theirs") is not None
        finally:
            other.close()
        registry_down(client, monkeypatch)  # the snapshot fails; the key's data_version read still answers
        during = client.post("/v1/search", json=QUERY)
        assert during.status_code == 200, during.text
        assert ids(during) == set(TEXTS)  # from the copy: within the bound
        monkeypatch.undo()
        clock.now += 500  # the registry answers again, past the bound and the pause
        after = client.post("/v1/search", json=QUERY)
        assert after.status_code == 200, after.text
        assert ids(after) == {"kept", "mine", "replaced"}


def test_a_search_skipping_the_registry_after_its_key_read_is_never_cached_under_the_newer_version(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The concurrent variant: another search's registry read fails between this search's cache-key read (the new
    data_version) and its view, so this search skips the registry (the pause) and answers from the older copy;
    that answer is not cached under the new version either."""
    settings = make_settings(tmp_path, registry_outage_search_seconds=60, cache_enabled=True)
    with running_app(settings, embedder=embedder) as client:
        clock = Clock()
        services = services_of(client)
        live = services.search.live
        live._clock = clock
        for document_id, text in TEXTS.items():
            assert client.put(f"/v1/documents/{document_id}", json={"text": text}).status_code == 201
        assert ids(client.post("/v1/search", json=QUERY)) == set(TEXTS)
        other = DocumentRegistry(services.registry.url)
        try:
            assert other.delete("default", "theirs") is not None
        finally:
            other.close()
        read = live.read_data_version

        def read_then_another_search_fails(tenant_id: str, reader: Any) -> int | None:
            version = read(tenant_id, reader)
            live._failed("another search's registry read failed")  # what a concurrent search's failure does
            return version

        monkeypatch.setattr(live, "read_data_version", read_then_another_search_fails)
        during = client.post("/v1/search", json=QUERY)
        assert during.status_code == 200, during.text
        assert ids(during) == set(TEXTS)  # from the copy (the registry skipped during the pause)
        monkeypatch.undo()
        clock.now += 500
        after = client.post("/v1/search", json=QUERY)
        assert after.status_code == 200, after.text
        assert ids(after) == {"kept", "mine", "replaced"}


def test_a_copy_filled_by_another_search_between_lookups_never_drops_a_live_document() -> None:
    """Two searches of a tenant share one copy: one adding a document while the other looks it up must leave it
    either found or read from the registry, never neither (a live hit silently dropped)."""
    from contextlib import contextmanager

    from service.app.store.live_versions import LiveVersions

    class Snapshot:
        def data_version(self, tenant_id: str) -> int:
            return 7

        def active_versions(self, tenant_id: str, document_ids: list[str]) -> dict[str, int]:
            return {d: 1 for d in document_ids if d in {"a", "b"}}

    class Registry:
        def on_change(self, listener: Any) -> None:
            pass

        @contextmanager
        def snapshot(self) -> Iterator[Snapshot]:
            yield Snapshot()

    live = LiveVersions(Registry(), outage_seconds=60)  # type: ignore[arg-type]
    with live.view("t") as first, live.view("t") as second:
        copy = first._copy
        assert copy is not None

        class Interleaved(dict):  # type: ignore[type-arg]
            """The other search remembers 'a' right after this one's first read of the copy."""

            reads = 0

            def get(self, key: Any, default: Any = None) -> Any:
                value = super().get(key, default)
                Interleaved.reads += 1
                if Interleaved.reads == 1:
                    assert second.active_versions(["a"]) == {"a": 1}
                return value

            def __contains__(self, key: object) -> bool:
                Interleaved.reads += 1
                if Interleaved.reads == 1:
                    assert second.active_versions(["a"]) == {"a": 1}
                return super().__contains__(key)

        copy.versions = Interleaved(copy.versions)
        assert first.active_versions(["a"]) == {"a": 1}
        assert Interleaved.reads >= 2  # the other search's lookup did run in between


def test_with_the_result_cache_on_one_search_at_a_time_probes_a_lost_registry(
    tmp_path: Path, embedder: FastEmbedEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost registry host holds each read up to the connect timeout. After the pause, one search probes (here
    its key read hangs until released); every other search meanwhile answers from the copy without asking the
    registry, and the probing search, once its read fails, answers from the copy without a second wait."""
    settings = make_settings(tmp_path, registry_outage_search_seconds=60, cache_enabled=True)
    with running_app(settings, embedder=embedder) as client:
        clock = Clock()
        services = services_of(client)
        services.search.live._clock = clock
        assert client.put("/v1/documents/kept", json={"text": TEXTS["kept"]}).status_code == 201
        first = client.post("/v1/search", json=QUERY)
        assert ids(first) == {"kept"}
        reads = {"data_version": 0, "snapshot": 0}
        hanging = threading.Event()  # a read is waiting on the lost host
        release = threading.Event()

        def data_version(tenant_id: str) -> int:
            reads["data_version"] += 1
            hanging.set()
            release.wait(60)
            raise ServiceUnavailable("lost host")

        def snapshot() -> None:
            reads["snapshot"] += 1
            raise ServiceUnavailable("lost host")

        monkeypatch.setattr(services.registry, "data_version", data_version)
        monkeypatch.setattr(services.registry, "snapshot", snapshot)
        release.set()  # the first failure comes at once
        assert client.post("/v1/search", json={**QUERY, "top_k": 7}).status_code == 200
        assert reads == {"data_version": 1, "snapshot": 0}  # the failed key read started the pause
        release.clear()
        hanging.clear()
        clock.now += 2  # past the pause
        probe: dict[str, Any] = {}
        prober = threading.Thread(target=lambda: probe.update(r=client.post("/v1/search", json=QUERY)))
        prober.start()
        try:
            assert hanging.wait(60), "the probing search never read the registry"
            for top_k in (8, 9, 10):  # meanwhile: answered from the copy, nothing asked
                answered = client.post("/v1/search", json={**QUERY, "top_k": top_k})
                assert answered.status_code == 200, answered.text
                assert ids(answered) == {"kept"}
            assert reads == {"data_version": 2, "snapshot": 0}
        finally:
            release.set()
            prober.join(120)
        assert probe["r"].status_code == 200, probe["r"].text
        assert reads == {"data_version": 2, "snapshot": 0}  # no second wait for the prober


def test_a_failed_write_keeps_the_pause_a_successful_one_ends_it() -> None:
    """A write that reached its bump and then failed (its commit's answer lost in a failover) drops the copy but
    does not end the pause after a failed read: the next search would wait on a registry that just failed."""
    from contextlib import contextmanager

    from service.app.store.live_versions import LiveVersions

    class Registry:
        def on_change(self, listener: Any) -> None:
            pass

        @contextmanager
        def snapshot(self) -> Iterator[None]:
            raise ServiceUnavailable("down")
            yield

    clock = Clock()
    live = LiveVersions(Registry(), outage_seconds=60, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailable, match="holds no copy"), live.view("t"):
        pass
    assert live.registry_down()
    live.forget("t", False)
    assert live.registry_down()
    live.forget("t", True)
    assert not live.registry_down()
