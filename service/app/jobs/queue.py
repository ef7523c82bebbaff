"""Async ingestion queues: in-process (asyncio, embedded defaults) or arq on Redis (REDIS_URL set).

Both share `run_ingest`, which moves a job through queued -> running -> succeeded | failed and stores the
record after each step. With arq the record lives in Redis (`rag:job:<id>`, expiring after
JOBS_RESULT_TTL_SECONDS) and the payload waits in the arq queue, so jobs survive an API restart and run in
separate worker processes (`python -m service.worker`). In-process jobs live and die with the API process.

A job that fails is recorded as failed with the error message and not retried: ingestion errors (an invalid
document, a backend outage) are reported to the client, who can resubmit; the document id makes that idempotent.
A job interrupted by a worker shutdown goes back to queued and arq hands it to the next worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, Protocol

import redis.asyncio as aioredis
from arq.connections import ArqRedis, RedisSettings

from service.app.core.config import Settings
from service.app.core.errors import RagError
from service.app.core.logging import request_id_var
from service.app.core.metrics import FAILURES, JOB_QUEUE_DEPTH, JOBS
from service.app.jobs.models import IngestPayload, JobRecord, JobStatus, utcnow

logger = logging.getLogger(__name__)

JOB_KEY_PREFIX = "rag:job:"
REDIS_TIMEOUT_SECONDS = 2.0
ARQ_FUNCTION = "ingest_document"


class Ingestor(Protocol):
    """The part of H2's IngestService a job needs."""

    async def ingest(
        self, tenant_id: str, document_id: str, *, text: str, metadata: dict[str, Any], content_type: str
    ) -> Any: ...


class JobStore(Protocol):
    async def put(self, record: JobRecord) -> None: ...

    async def get(self, job_id: str) -> JobRecord | None: ...


class MemoryJobStore:
    """Job records in a dict; finished ones are dropped once older than the TTL."""

    def __init__(self, ttl_seconds: int) -> None:
        self._ttl_seconds = ttl_seconds
        self._records: dict[str, JobRecord] = {}

    async def put(self, record: JobRecord) -> None:
        self._records[record.job_id] = record.model_copy()
        now = utcnow()
        for job_id, old in list(self._records.items()):
            if old.finished_at is not None and (now - old.finished_at).total_seconds() > self._ttl_seconds:
                del self._records[job_id]

    async def get(self, job_id: str) -> JobRecord | None:
        record = self._records.get(job_id)
        return None if record is None else record.model_copy()


class RedisJobStore:
    """Job records as JSON strings in Redis with a TTL, shared by the API and the workers."""

    def __init__(self, client: aioredis.Redis, ttl_seconds: int) -> None:
        self._client = client
        self._ttl_seconds = ttl_seconds

    async def put(self, record: JobRecord) -> None:
        await self._client.set(JOB_KEY_PREFIX + record.job_id, record.to_storage(), ex=self._ttl_seconds)

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self._client.get(JOB_KEY_PREFIX + job_id)
        return None if raw is None else JobRecord.from_storage(raw)


