"""Async ingestion jobs: the in-process queue, the arq queue + worker on a real Redis, and the HTTP flow
(`?async=true` -> 202 {job_id} -> GET /v1/jobs/{id}), tenant-scoped."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from anyio import to_thread
from fastapi.testclient import TestClient

from service.app.core.config import Settings
from service.app.core.errors import InvalidInput, ServiceUnavailable
from service.app.core.metrics import JOBS
from service.app.jobs.models import IngestPayload, JobRecord, JobStatus, new_job_id
from service.app.jobs.queue import ArqJobQueue, InProcessJobQueue
from service.app.main import create_app
from service.app.store.jobstore import JobTable
from service.app.store.registry import DocumentRegistry, jobs_table
from service.worker import build_worker
from tests.service.prod_support import MakeClient, fresh_database, production_settings
from tests.service.support import FAILING_MARKER, FailingEmbedder

pytest_plugins = ["tests.service.prod_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FakeIngest:
    """Records calls; fails on documents named 'bad'; optionally blocks until released."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    running: int = 0
    max_running: int = 0

    async def ingest(
        self,
        tenant_id: str,
        document_id: str,
        *,
        text: str,
        metadata: Any,
        content_type: str,
        fence: Any = None,
        ticket: int | None = None,
    ) -> dict[str, Any]:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            self.calls.append((tenant_id, document_id, text))
            if document_id == "bad":
                raise InvalidInput("text is empty")
            if document_id == "boom":
                raise RuntimeError("secret internal detail")
            return {"document_id": document_id, "status": "created", "chunks": 1, "version": 1}
        finally:
            self.running -= 1


@dataclass
class FakeServices:
    ingest: FakeIngest


def payload(tenant: str, document_id: str, text: str = "hello") -> IngestPayload:
    return IngestPayload(job_id=new_job_id(), tenant_id=tenant, document_id=document_id, text=text)


@pytest.fixture
def job_table(tmp_path: Path) -> Iterator[JobTable]:
    """The registry's real job table on SQLite (what the embedded set-up uses)."""
    registry = DocumentRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.migrate()
    try:
        yield JobTable(registry)
    finally:
        registry.close()


def in_process(ingest: Any, table: JobTable, *, concurrency: int = 2, **settings: Any) -> InProcessJobQueue:
    return InProcessJobQueue(
        ingest,
        table,
        Settings(_env_file=None, jobs_max_concurrency=concurrency, **settings),
        exclusive=True,
    )


async def turns(n: int = 50) -> None:
    """Event-loop turns, plus the worker-thread hops of the table calls (a chance for more tasks to start)."""
    for _ in range(n):
        await asyncio.sleep(0)
        await to_thread.run_sync(lambda: None)


async def until(condition: Callable[[], bool], what: str, limit: int = 20_000) -> None:
    """Turn the loop (and the table's thread hops) until ``condition`` holds. A fixed number of turns was not
    enough on a loaded machine: the job's claim is a thread hop that may not have run yet."""
    for _ in range(limit):
        if condition():
            return
        await turns(1)
    raise AssertionError(f"{what}: not after {limit} loop turns")


async def test_in_process_jobs_run_and_report_results(job_table: JobTable) -> None:
    ingest = FakeIngest()
    queue = in_process(ingest, job_table)
    await queue.start()
    ok, bad, boom = payload("t1", "doc"), payload("t1", "bad"), payload("t1", "boom")
    for job in (ok, bad, boom):
        assert (await queue.submit(job)).status is JobStatus.queued
    await queue.wait_idle()

    done = await queue.get("t1", ok.job_id)
    assert done.status is JobStatus.succeeded
    assert done.result == {"document_id": "doc", "status": "created", "chunks": 1, "version": 1}
    assert done.started_at is not None
    assert done.finished_at >= done.started_at

    failed = await queue.get("t1", bad.job_id)
    assert failed.status is JobStatus.failed
    assert failed.error == "invalid_input: text is empty"
    unexpected = await queue.get("t1", boom.job_id)
    assert unexpected.status is JobStatus.failed
    assert "secret" not in unexpected.error
    assert await queue.depth() == 0
    # Finished rows keep their result for the TTL but not the document's text.
    assert job_table.payload_size(ok.job_id) == 0
    await queue.close()


