"""Per-API-key rate limits (the `limits` library), one budget for writes and one for reads.

RATE_LIMIT_INGEST applies to document writes (PUT/POST/DELETE), RATE_LIMIT_SEARCH to search and other reads;
both use the `limits` syntax ("120/minute", "10/second;1000/hour"). Counters live in process memory by
default, or in Redis when REDIS_URL is set so every replica shares them. Windows are moving windows.

If the Redis storage fails the request is let through (fail open) with a warning and
`rag_failures_total{component="rate_limiter"}`: a broken limiter must not take the API down.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Literal

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from service.app.core.config import Settings
from service.app.core.errors import RateLimited
from service.app.core.metrics import FAILURES

logger = logging.getLogger(__name__)

Budget = Literal["ingest", "search"]
REDIS_TIMEOUT_SECONDS = 1.0


def limits_storage(settings: Settings, key_prefix: str = "rag:ratelimit") -> Storage:
    """Counter storage for `limits`: Redis when REDIS_URL is set (shared by replicas), else process memory."""
    if settings.redis_url:
        # redis-py's asyncio client (already a dependency) rather than the default coredis.
        return storage_from_string(
            f"async+{settings.redis_url}",
            implementation="redispy",
            key_prefix=key_prefix,
            # A dead Redis must cost a request milliseconds, not the client's default minutes.
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
        )
    return MemoryStorage()


class RateLimiter:
    """Checks and consumes the caller's budget; raises `RateLimited` with a Retry-After when it is spent."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.enabled = settings.rate_limit_enabled
        self._items: dict[Budget, list[RateLimitItem]] = {
            "ingest": parse_many(settings.rate_limit_ingest),
            "search": parse_many(settings.rate_limit_search),
        }
        self._storage = storage if storage is not None else limits_storage(settings)
        self.storage_kind = "memory" if isinstance(self._storage, MemoryStorage) else "redis"
        self._strategy = MovingWindowRateLimiter(self._storage)

    def describe(self, budget: Budget) -> str:
        return "; ".join(str(item) for item in self._items[budget])

    async def hit(self, budget: Budget, identity: str) -> None:
        """Consume one request of `budget` for `identity` (an API key id) or raise RateLimited."""
        if not self.enabled:
            return
        for item in self._items[budget]:
            try:
                allowed = await self._strategy.hit(item, budget, identity)
                if allowed:
                    continue
                stats = await self._strategy.get_window_stats(item, budget, identity)
            except Exception:
                # Any storage error (connection refused, timeout, ...) -> fail open, loudly.
                FAILURES.labels(component="rate_limiter").inc()
                logger.warning("rate limiter storage failed; request allowed", exc_info=True)
                return
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimited(
                f"rate limit exceeded for {budget}: {item}; retry in {retry_after} s",
                retry_after=retry_after,
                limit=str(item),
                budget=budget,
            )

    async def check_storage(self) -> bool:
        """True when the counter storage answers (used by /readyz for Redis)."""
        try:
            return bool(await self._storage.check())
        except Exception:
            return False

    async def close(self) -> None:
        """Close the Redis connection pool, if any (the memory storage holds nothing to close)."""
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()

    async def reset(self) -> None:
        """Forget every counter (tests and operators)."""
        await self._storage.reset()
