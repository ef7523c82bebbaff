"""The worker's port: /metrics with the agreed series, and /healthz + /readyz that fail once it stops consuming
(Redis killed under it), then recover when it consumes again. The API's /metrics shows the queue depth and the
oldest queued job's age with no worker running at all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from service.app.jobs.health import WorkerHealth
from service.app.main import create_app
from service.app.store.embedder import FastEmbedEmbedder
from service.worker import run
from tests.service.service_process import wait_for
from tests.service.support import make_settings
from tests.support.servers import free_port, restartable_redis

AGREED_SERIES = (
    "rag_jobs_total",
    "rag_job_duration_seconds",
    "rag_queue_depth",
    "rag_queue_oldest_job_age_seconds",
    "rag_worker_last_poll_timestamp_seconds",
    "rag_chunks_ingested_total",
    "rag_embedding_duration_seconds",
    "rag_failures_total",
)


def sample(text: str, name: str) -> float:
    """The value of an unlabelled series in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_goes_stale_without_polls() -> None:
    clock = Clock()
    health = WorkerHealth(stale_seconds=30, clock=clock)
    assert health.report(need_poll=False)[0]  # starting: alive, not ready
    ok, body = health.report(need_poll=True)
    assert not ok
    assert body["reason"] == "the queue has not been polled yet"
    clock.now += 31
    assert not health.report(need_poll=False)[0]  # never polled in 31 s: not alive either
    health.polled()
    assert health.report(need_poll=False)[0]
    assert health.report(need_poll=True)[0]
    clock.now += 30.5
    ok, body = health.report(need_poll=True)
    assert not ok
    assert body["status"] == "not_consuming"
    assert body["reason"] == "no successful poll of the queue for 30 s (limit 30 s)"


def test_api_metrics_show_a_queue_nobody_consumes(
    tmp_path: Path, embedder: FastEmbedEmbedder, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url=redis_url, jobs_queue_name=f"q-{tmp_path.name}")
    with TestClient(create_app(settings, embedder=embedder)) as client:
        before = client.get("/metrics").text
        assert sample(before, "rag_queue_depth") == 0
        assert sample(before, "rag_queue_oldest_job_age_seconds") == 0
        for i in range(3):
            assert client.put(f"/v1/documents/d{i}?async=true", json={"text": "queued"}).status_code == 202
        # No worker: the jobs wait, and the age of the oldest only grows (polled, never timed).
        first = sample(client.get("/metrics").text, "rag_queue_oldest_job_age_seconds")
        after = client.get("/metrics").text
        assert sample(after, "rag_queue_depth") == 3
        assert sample(after, "rag_queue_oldest_job_age_seconds") >= first > 0


def test_worker_probes_fail_when_it_stops_consuming_and_recover(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with restartable_redis() as redis_server:
        settings = make_settings(
            tmp_path,
            redis_url=redis_server.url,
            worker_metrics_port=port,
            # Long against a stall (the probes read 200 only while a poll succeeded this recently: at 1 s, a
            # loaded machine could miss it between the readiness wait and the liveness check), short for the wait
            # for the probes to fail once Redis is gone.
            worker_stale_seconds=5.0,
            jobs_sweep_seconds=0.2,
        )
        with TestClient(create_app(settings, embedder=embedder)) as client:
            services = client.app.state.services
            stop = asyncio.Event()
            worker = client.portal.start_task_soon(
                lambda: run(settings, services, stop=stop, install_signals=False)
            )

            def probe(path: str) -> int:
                try:
                    return httpx.get(f"{base}{path}", timeout=2).status_code
                except httpx.HTTPError:
                    return 0

            try:
                wait_for(lambda: probe("/readyz") == 200, "the worker ready after its first poll")
                assert probe("/healthz") == 200
                job = client.put("/v1/documents/doc?async=true", json={"text": "a job for the worker"})
                url = job.json()["status_url"]
                wait_for(lambda: client.get(url).json()["status"] == "succeeded", "the job done")
                metrics = httpx.get(f"{base}/metrics").text
                for name in AGREED_SERIES:
                    assert f"\n{name}" in metrics, name
                assert 'rag_jobs_total{status="succeeded"}' in metrics
                assert 'rag_job_duration_seconds_count{status="succeeded"}' in metrics
                assert sample(metrics, "rag_queue_depth") == 0
                assert sample(metrics, "rag_worker_last_poll_timestamp_seconds") > 0

                # Redis gone: the worker cannot poll; both probes fail, saying why.
                redis_server.kill()
                wait_for(lambda: probe("/healthz") == 503, "liveness to fail without polls")
                body = httpx.get(f"{base}/readyz").json()
                assert body["status"] == "not_consuming"
                assert "no successful poll of the queue" in body["reason"]
                stale = sample(httpx.get(f"{base}/metrics").text, "rag_worker_last_poll_timestamp_seconds")

                # Back: the worker reconnects, polls, and is healthy again.
                redis_server.start()
                wait_for(lambda: probe("/readyz") == 200, "the worker healthy after Redis returns")
                fresh = sample(httpx.get(f"{base}/metrics").text, "rag_worker_last_poll_timestamp_seconds")
                assert fresh > stale
            finally:
                client.portal.call(stop.set)
                worker.result(timeout=120)
        assert probe("/healthz") == 0  # the port closed with the worker
