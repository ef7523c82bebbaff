"""JOBS_IN_PROCESS: a deployment without a worker (`rag:service.worker.enabled: false`) but with Redis (the cache
and rate limits) runs its async ingests in the API process, on real Redis and Postgres. Without the setting the API
only enqueues to Redis and, with no worker, a 202 never runs (EYES9 H2)."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from service.app.jobs.queue import ArqJobQueue, InProcessJobQueue
from service.app.main import create_app
from service.app.store.embedder import FastEmbedEmbedder
from tests.service.prod_support import fresh_database, production_settings
from tests.service.service_process import wait_for

pytest_plugins = ["tests.service.prod_fixtures"]


def test_the_api_runs_async_jobs_itself_when_no_worker_is_deployed(
    tmp_path: Path, embedder: FastEmbedEmbedder, redis_url: str, postgres_url: str, headers_a: dict[str, str]
) -> None:
    settings = production_settings(
        tmp_path,
        redis_url=redis_url,
        database_url=fresh_database(postgres_url, f"inproc_{uuid.uuid4().hex[:8]}"),
        jobs_queue_name=f"inproc-{uuid.uuid4().hex[:8]}",
        jobs_in_process=True,
    )
    with TestClient(create_app(settings, embedder=embedder)) as client:
        assert isinstance(client.app.state.services.jobs, InProcessJobQueue)
        assert client.app.state.services.cache is not None  # Redis still serves the cache
        accepted = client.put(
            "/v1/documents/basalt?async=true", json={"text": "hexagonal basalt columns"}, headers=headers_a
        )
        assert accepted.status_code == 202, accepted.text
        url = accepted.json()["status_url"]
        job = wait_for(
            lambda: (
                (j := client.get(url, headers=headers_a).json())["status"] in ("succeeded", "failed") and j
            ),
            "the job to finish with no worker running",
        )
        assert job["status"] == "succeeded", job
        hits = client.post("/v1/search", json={"query": "basalt columns"}, headers=headers_a).json()
        assert hits["results"][0]["document_id"] == "basalt"

    # The default: the API only enqueues (a worker consumes).
    with TestClient(
        create_app(settings.model_copy(update={"jobs_in_process": False}), embedder=embedder)
    ) as c:
        assert isinstance(c.app.state.services.jobs, ArqJobQueue)
