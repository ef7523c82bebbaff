"""A real `python -m service.worker` (and the API process whose embedded store it writes to) on a redis-server
that is killed with no traffic at all: the worker's failed reconnects count in
`rag_failures_total{component="jobs"}`, the series RedisUnreachableFromService (prod's only Redis alert on a
managed Redis) fires on (its promtool cases: tests/infra/test_alert_rules.py). Before, an idle worker's reconnect
loop counted nothing and the alert stayed quiet at 3 a.m. (EYES9 M1).

Waits poll a condition until a deadline that only bounds a process that never gets there (no timing asserts).
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import httpx

from tests.service.service_process import wait_for
from tests.service.support import create_database
from tests.service.test_job_lease_processes import Worker, spawn, wait_ready
from tests.support.servers import _stop, free_port, restartable_redis

JOBS_FAILURES = 'rag_failures_total{component="jobs"}'


def test_an_idle_workers_failed_reconnects_count_while_redis_is_dead(
    tmp_path: Path, postgres_url: str
) -> None:
    with restartable_redis() as redis_server:
        settings = {
            "environment": "test",
            "database_url": create_database(postgres_url, f"rfail_{uuid.uuid4().hex[:8]}"),
            "redis_url": redis_server.url,
            "jobs_queue_name": f"rfail-{uuid.uuid4().hex[:8]}",
            "internal_token": secrets.token_urlsafe(32),
            "data_dir": str(tmp_path / "data"),
            "auth_disabled": "true",
            "rate_limit_enabled": "false",
            "cache_enabled": "false",
            "gc_enabled": "false",
            "log_json": "true",
            "jobs_sweep_seconds": "0.2",
        }
        api_port, worker_port = free_port(), free_port()
        api, api_log = spawn(
            "service", tmp_path, "api", {**settings, "host": "127.0.0.1", "port": str(api_port)}
        )
        worker_env = {
            **settings,
            "vector_store_url": f"http://127.0.0.1:{api_port}",
            "worker_metrics_port": str(worker_port),
        }
        proc = None
        try:
            wait_ready(api, api_log, f"http://127.0.0.1:{api_port}/readyz")  # the worker opens its store
            proc, log = spawn("service.worker", tmp_path, "worker", worker_env)
            worker = Worker(proc, f"http://127.0.0.1:{worker_port}", log)
            wait_ready(proc, log, f"{worker.url}/readyz")
            assert worker.metric(JOBS_FAILURES, 0) == 0  # polling a live Redis fails nothing

            redis_server.kill()  # no request is sent from here on: only the worker meets the dead Redis
            wait_for(lambda: worker.metric(JOBS_FAILURES, 0) >= 2, "two failed reconnects counted")
            assert "worker reconnects in" in log.read_text()

            redis_server.start()
            wait_for(
                lambda: httpx.get(f"{worker.url}/readyz", timeout=10).status_code == 200,
                "the worker polling again after Redis returns",
            )
        finally:
            if proc is not None:
                _stop(proc)
            _stop(api)
