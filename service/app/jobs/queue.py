"""Async ingestion queues: in-process (asyncio, embedded defaults) or durable jobs woken through arq on Redis.

With REDIS_URL (separate worker processes, `python -m service.worker`) the job record and its payload live in the
registry database (service.app.store.jobstore), inserted before the API answers 202; Redis carries only a
wake-up (the job id) for the arq workers. So a Redis crash, even without persistence, loses no acknowledged job:
workers sweep the database every JOBS_SWEEP_SECONDS and re-send wake-ups for queued jobs that have none, and
for running jobs whose lease expired. A job that fails on a backend outage (503) is retried with exponential
back-off up to JOBS_MAX_ATTEMPTS; invalid input fails it at once. A job interrupted by a worker shutdown goes back
to queued. Duplicate wake-ups are harmless: a worker claims a job with a compare-and-set before running it.

Leases: a claim holds the job for JOB_LEASE_SECONDS (30), and a heartbeat task (``keep_lease``) renews it every
third of that while the job runs, so a job of any length stays with its worker while a worker killed mid-job
(SIGKILL, OOM, a lost node) loses it within one lease: the next sweep wakes a worker that reclaims it. A worker
that stalled past its lease (a pause, a partition) and comes back finds its lease taken over at its next
renewal or at its commit, which holds the lease in the same transaction (fencing token), and writes nothing
more: see service.app.store.jobstore. Each claim counts as an attempt, so a job whose worker dies every time
fails after JOBS_MAX_ATTEMPTS claims.

In-process jobs (no Redis: the embedded single-process set-up) are the same rows in the same table (SQLite by
default), inserted before the 202 and claimed with the same compare-and-set; they run on the API's event loop,
at most JOBS_MAX_CONCURRENCY at once. So a 202 means what it means with workers: at start-up the API resumes
every job that was queued or running when the previous process stopped (SIGTERM, kill -9, a crash); the store's
exclusive lock proves that process is gone, so its running jobs are taken back at once rather than after their
lease. On shutdown running jobs get JOBS_SHUTDOWN_GRACE_SECONDS to finish, no new one starts, and each job left
for the next start is logged (one WARNING line with job_id, tenant and document_id). Re-running a job the
previous process was part-way through is safe: ingestion writes invisible points under a new version and commits
with a compare-and-set, so a half-done run leaves only orphans (collected) and a finished one makes the re-run
``unchanged``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from anyio import to_thread

from service.app.core.config import Settings
from service.app.core.errors import DiskFull, RagError, ServiceUnavailable
from service.app.core.faults import fault_point
from service.app.core.logging import request_id_var
from service.app.core.metrics import (
    FAILURES,
    JOB_QUEUE_DEPTH,
    JOB_QUEUE_OLDEST_AGE,
    JOB_SECONDS,
    JOBS,
    JOBS_DISK_WAITS,
    JOBS_LEASE_LOST,
    JOBS_RECLAIMED,
    JOBS_RUNNING,
    JOBS_RUNNING_OLDEST_AGE,
    JOBS_WAITING_FOR_SPACE,
)
from service.app.jobs.models import IngestPayload, JobRecord, JobStatus
from service.app.store.jobstore import FAILED, SUCCEEDED, JobLease, JobRow, JobTable, LeaseLost
from service.app.store.registry import CommitFence

if TYPE_CHECKING:
    # arq and redis (about 0.6 s to import) are loaded only with REDIS_URL (`ArqJobQueue`, the worker).
    from arq.connections import ArqRedis, RedisSettings

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 2.0
ARQ_FUNCTION = "ingest_document"
# A job that meets a full disk looks again this often at most (JOBS_RETRY_MAX_SECONDS when shorter).
DISK_WAIT_MAX_SECONDS = 60.0


def disk_wait_seconds(settings: Settings) -> float:
    """How long a job waiting for disk space waits before it looks again."""
    return min(DISK_WAIT_MAX_SECONDS, settings.jobs_retry_max_seconds)


class SpaceWaits:
    """The jobs this process holds back until the disk has room (rag_jobs_waiting_for_space). A job stays counted
    until it runs again here, or until it is overdue (another worker took it, or it was deleted)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def hold(self, job_id: str, seconds: float) -> bool:
        """Count ``job_id`` as waiting; True when it was not already."""
        first = job_id not in self._until
        self._until[job_id] = time.monotonic() + 2 * seconds + 30
        self.refresh()
        return first

    def release(self, job_id: str) -> None:
        if self._until.pop(job_id, None) is not None:
            self.refresh()

    def refresh(self) -> int:
        now = time.monotonic()
        self._until = {job_id: until for job_id, until in self._until.items() if until > now}
        JOBS_WAITING_FOR_SPACE.set(len(self._until))
        return len(self._until)


