"""`make serve-prod`: Postgres, Redis, the API and the worker as separate processes, with the worker writing
through the API's embedded vector store; exercised end to end: async ingest through the worker, then search."""

from __future__ import annotations

import threading

import httpx
import pytest

from service.tools.serve_prod import prod_like, supervise
from tests.service.service_process import wait_for


def test_prod_like_run_ingests_through_the_worker_and_searches(capsys: pytest.CaptureFixture[str]) -> None:
    with prod_like() as run:
        h = {"Authorization": f"Bearer {run.api_key}"}
        api = httpx.Client(base_url=run.api_url, headers=h, timeout=60)
        assert api.get("/readyz").json()["status"] == "ok"
        accepted = api.put(
            "/v1/documents/glaciers?async=true",
            json={
                "text": "Glaciers carve U-shaped valleys as they grind downhill.",
                "metadata": {"topic": "geo"},
            },
        )
        assert accepted.status_code == 202, accepted.text
        url = accepted.json()["status_url"]
        job = wait_for(
            lambda: (r := api.get(url).json())["status"] in ("succeeded", "failed") and r, "the job"
        )
        assert job["status"] == "succeeded", job
        hits = api.post("/v1/search", json={"query": "how do valleys form?"}).json()["results"]
        assert hits[0]["document_id"] == "glaciers"
        # The worker did it (its counters, not the API's), and its probes are green.
        worker_metrics = httpx.get(f"{run.worker_url}/metrics").text
        assert 'rag_jobs_total{status="succeeded"} 1.0' in worker_metrics
        assert httpx.get(f"{run.worker_url}/healthz").status_code == 200
        # The store is lent only with the internal token.
        denied = httpx.post(f"{run.api_url}/internal/vectors/count", json={"tenant_id": "default"})
        assert denied.status_code == 401
        assert (
            httpx.post(
                f"{run.api_url}/internal/vectors/count", json={"tenant_id": "default"}, headers=h
            ).status_code
            == 401
        )
        # A worker that dies (an OOM kill) stops the run with one line naming it, instead of leaving an API that
        # acknowledges jobs nothing will run.
        run.processes["worker"].kill()
        assert supervise(run, threading.Event()) == 1
        assert "ingestion job succeeded" in (run.workdir / "worker.log").read_text()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        "serve-prod: error: the worker exited on its own with status -9; stopping everything"
    )
    # Ctrl-C "stops and removes everything": the temporary directory with the store and the logs too.
    assert not run.workdir.exists()
