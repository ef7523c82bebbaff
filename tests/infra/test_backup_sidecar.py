"""The Barman Cloud plugin's sidecar has resources, and the capacity checks count it.

The plugin injects a `plugin-barman-cloud` container (a native sidecar) into every instance pod of a Cluster that
archives through it, with the resources of the ObjectStore the Cluster's plugin entry names
(`spec.instanceSidecarConfiguration.resources`, plugin-barman-cloud v0.13.0 lifecycle_resources.go). Without them
the sidecar requests nothing: the scheduler and `make plan`'s node-capacity check would under-count every instance,
and a quota'd namespace's LimitRange would cap its CPU at 250m.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from infra import capacity
from infra import deployability as d
from infra.components import postgres as pg
from infra.components.specs import ComponentArgsError, Resources, quantity_value
from infra.offline import StackRun
from infra.render import manifest_of, validate_manifest
from tests.infra.conftest import run

OBJECT_STORE = "kubernetes:barmancloud.cnpg.io/v1:ObjectStore"
SIDECAR = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
#: prod's registry in the cluster, on EKS with backups (the archive goes to S3 through the plugin).
PROD_CNPG: dict[str, Any] = {"postgres": {"mode": "cloudnative"}}


def store_of(result: StackRun) -> Any:
    (store,) = result.of_type(OBJECT_STORE)
    return store


def with_sidecar(result: StackRun, resources: dict[str, Any]) -> StackRun:
    store = store_of(result)
    inputs = copy.deepcopy(store.inputs)
    inputs["spec"]["instanceSidecarConfiguration"]["resources"] = resources
    new = dataclasses.replace(store, inputs=inputs)
    return dataclasses.replace(result, resources=[new if r is store else r for r in result.resources])


def test_the_object_store_gives_the_sidecar_requests_and_limits_its_crd_accepts() -> None:
    for result in (run("staging"), run("prod", "eks", **PROD_CNPG)):
        store = store_of(result)
        assert store.inputs["spec"]["instanceSidecarConfiguration"] == {"resources": SIDECAR}
        # Checked against the ObjectStore CRD of plugin-barman-cloud chart 0.7.0 (infra/schemas/), strictly.
        schema, problems = validate_manifest(manifest_of(store))
        assert schema
        assert problems == []
    # No backups, no plugin, no sidecar.
    assert run("dev").of_type(OBJECT_STORE) == []


def test_the_instance_pods_count_the_sidecar_on_top_of_postgres() -> None:
    result = run("prod", "eks", **PROD_CNPG)
    (cluster,) = result.of_type(capacity.CNPG_CLUSTER)
    assert capacity.backup_sidecars(result, cluster) == [
        {"name": "plugin-barman-cloud", "resources": SIDECAR}
    ]
    pods = [p for p in capacity.peak_pods(result) if p.workload == cluster.name]
    assert len(pods) == cluster.inputs["spec"]["instances"] == 3
    postgres_m = 1000 * quantity_value(cluster.inputs["spec"]["resources"]["requests"]["cpu"])
    assert {p.cpu_m for p in pods} == {postgres_m + 100}
    assert pods[0].one_per_node  # prod's instances keep the required anti-affinity
    # The plugin's controller is a pod of the stack too.
    (controller,) = [
        p for p in capacity.peak_pods(result) if p.workload == "postgres-barman-cloud controller"
    ]
    assert (controller.cpu_m, controller.memory_mib) == (50, 64)
    # Without the plugin (dev on eks: no backups) the instances are postgres alone.
    dev = run("dev", "eks")
    (plain,) = dev.of_type(capacity.CNPG_CLUSTER)
    assert capacity.backup_sidecars(dev, plain) == []


def test_a_sidecar_no_node_can_hold_is_a_node_capacity_finding() -> None:
    result = run("prod", "eks", **PROD_CNPG)
    assert [f for f in d.analyse(result, waivers={}).findings if f.check == "node-capacity"] == []
    huge = with_sidecar(result, {"requests": {"cpu": "100m", "memory": "15Gi"}, "limits": {"memory": "15Gi"}})
    (finding,) = [f for f in d.analyse(huge, waivers={}).findings if f.check == "node-capacity"]
    assert "postgres-cluster" in finding.message


def test_the_component_validates_the_sidecar_resources() -> None:
    args = pg.PostgresDatabaseArgs(
        mode="cloudnative",
        password="p",
        namespace="rag",
        backup_bucket="bucket",
        backup_cloud="aws",
        client_selectors=({"app": "rag"},),
        backup_sidecar_resources=Resources(memory_request="lots"),
    )
    with pytest.raises(ComponentArgsError, match="backup_sidecar_resources"):
        pg.validate_args(args)


def test_the_sidecar_resources_come_from_their_config_keys() -> None:
    """`postgres.cloudnative.backupSidecarResources` (Pulumi.yaml) is what the ObjectStore gives the sidecar, and
    what the capacity checks count for it."""
    sized = {"requests": {"cpu": "300m", "memory": "384Mi"}, "limits": {"cpu": "2", "memory": "3Gi"}}
    result = run(
        "prod", "eks", postgres={"mode": "cloudnative", "cloudnative": {"backupSidecarResources": sized}}
    )
    assert store_of(result).inputs["spec"]["instanceSidecarConfiguration"] == {"resources": sized}
    (cluster,) = result.of_type(capacity.CNPG_CLUSTER)
    pods = [p for p in capacity.peak_pods(result) if p.workload == cluster.name]
    postgres_m = 1000 * quantity_value(cluster.inputs["spec"]["resources"]["requests"]["cpu"])
    assert {p.cpu_m for p in pods} == {postgres_m + 300}
