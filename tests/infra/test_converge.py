"""A first `pulumi up` converges: what each resource needs exists before it is created (issue 8).

These tests read the dependency graph the engine would see (explicit `depends_on` plus input dependencies, as
recorded by `infra.offline`) and assert the orderings a real cluster and cloud demand: workloads after what they
read, custom resources after what installs their CRDs, cloud bindings after the cluster that creates their pool.
"""

from __future__ import annotations

from functools import cache

from infra.offline import RecordedResource, StackRun
from tests.infra.conftest import run


def closure(result: StackRun, resource: RecordedResource) -> set[str]:
    """URNs `resource` transitively waits for (depends_on edges; a component stands for all its children)."""
    by_urn = {r.urn: r for r in result.resources}
    children: dict[str, list[str]] = {}
    for r in result.resources:
        if r.parent is not None:
            children.setdefault(r.parent, []).append(r.urn)

    @cache
    def expand(urn: str) -> frozenset[str]:
        # Depending on a component means depending on every resource under it.
        out = {urn}
        for child in children.get(urn, ()):
            out |= expand(child)
        return frozenset(out)

    seen: set[str] = set()
    stack = list(resource.depends_on)
    while stack:
        urn = stack.pop()
        for dep in expand(urn):
            if dep not in seen:
                seen.add(dep)
                stack.extend(by_urn[dep].depends_on if dep in by_urn else ())
    return seen


def waits_for(result: StackRun, resource: RecordedResource, other: RecordedResource) -> bool:
    return other.urn in closure(result, resource)


def test_service_workloads_wait_for_what_they_read_and_the_managed_stores() -> None:
    # prod on EKS: RDS and ElastiCache take 15-30 minutes; the Deployments' rollout await is 10.
    result = run("prod")
    api, worker = result.by_name("rag-api"), result.by_name("rag-worker")
    for needed in ("rag-secrets", "rag-config", "rag-sa", "postgres-instance", "redis-replication-group"):
        assert waits_for(result, api, result.by_name(needed)), needed
        assert waits_for(result, worker, result.by_name(needed)), needed
    assert waits_for(result, api, result.by_name("qdrant-statefulset"))


def test_cloud_sql_clients_wait_for_the_database_user() -> None:
    result = run("prod", "gke")
    api = result.by_name("rag-api")
    for needed in ("postgres-instance", "postgres-database", "postgres-user", "redis-instance"):
        assert waits_for(result, api, result.by_name(needed)), needed


def test_in_cluster_stores_wait_for_their_secrets() -> None:
    result = run("staging")
    assert waits_for(result, result.by_name("redis-statefulset"), result.by_name("redis-password"))
    assert waits_for(result, result.by_name("qdrant-statefulset"), result.by_name("qdrant-api-key"))
    assert waits_for(result, result.by_name("rag-api"), result.by_name("postgres-cluster"))


def test_the_backup_job_waits_for_its_script_account_and_qdrant_secret() -> None:
    result = run("prod")
    cronjob = result.by_name("qdrant-backups-cronjob")
    for needed in ("qdrant-backups-script", "qdrant-backups-sa", "qdrant-api-key"):
        assert waits_for(result, cronjob, result.by_name(needed)), needed


def test_workload_identity_bindings_wait_for_the_cluster_that_creates_the_pool() -> None:
    result = run("staging")
    cluster = result.by_name("gke")
    for binding in result.of_type("gcp:serviceaccount/iAMMember:IAMMember"):
        assert waits_for(result, binding, cluster), binding.name
