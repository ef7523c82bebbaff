"""Fixtures: each real stack file run through the real program under mocks (`infra.offline.run_stack`).

Runs are cached per (stack, cluster target) for the session: the program is deterministic, and a run takes about a
second, so every test reads the same recorded resources instead of re-running the program.
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from typing import Any

import pytest

from infra.offline import PlatformMocks, StackRun, run_stack
from infra.workflows.stacks import PERMANENT_STACKS, REPO_ROOT, permanent_stacks


@pytest.fixture(autouse=True)
def _no_existing_cluster_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs read the committed files only: a developer's (or CI job's) $RAGOPS_KUBE_CONTEXT / $RAGOPS_REGISTRY
    would change what the existing target declares (infra/clusters/existing.py), and so would $CI: on a CI runner
    an empty context with a loopback registry is refused, so every staging/prod run re-targeted to `existing`
    failed under `CI=true bash .ci/run` and passed on a laptop. Tests of that rule set $CI themselves
    (tests/infra/test_clusters.py)."""
    monkeypatch.delenv("RAGOPS_KUBE_CONTEXT", raising=False)
    monkeypatch.delenv("RAGOPS_REGISTRY", raising=False)
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture(autouse=True)
def _current_event_loop() -> None:
    """Component tests build pulumi Outputs, which need a current event loop; `run_stack` closes its own loop and
    leaves none set, so a component test run after a stack test failed with "There is no current event loop"
    (test order alone decided it)."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


#: Every permanent stack file of the checkout (the shipped three plus a committed Pulumi.qa.yaml, ...): a stack added
#: as docs/delivery.md#adding-a-permanent-stack says runs through every `stack_run`/`target_run` test.
STACKS = tuple(permanent_stacks(REPO_ROOT))
SHIPPED_STACKS = PERMANENT_STACKS
TARGETS = ("existing", "gke", "eks")
# Stacks the existing target can run without a config change (managed databases need a cloud).
IN_CLUSTER = {"postgres": {"mode": "cloudnative"}, "redis": {"mode": "incluster"}}


def target_overrides(stack: str, target: str) -> dict:
    """Config overrides that move `stack` onto cluster `target` (only what the target itself demands)."""
    overrides: dict = {"cluster": {"provider": target}}
    # GKE's managed classes exist only on GKE; on GKE the stack uses GKE's own Gateway controller.
    overrides["gateway"] = {
        "className": "gke-l7-global-external-managed" if target == "gke" else "envoy-gateway"
    }
    if target == "gke" and stack == "dev":
        overrides["cluster"]["gke"] = {"project": "rag-dev"}
    if target != "eks":
        # Only the eks target builds an AWS provider: on another target the prod file's account pin is refused,
        # so moving the stack removes it, as an operator switching cluster.provider would (test_cloud_provider_keys).
        overrides["aws:allowedAccountIds"] = None
    if target == "existing":
        overrides.update(IN_CLUSTER)
        overrides["backups"] = {"enabled": False}  # snapshots go to GCS/S3: cloud targets only
    return overrides


@cache
def _run(stack: str, target: str | None, overrides_json: str = "{}") -> StackRun:
    overrides = json.loads(overrides_json)
    if target is not None:
        overrides = {**target_overrides(stack, target), **overrides}
    elif (overrides.get("cluster") or {}).get("provider") not in (None, "eks"):
        overrides["aws:allowedAccountIds"] = None  # as target_overrides: the stack moved off eks
    return run_stack(stack, config_overrides=overrides or None)


def run(stack: str, target: str | None = None, **overrides: object) -> StackRun:
    """A cached run of `stack` (on its own cluster target, or on `target`)."""
    return _run(stack, target, json.dumps(overrides, sort_keys=True))


@pytest.fixture(params=STACKS)
def stack_run(request: pytest.FixtureRequest) -> StackRun:
    """Each real stack file, as committed."""
    return run(request.param)


@pytest.fixture(
    params=[(stack, target) for stack in STACKS for target in TARGETS], ids=lambda p: f"{p[0]}-{p[1]}"
)
def target_run(request: pytest.FixtureRequest) -> StackRun:
    """Each real stack file on each cluster target."""
    stack, target = request.param
    return run(stack, target)


@pytest.fixture(
    params=[(stack, target) for stack in SHIPPED_STACKS for target in TARGETS], ids=lambda p: f"{p[0]}-{p[1]}"
)
def shipped_target_run(request: pytest.FixtureRequest) -> StackRun:
    """The three shipped stack files on each cluster target: for tests of the values those files choose."""
    stack, target = request.param
    return run(stack, target)


def _registrations(monkeypatch: pytest.MonkeyPatch, field: str) -> list[str]:
    """`field` ("typ" or "name") of every resource the program registers, in order (the mocks see each
    RegisterResource)."""
    seen: list[str] = []
    original = PlatformMocks.new_resource

    def record(self: PlatformMocks, args: Any) -> Any:
        seen.append(getattr(args, field))
        return original(self, args)

    monkeypatch.setattr(PlatformMocks, "new_resource", record)
    return seen


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The type of every resource the program registers, in order."""
    return _registrations(monkeypatch, "typ")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every resource the program registers, in order."""
    return _registrations(monkeypatch, "name")
