"""Async ingestion queues: in-process (asyncio, embedded defaults) or durable jobs woken through arq on Redis.

With REDIS_URL (separate worker processes, `python -m service.worker`) the job record and its payload live in the
registry database (service.app.store.jobstore), inserted before the API answers 202; Redis carries only a
wake-up (the job id) for the arq workers. So a Redis crash, even without persistence, loses no acknowledged job:
workers sweep the database every JOBS_SWEEP_SECONDS and re-send wake-ups for queued jobs that have none, and
reclaim running jobs whose worker died (lease = GC_GRACE_SECONDS). A job that fails on a backend outage (503) is
retried with exponential back-off up to JOBS_MAX_ATTEMPTS; invalid input fails it at once. A job interrupted by
a worker shutdown goes back to queued. Duplicate wake-ups are harmless: a worker claims a job with a
compare-and-set before running it.

In-process jobs (no Redis: the embedded single-process set-up) run on the API's event loop through `run_ingest`
with their records in memory; they live and die with the API process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from anyio import to_thread

from service.app.core.config import Settings
from service.app.core.errors import RagError
from service.app.core.logging import request_id_var
from service.app.core.metrics import FAILURES, JOB_QUEUE_DEPTH, JOB_QUEUE_OLDEST_AGE, JOB_SECONDS, JOBS
from service.app.jobs.models import IngestPayload, JobRecord, JobStatus, utcnow
from service.app.store.jobstore import FAILED, SUCCEEDED, JobRow, JobTable

if TYPE_CHECKING:
    # arq and redis (about 0.6 s to import) are loaded only with REDIS_URL (`ArqJobQueue`, the worker).
    from arq.connections import ArqRedis, RedisSettings

logger = logging.getLogger(__name__)

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
    started = time.perf_counter()
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
    JOB_SECONDS.labels(status=record.status.value).observe(time.perf_counter() - started)
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

    async def stats(self) -> tuple[int, float]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class InProcessJobQueue:
    """asyncio tasks on the API's event loop, at most JOBS_MAX_CONCURRENCY ingesting at once."""

    def __init__(self, ingest: Ingestor, *, max_concurrency: int, ttl_seconds: int) -> None:
        self._ingest = ingest
        self._store = MemoryJobStore(ttl_seconds)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, float] = {}  # job id -> time.monotonic() at submit, for the oldest age

    async def submit(self, payload: IngestPayload) -> JobRecord:
        record = JobRecord.queued(payload)
        await self._store.put(record)
        self._waiting[payload.job_id] = time.monotonic()
        JOB_QUEUE_DEPTH.set(len(self._waiting))
        task = asyncio.create_task(self._run(payload), name=f"ingest-job-{payload.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    async def _run(self, payload: IngestPayload) -> None:
        async with self._semaphore:
            self._waiting.pop(payload.job_id, None)
            JOB_QUEUE_DEPTH.set(len(self._waiting))
            await run_ingest(self._ingest, self._store, payload)

    async def get(self, tenant_id: str, job_id: str) -> JobRecord | None:
        record = await self._store.get(job_id)
        return record if record is not None and record.tenant_id == tenant_id else None

    async def depth(self) -> int:
        return len(self._waiting)

    async def stats(self) -> tuple[int, float]:
        """(jobs waiting for a slot, the oldest one's age in seconds), also set as the queue gauges."""
        oldest = time.monotonic() - min(self._waiting.values()) if self._waiting else 0.0
        JOB_QUEUE_DEPTH.set(len(self._waiting))
        JOB_QUEUE_OLDEST_AGE.set(oldest)
        return len(self._waiting), oldest

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


def job_record(row: JobRow) -> JobRecord:
    """The API view of a stored job."""
    return JobRecord(
        job_id=row.job_id,
        tenant_id=row.tenant_id,
        document_id=row.document_id,
        status=JobStatus(row.status),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
        result=row.result,
    )


def retry_delay(settings: Settings, attempts: int) -> float:
    """Exponential back-off before the next try of a job that failed on a backend outage."""
    return float(
        min(settings.jobs_retry_max_seconds, settings.jobs_retry_base_seconds * 2 ** max(0, attempts - 1))
    )


async def wake(pool: ArqRedis, settings: Settings, job_id: str, *, defer_seconds: float = 0) -> bool:
    """Send a worker the wake-up for ``job_id``; False (logged) when Redis fails: the sweeper re-sends it."""
    from redis.exceptions import RedisError

    try:
        await asyncio.wait_for(
            pool.enqueue_job(
                ARQ_FUNCTION,
                job_id,
                _queue_name=settings.jobs_queue_name,
                _defer_by=defer_seconds or None,
            ),
            timeout=REDIS_TIMEOUT_SECONDS * 2,
        )
    except (RedisError, OSError, TimeoutError) as exc:
        FAILURES.labels(component="jobs").inc()
        logger.warning("job wake-up not sent (Redis: %s); a worker sweep will send it", type(exc).__name__)
        return False
    return True


async def run_durable_job(
    ingest: Ingestor, table: JobTable, pool: ArqRedis | None, settings: Settings, job_id: str
) -> str:
    """Claim and run one stored job; a backend outage puts it back to queued with back-off (up to
    JOBS_MAX_ATTEMPTS tries), any other error fails it. Returns what happened (for arq's result)."""
    row = await to_thread.run_sync(table.claim, job_id, settings.gc_grace_seconds)
    if row is None:
        return "not claimable"  # done, running elsewhere, not due yet, or unknown
    payload = IngestPayload.model_validate_json(row.payload)
    token = request_id_var.set(payload.request_id or request_id_var.get())
    started = time.perf_counter()
    try:
        try:
            result = await ingest.ingest(
                payload.tenant_id,
                payload.document_id,
                text=payload.text,
                metadata=payload.metadata,
                content_type=payload.content_type,
            )
        except asyncio.CancelledError:
            # Worker shutdown: queued again at once, for the next worker.
            await to_thread.run_sync(table.release, job_id)
            raise
        except Exception as exc:
            error = (
                f"{exc.code}: {exc.message}"
                if isinstance(exc, RagError)
                else "internal: ingestion failed unexpectedly"
            )
            retryable = isinstance(exc, RagError) and exc.status_code >= 500
            extra = {"job_id": job_id, "tenant": payload.tenant_id, "error": error, "attempt": row.attempts}
            if retryable and row.attempts < settings.jobs_max_attempts:
                delay = retry_delay(settings, row.attempts)
                await to_thread.run_sync(table.retry_later, job_id, delay, error)
                logger.warning("ingestion job will be retried in %.0f s", delay, extra=extra)
                JOB_SECONDS.labels(status="retry").observe(time.perf_counter() - started)
                if pool is not None:
                    await wake(pool, settings, job_id, defer_seconds=delay)
                return "retry"
            if not isinstance(exc, RagError) or exc.status_code >= 500:
                FAILURES.labels(component="jobs").inc()
            logger.warning("ingestion job failed", exc_info=not isinstance(exc, RagError), extra=extra)
            await to_thread.run_sync(lambda: table.finish(job_id, FAILED, error=error, result=None))
            JOBS.labels(status="failed").inc()
            JOB_SECONDS.labels(status="failed").observe(time.perf_counter() - started)
            return "failed"
        await to_thread.run_sync(
            lambda: table.finish(job_id, SUCCEEDED, error=None, result=_result_dict(result))
        )
        JOBS.labels(status="succeeded").inc()
        JOB_SECONDS.labels(status="succeeded").observe(time.perf_counter() - started)
        logger.info(
            "ingestion job succeeded",
            extra={"job_id": job_id, "tenant": payload.tenant_id, "document_id": payload.document_id},
        )
        return "succeeded"
    finally:
        request_id_var.reset(token)


async def queue_stats(table: JobTable) -> tuple[int, float]:
    """Depth and oldest queued job's age from the job table, set on rag_queue_depth / ..._oldest_job_age."""
    depth, oldest = await to_thread.run_sync(table.queue_stats)
    JOB_QUEUE_DEPTH.set(depth)
    JOB_QUEUE_OLDEST_AGE.set(oldest)
    return depth, oldest


async def sweep(table: JobTable, pool: ArqRedis, settings: Settings) -> int:
    """Re-send wake-ups for jobs the database says should run but Redis may have lost; returns how many."""
    stale = max(1.0, settings.jobs_sweep_seconds * 6)
    ids = await to_thread.run_sync(lambda: table.due_for_wakeup(stale_seconds=stale))
    sent = 0
    for job_id in ids:
        if not await wake(pool, settings, job_id):
            break  # Redis is down: the rest stay due and are retried by a later sweep
        sent += 1
    if ids:
        logger.info("job wake-ups re-sent", extra={"jobs": sent, "due": len(ids)})
    await to_thread.run_sync(table.purge_finished, settings.jobs_result_ttl_seconds)
    return sent


class ArqJobQueue:
    """Durable jobs: the record and payload in the registry database (inserted before the 202), a wake-up for
    the arq workers in Redis. A Redis outage delays jobs, it never loses one: workers sweep the database for
    queued jobs without a live wake-up (service.worker)."""

    def __init__(self, pool: ArqRedis, settings: Settings, table: JobTable) -> None:
        self._pool = pool
        self._settings = settings
        self._table = table

    @classmethod
    async def connect(cls, settings: Settings, table: JobTable) -> ArqJobQueue:
        """A client that connects on first use: the API starts (and reports not-ready) while Redis is down."""
        from arq.connections import ArqRedis

        assert settings.redis_url, "ArqJobQueue needs REDIS_URL"
        pool = ArqRedis.from_url(
            settings.redis_url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
        )
        pool.default_queue_name = settings.jobs_queue_name
        return cls(pool, settings, table)

    async def submit(self, payload: IngestPayload) -> JobRecord:
        # The row is the promise: no row (database down) -> 503, never a 202.
        row = await to_thread.run_sync(
            lambda: self._table.insert(
                payload.job_id, payload.tenant_id, payload.document_id, payload.model_dump_json()
            )
        )
        await wake(self._pool, self._settings, payload.job_id)
        JOB_QUEUE_DEPTH.inc()
        return job_record(row)

    async def get(self, tenant_id: str, job_id: str) -> JobRecord | None:
        row = await to_thread.run_sync(self._table.get, job_id)
        return job_record(row) if row is not None and row.tenant_id == tenant_id else None

    async def depth(self) -> int:
        depth, _ = await self.stats()
        return depth

    async def stats(self) -> tuple[int, float]:
        """(queued jobs, oldest queued job's age in seconds), also set as the queue gauges."""
        return await queue_stats(self._table)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._pool.ping(), timeout=REDIS_TIMEOUT_SECONDS * 2))
        except Exception:
            return False

    async def close(self) -> None:
        await self._pool.aclose()


def redis_settings(settings: Settings) -> RedisSettings:
    """arq connection settings from REDIS_URL (short retries: readiness, not patience, reports an outage)."""
    from arq.connections import RedisSettings

    assert settings.redis_url
    return RedisSettings.from_dsn(settings.redis_url)


async def build_job_queue(settings: Settings, ingest: Ingestor, table: JobTable | None = None) -> JobQueue:
    """Durable jobs woken through arq on Redis when REDIS_URL is set, else the in-process queue."""
    if settings.redis_url:
        assert table is not None, "durable jobs need the registry database's job table"
        return await ArqJobQueue.connect(settings, table)
    return InProcessJobQueue(
        ingest, max_concurrency=settings.jobs_max_concurrency, ttl_seconds=settings.jobs_result_ttl_seconds
    )