async def test_in_process_jobs_are_tenant_scoped(job_table: JobTable) -> None:
    queue = in_process(FakeIngest(), job_table, concurrency=1)
    job = payload("tenant-a", "doc")
    await queue.submit(job)
    await queue.wait_idle()
    assert await queue.get("tenant-b", job.job_id) is None
    assert await queue.get("tenant-a", job.job_id) is not None
    assert await queue.get("tenant-a", "no-such-job") is None
    await queue.close()


async def test_in_process_concurrency_is_bounded(job_table: JobTable) -> None:
    gate = asyncio.Event()
    ingest = FakeIngest(gate=gate)
    queue = in_process(ingest, job_table)
    jobs = [payload("t", f"d{i}") for i in range(5)]
    for job in jobs:
        await queue.submit(job)
    await until(lambda: ingest.running == 2, "two jobs running")
    await turns()  # and no third one starts
    assert ingest.running == 2
    assert await queue.depth() == 3
    statuses = [(await queue.get("t", job.job_id)).status for job in jobs]
    assert statuses.count(JobStatus.running) == 2
    assert statuses.count(JobStatus.queued) == 3
    gate.set()
    await queue.wait_idle()
    assert ingest.max_running == 2
    assert len(ingest.calls) == 5
    await queue.close()


async def test_shutdown_leaves_unfinished_jobs_queued_logs_each_and_the_next_start_runs_them(
    job_table: JobTable, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = FakeIngest(gate=asyncio.Event())  # never released: the job is mid-ingest at shutdown
    queue = in_process(ingest, job_table, concurrency=1)
    slow, waiting = payload("t", "slow"), payload("t", "later")
    await queue.submit(slow)
    await queue.submit(waiting)
    await until(lambda: ingest.running == 1, "the slow job mid-ingest")
    assert (await queue.get("t", slow.job_id)).status is JobStatus.running
    with caplog.at_level(logging.WARNING, logger="service.app.jobs.queue"):
        await queue.close(grace_seconds=0)
    for job in (slow, waiting):
        record = await queue.get("t", job.job_id)
        assert record.status is JobStatus.queued
        assert record.started_at is None
    left = [r for r in caplog.records if r.getMessage().endswith("left queued for the next start")]
    assert f"ingestion job {slow.job_id} (tenant t, document slow) left" in caplog.text
    assert sorted((r.job_id, r.tenant, r.document_id) for r in left) == sorted(
        [(slow.job_id, "t", "slow"), (waiting.job_id, "t", "later")]
    )
    assert job_table.get(slow.job_id).attempts == 0  # a shutdown is not the job's fault

    # The next process (same table) resumes both and they succeed.
    again = FakeIngest()
    resumed = in_process(again, job_table)
    assert await resumed.start() == 2
    await resumed.wait_idle()
    assert sorted(call[1] for call in again.calls) == ["later", "slow"]
    for job in (slow, waiting):
        assert (await resumed.get("t", job.job_id)).status is JobStatus.succeeded
    await resumed.close()


def test_a_job_payload_of_max_document_bytes_round_trips_through_sqlite(job_table: JobTable) -> None:
    """The payload is the whole text: MAX_DOCUMENT_BYTES of it, in the characters JSON escapes most (6 bytes
    each), is one row of six times that size, far below SQLite's 1 GB value limit; polls do not read it."""
    limit = Settings(_env_file=None).max_document_bytes
    text = "\x01" * limit + "é"
    job = IngestPayload(job_id=new_job_id(), tenant_id="t", document_id="huge", text=text)
    job_table.insert(job.job_id, "t", "huge", job.model_dump_json())
    assert job_table.payload_size(job.job_id) > 6 * limit
    assert job_table.get(job.job_id).payload == ""
    claimed = job_table.claim(job.job_id, lease_seconds=60)
    assert IngestPayload.model_validate_json(claimed.payload).text == text


async def test_a_job_running_when_the_process_died_resumes_at_once_and_a_crash_loop_ends_failed(
    job_table: JobTable,
) -> None:
    # What kill -9 leaves: rows claimed (running, a lease of an hour) by a process that is gone.
    died = payload("t", "died")
    crashes = payload("t", "crashes")
    for job in (died, crashes):
        job_table.insert(job.job_id, job.tenant_id, job.document_id, job.model_dump_json())
        assert job_table.claim(job.job_id, lease_seconds=3600) is not None
    with job_table.engine.begin() as connection:  # its third claim: it died running this one 3 times
        connection.execute(
            jobs_table.update().where(jobs_table.c.job_id == crashes.job_id).values(attempts=3)
        )
    ingest = FakeIngest()
    queue = in_process(ingest, job_table, jobs_max_attempts=3)
    # Exclusive (the store lock is ours): no waiting for the lease to expire.
    assert await queue.start() == 1
    await queue.wait_idle()
    assert ingest.calls == [("t", "died", "hello")]
    assert (await queue.get("t", died.job_id)).status is JobStatus.succeeded
    failed = await queue.get("t", crashes.job_id)
    assert failed.status is JobStatus.failed
    assert (
        failed.error
        == "internal: the service stopped 3 times while running this job; it is not resumed again"
    )
    await queue.close()


async def test_a_stored_job_that_cannot_be_read_fails_with_its_reason_and_is_not_retried(
    job_table: JobTable,
) -> None:
    job_table.insert("f" * 32, "t", "doc", '{"job_id": "not a payload"}')
    ingest = FakeIngest()
    queue = in_process(ingest, job_table)
    await queue.start()
    await queue.wait_idle()
    row = job_table.get("f" * 32)
    assert row.status == "failed"
    assert row.error == "invalid_input: the stored job cannot be read (ValidationError)"
    assert row.attempts == 1
    assert ingest.calls == []
    await queue.close()


async def test_a_job_failing_on_an_outage_is_retried_in_process_then_fails_with_the_reason(
    job_table: JobTable,
) -> None:
    class Outage(FakeIngest):
        async def ingest(self, tenant_id: str, document_id: str, **kwargs: Any) -> dict[str, Any]:
            self.calls.append((tenant_id, document_id, kwargs["text"]))
            raise ServiceUnavailable("embedding failed; nothing was changed, retry later")

    ingest = Outage()
    queue = in_process(ingest, job_table, jobs_max_attempts=3, jobs_retry_base_seconds=0.001)
    job = payload("t", "doc")
    await queue.submit(job)
    await queue.wait_idle()
    assert len(ingest.calls) == 3
    record = await queue.get("t", job.job_id)
    assert record.status is JobStatus.failed
    assert record.error == "service_unavailable: embedding failed; nothing was changed, retry later"
    await queue.close()


def test_job_record_round_trips_with_its_tenant_but_hides_it_from_the_api() -> None:
    record = JobRecord.queued(payload("tenant-x", "doc"))
    restored = JobRecord.from_storage(record.to_storage())
    assert restored.tenant_id == "tenant-x"
    assert "tenant_id" not in record.model_dump()


@dataclass
class FakeWorkerServices:
    ingest: FakeIngest
    registry: DocumentRegistry


async def test_arq_queue_and_worker_on_real_redis(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_url, jobs_queue_name=f"test-jobs-{uuid.uuid4().hex[:8]}")
    registry = DocumentRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.migrate()
    queue = await ArqJobQueue.connect(settings, JobTable(registry))
    ingest = FakeIngest()
    try:
        ok, bad = payload("t1", "doc", "some text"), payload("t1", "bad")
        await queue.submit(ok)
        await queue.submit(bad)
        assert await queue.depth() == 2
        assert (await queue.get("t1", ok.job_id)).status is JobStatus.queued
        succeeded_before = JOBS.labels(status="succeeded")._value.get()

        services = FakeWorkerServices(ingest, registry)
        worker = build_worker(settings, services=services, burst=True, handle_signals=False)
        try:
            await worker.async_run()
        finally:
            await worker.close()

        # The stored payload carried the extracted text (the two jobs run concurrently: either may go first).
        assert ("t1", "doc", "some text") in ingest.calls
        done = await queue.get("t1", ok.job_id)
        assert done.status is JobStatus.succeeded
        assert done.result["status"] == "created"
        failed = await queue.get("t1", bad.job_id)
        assert failed.status is JobStatus.failed
        assert failed.error == "invalid_input: text is empty"
        assert await queue.get("t2", ok.job_id) is None
        assert await queue.depth() == 0
        assert JOBS.labels(status="succeeded")._value.get() == succeeded_before + 1
        # The record lives in the database: Redis losing everything changes nothing for a poller.
        redis.Redis.from_url(redis_url).flushall()
        other_replica = await ArqJobQueue.connect(settings, JobTable(registry))
        try:
            assert (await other_replica.get("t1", ok.job_id)).status is JobStatus.succeeded
        finally:
            await other_replica.close()
    finally:
        await queue.close()
        registry.close()


def test_worker_refuses_to_start_without_redis() -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        build_worker(Settings(redis_url=None))


# --- through the API ------------------------------------------------------------------------------------

TEXT = "Basalt columns form when thick lava flows cool slowly and contract into hexagonal prisms."


def wait_in_process(client: TestClient) -> None:
    client.portal.call(client.app.state.services.jobs.wait_idle)


def run_worker_burst(client: TestClient, settings: Settings) -> None:
    """Run an arq worker in burst mode on the app's own event loop and services (as a worker pod would)."""

    async def burst() -> None:
        worker = build_worker(settings, services=client.app.state.services, burst=True, handle_signals=False)
        try:
            await worker.async_run()
        finally:
            await worker.close()

    client.portal.call(burst)


def queue_depth_metric(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("rag_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("rag_queue_depth not exposed")


def test_async_put_returns_202_and_the_job_succeeds_in_process(
    make_client: MakeClient, headers_a: dict[str, str]
) -> None:
    with make_client() as client:
        accepted = client.put("/v1/documents/basalt?async=true", json={"text": TEXT}, headers=headers_a)
        assert accepted.status_code == 202
        body = accepted.json()
        assert body["status"] == "queued"
        assert body["document_id"] == "basalt"
        assert accepted.headers["Location"] == body["status_url"] == f"/v1/jobs/{body['job_id']}"
        wait_in_process(client)

        job = client.get(body["status_url"], headers=headers_a).json()
        assert job["status"] == "succeeded"
        assert job["result"]["status"] == "created"
        assert job["result"]["chunks"] >= 1
        assert job["error"] is None
        assert "tenant_id" not in job
        hits = client.post("/v1/search", json={"query": "hexagonal lava columns"}, headers=headers_a).json()
        assert hits["results"][0]["document_id"] == "basalt"


def test_async_upload_returns_202(make_client: MakeClient, headers_a: dict[str, str]) -> None:
    with make_client() as client:
        accepted = client.post(
            "/v1/documents?async=true",
            files={"file": ("notes.md", b"# Basalt\n\n" + TEXT.encode(), "text/markdown")},
            headers=headers_a,
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["document_id"] == "notes.md"
        wait_in_process(client)
        job = client.get(accepted.json()["status_url"], headers=headers_a).json()
        assert job["status"] == "succeeded"
        assert (
            client.get("/v1/documents/notes.md", headers=headers_a).json()["content_type"] == "text/markdown"
        )


def test_a_failing_job_reports_failed_with_the_error(
    make_client: MakeClient, headers_a: dict[str, str]
) -> None:
    # One try: an outage is retried with back-off first (test_a_job_failing_on_an_outage_is_retried_in_process...).
    with make_client(jobs_max_attempts=1) as client:
        accepted = client.put(
            "/v1/documents/outage?async=true", json={"text": f"notes {FAILING_MARKER}"}, headers=headers_a
        )
        assert accepted.status_code == 202
        wait_in_process(client)
        job = client.get(accepted.json()["status_url"], headers=headers_a).json()
        assert job["status"] == "failed"
        assert job["error"] == "service_unavailable: embedding failed; nothing was changed, retry later"
        assert job["result"] is None
        assert client.get("/v1/documents/outage", headers=headers_a).status_code == 404


def test_what_can_be_checked_up_front_is_a_422_not_a_job(
    make_client: MakeClient, headers_a: dict[str, str]
) -> None:
    with make_client() as client:
        nested = client.put(
            "/v1/documents/d?async=true", json={"text": TEXT, "metadata": {"a": {"b": 1}}}, headers=headers_a
        )
        assert nested.status_code == 422
        bad_id = client.put("/v1/documents/bad%20id?async=true", json={"text": TEXT}, headers=headers_a)
        assert bad_id.status_code == 422
        blank = client.put("/v1/documents/blank?async=true", json={"text": "   \n "}, headers=headers_a)
        assert blank.status_code == 422
        assert blank.json()["error"]["message"] == "text is empty"
        assert client.get("/v1/jobs/not-a-job", headers=headers_a).status_code == 404
        assert client.get("/v1/jobs/bad$id", headers=headers_a).status_code == 422


def test_arq_jobs_on_redis_and_postgres_survive_an_api_restart(
    tmp_path, embedder, redis_url: str, postgres_url: str, headers_a: dict[str, str]
) -> None:
    settings = production_settings(
        tmp_path,
        redis_url=redis_url,
        database_url=fresh_database(postgres_url, f"jobs_{uuid.uuid4().hex[:8]}"),
        jobs_queue_name=f"test-api-jobs-{uuid.uuid4().hex[:8]}",
        jobs_max_attempts=1,  # report the outage at once (retries: tests/service/test_job_faults.py)
    )
    with TestClient(create_app(settings, embedder=FailingEmbedder(embedder))) as client:
        assert isinstance(client.app.state.services.jobs, ArqJobQueue)
        ok = client.put("/v1/documents/basalt?async=true", json={"text": TEXT}, headers=headers_a)
        bad = client.put(
            "/v1/documents/outage?async=true", json={"text": f"notes {FAILING_MARKER}"}, headers=headers_a
        )
        assert ok.status_code == bad.status_code == 202
        assert client.get(ok.json()["status_url"], headers=headers_a).json()["status"] == "queued"
        assert queue_depth_metric(client) == 2

    # The API process is gone; a new one (and a worker) pick the jobs up from Redis.
    with TestClient(create_app(settings, embedder=FailingEmbedder(embedder))) as client:
        assert client.get(ok.json()["status_url"], headers=headers_a).json()["status"] == "queued"
        run_worker_burst(client, settings)
        job = client.get(ok.json()["status_url"], headers=headers_a).json()
        assert job["status"] == "succeeded", job
        assert job["result"]["status"] == "created"
        failed = client.get(bad.json()["status_url"], headers=headers_a).json()
        assert failed["status"] == "failed"
        assert failed["error"] == "service_unavailable: embedding failed; nothing was changed, retry later"
        assert queue_depth_metric(client) == 0
        hits = client.post("/v1/search", json={"query": "hexagonal lava columns"}, headers=headers_a).json()
        assert hits["results"][0]["document_id"] == "basalt"


def test_python_m_service_worker_refuses_redis_with_the_embedded_vector_store(tmp_path: Path) -> None:
    """The local-mode store opens in one process: a worker on it would never see the API's data."""
    env = {
        **os.environ,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATA_DIR": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("QDRANT_URL", None)
    for module in ("service.worker", "service"):
        proc = subprocess.run(
            [sys.executable, "-m", module], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "REDIS_URL needs QDRANT_URL" in lines[0]
