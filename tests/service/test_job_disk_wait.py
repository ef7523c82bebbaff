"""An ingestion job accepted while the disk had room waits for space when the disk fills after its 202, instead of
spending its attempts and ending `failed` (note20: the worker did not wait for space), and runs once space is back.

Across processes: the service is a real `python -m service` (embedded store, jobs in the API process). The disk
that fills and frees is its data volume's free space as the service reads it, capped by the number in the file
RAG_FAULT_FREE_BYTES_FILE names while it exists (service.app.core.faults; a test cannot mount a small filesystem
on CI); everything else is real. The job is held right after its claim (RAG_FAULT_STOP_AT=job_claimed: the
process stops itself) while the disk fills, so the disk fills between the acceptance and the write, whatever the
scheduling.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app.core.errors import DiskFull, ServiceUnavailable
from service.app.store.remote import RemoteVectorStore
from tests.service.service_process import service_process, wait_for
from tests.service.test_faults import body, env_for

WAITS = 3  # looks at the disk the job survives, beyond JOBS_MAX_ATTEMPTS (2) tries


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_job_waits_for_disk_space_without_spending_attempts_and_runs_when_it_is_back(
    tmp_path: Path,
) -> None:
    full = tmp_path / "free-bytes"
    env = env_for(
        tmp_path / "data",
        GC_ENABLED="false",
        JOBS_MAX_ATTEMPTS="2",
        JOBS_RETRY_BASE_SECONDS="0.1",
        JOBS_RETRY_MAX_SECONDS="0.2",  # a waiting job looks at the disk again every 0.2 s
        RAG_FAULT_STOP_AT="job_claimed",
        RAG_FAULT_FREE_BYTES_FILE=str(full),
    )
    with service_process(env, tmp_path / "service.log") as service, service.client() as http:
        with ThreadPoolExecutor(1) as sender:  # the job may stop the process before its 202 is on the wire
            sent = sender.submit(http.put, "/v1/documents/salmon?async=true", json=body("m0001"))
            wait_for(lambda: _state(service.proc.pid) == "T", "the job's claim to stop the service")
            full.write_text("0")  # the disk fills between the 202 and the write
            os.kill(service.proc.pid, signal.SIGCONT)
            accepted = sent.result(timeout=120)
        assert accepted.status_code == 202, accepted.text  # room: the 202 is a promise
        status_url = accepted.headers["Location"]

        def waited() -> bool:
            job = http.get(status_url).json()
            assert job["status"] != "failed", job  # before: both attempts spent on the full disk, then failed
            return service.metric("rag_jobs_disk_waits_total") >= WAITS

        wait_for(waited, f"the job to wait for space {WAITS} times")
        job = http.get(status_url).json()
        assert job["status"] == "queued", job
        assert "waiting for disk space" in job["error"], job
        assert "READY_MIN_FREE_BYTES" in job["error"], job
        assert service.metric("rag_jobs_waiting_for_space") == 1
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["disk"] == "failed"
        assert http.get("/v1/documents/salmon").status_code == 404
        refused = http.put("/v1/documents/other", json=body("m0002"))  # what a client sending now is told
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["disk_full"] is True

        full.unlink()  # space is back: the job runs, without a restart or a re-send
        done = wait_for(
            lambda: (job := http.get(status_url).json())["status"] in ("succeeded", "failed") and job,
            "the job to finish",
        )
        assert done["status"] == "succeeded", done
        assert done["error"] is None
        assert service.metric("rag_jobs_waiting_for_space") == 0
        assert http.get("/v1/documents/salmon").status_code == 200
        hits = http.post("/v1/search", json={"query": "salmon trout river", "top_k": 3}).json()["results"]
        assert [hit["document_id"] for hit in hits][:1] == ["salmon"]
        assert service.stop() in (0, -signal.SIGTERM), service.tail()


def test_a_worker_writing_through_the_apis_store_waits_for_its_disk(tmp_path: Path) -> None:
    """`make serve-prod`'s layout: the API owns the embedded store, a `python -m service.worker` process writes
    through it (VECTOR_STORE_URL), jobs are woken through Redis. The API's disk fills after the 202: the worker's
    job waits for space (its attempts not spent) and runs once the API's disk has room again."""
    from tests.support.servers import free_port, redis_server

    full = tmp_path / "free-bytes"
    token = "internal-token-0123456789abcdef0123456789"
    with redis_server() as redis_url:
        common = {
            **env_for(tmp_path / "data", GC_ENABLED="false"),
            "REDIS_URL": redis_url,
            "JOBS_QUEUE_NAME": f"q-{tmp_path.name}",
            "INTERNAL_TOKEN": token,
            "JOBS_MAX_ATTEMPTS": "2",
            "JOBS_RETRY_BASE_SECONDS": "0.1",
            "JOBS_RETRY_MAX_SECONDS": "0.2",
            "JOBS_SWEEP_SECONDS": "0.5",
        }
        api_env = {**common, "RAG_FAULT_FREE_BYTES_FILE": str(full)}
        with service_process(api_env, tmp_path / "api.log") as api, api.client() as http:
            worker_port = free_port()
            worker_env = {
                **common,
                "VECTOR_STORE_URL": api.url,
                "WORKER_METRICS_PORT": str(worker_port),
                "RAG_FAULT_STOP_AT": "job_claimed",
            }
            with service_process(worker_env, tmp_path / "worker.log", module="service.worker") as worker:
                worker_url = f"http://127.0.0.1:{worker_port}"
                accepted = http.put("/v1/documents/salmon?async=true", json=body("m0001"))
                assert accepted.status_code == 202, accepted.text
                status_url = accepted.headers["Location"]
                wait_for(lambda: _state(worker.proc.pid) == "T", "the worker's claim to stop it")
                full.write_text("0")  # the API's disk fills between the 202 and the worker's write
                os.kill(worker.proc.pid, signal.SIGCONT)

                def waited() -> bool:
                    job = http.get(status_url).json()
                    assert job["status"] != "failed", job
                    return _sample(worker_url, "rag_jobs_disk_waits_total") >= WAITS

                wait_for(waited, f"the worker's job to wait for space {WAITS} times")
                job = http.get(status_url).json()
                assert job["status"] in ("queued", "running"), job
                assert _sample(worker_url, "rag_jobs_waiting_for_space") == 1
                health = httpx.get(f"{worker_url}/healthz", timeout=10)
                assert health.status_code == 200  # a restart would not help
                assert health.json()["jobs_waiting_for_space"] == 1

                full.unlink()
                done = wait_for(
                    lambda: (job := http.get(status_url).json())["status"] in ("succeeded", "failed") and job,
                    "the job to finish",
                )
                assert done["status"] == "succeeded", done
                assert http.get("/v1/documents/salmon").status_code == 200
                assert worker.stop() in (0, -signal.SIGTERM), worker.tail()


