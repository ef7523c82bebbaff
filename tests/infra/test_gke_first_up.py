"""GKE's first `pulumi up` and its `destroy` (REVIEW5 V2, V3, V5), checked on each stack file run on GKE.

- V2: a Standard cluster is created with a default node pool (deleted right after, `remove_default_node_pool`)
  whose nodes run as `node_config.service_account`; unset, that is the Compute Engine default account, which a
  hardened project has deleted and the deploy identity may not act as, so the cluster's create fails.
- V3: the API refuses deleteConnection while Cloud SQL still holds producer resources (it keeps them after the
  instance is deleted), and the peering then blocks the network's delete; `REMOVE_PEERING` removes the peering.
- V5: private nodes pull public images only through Cloud NAT; without a dependency, a failed NAT leaves nodes up
  and every release times out on ImagePullBackOff instead of the `up` failing at once.
"""

from __future__ import annotations

import pytest

from infra import deployability as d
from infra.clusters.gke import NODE_ROLES, NODE_SCOPES
from tests.infra.conftest import run

STACKS = ("dev", "staging", "prod")
NAT = "gcp:compute/routerNat:RouterNat"


def autopilot(stack: str = "staging"):
    # Autopilot refuses kube-prometheus-stack (a config error): these runs leave monitoring off.
    return run(stack, "gke", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False})


@pytest.mark.parametrize("stack", STACKS)
def test_the_standard_clusters_default_pool_runs_as_the_node_account_after_its_roles(stack: str) -> None:
    result = run(stack, "gke")
    (cluster,) = result.of_type(d.GKE_CLUSTER)
    (pool,) = result.of_type(d.GKE_NODE_POOL)
    assert cluster.inputs["removeDefaultNodePool"] is True
    # The throwaway default pool and the real pool run as the same account (the stack's node account).
    assert cluster.inputs["nodeConfig"] == {
        "serviceAccount": pool.inputs["nodeConfig"]["serviceAccount"],
        "oauthScopes": NODE_SCOPES,
    }
    # The cluster (and its default pool's nodes) waits for the node account's roles.
    members = {
        r.inputs["role"]: r for r in result.of_type(d.GCP_PROJECT_MEMBER) if r.name.startswith("node-sa-")
    }
    assert set(members) == set(NODE_ROLES)
    assert {m.urn for m in members.values()} <= set(cluster.depends_on)
    # node_config is ForceNew on the cluster: a cluster created before it keeps its state instead of being
    # replaced. Pulumi matches ignore_changes on the input's (camelCase) name, the key recorded above.
    assert "nodeConfig" in cluster.ignore_changes


def test_an_autopilot_cluster_gets_no_node_config() -> None:
    (cluster,) = autopilot().of_type(d.GKE_CLUSTER)
    assert "nodeConfig" not in cluster.inputs
    assert cluster.inputs["clusterAutoscaling"]["autoProvisioningDefaults"]["serviceAccount"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_private_services_connection_removes_its_peering_when_a_destroy_cannot_delete_it(
    stack: str,
) -> None:
    result = run(stack, "gke")
    connection = result.by_name("private-services")
    assert connection.inputs["deletionPolicy"] == "REMOVE_PEERING"
    # The network waits for nothing of it, and everything using the connection (Cloud SQL in prod) is deleted
    # before it on destroy: the managed instance depends on it.
    if stack == "prod":
        graph = d.Graph(result)
        assert connection.urn in graph.closure(result.by_name("postgres-instance").urn)


@pytest.mark.parametrize("stack", STACKS)
def test_the_node_pool_and_the_workloads_wait_for_cloud_nat(stack: str) -> None:
    result = run(stack, "gke")
    (nat,) = result.of_type(NAT)
    (pool,) = result.of_type(d.GKE_NODE_POOL)
    assert nat.urn in pool.depends_on
    graph = d.Graph(result)
    for name in ("rag-api", "rag-worker"):
        assert nat.urn in graph.closure(result.by_name(name).urn), name


def test_autopilot_workloads_wait_for_cloud_nat() -> None:
    """Autopilot has no node pool: its nodes come with the first pods, so the workloads themselves wait."""
    result = autopilot()
    (nat,) = result.of_type(NAT)
    graph = d.Graph(result)
    for name in ("rag-api", "rag-worker", "postgres-operator"):
        assert nat.urn in graph.closure(result.by_name(name).urn), name