SPACE_WAITS = SpaceWaits()


class Ingestor(Protocol):
    """The part of H2's IngestService a job needs (``fence``: the job's lease, checked and held by the commit)."""

    async def ingest(
        self,
        tenant_id: str,
        document_id: str,
        *,
        text: str,
        metadata: dict[str, Any],
        content_type: str,
        fence: CommitFence | None = None,
        ticket: int | None = None,
    ) -> Any: ...


def _result_dict(result: Any) -> dict[str, Any]:
    if isinstance(result, dict):
        return dict(result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    return {"value": result}


class JobQueue(Protocol):
    """What the API needs from a queue backend."""

    async def submit(self, payload: IngestPayload) -> JobRecord: ...

    async def get(self, tenant_id: str, job_id: str) -> JobRecord | None: ...

    async def depth(self) -> int: ...

    async def stats(self) -> tuple[int, float]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class InProcessJobQueue:
    """Durable jobs (rows in the registry database) run as asyncio tasks on the API's event loop, at most
    JOBS_MAX_CONCURRENCY at once; see the module docstring for restarts and shutdown.

    ``exclusive``: this process holds the embedded store's lock, so no other process runs jobs of this table and
    running rows found at start-up belong to a process that is gone. Without it (a Qdrant server, no Redis,
    possibly several API replicas on one database) such rows are reclaimed when their lease expires.
    """

    def __init__(self, ingest: Ingestor, table: JobTable, settings: Settings, *, exclusive: bool) -> None:
        self._ingest = ingest
        self._table = table
        self._settings = settings
        self._exclusive = exclusive
        self._semaphore = asyncio.Semaphore(settings.jobs_max_concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}  # job id -> its task (waiting, or running)
        self._running: set[str] = set()
        self._retries: dict[str, float] = {}  # job id -> back-off before its next try (a backend outage)
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Resume the jobs the previous process left (queued, or running when it stopped) and start the sweeper
        (retries that came due, leases that expired, finished jobs past their TTL); returns how many resumed."""
        if self._exclusive:
            ids, failed, taken = await to_thread.run_sync(
                self._table.resume_after_restart, self._settings.jobs_max_attempts
            )
            JOBS_RECLAIMED.inc(taken)
        else:
            ids, failed = await to_thread.run_sync(
                lambda: self._table.due_for_wakeup(
                    stale_seconds=0, max_attempts=self._settings.jobs_max_attempts
                )
            )
        log_exhausted(failed)
        for job_id in ids:
            self._schedule(job_id)
        if ids:
            logger.info("resuming %d ingestion jobs left by the previous process", len(ids))
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="job-sweeper")
        return len(ids)

    async def submit(self, payload: IngestPayload) -> JobRecord:
        # The row is the promise: no row (database down) -> 503, never a 202.
        row = await to_thread.run_sync(
            lambda: self._table.insert(
                payload.job_id, payload.tenant_id, payload.document_id, payload.model_dump_json()
            )
        )
        if self._closing:  # acknowledged during the shutdown: durable, run by the next start
            self._log_left(row)
        self._schedule(payload.job_id)
        JOB_QUEUE_DEPTH.inc()
        return job_record(row)

    def _schedule(self, job_id: str, delay_seconds: float = 0.0) -> None:
        """Run ``job_id`` here (after ``delay_seconds``) unless it already has a task; a duplicate is harmless
        anyway (the claim is a compare-and-set), this only avoids the extra query."""
        if self._closing or job_id in self._tasks:
            return
        task = asyncio.create_task(self._run(job_id, delay_seconds), name=f"ingest-job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._done(job_id))

    def _done(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        delay = self._retries.pop(job_id, None)
        if delay is not None:
            self._schedule(job_id, delay)

    async def _run(self, job_id: str, delay_seconds: float) -> None:
        if delay_seconds > 0:
            await asyncio.sleep(delay_seconds)
        async with self._semaphore:
            if self._closing:
                return  # left queued for the next start
            self._running.add(job_id)
            try:
                await run_durable_job(
                    self._ingest,
                    self._table,
                    None,
                    self._settings,
                    job_id,
                    retry_later=self._retry_later,
                )
            except ServiceUnavailable as exc:
                # The database is down (claim or finish failed): the row says queued or running; the sweeper
                # (running: when its lease expires) or the next start picks it up.
                logger.warning("ingestion job not run: %s", exc.message, extra={"job_id": job_id})
            finally:
                self._running.discard(job_id)

    def _retry_later(self, job_id: str, delay_seconds: float) -> None:
        # Called from the job's own task, which is about to end: its done callback schedules the retry.
        self._retries[job_id] = delay_seconds

    async def _sweep_forever(self) -> None:
        settings = self._settings
        stale = max(1.0, settings.jobs_sweep_seconds * 6)
        while True:
            await asyncio.sleep(settings.jobs_sweep_seconds)
            try:
                # Jobs due without a task here: retries of a previous process, and (not exclusive) jobs
                # whose worker died and whose lease expired.
                ids, failed = await to_thread.run_sync(
                    lambda: self._table.due_for_wakeup(
                        stale_seconds=stale, max_attempts=settings.jobs_max_attempts
                    )
                )
                log_exhausted(failed)
                for job_id in ids:
                    self._schedule(job_id)
                await to_thread.run_sync(self._table.purge_finished, settings.jobs_result_ttl_seconds)
            except ServiceUnavailable as exc:
                logger.warning("job sweep failed: %s", exc.message)

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
        return True

    async def wait_idle(self) -> None:
        """Wait until every job scheduled here has finished (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self, grace_seconds: float | None = None) -> None:
        """Start no new job; give running ones up to ``grace_seconds`` (JOBS_SHUTDOWN_GRACE_SECONDS) to finish,
        then cancel them (back to queued). Every job left is durable and resumed at the next start; each is
        logged here as a WARNING."""
        if grace_seconds is None:
            grace_seconds = self._settings.jobs_shutdown_grace_seconds
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        waiting = {job_id: task for job_id, task in self._tasks.items() if job_id not in self._running}
        for task in waiting.values():
            task.cancel()
        running = {job_id: task for job_id, task in self._tasks.items() if job_id in self._running}
        if running:
            logger.info(
                "shutdown: waiting up to %.0f s for %d running ingestion jobs", grace_seconds, len(running)
            )
            await asyncio.wait(list(running.values()), timeout=grace_seconds)
        for task in running.values():
            # A cancelled job goes back to queued at once; its ingestion thread, which a cancellation cannot
            # interrupt, stops at its next check of the (now lost) lease: after the embedding batch it is in.
            task.cancel()
        tasks = [*waiting.values(), *running.values()]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        await asyncio.gather(*tasks, return_exceptions=True)
        left = [*running, *waiting]
        rows = await to_thread.run_sync(lambda: [self._table.get(job_id) for job_id in left]) if left else []
        for row in rows:
            if row is not None and row.status not in (SUCCEEDED, FAILED):
                self._log_left(row)

    @staticmethod
    def _log_left(row: JobRow) -> None:
        # The ids in the message too: the plain-text log format prints no extras.
        logger.warning(
            "ingestion job %s (tenant %s, document %s) left queued for the next start",
            row.job_id,
            row.tenant_id,
            row.document_id,
            extra={"job_id": row.job_id, "tenant": row.tenant_id, "document_id": row.document_id},
        )


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


async def keep_lease(lease: JobLease) -> None:
    """The heartbeat of a running job: renew its lease every third of JOB_LEASE_SECONDS until cancelled.

    Renewal finding the lease taken over (this process stalled past it: a pause, a partition from the
    database) marks it lost, and the job stops at its next check; so does a lease that could not be renewed
    (database unreachable) before it expired, since another worker may take it over from then on. A brief
    outage costs nothing: two renewals may fail before the lease is at risk."""
    period = lease.lease_seconds / 3
    valid_until = time.monotonic() + lease.lease_seconds
    while not lease.lost:
        await asyncio.sleep(period)
        attempted = time.monotonic()
        try:
            if not await to_thread.run_sync(lease.renew):
                return
            valid_until = attempted + lease.lease_seconds
        except ServiceUnavailable as exc:
            if time.monotonic() >= valid_until:
                lease.lose("its lease expired while the database was unreachable")
                return
            logger.warning("job lease not renewed: %s", exc.message, extra={"job_id": lease.job_id})


async def run_durable_job(
    ingest: Ingestor,
    table: JobTable,
    pool: ArqRedis | None,
    settings: Settings,
    job_id: str,
    *,
    retry_later: Callable[[str, float], None] | None = None,
) -> str:
    """Claim and run one stored job under a lease (JOB_LEASE_SECONDS, renewed by a heartbeat while it runs);
    a backend outage puts it back to queued with back-off (up to JOBS_MAX_ATTEMPTS tries; the retry is woken
    through ``pool``, or ``retry_later(job_id, delay)`` in-process), any other error fails it. A run whose lease
    was taken over writes nothing more (service.app.store.jobstore). Returns what happened (for arq's result).

    A full disk (DiskFull: the store's volume below READY_MIN_FREE_BYTES, the registry's database full) is no
    outage that passes by itself: the job waits for space instead, queued, looked at again every
    `disk_wait_seconds`, without spending an attempt, however long that takes (what was acknowledged is never
    failed for it). The store's room is checked before the claim, so a job waiting for the store's disk costs no
    embedding; a disk that fills during the run puts it back the same way. A full registry database (Postgres:
    not what the check before the claim looks at) is met only at the commit: such a job is chunked and embedded
    again at each look until the registry has room."""
    if not await _room_for(ingest, table, pool, settings, job_id, retry_later):
        return "waiting for disk space"
    row = await to_thread.run_sync(
        lambda: table.claim(job_id, settings.job_lease_seconds, max_attempts=settings.jobs_max_attempts)
    )
    if row is None:
        return "not claimable"  # done, running elsewhere, not due yet, or unknown
    extra = {
        "job_id": job_id,
        "tenant": row.tenant_id,
        "document_id": row.document_id,
        "attempt": row.attempts,
    }
    if row.reclaimed:
        JOBS_RECLAIMED.inc()
        logger.warning("ingestion job taken over: the lease of the worker running it expired", extra=extra)
    lease = table.lease(row, settings.job_lease_seconds)
    fault_point("job_claimed")
    heartbeat = asyncio.create_task(keep_lease(lease), name=f"job-lease-{job_id}")
    try:
        return await _run_claimed(ingest, lease, row, pool, settings, retry_later)
    except LeaseLost:
        JOBS_LEASE_LOST.inc()
        logger.warning(
            "ingestion job %s stopped, nothing more written for it: %s", job_id, lease.reason, extra=extra
        )
        return "lease lost"
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)


