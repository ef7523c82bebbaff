"""GKE on a fresh project: every Google resource waits for the API it calls to be enabled.

Service Usage enables few APIs on a new project (not Compute Engine, IAM or Cloud Resource Manager). A resource the
engine creates in parallel with its API's `projects.Service` fails with `403 ... has not been used in project ... or
it is disabled`, half way through the first `pulumi up`. These tests walk the whole recorded program (each stack
file moved onto GKE, Standard and Autopilot) and check the transitive dependencies of every `gcp:` resource.
"""

from __future__ import annotations

import dataclasses

import pytest

from infra import deployability as d
from infra.clusters.gke import APIS
from tests.infra.conftest import run

GKE_RUNS = {
    "dev": lambda: run("dev", "gke"),
    "staging": lambda: run("staging", "gke"),
    "prod": lambda: run("prod", "gke"),
    "staging-autopilot": lambda: run(
        "staging", "gke", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False}
    ),
}


def google_resources(result) -> list:
    return [r for r in result.resources if r.custom and r.type.startswith("gcp:") and r.type != d.GCP_SERVICE]


@pytest.mark.parametrize("name", sorted(GKE_RUNS))
def test_every_google_resource_waits_for_the_service_of_its_api(name: str) -> None:
    result = GKE_RUNS[name]()
    graph = d.Graph(result)
    services = {r.urn: r.inputs["service"] for r in result.of_type(d.GCP_SERVICE)}
    assert set(services.values()) == set(APIS)
    resources = google_resources(result)
    # The accounts and project IAM members were the ones that raced their APIs; they must be in the walk.
    types = {r.type for r in resources}
    assert {"gcp:serviceaccount/account:Account", "gcp:container/cluster:Cluster"} <= types
    for resource in resources:
        needed = d.gcp_apis_needed(resource)
        assert needed, resource.type
        waited = {services[urn] for urn in graph.closure(resource.urn) if urn in services}
        assert set(needed) <= waited, (resource.name, sorted(set(needed) - waited))
    assert d.check_gcp_apis(result, d.capabilities(result), graph) == []


def test_the_apis_the_program_enables_cover_every_api_its_resources_need() -> None:
    needed = {api for apis in d.GCP_RESOURCE_APIS.values() for api in apis}
    assert needed <= set(APIS)
    # Not on by default in a new project (Service Usage "Services enabled by default").
    assert {"compute.googleapis.com", "iam.googleapis.com", "cloudresourcemanager.googleapis.com"} <= set(
        APIS
    )


def _cut(result, name: str):
    """The run with `name`'s dependency edges gone (as gke.py created it before the fix: plain provider opts)."""
    target = result.by_name(name)
    changed = dataclasses.replace(target, depends_on=())
    return dataclasses.replace(result, resources=[changed if r is target else r for r in result.resources])


@pytest.mark.parametrize(
    ("name", "api"),
    [
        ("node-sa", "iam.googleapis.com"),
        ("wi-backup", "iam.googleapis.com"),
        ("node-sa-container.defaultNodeServiceAccount", "cloudresourcemanager.googleapis.com"),
        ("network", "compute.googleapis.com"),
    ],
)
def test_a_resource_that_does_not_wait_for_its_api_is_a_finding(name: str, api: str) -> None:
    result = _cut(run("staging", "gke"), name)
    found = d.check_gcp_apis(result, d.capabilities(result), d.Graph(result))
    assert [f.name for f in found] == [name]
    assert api in found[0].message
    assert [f.name for f in d.analyse(result, waivers={}).findings if f.check == "gcp-apis"] == [name]


def test_a_google_resource_type_nobody_mapped_is_a_finding() -> None:
    result = run("staging", "gke")
    registry = result.by_name("registry")
    unknown = dataclasses.replace(registry, type="gcp:secretmanager/secret:Secret")
    result = dataclasses.replace(
        result, resources=[unknown if r is registry else r for r in result.resources]
    )
    found = d.check_gcp_apis(result, d.capabilities(result), d.Graph(result))
    assert [(f.name, "GCP_RESOURCE_APIS" in f.fix) for f in found] == [("registry", True)]
