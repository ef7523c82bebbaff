"""GKE node identities and the Cloud SQL destroy order, checked on the rendered program (each stack on GKE).

Node identity: GKE's nodes need `roles/container.defaultNodeServiceAccount` on the project (GKE "Configure node
service accounts") and, to pull the stack's images, Artifact Registry read. Unset, a node runs as the Compute
Engine default service account, which organisations created after May 2024 grant nothing.

Destroy order: the service's migrations make the Cloud SQL user own every table of the database, and Cloud SQL's
DeleteUser (DROP ROLE) fails while it owns objects; the database must be deleted first, i.e. wait for the user.
"""

from __future__ import annotations

import dataclasses

import pytest

from infra import deployability as d
from infra.clusters.gke import NODE_ROLES
from tests.infra.conftest import run


def autopilot(stack: str = "staging"):
    # Autopilot refuses kube-prometheus-stack (a config error): these runs leave monitoring off.
    return run(stack, "gke", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False})


def node_roles(result, email: str) -> dict[str, d.RecordedResource]:
    return {
        m.inputs["role"]: m
        for m in result.of_type(d.GCP_PROJECT_MEMBER)
        if m.inputs["member"] == f"serviceAccount:{email}"
    }


def identity_findings(result) -> list[d.Finding]:
    return d.check_gke_node_identity(result, d.capabilities(result), d.Graph(result))


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_standard_node_pools_run_as_the_stack_node_account_with_gkes_minimum_role(stack: str) -> None:
    result = run(stack, "gke")
    graph = d.Graph(result)
    account = result.by_name("node-sa")
    (pool,) = result.of_type(d.GKE_NODE_POOL)
    email = pool.inputs["nodeConfig"]["serviceAccount"]
    assert email == result.by_name("node-sa").inputs.get("email", email)
    assert account.urn in graph.closure(pool.urn)
    roles = node_roles(result, email)
    assert (
        set(roles)
        == set(NODE_ROLES)
        == {
            "roles/container.defaultNodeServiceAccount",
            "roles/artifactregistry.reader",
        }
    )
    # The nodes boot with their roles in place.
    assert all(member.urn in graph.closure(pool.urn) for member in roles.values())
    assert identity_findings(result) == []


