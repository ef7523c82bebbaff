"""Async ingestion jobs: the in-process queue, the arq queue + worker on a real Redis, and the HTTP flow
(`?async=true` -> 202 {job_id} -> GET /v1/jobs/{id}), tenant-scoped."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from service.app.core.config import Settings
from service.app.core.errors import InvalidInput
from service.app.core.metrics import JOBS
from service.app.jobs.models import IngestPayload, JobRecord, JobStatus, new_job_id
from service.app.jobs.queue import JOB_KEY_PREFIX, ArqJobQueue, InProcessJobQueue
from service.worker import build_worker


@dataclass
class FakeIngest:
    """Records calls; fails on documents named 'bad'; optionally blocks until released."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    running: int = 0
    max_running: int = 0

    async def ingest(
        self, tenant_id: str, document_id: str, *, text: str, metadata: Any, content_type: str
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


async def test_in_process_jobs_run_and_report_results() -> None:
    ingest = FakeIngest()
    queue = InProcessJobQueue(ingest, max_concurrency=2, ttl_seconds=3600)
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
    await queue.close()


async def test_in_process_jobs_are_tenant_scoped() -> None:
    queue = InProcessJobQueue(FakeIngest(), max_concurrency=1, ttl_seconds=3600)
    job = payload("tenant-a", "doc")
    await queue.submit(job)
    await queue.wait_idle()
    assert await queue.get("tenant-b", job.job_id) is None
    assert await queue.get("tenant-a", job.job_id) is not None
    assert await queue.get("tenant-a", "no-such-job") is None


async def test_in_process_concurrency_is_bounded() -> None:
    gate = asyncio.Event()
    ingest = FakeIngest(gate=gate)
    queue = InProcessJobQueue(ingest, max_concurrency=2, ttl_seconds=3600)
    jobs = [payload("t", f"d{i}") for i in range(5)]
    for job in jobs:
        await queue.submit(job)
    for _ in range(50):  # event-loop turns: plenty for every task to start that is allowed to
        await asyncio.sleep(0)
    assert ingest.running == 2
    assert await queue.depth() == 3
    statuses = [(await queue.get("t", job.job_id)).status for job in jobs]
    assert statuses.count(JobStatus.running) == 2
    assert statuses.count(JobStatus.queued) == 3
    gate.set()
    await queue.wait_idle()
    assert ingest.max_running == 2
    assert len(ingest.calls) == 5


def test_job_record_round_trips_with_its_tenant_but_hides_it_from_the_api() -> None:
    record = JobRecord.queued(payload("tenant-x", "doc"))
    restored = JobRecord.from_storage(record.to_storage())
    assert restored.tenant_id == "tenant-x"
    assert "tenant_id" not in record.model_dump()


async def test_arq_queue_and_worker_on_real_redis(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, jobs_queue_name=f"test-jobs-{uuid.uuid4().hex[:8]}")
    queue = await ArqJobQueue.connect(settings)
    ingest = FakeIngest()
    try:
        ok, bad = payload("t1", "doc", "some text"), payload("t1", "bad")
        await queue.submit(ok)
        await queue.submit(bad)
        assert await queue.depth() == 2
        assert (await queue.get("t1", ok.job_id)).status is JobStatus.queued
        succeeded_before = JOBS.labels(status="succeeded")._value.get()

        worker = build_worker(settings, services=FakeServices(ingest), burst=True, handle_signals=False)
        try:
            await worker.async_run()
        finally:
            await worker.close()

        assert ingest.calls[0] == ("t1", "doc", "some text")  # the payload carried the extracted text
        done = await queue.get("t1", ok.job_id)
        assert done.status is JobStatus.succeeded
        assert done.result["status"] == "created"
        failed = await queue.get("t1", bad.job_id)
        assert failed.status is JobStatus.failed
        assert failed.error == "invalid_input: text is empty"
        assert await queue.get("t2", ok.job_id) is None
        assert await queue.depth() == 0
        assert JOBS.labels(status="succeeded")._value.get() == succeeded_before + 1
        # State lives in Redis with a TTL: another API replica (or a restarted one) sees the same record.
        ttl = redis.Redis.from_url(redis_url).ttl(JOB_KEY_PREFIX + ok.job_id)
        assert 0 < ttl <= settings.jobs_result_ttl_seconds
        other_replica = await ArqJobQueue.connect(settings)
        try:
            assert (await other_replica.get("t1", ok.job_id)).status is JobStatus.succeeded
        finally:
            await other_replica.close()
    finally:
        await queue.close()


def test_worker_refuses_to_start_without_redis() -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        build_worker(Settings(redis_url=None))
