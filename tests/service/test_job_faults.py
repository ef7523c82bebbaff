"""A 202 is a promise: Redis killed (no persistence) with jobs queued, Redis down while jobs are submitted, and
Postgres killed and restarted under async traffic. No 5xx but 503, no acknowledged job lost, the worker rides it out.

The worker is `service.worker.run` (the supervisor `python -m service.worker` runs) on the app's event loop and
services; Redis and Postgres are real servers that the test SIGKILLs and starts again on the same port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app.main import create_app
from service.app.store.embedder import FastEmbedEmbedder
from service.worker import run
from tests.service.service_process import wait_for
from tests.service.support import make_settings
from tests.support.servers import RestartableServer, restartable_postgres, restartable_redis

TEXT = "Glaciers carve U-shaped valleys as they grind slowly downhill over thousands of years."


@pytest.fixture
def servers() -> Iterator[tuple[RestartableServer, RestartableServer]]:
    with restartable_redis() as redis_server, restartable_postgres("jobs_faults") as postgres:
        yield redis_server, postgres


def status_of(client: TestClient, job_url: str) -> str | None:
    response = client.get(job_url)
    assert response.status_code in (200, 503), response.text
    return response.json()["status"] if response.status_code == 200 else None


def test_jobs_survive_redis_and_postgres_crashes(
    tmp_path: Path, embedder: FastEmbedEmbedder, servers: tuple[RestartableServer, RestartableServer]
) -> None:
    redis_server, postgres = servers
    settings = make_settings(
        tmp_path,
        redis_url=redis_server.url,
        database_url=postgres.url,
        jobs_sweep_seconds=0.2,
        jobs_retry_base_seconds=0.2,
        jobs_retry_max_seconds=1.0,
    )
    with TestClient(create_app(settings, embedder=embedder)) as client:
        services = client.app.state.services

        def put(document_id: str) -> str:
            response = client.put(
                f"/v1/documents/{document_id}?async=true", json={"text": f"{document_id}: {TEXT}"}
            )
            assert response.status_code == 202, response.text
            return response.json()["status_url"]

        accepted = [put(f"before-{i}") for i in range(4)]
        redis_server.kill()  # every wake-up is gone with it
        accepted += [put(f"during-{i}") for i in range(3)]  # the row is the promise; the wake-up comes later
        assert client.get("/readyz").status_code == 503
        redis_server.start()  # empty

        stop = asyncio.Event()
        worker = client.portal.start_task_soon(
            lambda: run(settings, services, stop=stop, install_signals=False)
        )
        try:
            wait_for(
                lambda: all(status_of(client, url) == "succeeded" for url in accepted),
                "jobs queued before the crash",
            )

            # The worker rides out a Redis restart and serves what is submitted after it.
            redis_server.kill()
            redis_server.start()
            accepted.append(put("after-restart"))
            wait_for(lambda: status_of(client, accepted[-1]) == "succeeded", "a job after a Redis restart")

            # Postgres down: no 202 can be promised, so 503, and polls answer 503 too (never a 500).
            postgres.kill()
            down = client.put("/v1/documents/refused?async=true", json={"text": TEXT})
            assert down.status_code == 503, down.text
            assert "Error" not in down.json()["error"]["message"]  # no exception class names
            assert client.get(accepted[0]).status_code == 503
            postgres.start()
            accepted.append(put("after-postgres"))
            wait_for(lambda: status_of(client, accepted[-1]) == "succeeded", "a job after a Postgres restart")
        finally:
            client.portal.call(stop.set)
            worker.result(timeout=120)

        assert client.get("/v1/documents/refused").status_code == 404
        ids = {r["document_id"] for r in client.get("/v1/documents?limit=100").json()["documents"]}
        assert ids == _document_ids(client, accepted)


def _document_ids(client: TestClient, job_urls: list[str]) -> set[str]:
    return {client.get(url).json()["document_id"] for url in job_urls}


def test_a_job_failing_on_an_outage_is_retried_with_back_off(
    tmp_path: Path, embedder: FastEmbedEmbedder, servers: tuple[RestartableServer, RestartableServer]
) -> None:
    from tests.service.support import FAILING_MARKER, FailingEmbedder

    redis_server, postgres = servers
    settings = make_settings(
        tmp_path,
        redis_url=redis_server.url,
        database_url=postgres.url,
        jobs_retry_base_seconds=0.05,
        jobs_max_attempts=3,
    )
    with TestClient(create_app(settings, embedder=FailingEmbedder(embedder))) as client:
        services = client.app.state.services
        url = client.put("/v1/documents/x?async=true", json={"text": f"{FAILING_MARKER} {TEXT}"}).json()[
            "status_url"
        ]
        stop = asyncio.Event()
        worker = client.portal.start_task_soon(
            lambda: run(settings, services, stop=stop, install_signals=False)
        )
        try:
            wait_for(lambda: status_of(client, url) == "failed", "the job to fail after its retries")
        finally:
            client.portal.call(stop.set)
            worker.result(timeout=120)
        assert len(services.embedder.embedded) == 0  # every try failed before embedding anything
        job = client.get(url).json()
        assert job["error"].startswith("service_unavailable")
        from service.app.store.jobstore import JobTable

        assert JobTable(services.registry).get(job["job_id"]).attempts == 3
