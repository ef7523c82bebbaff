"""The Kubernetes providers of the cloud targets follow the cluster, not its endpoint (REVIEW12 F1).

pulumi-kubernetes decides in `DiffConfig` (provider/pkg/provider/provider.go) whether a provider whose config changed
points at another cluster: with a `clusterIdentifier` only a changed identifier replaces it (and an unchanged one
never does); without one, a change of the kubeconfig's active cluster (server or CA) does. The engine then replaces
every resource whose provider's DiffConfig asks for it (pkg/resource/deploy/step_generator.go `providerChanged`),
create-before-delete: the `up` fails at the first named object with "already exists", after the cluster's own
update. GKE moves `endpoint` on the same cluster when `rag:cluster.gke.privateEndpoint` flips (and on a credential
or IP rotation); the mocks answer `endpoint` as GKE does, so the two runs below differ in the kubeconfig exactly as
two real `up`s would."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.offline import StackRun
from tests.infra.conftest import run

PROVIDER = "pulumi:providers:kubernetes"


def active_cluster(inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The kubeconfig's current context's cluster entry (what `getActiveClusterFromConfig` compares)."""
    raw = inputs.get("kubeconfig")
    if not raw:
        return None
    config = json.loads(raw)
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
    return next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"]


def replaces(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """pulumi-kubernetes' DiffConfig decision for a provider whose inputs go from `old` to `new` (known values)."""
    key = "clusterIdentifier"
    if key in old and key in new:
        return old[key] != new[key]
    before, after = active_cluster(old), active_cluster(new)
    return before is not None and after is not None and before != after


def providers(result: StackRun) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in result.resources if r.type == PROVIDER}


def test_the_replace_decision_model_replaces_a_provider_without_identifier_when_the_server_moves() -> None:
    # The control: the same two runs, the identifier left out, are the stack-wide replace the program used to plan.
    public, private = run("staging"), run("staging", cluster={"gke": {"privateEndpoint": True}})
    old, new = providers(public)["k8s"], providers(private)["k8s"]
    assert active_cluster(old) != active_cluster(new)  # GKE's endpoint moved: public -> private address
    strip = {k: v for k, v in old.items() if k != "clusterIdentifier"}
    assert replaces(strip, {k: v for k, v in new.items() if k != "clusterIdentifier"}) is True


def test_switching_the_gke_private_endpoint_updates_the_provider_instead_of_replacing_every_object() -> None:
    public, private = run("staging"), run("staging", cluster={"gke": {"privateEndpoint": True}})
    old, new = providers(public)["k8s"], providers(private)["k8s"]
    assert json.loads(new["kubeconfig"])["clusters"][0]["cluster"]["server"] == "https://172.16.0.2"
    assert old["clusterIdentifier"] == new["clusterIdentifier"] == "gke:gke-id"  # the cluster resource's id
    assert replaces(old, new) is False
    # Back to the public endpoint: the same.
    assert replaces(new, old) is False


@pytest.mark.parametrize("change", [{"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}])
def test_every_eks_provider_is_identified_by_the_cluster_arn(change: dict[str, Any]) -> None:
    before, after = providers(run("prod")), providers(run("prod", cluster={"eks": change}))
    assert set(before) == {"k8s", "k8s-crds"}  # a new provider must be identified too
    for name, inputs in before.items():
        assert inputs["clusterIdentifier"] == "eks:arn:aws:eks:eu-west-1:123456789012:cluster/rag-prod"
        assert replaces(inputs, after[name]) is False


def test_a_new_cluster_is_still_a_new_provider() -> None:
    # The identifier is the cluster's id: another cluster (a new stack, a replaced cluster) replaces the provider.
    old = providers(run("staging"))["k8s"]
    assert replaces(old, {**old, "clusterIdentifier": "gke:projects/p/locations/l/clusters/other"}) is True


def test_an_autopilot_cluster_of_the_same_name_is_another_cluster() -> None:
    # enable_autopilot is ForceNew and keeps the cluster's path (project, location, name): it is in the identity.
    standard = providers(run("staging"))["k8s"]
    autopilot = providers(
        run("staging", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False})
    )["k8s"]
    assert autopilot["clusterIdentifier"] == "gke:gke-id/autopilot"
    assert replaces(standard, autopilot) is True


def test_an_existing_cluster_keeps_the_kubeconfig_heuristics() -> None:
    # `existing` is a kubeconfig and context the user names: another one is another cluster, so no identifier.
    assert "clusterIdentifier" not in providers(run("dev"))["k8s"]
