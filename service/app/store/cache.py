"""Search-result cache: Redis when REDIS_URL is set, else an in-process LRU with a TTL.

Entries are keyed by a hash of everything that determines a result (tenant, the whole search request, the
embedding model) plus the tenant's registry `data_version`. Every document write or delete bumps that version,
so a write makes all of the tenant's older entries unreachable at once; they then age out by TTL/LRU. Nothing
is ever deleted explicitly, so there is no invalidation race between replicas.

Cache failures never fail a request: `RedisCache` logs a warning, counts
`rag_failures_total{component="cache"}` and `rag_search_cache_requests_total{result="error"}`, behaves as a
miss, and skips Redis for a short back-off so a dead server costs one timeout, not one per request.
Lookups are counted where they happen: hit, miss or error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.app.core.config import Settings
from service.app.core.hop import SEARCH_THREADS
from service.app.core.metrics import CACHE_REQUESTS, FAILURES
from service.app.store.protocols import Cache

logger = logging.getLogger(__name__)

KEY_PREFIX = "rag:search:"


def search_cache_key(tenant_id: str, data_version: int, model: str, request: dict[str, Any]) -> str:
    """The cache key of one search: stable across processes (sorted JSON), opaque (SHA-256)."""
    material = json.dumps(
        {"tenant": tenant_id, "version": data_version, "model": model, "request": request},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return KEY_PREFIX + hashlib.sha256(material.encode("utf-8")).hexdigest()


class MemoryCache:
    """A thread-safe LRU of at most `max_entries` values, each expiring `ttl_seconds` after it was set."""

    def __init__(self, max_entries: int, clock: Any = time.monotonic) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] <= self._clock():
                del self._entries[key]
                entry = None
            if entry is None:
                CACHE_REQUESTS.labels(result="miss").inc()
                return None
            self._entries.move_to_end(key)
        CACHE_REQUESTS.labels(result="hit").inc()
        return entry[1]

    def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        with self._lock:
            self._entries[key] = (self._clock() + ttl_seconds, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def ping(self) -> bool:
        return True


class RedisCache:
    """Values in Redis with a TTL (SET EX); errors degrade to a miss plus a back-off before the next try."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 0.5,
        backoff_seconds: float = 5.0,
        clock: Any = time.monotonic,
    ) -> None:
        import redis  # only with REDIS_URL: a process on the in-memory cache never loads the client

        self._errors = redis.RedisError
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._backoff_seconds = backoff_seconds
        self._clock = clock
        self._down_until = 0.0

    def _failed(self, operation: str, exc: Exception) -> None:
        FAILURES.labels(component="cache").inc()
        self._down_until = self._clock() + self._backoff_seconds
        logger.warning(
            "search cache unavailable, bypassing it for %.0f s (%s: %s)",
            self._backoff_seconds,
            operation,
            exc,
            extra={"component": "cache"},
        )

    def _bypassed(self) -> bool:
        return self._clock() < self._down_until

    def get(self, key: str) -> bytes | None:
        if self._bypassed():
            CACHE_REQUESTS.labels(result="error").inc()
            return None
        try:
            value = self._client.get(key)
        except self._errors as exc:
            CACHE_REQUESTS.labels(result="error").inc()
            self._failed("get", exc)
            return None
        CACHE_REQUESTS.labels(result="miss" if value is None else "hit").inc()
        return value  # type: ignore[return-value]

    def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        if self._bypassed():
            return
        try:
            self._client.set(key, value, ex=ttl_seconds)
        except self._errors as exc:
            self._failed("set", exc)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except self._errors:
            return False

    def close(self) -> None:
        self._client.close()


def build_cache(settings: Settings) -> Cache | None:
    """The cache these settings ask for: None when CACHE_ENABLED=false, Redis with REDIS_URL, else memory."""
    if not settings.cache_enabled:
        return None
    if settings.redis_url:
        return RedisCache(settings.redis_url)
    return MemoryCache(settings.cache_max_entries)


