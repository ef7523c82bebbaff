"""Per-API-key rate limits: separate ingest and search budgets, 429 with Retry-After and a reason, counters in
process memory by default and in a real Redis (shared by replicas) when REDIS_URL is set; a broken Redis fails
open."""

from __future__ import annotations

import socket
import uuid

import pytest

from service.app.core.config import Settings
from service.app.core.errors import RateLimited
from service.app.core.metrics import FAILURES
from service.app.core.ratelimit import BACKOFF_SECONDS, RateLimiter
from tests.service.prod_support import MakeClient, bearer
from tests.support.servers import free_port

pytest_plugins = ["tests.service.prod_fixtures"]

SEARCH = {"query": "anything at all"}


def fresh_keys() -> tuple[str, str, str]:
    """Unique keys per test: counters in the session's Redis must not leak between tests."""
    key_a, key_b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    return key_a, key_b, f"{key_a}:tenant-a,{key_b}:tenant-b"


def assert_rate_limited(response, budget: str) -> None:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["budget"] == budget
    assert error["retry_after"] == retry_after
    assert f"rate limit exceeded for {budget}" in error["message"]


def test_search_budget_is_per_key_and_separate_from_ingest(make_client: MakeClient) -> None:
    key_a, key_b, keys = fresh_keys()
    with make_client(
        api_keys=keys, rate_limit_enabled=True, rate_limit_search="2/minute", rate_limit_ingest="3/minute"
    ) as client:
        a, b = bearer(key_a), bearer(key_b)
        assert client.post("/v1/search", json=SEARCH, headers=a).status_code == 200
        assert client.get("/v1/documents", headers=a).status_code == 200  # reads spend the search budget
        assert_rate_limited(client.post("/v1/search", json=SEARCH, headers=a), "search")
        assert_rate_limited(client.get("/v1/documents/x", headers=a), "search")

        # Another key has its own budget; the same key still has its ingest budget.
        assert client.post("/v1/search", json=SEARCH, headers=b).status_code == 200
        for i in range(3):
            assert client.put(f"/v1/documents/d{i}", json={"text": f"doc {i}"}, headers=a).status_code == 201
        assert_rate_limited(
            client.put("/v1/documents/d9", json={"text": "one too many"}, headers=a), "ingest"
        )
        assert_rate_limited(client.delete("/v1/documents/d0", headers=a), "ingest")


def test_answers_spend_the_search_budget(make_client: MakeClient) -> None:
    """POST /v1/answer is a read charged to RATE_LIMIT_SEARCH, shared with searches (docs/service.md, operations.md),
    not to the ingest budget its POST method would otherwise suggest."""
    key_a, _key_b, keys = fresh_keys()
    with make_client(
        api_keys=keys, rate_limit_enabled=True, rate_limit_search="3/minute", rate_limit_ingest="5/minute"
    ) as client:
        a = bearer(key_a)
        answered = client.post("/v1/answer", json=SEARCH, headers=a)
        assert answered.status_code == 200, answered.text
        assert answered.headers["RateLimit-Remaining"] == "2"
        assert client.post("/v1/search", json=SEARCH, headers=a).status_code == 200
        assert client.post("/v1/answer", json=SEARCH, headers=a).status_code == 200
        assert_rate_limited(client.post("/v1/answer", json=SEARCH, headers=a), "search")
        assert_rate_limited(client.post("/v1/search", json=SEARCH, headers=a), "search")
        # The ingest budget is untouched by the answers.
        stored = client.put("/v1/documents/d0", json={"text": "doc"}, headers=a)
        assert stored.status_code == 201
        assert stored.headers["RateLimit-Remaining"] == "4"


def test_unauthenticated_requests_get_401_and_spend_nothing(make_client: MakeClient) -> None:
    key_a, _, keys = fresh_keys()
    with make_client(api_keys=keys, rate_limit_enabled=True, rate_limit_search="1/minute") as client:
        for _ in range(3):
            assert client.post("/v1/search", json=SEARCH, headers=bearer("wrong")).status_code == 401
        assert client.post("/v1/search", json=SEARCH, headers=bearer(key_a)).status_code == 200
        assert client.post("/v1/search", json=SEARCH, headers=bearer(key_a)).status_code == 429


