"""Per-API-key rate limits (the `limits` library), one budget for writes and one for reads.

RATE_LIMIT_INGEST applies to document writes (PUT/POST/DELETE), RATE_LIMIT_SEARCH to search and other reads;
both use the `limits` syntax ("120/minute", "10/second;1000/hour"). Counters live in process memory by
default, or in Redis when REDIS_URL is set so every replica shares them. Windows are moving windows.

If the Redis storage fails the request is let through (fail open) with a warning and
`rag_failures_total{component="rate_limiter"}`: a broken limiter must not take the API down. After a failure the
storage is skipped for BACKOFF_SECONDS (5 s), so a hung Redis costs one timeout per back-off, not one per request.

Every checked request learns its `Quota` (the tightest of the budget's limits after this request), which the
middleware sends as headers on the response, 429s included:

    RateLimit-Limit / X-RateLimit-Limit          requests allowed in the window of the tightest limit
    RateLimit-Remaining / X-RateLimit-Remaining  requests left in it after this one
    RateLimit-Reset                              seconds until a request is freed (IETF httpapi draft: a delta)
    X-RateLimit-Reset                            the same moment as a Unix timestamp (GitHub's convention)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
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
BACKOFF_SECONDS = 5.0


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


@dataclass(frozen=True)
class Quota:
    """Where the caller stands against the tightest limit of one budget, after the current request."""

    limit: int
    remaining: int
    reset_at: float  # Unix time at which the oldest request in the window leaves it

    def headers(self, now: float | None = None) -> list[tuple[bytes, bytes]]:
        """The RateLimit-* and X-RateLimit-* response headers (raw ASGI pairs)."""
        now = time.time() if now is None else now
        reset_in = max(0, math.ceil(self.reset_at - now))
        values = {
            "ratelimit-limit": self.limit,
            "ratelimit-remaining": self.remaining,
            "ratelimit-reset": reset_in,
            "x-ratelimit-limit": self.limit,
            "x-ratelimit-remaining": self.remaining,
            "x-ratelimit-reset": math.ceil(self.reset_at),
        }
        return [(name.encode(), str(value).encode()) for name, value in values.items()]


RATE_LIMIT_HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


class RateLimiter:
    """Checks and consumes the caller's budget; raises `RateLimited` with a Retry-After when it is spent."""

    def __init__(
        self, settings: Settings, storage: Storage | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = settings.rate_limit_enabled
        self._items: dict[Budget, list[RateLimitItem]] = {
            "ingest": parse_many(settings.rate_limit_ingest),
            "search": parse_many(settings.rate_limit_search),
        }
        self._storage = storage if storage is not None else limits_storage(settings)
        self.storage_kind = "memory" if isinstance(self._storage, MemoryStorage) else "redis"
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._clock = clock
        # Like the search cache: after a storage failure, skip the storage for a while, so a hung Redis costs one
        # timeout per BACKOFF_SECONDS instead of one per request.
        self._bypass_until = 0.0

    def describe(self, budget: Budget) -> str:
        return "; ".join(str(item) for item in self._items[budget])

    def max_cost(self, budget: Budget) -> int | None:
        """The most one request can ever spend of `budget` (the smallest limit's amount); None when off."""
        return min(item.amount for item in self._items[budget]) if self.enabled else None

    async def hit(self, budget: Budget, identity: str, cost: int = 1) -> Quota | None:
        """Consume `cost` requests of `budget` for `identity` (an API key id) and return the caller's quota, or
        raise RateLimited (carrying the quota). None when limits are off or the storage failed (fail open)."""
        if not self.enabled or self._clock() < self._bypass_until:
            return None
        tightest: Quota | None = None
        for item in self._items[budget]:
            try:
                allowed = await self._strategy.hit(item, budget, identity, cost=cost)
                stats = await self._strategy.get_window_stats(item, budget, identity)
            except Exception:
                # Any storage error (connection refused, timeout, ...) -> fail open, loudly.
                FAILURES.labels(component="rate_limiter").inc()
                self._bypass_until = self._clock() + BACKOFF_SECONDS
                logger.warning(
                    "rate limiter storage failed; requests allowed without limits for %.0f s",
                    BACKOFF_SECONDS,
                    exc_info=True,
                )
                return None
            quota = Quota(limit=item.amount, remaining=max(0, stats.remaining), reset_at=stats.reset_time)
            if not allowed:
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"rate limit exceeded for {budget}: {item}; retry in {retry_after} s",
                    retry_after=retry_after,
                    limit=str(item),
                    budget=budget,
                    quota=quota,
                )
            if tightest is None or quota.remaining < tightest.remaining:
                tightest = quota
        return tightest

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
