"""`rag:service.worker.enabled: false` on the committed stacks (all of which have Redis): no worker Deployment, and
the API runs the async jobs itself (JOBS_IN_PROCESS), else every `?async=true` would answer 202 and never run (the
API only enqueues to Redis when REDIS_URL is set; EYES9 H2)."""

from __future__ import annotations

import pytest

from infra.offline import StackRun
from tests.infra.conftest import run

STACKS = ("dev", "staging", "prod")


def api_config(result: StackRun) -> dict[str, str]:
    (config,) = [
        r for r in result.resources if r.type == "kubernetes:core/v1:ConfigMap" and r.name == "rag-config"
    ]
    return config.inputs["data"]


def names(result: StackRun, kind: str) -> set[str]:
    return {r.name for r in result.resources if r.type == kind}


@pytest.mark.parametrize("stack", STACKS)
def test_without_a_worker_the_api_consumes_the_jobs(stack: str) -> None:
    without = run(stack, service={"worker": {"enabled": False}})
    assert "rag-worker" not in names(without, "kubernetes:apps/v1:Deployment")
    assert api_config(without)["JOBS_IN_PROCESS"] == "true"
    secret_keys = {
        key
        for r in without.resources
        if r.type == "kubernetes:core/v1:Secret" and r.name == "rag-secrets"
        for key in r.inputs.get("stringData", {})
    }
    assert "REDIS_URL" in secret_keys  # Redis still serves the cache and rate limits


@pytest.mark.parametrize("stack", STACKS)
def test_with_a_worker_the_api_only_enqueues(stack: str) -> None:
    committed = run(stack)
    assert "rag-worker" in names(committed, "kubernetes:apps/v1:Deployment")
    assert "JOBS_IN_PROCESS" not in api_config(committed)