def test_operational_routes_are_not_limited(make_client: MakeClient) -> None:
    _, _, keys = fresh_keys()
    with make_client(api_keys=keys, rate_limit_enabled=True, rate_limit_search="1/minute") as client:
        assert all(client.get("/healthz").status_code == 200 for _ in range(3))


def test_limits_are_off_when_disabled(make_client: MakeClient) -> None:
    key_a, _, keys = fresh_keys()
    with make_client(api_keys=keys, rate_limit_enabled=False, rate_limit_search="1/minute") as client:
        assert all(
            client.post("/v1/search", json=SEARCH, headers=bearer(key_a)).status_code == 200 for _ in range(3)
        )


def test_redis_counters_are_shared_by_replicas(make_client: MakeClient, redis_url: str) -> None:
    key_a, _, keys = fresh_keys()
    settings = {
        "api_keys": keys,
        "rate_limit_enabled": True,
        "rate_limit_search": "3/minute",
        "redis_url": redis_url,
    }
    with make_client(**settings) as replica_1, make_client(**settings) as replica_2:
        a = bearer(key_a)
        assert replica_1.post("/v1/search", json=SEARCH, headers=a).status_code == 200
        assert replica_2.post("/v1/search", json=SEARCH, headers=a).status_code == 200
        assert replica_1.post("/v1/search", json=SEARCH, headers=a).status_code == 200
        assert_rate_limited(replica_2.post("/v1/search", json=SEARCH, headers=a), "search")
        assert_rate_limited(replica_1.post("/v1/search", json=SEARCH, headers=a), "search")


async def test_redis_limiter_counts_in_redis(redis_url: str) -> None:
    limiter = RateLimiter(Settings(redis_url=redis_url, rate_limit_ingest="2/hour"))
    identity = uuid.uuid4().hex
    await limiter.hit("ingest", identity)
    await limiter.hit("ingest", identity)
    with pytest.raises(RateLimited) as caught:
        await limiter.hit("ingest", identity)
    assert 60 < caught.value.retry_after <= 3600
    assert await limiter.check_storage()
    await limiter.close()


async def test_a_broken_redis_fails_open_and_is_counted() -> None:
    now = [1000.0]
    limiter = RateLimiter(
        Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_search="1/hour"),
        clock=lambda: now[0],
    )
    before = FAILURES.labels(component="rate_limiter")._value.get()
    for _ in range(3):
        await limiter.hit("search", "someone")  # no RateLimited: the request goes through
    # One failure, then the storage is skipped for the back-off: a dead Redis costs one timeout, not one per request.
    assert FAILURES.labels(component="rate_limiter")._value.get() == before + 1
    now[0] += BACKOFF_SECONDS + 1
    await limiter.hit("search", "someone")
    assert FAILURES.labels(component="rate_limiter")._value.get() == before + 2
    assert not await limiter.check_storage()
    await limiter.close()


async def test_a_hung_redis_is_waited_for_once_per_back_off() -> None:
    """A Redis that accepts connections and never answers (a hung server): requests after the first skip it."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
        port = hung.getsockname()[1]
        limiter = RateLimiter(Settings(redis_url=f"redis://127.0.0.1:{port}/0", rate_limit_search="1/hour"))
        before = FAILURES.labels(component="rate_limiter")._value.get()
        for _ in range(5):
            assert await limiter.hit("search", "someone") is None
        assert FAILURES.labels(component="rate_limiter")._value.get() == before + 1
        await limiter.close()


def test_memory_is_the_default_storage(make_client: MakeClient) -> None:
    with make_client() as client:
        assert client.app.state.services.limiter.storage_kind == "memory"


def test_rate_limited_response_carries_request_id(make_client: MakeClient) -> None:
    key_a, _, keys = fresh_keys()
    with make_client(api_keys=keys, rate_limit_enabled=True, rate_limit_search="1/minute") as client:
        client.post("/v1/search", json=SEARCH, headers=bearer(key_a))
        limited = client.post(
            "/v1/search", json=SEARCH, headers={**bearer(key_a), "X-Request-ID": "trace-429"}
        )
        assert limited.status_code == 429
        assert limited.headers["X-Request-ID"] == "trace-429"