def _sample(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_worker_writing_through_the_owning_api_knows_its_disk_is_full() -> None:
    """`make serve-prod`: the worker writes through the API's store; the API's disk-full 503 says so in its body,
    so the worker's job waits for space too (any other 503 stays an outage)."""

    def answer(disk_full: bool) -> Any:
        def handler(request: httpx.Request) -> httpx.Response:
            error: dict[str, Any] = {"code": "service_unavailable", "message": "no room", "retry_after": 60}
            if disk_full:
                error["disk_full"] = True
            return httpx.Response(503, json={"error": error})

        return httpx.MockTransport(handler)

    full = RemoteVectorStore("http://api", "token", transport=answer(True))
    other = RemoteVectorStore("http://api", "token", transport=answer(False))
    try:
        with pytest.raises(DiskFull, match="no room"):
            full.delete_document("t", "d")
        with pytest.raises(ServiceUnavailable) as outage:
            other.delete_document("t", "d")
        assert not isinstance(outage.value, DiskFull)
    finally:
        full.close()
        other.close()


class _FullDisk:
    """An ingestor whose store has no room (what `IngestService.check_room` says while the disk is full)."""

    def check_room(self) -> None:
        raise DiskFull("the store's volume is below READY_MIN_FREE_BYTES")


async def test_a_job_waiting_for_space_keeps_one_pending_wake_up(redis_url: str, tmp_path: Path) -> None:
    """REVIEW_SERVICE21 MEDIUM 3: every look at a job waiting for space before its claim sent one more deferred
    wake-up, and the sweep started one more chain each stale period, so a waiting job's wake-ups in Redis grew
    without bound (3 -> 29 in 85 s). Played here look by look, without a clock: each round time passes (the row's
    times are moved back, late enough for the sweep to take the job as stale: the worst case), the sweep runs,
    and a worker takes every pending wake-up (real arq entries in a real Redis) and looks. The job keeps one
    pending wake-up, stays queued with its attempts unspent, and says why it waits."""
    import uuid
    from datetime import timedelta

    import sqlalchemy as sa
    from arq.connections import ArqRedis
    from arq.constants import job_key_prefix

    from service.app.core.config import Settings
    from service.app.jobs.models import IngestPayload, new_job_id
    from service.app.jobs.queue import run_durable_job, sweep, wake
    from service.app.store.jobstore import JobTable
    from service.app.store.registry import DocumentRegistry, jobs_table

    settings = Settings(
        redis_url=redis_url,
        jobs_queue_name=f"test-space-{uuid.uuid4().hex[:8]}",
        jobs_retry_max_seconds=60,
        jobs_sweep_seconds=5,
    )
    registry = DocumentRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.migrate()
    table = JobTable(registry)
    pool = ArqRedis.from_url(redis_url)
    job = IngestPayload(job_id=new_job_id(), tenant_id="t1", document_id="salmon", text="salmon swim")
    table.insert(job.job_id, job.tenant_id, job.document_id, job.model_dump_json())
    assert await wake(pool, settings, job.job_id)  # the submission's wake-up
    queue = settings.jobs_queue_name

    def time_passes(seconds: float) -> None:
        with registry.engine.begin() as connection:
            row = connection.execute(sa.select(jobs_table).where(jobs_table.c.job_id == job.job_id)).one()
            connection.execute(
                jobs_table.update()
                .where(jobs_table.c.job_id == job.job_id)
                .values(
                    next_attempt_at=row.next_attempt_at - timedelta(seconds=seconds),
                    woken_at=row.woken_at - timedelta(seconds=seconds),
                )
            )

    pending: list[int] = []
    looks = 0
    try:
        for _ in range(8):
            time_passes(60 + 30 + 1)  # the wait (60 s) and the sweep's stale period (6 x 5 s), and more
            await sweep(table, pool, settings)
            for arq_id in await pool.zrange(queue, 0, -1):  # every pending wake-up is delivered, due or not
                await pool.zrem(queue, arq_id)
                await pool.delete(job_key_prefix + arq_id.decode())
                assert await run_durable_job(_FullDisk(), table, pool, settings, job.job_id) == (
                    "waiting for disk space"
                )
                looks += 1
            pending.append(await pool.zcard(queue))
        row = table.get(job.job_id)
    finally:
        await pool.delete(queue)
        await pool.aclose()
        registry.close()

    assert looks >= 8
    assert pending == [1] * 8, pending  # before the fix: [2, 3, 4, ...], one more chain per stale period
    assert row is not None
    assert (row.status, row.attempts) == ("queued", 0), row
    assert (row.error or "").startswith("waiting for disk space: "), row.error