def test_autopilot_nodes_run_as_the_stack_node_account() -> None:
    result = autopilot()
    graph = d.Graph(result)
    (cluster,) = result.of_type(d.GKE_CLUSTER)
    assert result.of_type(d.GKE_NODE_POOL) == []
    defaults = cluster.inputs["clusterAutoscaling"]["autoProvisioningDefaults"]
    email = defaults["serviceAccount"]
    assert email
    assert defaults["oauthScopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    roles = node_roles(result, email)
    assert set(roles) == set(NODE_ROLES)
    assert all(member.urn in graph.closure(cluster.urn) for member in roles.values())
    assert identity_findings(result) == []


def replace(result, resource, **inputs):
    changed = dataclasses.replace(resource, inputs={**resource.inputs, **inputs})
    return dataclasses.replace(result, resources=[changed if r is resource else r for r in result.resources])


def test_a_node_pool_on_the_default_compute_account_is_a_finding() -> None:
    result = run("staging", "gke")
    (pool,) = result.of_type(d.GKE_NODE_POOL)
    config = {k: v for k, v in pool.inputs["nodeConfig"].items() if k != "serviceAccount"}
    (found,) = identity_findings(replace(result, pool, nodeConfig=config))
    assert "Compute Engine default service account" in found.message
    cluster = autopilot().of_type(d.GKE_CLUSTER)[0]
    (found,) = identity_findings(replace(autopilot(), cluster, clusterAutoscaling={}))
    assert found.name == "gke"


def test_an_account_without_the_node_role_or_granted_too_late_is_a_finding() -> None:
    result = run("staging", "gke")
    member = result.by_name("node-sa-container.defaultNodeServiceAccount")
    # The Standard cluster's default pool and the node pool run as the same account: both lose the role.
    found = identity_findings(replace(result, member, role="roles/logging.logWriter"))
    assert sorted(f.name for f in found) == ["gke", "gke-nodes"]
    assert all("roles/container.defaultNodeServiceAccount" in f.message for f in found)
    # The pool waits for the grant directly and through the cluster (whose default pool runs as the same account).
    (pool,) = result.of_type(d.GKE_NODE_POOL)
    (cluster,) = result.of_type(d.GKE_CLUSTER)
    unordered = {
        r.urn: dataclasses.replace(r, depends_on=tuple(u for u in r.depends_on if u != member.urn))
        for r in (pool, cluster)
    }
    result = dataclasses.replace(result, resources=[unordered.get(r.urn, r) for r in result.resources])
    assert sorted(f.name for f in identity_findings(result)) == ["gke", "gke-nodes"]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_a_standard_clusters_default_pool_off_the_node_account_is_a_finding(stack: str) -> None:
    """`make plan` sees the default pool's identity (gke.py sets it since REVIEW5 V2): GKE boots that pool from the
    cluster's own nodeConfig before `removeDefaultNodePool` deletes it, and unset it runs as the Compute Engine
    default account, which new organisations grant nothing."""
    result = run(stack, "gke")
    (cluster,) = result.of_type(d.GKE_CLUSTER)
    assert identity_findings(result) == []
    # No nodeConfig at all, or one without a service account: the Compute Engine default account.
    config = {k: v for k, v in cluster.inputs["nodeConfig"].items() if k != "serviceAccount"}
    for broken in (replace(result, cluster, nodeConfig=config), replace(result, cluster, nodeConfig=None)):
        (found,) = identity_findings(broken)
        assert (found.name, found.resource) == ("gke", cluster.urn)
        assert "Compute Engine default service account" in found.message
        assert "Standard cluster's nodeConfig.serviceAccount" in found.fix
    # Another account than the node account (one the stack does not grant the node role).
    other = replace(result, cluster, nodeConfig={**cluster.inputs["nodeConfig"], "serviceAccount": "x@p.iam"})
    (found,) = identity_findings(other)
    assert found.resource == cluster.urn
    assert "x@p.iam is not granted roles/container.defaultNodeServiceAccount" in found.message


def test_cloud_sql_database_is_destroyed_before_its_user() -> None:
    # prod on GKE runs managed Postgres (Cloud SQL).
    result = run("prod", "gke")
    graph = d.Graph(result)
    database, user = result.by_name("postgres-database"), result.by_name("postgres-user")
    instance = result.by_name("postgres-instance")
    # The engine deletes dependents first: the database waits for the user, so it goes first on destroy.
    assert user.urn in graph.closure(database.urn)
    assert database.urn not in graph.closure(user.urn)
    assert instance.urn in graph.closure(user.urn)
    # Still a real delete (an abandoned role would keep a working password on the instance).
    assert user.inputs.get("deletionPolicy") in (None, "DELETE")
    # The service (API and worker) waits for both, so it is gone before either is deleted.
    for name in ("rag-api", "rag-worker"):
        assert {database.urn, user.urn} <= graph.closure(result.by_name(name).urn)


@pytest.mark.parametrize(
    ("stack", "target", "overrides", "grant"),
    [
        ("staging", "gke", {}, "node-sa-artifactregistry.reader"),
        (
            "staging",
            "gke",
            {"cluster": {"provider": "gke", "gke": {"autopilot": True}}, "monitoring": {"enabled": False}},
            "node-sa-artifactregistry.reader",
        ),
        ("prod", None, {}, "eks-node-AmazonEC2ContainerRegistryReadOnly"),
    ],
)
def test_the_service_pods_wait_for_the_nodes_registry_read_grant_explicitly(
    stack: str, target: str | None, overrides: dict, grant: str
) -> None:
    """The API and worker pull the stack's own image as the node identity: their Deployments name the read grant
    among their own dependencies (not only through the node pool, which Autopilot does not have), so no first pull
    is refused and backed off (ImagePullBackOff waits up to 5 minutes between attempts)."""
    result = run(stack, target, **overrides)
    (read,) = [r for r in result.resources if r.name == grant]
    deployments = result.of_type("kubernetes:apps/v1:Deployment")
    assert {d.name for d in deployments} >= {"rag-api", "rag-worker"}
    for deployment in deployments:
        if deployment.name.startswith("rag-"):
            assert read.urn in deployment.depends_on, deployment.name