async def _room_for(
    ingest: Ingestor,
    table: JobTable,
    pool: ArqRedis | None,
    settings: Settings,
    job_id: str,
    retry_later: Callable[[str, float], None] | None,
) -> bool:
    """Whether the store has room for the job's write now; else the job is left queued (unclaimed), its row put
    off by `disk_wait_seconds` (``JobTable.wait_for_space``), and woken again then. Only the look that put the
    row off sends that wake-up: a duplicate look (a wake-up from the sweep, say) sends none, so a waiting job
    keeps one pending wake-up however long it waits (REVIEW_SERVICE21 MEDIUM 3: every look used to add one).
    Another refusal (a failed WAL sync) is the run's to handle."""
    check_room = getattr(ingest, "check_room", None)
    if check_room is None:
        return True
    try:
        await to_thread.run_sync(check_room)
    except DiskFull as exc:
        delay = disk_wait_seconds(settings)
        _wait_for_space(job_id, delay, exc.message)
        try:
            put_off = await to_thread.run_sync(
                table.wait_for_space, job_id, delay, f"waiting for disk space: {exc.message}"
            )
        except ServiceUnavailable:
            put_off = True  # the database is down too: keep the job's wake-ups going
        if put_off:
            await _wake_later(pool, settings, job_id, delay, retry_later)
        return False
    except ServiceUnavailable:
        return True
    SPACE_WAITS.release(job_id)
    return True


