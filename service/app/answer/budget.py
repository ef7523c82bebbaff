"""Per-tenant LLM token budget (LLM_TOKEN_BUDGET, `limits` syntax such as ``200000/hour;2000000/day``).

Before a call the tenant's windows are checked: a spent window answers 429 with Retry-After until it resets.
After the call the tokens actually used (provider-reported, or counted locally for a stream that was cut) are
charged. Charging after the fact means the last call of a window may overshoot by one answer's tokens, which
LLM_MAX_TOKENS bounds; refusing the call up front on an estimate would instead refuse answers that fit.

Fixed windows, because their counter keeps what was charged past the limit (a moving window refuses the whole
charge when it does not fit, and the tokens would go uncounted). Counters are shared in Redis when REDIS_URL is
set, else kept in process memory. A storage failure lets the call through (fail open) with a warning and
``rag_failures_total{component="token_budget"}``, like the request rate limiter.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter

from service.app.core.config import Settings
from service.app.core.errors import RateLimited
from service.app.core.metrics import FAILURES
from service.app.core.ratelimit import limits_storage

logger = logging.getLogger(__name__)

NAMESPACE = "llm_tokens"


class TokenBudget:
    """`check(tenant)` before a call (RateLimited when spent), `charge(tenant, tokens)` after it."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        spec = settings.llm_token_budget.strip()
        self._items: list[RateLimitItem] = parse_many(spec) if spec else []
        self._storage = storage if storage is not None else limits_storage(settings, key_prefix="rag:budget")
        self._strategy = FixedWindowRateLimiter(self._storage)

    @property
    def enabled(self) -> bool:
        return bool(self._items)

    async def check(self, tenant: str) -> None:
        for item in self._items:
            try:
                stats = await self._strategy.get_window_stats(item, NAMESPACE, tenant)
            except Exception:
                FAILURES.labels(component="token_budget").inc()
                logger.warning("token budget storage failed; call allowed", exc_info=True)
                return
            if stats.remaining <= 0:
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"LLM token budget spent for this tenant ({item}); retry in {retry_after} s",
                    retry_after=retry_after,
                    limit=str(item),
                    budget="llm_tokens",
                )

    async def charge(self, tenant: str, tokens: int) -> None:
        if tokens <= 0:
            return
        for item in self._items:
            try:
                await self._strategy.hit(item, NAMESPACE, tenant, cost=tokens)
            except Exception:
                FAILURES.labels(component="token_budget").inc()
                logger.warning("token budget storage failed; %d tokens not charged", tokens, exc_info=True)
                return

    async def close(self) -> None:
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()