class CachedSearch:
    """Wraps the SearchService: same `search(tenant_id, request)`, answered from the cache when possible.

    The tenant's data version is read *before* searching, so a result is never stored under a version older
    than the data it saw: a write racing with the search at worst caches under a version no one asks for again.
    """

    def __init__(
        self,
        inner: Any,
        cache: Cache,
        registry: Any,
        *,
        model_name: str,
        ttl_seconds: int,
        response_model: type[BaseModel],
    ) -> None:
        self._inner = inner
        self._cache = cache
        self._registry = registry
        self._model_name = model_name
        self._ttl_seconds = ttl_seconds
        self._response_model = response_model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def search(self, tenant_id: str, request: BaseModel) -> Any:
        search_sync = getattr(self._inner, "search_sync", None)
        if search_sync is not None:
            # ONE threadpool hop for the lookup, the search on a miss and the write of its result: each hop costs
            # event-loop work and a thread hand-off, and under CPU contention a scheduling wait.
            return await SEARCH_THREADS.run(self._search_in_thread, tenant_id, request, search_sync)
        # A wrapped service without a blocking entry point: lookup, search and write as separate steps.
        found = await run_in_threadpool(self._lookup, tenant_id, request)
        if found is None:
            return await self._inner.search(tenant_id, request)
        key, raw, _ = found
        cached = self._decode(key, raw)
        if cached is not None:
            return cached
        response = await self._inner.search(tenant_id, request)
        live = getattr(self._inner, "live", None)
        if live is None or live.outage_seconds <= 0:
            # With the live-version copy on, whether this response came from the copy is known only in the
            # thread that searched (`storable`): this path cannot tell, so it stores nothing.
            await run_in_threadpool(self._store, key, response)
        return response

    def _search_in_thread(self, tenant_id: str, request: BaseModel, search_sync: Any) -> Any:
        found = self._lookup(tenant_id, request)
        if found is None:
            return search_sync(tenant_id, request)
        key, raw, version = found
        cached = self._decode(key, raw)
        if cached is not None:
            return cached
        response = search_sync(tenant_id, request)
        live = getattr(self._inner, "live", None)
        if live is None or live.storable(version):
            # Never a response answered from an older live-version copy under this newer key: it may hold a
            # document deleted since, served from the cache with the registry up (service.app.store.live_versions).
            self._store(key, response)
        return response

    def _decode(self, key: str, raw: bytes | None) -> Any:
        if raw is None:
            return None
        try:
            return self._response_model.model_validate_json(raw)
        except ValueError:
            logger.warning("search cache entry unreadable; recomputing", extra={"key": key})
            return None

    def _store(self, key: str, response: BaseModel) -> None:
        self._cache.set(key, response.model_dump_json().encode(), self._ttl_seconds)

    def _lookup(self, tenant_id: str, request: BaseModel) -> tuple[str, bytes | None, int] | None:
        """(key, cached value or None, data version); None when there is no safe key (the data version is
        unavailable)."""
        live = getattr(self._inner, "live", None)
        try:
            if live is not None:
                # Through the live-version copy: while a registry read failed a moment ago (or one search probes
                # it) this returns None without asking, a failed read starts that pause, and a read confirms the
                # copy (a cache hit never reaches the inner search). On a lost host each read costs
                # DATABASE_CONNECT_TIMEOUT_SECONDS: one search at a time pays it.
                version = live.read_data_version(tenant_id, self._registry.data_version)
            else:
                version = self._registry.data_version(tenant_id)
        except Exception:
            # Without the version there is no safe key; the search itself will report a registry outage.
            logger.warning("search cache bypassed: data version unavailable", exc_info=True)
            return None
        if version is None:
            return None
        # The served collection names the model, the chunking and the sparse encoder: a re-index switch (or its
        # rollback) changes it, so results cached from the other index are never served after it. The data
        # version alone does not move on a switch.
        index = getattr(self._inner, "index", None)
        sync = getattr(self._inner, "sync_index", None)
        if sync is not None:
            # Follow a switch another replica made before naming the collection: a cache hit never reaches the
            # inner search (which follows too), so without this a replica would serve the old index's cached
            # results until the tenant's next write.
            sync()
        served = index.current.collection if index is not None else self._model_name
        key = search_cache_key(tenant_id, version, served, request.model_dump(mode="json"))
        return key, self._cache.get(key), version