def _wait_for_space(job_id: str, delay: float, reason: str) -> None:
    JOBS_DISK_WAITS.inc()
    if SPACE_WAITS.hold(job_id, delay):
        logger.warning(
            "ingestion job %s waits for disk space (its attempts are not spent; looked at again every %.0f s): %s",
            job_id,
            delay,
            reason,
            extra={"job_id": job_id},
        )


async def _wake_later(
    pool: ArqRedis | None,
    settings: Settings,
    job_id: str,
    delay: float,
    retry_later: Callable[[str, float], None] | None,
) -> None:
    if pool is not None:
        await wake(pool, settings, job_id, defer_seconds=delay)
    elif retry_later is not None:
        retry_later(job_id, delay)


async def _run_claimed(
    ingest: Ingestor,
    lease: JobLease,
    row: JobRow,
    pool: ArqRedis | None,
    settings: Settings,
    retry_later: Callable[[str, float], None] | None,
) -> str:
    job_id = row.job_id
    try:
        payload = IngestPayload.model_validate_json(row.payload)
    except ValueError as exc:
        # Not retryable: a row no release of this service wrote (or a damaged one) would only fail again.
        error = f"invalid_input: the stored job cannot be read ({type(exc).__name__})"
        logger.warning(
            "ingestion job failed", extra={"job_id": job_id, "tenant": row.tenant_id, "error": error}
        )
        await to_thread.run_sync(lambda: lease.finish(FAILED, error=error, result=None))
        JOBS.labels(status="failed").inc()
        return "failed"
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
                fence=lease,
                ticket=payload.write_ticket,
            )
        except asyncio.CancelledError:
            # Worker shutdown (or arq's job timeout): the ingest thread, which a cancellation cannot interrupt,
            # stops at its next check of the lease; the job is queued again at once, for the next worker, and
            # the void token keeps the abandoned thread from committing if it gets that far.
            lease.lose("the worker is shutting down")
            await to_thread.run_sync(lease.release)
            raise
        except LeaseLost:
            raise
        except DiskFull as exc:
            delay = disk_wait_seconds(settings)
            reason = f"waiting for disk space: {exc.message}"
            await to_thread.run_sync(lambda: lease.retry_later(delay, reason, refund=True))
            _wait_for_space(job_id, delay, exc.message)
            JOB_SECONDS.labels(status="retry").observe(time.perf_counter() - started)
            await _wake_later(pool, settings, job_id, delay, retry_later)
            return "waiting for disk space"
        except Exception as exc:
            SPACE_WAITS.release(job_id)
            error = (
                f"{exc.code}: {exc.message}"
                if isinstance(exc, RagError)
                else "internal: ingestion failed unexpectedly"
            )
            retryable = isinstance(exc, RagError) and exc.status_code >= 500
            extra = {"job_id": job_id, "tenant": payload.tenant_id, "error": error, "attempt": row.attempts}
            if retryable and row.attempts < settings.jobs_max_attempts:
                delay = retry_delay(settings, row.attempts)
                await to_thread.run_sync(lease.retry_later, delay, error)
                logger.warning("ingestion job will be retried in %.0f s", delay, extra=extra)
                JOB_SECONDS.labels(status="retry").observe(time.perf_counter() - started)
                if pool is not None:
                    await wake(pool, settings, job_id, defer_seconds=delay)
                elif retry_later is not None:
                    retry_later(job_id, delay)
                return "retry"
            if not isinstance(exc, RagError) or exc.status_code >= 500:
                FAILURES.labels(component="jobs").inc()
            logger.warning("ingestion job failed", exc_info=not isinstance(exc, RagError), extra=extra)
            await to_thread.run_sync(lambda: lease.finish(FAILED, error=error, result=None))
            JOBS.labels(status="failed").inc()
            JOB_SECONDS.labels(status="failed").observe(time.perf_counter() - started)
            return "failed"
        await to_thread.run_sync(lambda: lease.finish(SUCCEEDED, error=None, result=_result_dict(result)))
        SPACE_WAITS.release(job_id)
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
    """Queued and running jobs from the job table, set on rag_queue_depth / rag_queue_oldest_job_age_seconds
    and rag_jobs_running / rag_jobs_running_oldest_age_seconds; returns (queued, oldest queued job's age)."""
    stats = await to_thread.run_sync(table.stats)
    SPACE_WAITS.refresh()
    JOB_QUEUE_DEPTH.set(stats.queued)
    JOB_QUEUE_OLDEST_AGE.set(stats.oldest_queued_seconds)
    JOBS_RUNNING.set(stats.running)
    JOBS_RUNNING_OLDEST_AGE.set(stats.oldest_running_seconds)
    return stats.queued, stats.oldest_queued_seconds


