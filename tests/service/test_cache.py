"""Search cache backends: the in-process LRU with TTL, Redis, and Redis being down (bypass, count, keep serving)."""

from __future__ import annotations

import logging

import pytest
import redis

from service.app.core.config import Settings
from service.app.core.metrics import CACHE_REQUESTS, FAILURES
from service.app.store.cache import MemoryCache, RedisCache, build_cache, search_cache_key
from tests.support.servers import free_port


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
