"""Search cache backends: the in-process LRU with TTL, Redis, and Redis being down (bypass, count, keep serving)."""

from __future__ import annotations

import logging

import pytest
import redis

from service.app.core.config import Settings
from service.app.core.metrics import CACHE_REQUESTS, FAILURES
from service.app.store.cache import MemoryCache, RedisCache, build_cache, search_cache_key
from tests.service.prod_support import MakeClient
from tests.support.servers import free_port, redis_server

pytest_plugins = ["tests.service.prod_fixtures"]

GLACIER = (
    "Glaciers move downhill under their own weight; the ice deforms and slides over meltwater at the bed."
)
GLACIER_2 = "Ice sheets flow outward from their centre, and outlet glaciers carry the ice to the sea."


class FakeClock:
    """A monotonic clock the test moves by hand, so TTL behaviour needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counter(metric, **labels: str) -> float:
    return metric.labels(**labels)._value.get()


def test_memory_cache_returns_what_was_set_until_the_ttl_passes() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=10, clock=clock)
    cache.set("k", b"v", ttl_seconds=30)
    assert cache.get("k") == b"v"
    clock.now += 29.9
    assert cache.get("k") == b"v"
    clock.now += 0.2
    assert cache.get("k") is None
    assert len(cache) == 0


def test_memory_cache_evicts_the_least_recently_used_entry() -> None:
    cache = MemoryCache(max_entries=2)
    cache.set("a", b"1", 60)
    cache.set("b", b"2", 60)
    assert cache.get("a") == b"1"  # a is now more recent than b
    cache.set("c", b"3", 60)
    assert cache.get("b") is None
    assert cache.get("a") == b"1"
    assert cache.get("c") == b"3"
    assert len(cache) == 2


def test_memory_cache_counts_hits_and_misses() -> None:
    cache = MemoryCache(max_entries=4)
    hits, misses = counter(CACHE_REQUESTS, result="hit"), counter(CACHE_REQUESTS, result="miss")
    assert cache.get("absent") is None
    cache.set("present", b"x", 60)
    assert cache.get("present") == b"x"
    assert counter(CACHE_REQUESTS, result="hit") == hits + 1
    assert counter(CACHE_REQUESTS, result="miss") == misses + 1


def test_cache_key_changes_with_every_input_and_is_stable() -> None:
    base = {"query": "q", "top_k": 5, "filter": {"lang": "en"}, "score_threshold": None}
    key = search_cache_key("t1", 3, "m", base)
    assert key == search_cache_key("t1", 3, "m", dict(reversed(base.items())))
    variants = [
        search_cache_key("t2", 3, "m", base),
        search_cache_key("t1", 4, "m", base),
        search_cache_key("t1", 3, "other-model", base),
        search_cache_key("t1", 3, "m", {**base, "query": "Q"}),
        search_cache_key("t1", 3, "m", {**base, "top_k": 6}),
        search_cache_key("t1", 3, "m", {**base, "filter": {"lang": "de"}}),
        search_cache_key("t1", 3, "m", {**base, "score_threshold": 0.5}),
    ]
    assert len({key, *variants}) == len(variants) + 1
    assert "q" not in key.removeprefix("rag:search:")  # opaque: no query text in Redis keys


def test_build_cache_follows_the_settings(redis_url: str) -> None:
    assert isinstance(build_cache(Settings(redis_url=None)), MemoryCache)
    assert isinstance(build_cache(Settings(redis_url=redis_url)), RedisCache)
    assert build_cache(Settings(cache_enabled=False)) is None


def test_redis_cache_round_trip_with_ttl(redis_url: str) -> None:
    cache = RedisCache(redis_url)
    key = search_cache_key("tenant-cache", 1, "m", {"query": "round trip"})
    hits = counter(CACHE_REQUESTS, result="hit")
    try:
        assert cache.get(key) is None
        cache.set(key, b'{"results": []}', ttl_seconds=120)
        assert cache.get(key) == b'{"results": []}'
        assert counter(CACHE_REQUESTS, result="hit") == hits + 1
        ttl = redis.Redis.from_url(redis_url).ttl(key)
        assert 0 < ttl <= 120
        assert cache.ping()
    finally:
        cache.close()


def test_redis_down_is_bypassed_with_a_warning_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", backoff_seconds=5, clock=clock)
    failures, errors = counter(FAILURES, component="cache"), counter(CACHE_REQUESTS, result="error")
    with caplog.at_level(logging.WARNING, logger="service.app.store.cache"):
        assert cache.get("k") is None
        cache.set("k", b"v", 60)  # bypassed during the back-off: no second connection attempt
        assert cache.get("k") is None
    assert counter(FAILURES, component="cache") == failures + 1
    assert counter(CACHE_REQUESTS, result="error") == errors + 2
    assert any("search cache unavailable" in r.getMessage() for r in caplog.records)
    assert not cache.ping()
    clock.now += 5.1  # after the back-off Redis is tried again (and fails again)
    assert cache.get("k") is None
    assert counter(FAILURES, component="cache") == failures + 2


# --- through the API ------------------------------------------------------------------------------------

QUERY = {"query": "how do glaciers move", "top_k": 3}


def hits_and_misses() -> tuple[float, float]:
    return counter(CACHE_REQUESTS, result="hit"), counter(CACHE_REQUESTS, result="miss")


def test_repeated_search_is_served_from_the_cache_until_a_write(
    make_client: MakeClient, headers_a: dict[str, str], headers_b: dict[str, str]
) -> None:
    with make_client() as client:
        client.put("/v1/documents/ice", json={"text": GLACIER}, headers=headers_a)
        hits, misses = hits_and_misses()
        first = client.post("/v1/search", json=QUERY, headers=headers_a).json()
        second = client.post("/v1/search", json=QUERY, headers=headers_a).json()
        assert second == first
        assert hits_and_misses() == (hits + 1, misses + 1)

        # Another tenant asking the same question is a different entry (and sees none of A's documents).
        assert client.post("/v1/search", json=QUERY, headers=headers_b).json()["results"] == []
        assert hits_and_misses() == (hits + 1, misses + 2)

        # A write bumps the tenant's data version: the next identical search is a miss and sees the new data.
        client.put("/v1/documents/ice-2", json={"text": GLACIER_2}, headers=headers_a)
        third = client.post("/v1/search", json=QUERY, headers=headers_a).json()
        assert hits_and_misses() == (hits + 1, misses + 3)
        assert {r["document_id"] for r in third["results"]} == {"ice", "ice-2"}
        client.delete("/v1/documents/ice-2", headers=headers_a)
        fourth = client.post("/v1/search", json=QUERY, headers=headers_a).json()
        assert {r["document_id"] for r in fourth["results"]} == {"ice"}


def test_a_different_parameter_is_a_different_entry(
    make_client: MakeClient, headers_a: dict[str, str]
) -> None:
    with make_client() as client:
        client.put("/v1/documents/ice", json={"text": GLACIER, "metadata": {"lang": "en"}}, headers=headers_a)
        client.post("/v1/search", json=QUERY, headers=headers_a)
        hits, misses = hits_and_misses()
        for variant in (
            {**QUERY, "top_k": 1},
            {**QUERY, "score_threshold": 0.9},
            {**QUERY, "filter": {"lang": "de"}},
        ):
            client.post("/v1/search", json=variant, headers=headers_a)
        assert hits_and_misses() == (hits, misses + 3)


def test_redis_cache_through_the_api(
    make_client: MakeClient, headers_a: dict[str, str], redis_url: str
) -> None:
    with make_client(redis_url=redis_url) as client:
        assert isinstance(client.app.state.services.cache, RedisCache)
        client.put("/v1/documents/ice", json={"text": GLACIER}, headers=headers_a)
        query = {"query": f"glacier flow {free_port()}"}  # unique: the session's Redis is shared
        hits, misses = hits_and_misses()
        first = client.post("/v1/search", json=query, headers=headers_a).json()
        assert client.post("/v1/search", json=query, headers=headers_a).json() == first
        assert hits_and_misses() == (hits + 1, misses + 1)
        client.put("/v1/documents/ice", json={"text": GLACIER_2}, headers=headers_a)
        client.post("/v1/search", json=query, headers=headers_a)
        assert hits_and_misses() == (hits + 1, misses + 2)


def test_search_keeps_working_when_redis_stops(
    make_client: MakeClient, headers_a: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with redis_server() as private_redis, make_client(redis_url=private_redis) as client:
        client.put("/v1/documents/ice", json={"text": GLACIER}, headers=headers_a)
        before = client.post("/v1/search", json=QUERY, headers=headers_a)
        assert before.status_code == 200
        redis.Redis.from_url(private_redis).shutdown(nosave=True)

        failures, errors = counter(FAILURES, component="cache"), counter(CACHE_REQUESTS, result="error")
        with caplog.at_level(logging.WARNING):
            after = client.post("/v1/search", json=QUERY, headers=headers_a)
        assert after.status_code == 200
        assert after.json() == before.json()
        assert counter(FAILURES, component="cache") == failures + 1
        assert counter(CACHE_REQUESTS, result="error") == errors + 1
        assert any("search cache unavailable" in r.getMessage() for r in caplog.records)


def test_search_works_when_redis_was_never_there(make_client: MakeClient, headers_a: dict[str, str]) -> None:
    with make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        errors = counter(CACHE_REQUESTS, result="error")
        response = client.post("/v1/search", json=QUERY, headers=headers_a)
        assert response.status_code == 200
        assert counter(CACHE_REQUESTS, result="error") == errors + 1


def test_a_reindex_switch_never_serves_results_cached_from_the_other_index() -> None:
    """The data version does not move when a re-index switches collections; the served collection is in the key."""
    import asyncio
    from types import SimpleNamespace

    from service.app.search.models import SearchRequest, SearchResponse
    from service.app.store.cache import CachedSearch

    class Inner:
        def __init__(self) -> None:
            self.index = SimpleNamespace(current=SimpleNamespace(collection="docs__old"))
            self.calls = 0

        async def search(self, tenant_id: str, request: SearchRequest) -> SearchResponse:
            self.calls += 1
            return SearchResponse(
                results=[], mode="dense" if self.index.current.collection == "docs__old" else "hybrid"
            )

    inner = Inner()
    registry = SimpleNamespace(data_version=lambda tenant_id: 7)
    cached = CachedSearch(
        inner, MemoryCache(10), registry, model_name="m", ttl_seconds=60, response_model=SearchResponse
    )
    request = SearchRequest(query="EINVAL")
    assert asyncio.run(cached.search("t", request)).mode == "dense"
    assert asyncio.run(cached.search("t", request)).mode == "dense"
    assert inner.calls == 1  # the second one was a hit
    inner.index.current.collection = "docs__new"  # the switch
    assert asyncio.run(cached.search("t", request)).mode == "hybrid"
    assert inner.calls == 2


def test_a_search_with_the_cache_on_takes_one_threadpool_hop_hit_or_miss(
    make_client: MakeClient, headers_a: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookup, search and the write of its result run in one worker-thread call: every hop costs event-loop
    work and a thread hand-off (a scheduling wait under CPU contention). Still served right: a write is seen."""
    import anyio.to_thread

    from service.app.core.hop import SEARCH_THREADS

    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync
    run_search = SEARCH_THREADS.run

    async def counted(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(getattr(func, "__name__", repr(func)))
        return await run_sync(func, *args, **kwargs)

    async def counted_search(func, *args):  # type: ignore[no-untyped-def]
        hops.append(getattr(func, "__name__", repr(func)))
        return await run_search(func, *args)

    with make_client() as client:
        client.put("/v1/documents/ice", json={"text": GLACIER}, headers=headers_a)
        # Every hop counts, anyio's (FastAPI's, the other routes') and the search pool's.
        monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
        monkeypatch.setattr(SEARCH_THREADS, "run", counted_search)
        hits, misses = hits_and_misses()
        first = client.post("/v1/search", json=QUERY, headers=headers_a)
        assert first.status_code == 200, first.text
        assert len(hops) == 1, hops
        second = client.post("/v1/search", json=QUERY, headers=headers_a)
        assert len(hops) == 2, hops
        assert second.json() == first.json()
        assert hits_and_misses() == (hits + 1, misses + 1)
        monkeypatch.undo()
        client.put("/v1/documents/ice-2", json={"text": GLACIER_2}, headers=headers_a)
        third = client.post("/v1/search", json=QUERY, headers=headers_a).json()
        assert {r["document_id"] for r in third["results"]} == {"ice", "ice-2"}