def log_exhausted(rows: list[JobRow]) -> None:
    """Jobs failed because their worker died (lease expired, or the embedded process stopped) too many times."""
    for row in rows:
        JOBS.labels(status="failed").inc()
        logger.error(
            "ingestion job failed: %s",
            row.error,
            extra={"job_id": row.job_id, "tenant": row.tenant_id, "document_id": row.document_id},
        )


async def sweep(table: JobTable, pool: ArqRedis, settings: Settings) -> int:
    """Re-send wake-ups for jobs the database says should run but Redis may have lost, and for jobs whose lease
    expired (a woken worker reclaims them); returns how many were sent."""
    stale = max(1.0, settings.jobs_sweep_seconds * 6)
    ids, exhausted = await to_thread.run_sync(
        lambda: table.due_for_wakeup(stale_seconds=stale, max_attempts=settings.jobs_max_attempts)
    )
    log_exhausted(exhausted)
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


async def build_job_queue(
    settings: Settings, ingest: Ingestor, table: JobTable | None = None, *, exclusive: bool = False
) -> JobQueue:
    """Durable jobs woken through arq on Redis when REDIS_URL is set (and JOBS_IN_PROCESS is not), else run in
    this process (resuming the jobs the previous process left; ``exclusive``: this process holds the embedded
    store's lock). JOBS_IN_PROCESS: a deployment without a worker, whose API would otherwise only enqueue."""
    if settings.redis_url and not settings.jobs_in_process:
        assert table is not None, "durable jobs need the registry database's job table"
        return await ArqJobQueue.connect(settings, table)
    assert table is not None, "jobs need the registry database's job table"
    queue = InProcessJobQueue(ingest, table, settings, exclusive=exclusive)
    await queue.start()
    return queue