def _result_dict(result: Any) -> dict[str, Any]:
    if isinstance(result, dict):
        return dict(result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    return {"value": result}


async def run_ingest(ingest: Ingestor, store: JobStore, payload: IngestPayload) -> JobRecord:
    """Run one ingestion job, recording running and then succeeded (with the result) or failed (with the error).

    Log lines written meanwhile carry the id of the request that submitted the job, in a worker process too.
    """
    token = request_id_var.set(payload.request_id or request_id_var.get())
    try:
        return await _run_ingest(ingest, store, payload)
    finally:
        request_id_var.reset(token)


async def _run_ingest(ingest: Ingestor, store: JobStore, payload: IngestPayload) -> JobRecord:
    record = await store.get(payload.job_id) or JobRecord.queued(payload)
    record.status = JobStatus.running
    record.started_at = utcnow()
    await store.put(record)
    try:
        result = await ingest.ingest(
            payload.tenant_id,
            payload.document_id,
            text=payload.text,
            metadata=payload.metadata,
            content_type=payload.content_type,
        )
    except asyncio.CancelledError:
        # Worker shutdown: back to queued; arq re-queues a cancelled job for the next worker (max_tries).
        record.status = JobStatus.queued
        record.started_at = None
        await store.put(record)
        raise
    except Exception as exc:
        record.status = JobStatus.failed
        if isinstance(exc, RagError):
            record.error = f"{exc.code}: {exc.message}"
        else:
            # Unexpected: keep internals out of the API response, the log has the traceback.
            record.error = "internal: ingestion failed unexpectedly"
        if not isinstance(exc, RagError) or exc.status_code >= 500:
            FAILURES.labels(component="jobs").inc()
        logger.warning(
            "ingestion job failed",
            exc_info=not isinstance(exc, RagError),
            extra={"job_id": payload.job_id, "tenant": payload.tenant_id, "error": record.error},
        )
    else:
        record.status = JobStatus.succeeded
        record.result = _result_dict(result)
    record.finished_at = utcnow()
    JOBS.labels(status=record.status.value).inc()
    await store.put(record)
    logger.info(
        "ingestion job %s",
        record.status.value,
        extra={"job_id": payload.job_id, "tenant": payload.tenant_id, "document_id": payload.document_id},
    )
    return record


class JobQueue(Protocol):
    """What the API needs from a queue backend."""

    async def submit(self, payload: IngestPayload) -> JobRecord: ...

    async def get(self, tenant_id: str, job_id: str) -> JobRecord | None: ...

    async def depth(self) -> int: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class InProcessJobQueue:
    """asyncio tasks on the API's event loop, at most JOBS_MAX_CONCURRENCY ingesting at once."""

    def __init__(self, ingest: Ingestor, *, max_concurrency: int, ttl_seconds: int) -> None:
        self._ingest = ingest
        self._store = MemoryJobStore(ttl_seconds)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting = 0

    async def submit(self, payload: IngestPayload) -> JobRecord:
        record = JobRecord.queued(payload)
        await self._store.put(record)
        self._waiting += 1
        JOB_QUEUE_DEPTH.set(self._waiting)
        task = asyncio.create_task(self._run(payload), name=f"ingest-job-{payload.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    async def _run(self, payload: IngestPayload) -> None:
        async with self._semaphore:
            self._waiting -= 1
            JOB_QUEUE_DEPTH.set(self._waiting)
            await run_ingest(self._ingest, self._store, payload)

    async def get(self, tenant_id: str, job_id: str) -> JobRecord | None:
        record = await self._store.get(job_id)
        return record if record is not None and record.tenant_id == tenant_id else None

    async def depth(self) -> int:
        return self._waiting

    async def ping(self) -> bool:
        return True

    async def wait_idle(self) -> None:
        """Wait until every submitted job has finished (graceful shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, grace_seconds: float = 30.0) -> None:
        """Let running jobs finish for up to `grace_seconds`, then cancel the rest (they are lost with the
        process; the registry's compare-and-set keeps a half-done ingestion invisible)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_seconds)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class ArqJobQueue:
    """Jobs enqueued to arq on Redis; records in Redis so any API replica can answer a status poll."""

    def __init__(self, pool: ArqRedis, settings: Settings) -> None:
        self._pool = pool
        self._queue_name = settings.jobs_queue_name
        self._store = RedisJobStore(pool, settings.jobs_result_ttl_seconds)

    @classmethod
    async def connect(cls, settings: Settings) -> ArqJobQueue:
        """A client that connects on first use: the API starts (and reports not-ready) while Redis is down."""
        assert settings.redis_url, "ArqJobQueue needs REDIS_URL"
        pool = ArqRedis.from_url(
            settings.redis_url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
        )
        pool.default_queue_name = settings.jobs_queue_name
        return cls(pool, settings)

    async def submit(self, payload: IngestPayload) -> JobRecord:
        record = JobRecord.queued(payload)
        await self._store.put(record)
        await self._pool.enqueue_job(
            ARQ_FUNCTION,
            payload.model_dump(mode="json"),
            _job_id=payload.job_id,
            _queue_name=self._queue_name,
        )
        JOB_QUEUE_DEPTH.set(await self.depth())
        return record

    async def get(self, tenant_id: str, job_id: str) -> JobRecord | None:
        record = await self._store.get(job_id)
        return record if record is not None and record.tenant_id == tenant_id else None

    async def depth(self) -> int:
        return int(await self._pool.zcard(self._queue_name))

    async def ping(self) -> bool:
        try:
            return bool(await self._pool.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._pool.aclose()


def redis_settings(settings: Settings) -> RedisSettings:
    """arq connection settings from REDIS_URL (short retries: readiness, not patience, reports an outage)."""
    assert settings.redis_url
    return RedisSettings.from_dsn(settings.redis_url)


async def build_job_queue(settings: Settings, ingest: Ingestor) -> JobQueue:
    """arq on Redis when REDIS_URL is set, else the in-process queue."""
    if settings.redis_url:
        return await ArqJobQueue.connect(settings)
    return InProcessJobQueue(
        ingest, max_concurrency=settings.jobs_max_concurrency, ttl_seconds=settings.jobs_result_ttl_seconds
    )
