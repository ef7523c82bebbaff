"""A bare `pulumi up`/`preview` refuses an undeclared Qdrant scale-down or PostgreSQL major change (infra/guards.py).

Each test runs a real stack file through the real program under mocks twice: once as the deployed state (its
recorded resources become the state the engine's `readStackResourceOutputs` invoke returns, the way the backend
keeps them), then with the changed config against that state. A refused run must raise the one-line error naming
the key and the stack file before the program has sent any resource (the mocks count what reaches them).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import grpc
import pulumi
import pytest
from pulumi.runtime import rpc

from infra import guards
from infra.config import ConfigError, deep_merge
from infra.offline import PlatformMocks, StackRun, run_stack
from infra.workflows.errors import program_refusal
from tests.infra.conftest import run, target_overrides

CNPG_KEY = "rag:postgres.cloudnative.majorUpgrade.fromVersion"
MANAGED_KEY = "rag:postgres.managed.majorUpgrade.fromVersion"
GKE = target_overrides("prod", "gke")


def state_of(deployed: StackRun) -> dict[str, Any]:
    """The state a completed update of `deployed` leaves in the backend, as the builtin invokes answer it: the
    stack outputs, and each resource's type and outputs (the mocks echo inputs as outputs, as a provider does for
    the fields read here: spec.replicas, spec.imageName, engineVersion, databaseVersion)."""
    outputs = {name: value for name, value in deployed.outputs.items() if value is not None}
    resources = {
        resource.urn: {"type": resource.type, "outputs": resource.inputs} for resource in deployed.resources
    }
    return {"outputs": outputs, "resources": resources}


def against(stack: str, deployed: StackRun, overrides: dict[str, Any], *, preview: bool = False) -> StackRun:
    """`stack` with `overrides` (bare keys), run against the state `deployed` left."""
    return run_stack(stack, config_overrides=overrides, live={"state": state_of(deployed)}, preview=preview)


def refused(
    stack: str, deployed: StackRun, overrides: dict[str, Any], sent: list[str], *, preview: bool = False
) -> str:
    """The refusal's message; asserts it is one line and nothing was sent before it."""
    sent.clear()
    with pytest.raises(guards.DeployedStateRefusal) as caught:
        against(stack, deployed, overrides, preview=preview)
    assert sent == []
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- nothing deployed
def test_a_first_up_deploys_without_reading_any_resource_state(sent: list[str]) -> None:
    # No `state`: the mocks answer readStackOutputs with no outputs, and fail readStackResourceOutputs as the engine
    # would on a stack without a snapshot; the program must not ask for it.
    first = run_stack("staging", config_overrides={"qdrant": {"replicas": 3}})
    assert first.by_name("qdrant-statefulset").inputs["spec"]["replicas"] == 3
    assert "qdrant-statefulset" in sent


def test_a_first_up_that_failed_midway_has_nothing_to_protect() -> None:
    # A first update that failed wrote resources but no stack outputs: the stack never ran, any config goes.
    deployed = run("staging")
    state = {**state_of(deployed), "outputs": {}}
    again = run_stack(
        "staging",
        config_overrides={"qdrant": {"replicas": 2}, "postgres": {"version": "18"}},
        live={"state": state},
    )
    assert again.by_name("qdrant-statefulset").inputs["spec"]["replicas"] == 2


def test_an_old_cli_that_drops_the_outputs_of_a_failed_update_is_warned_about(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before Pulumi 3.112 a failed update deleted the stack outputs: the stack then looks never deployed.
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append(message))
    run_stack("dev")
    assert warnings == []
    monkeypatch.setattr(guards, "keeps_outputs_of_failed_updates", lambda: False)
    run_stack("dev")
    assert [w for w in warnings if "older than 3.112" in w and "does not check" in w]


def test_a_cluster_deployed_before_the_images_were_pinned_still_has_its_major() -> None:
    resources = {
        "urn:pulumi:s::rag::rag:data:PostgresDatabase$kubernetes:postgresql.cnpg.io/v1:Cluster::postgres-cluster": {
            "type": guards.CNPG_CLUSTER,
            "outputs": {"spec": {"imageName": "ghcr.io/cloudnative-pg/postgresql:16"}},
        }
    }
    assert guards.deployed_state(resources).registries == (guards.Registry(managed=False, major="16"),)


def test_the_state_names_what_the_guards_read_on_every_target() -> None:
    # The guard finds the StatefulSet, the CNPG Cluster and the RDS / Cloud SQL instance by type and name: a renamed
    # resource would leave it blind, so every target's real run must show them.
    assert guards.deployed_state(state_of(run("staging"))["resources"]) == guards.DeployedState(
        qdrant_replicas=3,
        registries=(guards.Registry(managed=False, major="17"),),
        namespace="rag",
        backup_bucket="rag-staging-qdrant-backups-rag-staging",  # GCS
        namespace_created=True,
        postgres_storage=run("staging").by_name("postgres-cluster").inputs["spec"]["storage"]["size"],
        postgres_instances=2,
        k8s_identified=True,
        gke_private_endpoint=False,
        cluster=guards.ClusterIdentity(
            provider="gke", region="europe-west1", project="rag-staging", autopilot=False
        ),
        valkey_major="8",
        registry_names=(guards.RegistryNames("cloudnative", "rag", "rag"),),
        qdrant_volume=guards.VolumeTemplate(STAGING_QDRANT_SIZE, "standard-rwo"),
        valkey_volume=guards.VolumeTemplate(STAGING_VALKEY_SIZE, "standard-rwo"),
    )
    prod = guards.deployed_state(state_of(run("prod"))["resources"])
    assert prod.qdrant_volume == guards.VolumeTemplate("100Gi", "gp3")
    assert prod.registries == (guards.Registry(managed=True, major="17"),)
    assert prod.backup_bucket is not None  # S3
    assert prod.backup_bucket.startswith("rag-prod-qdrant-backups-")
    assert prod.cluster == guards.ClusterIdentity(
        provider="eks", region="eu-west-1", vpc_cidr="10.0.0.0/16", zones=3
    )
    assert guards.deployed_state(state_of(run("dev"))["resources"]).backup_bucket is None
    assert guards.deployed_state(state_of(run("dev"))["resources"]).cluster == guards.ClusterIdentity(
        "existing"
    )
    assert guards.deployed_state(state_of(run("prod", **GKE))["resources"]).registries == (
        guards.Registry(managed=True, major="17"),
    )


# ---------------------------------------------------------------------------------------------- PostgreSQL majors
def test_the_same_major_deploys_as_before() -> None:
    deployed = run("staging")
    again = against("staging", deployed, {})
    assert again.urns == deployed.urns
    assert again.by_name("postgres-cluster").inputs == deployed.by_name("postgres-cluster").inputs


def test_an_undeclared_cloudnative_major_change_is_refused_before_anything_is_sent(sent: list[str]) -> None:
    message = refused("staging", run("staging"), {"postgres": {"version": "18"}}, sent)
    assert message.startswith(f"{CNPG_KEY} in Pulumi.staging.yaml: rag:postgres.version goes from 17 to 18")
    assert f"pulumi config set --path {CNPG_KEY} 17 -s staging" in message
    assert guards.CNPG_RUNBOOK in message


def test_a_major_downgrade_is_refused_as_one_naming_the_version_not_as_an_undeclared_upgrade(
    sent: list[str],
) -> None:
    """EYES8 L7: 18 -> 17 was called "a major upgrade" and its advice (fromVersion 18) only led to config.py's
    "18 is not below postgres.version (17)"."""
    upgrade = {
        "version": "18",
        "cloudnative": {"majorUpgrade": {"fromVersion": "17"}, "archiveName": "postgres-pg18"},
    }
    deployed = against("staging", run("staging"), {"postgres": upgrade})
    message = refused("staging", deployed, {"postgres": {"version": "17"}}, sent)
    assert message.startswith(
        "rag:postgres.version in Pulumi.staging.yaml: rag:postgres.version goes from 18 down to 17"
    )
    assert "no in-place major downgrade" in message
    assert "pulumi config set --path rag:postgres.version '\"18\"' -s staging" in message
    assert "fromVersion" not in message


def test_a_declared_cloudnative_major_upgrade_goes_ahead_and_a_done_one_with_its_declaration_too() -> None:
    upgrade = {
        "version": "18",
        "cloudnative": {"majorUpgrade": {"fromVersion": "17"}, "archiveName": "postgres-pg18"},
    }
    upgraded = against("staging", run("staging"), {"postgres": upgrade})
    assert (
        upgraded.by_name("postgres-cluster")
        .inputs["spec"]["imageName"]
        .startswith("ghcr.io/cloudnative-pg/postgresql:18.")
    )
    # The next `up` before the declaration is cleared: the state runs 18 already.
    assert against("staging", upgraded, {"postgres": upgrade}).by_name("postgres-cluster")


def test_a_declaration_from_a_major_the_registry_does_not_run_is_refused(sent: list[str]) -> None:
    upgrade = {
        "version": "18",
        "cloudnative": {"majorUpgrade": {"fromVersion": "16"}, "archiveName": "postgres-pg18"},
    }
    message = refused("staging", run("staging"), {"postgres": upgrade}, sent)
    assert message.startswith(f"{CNPG_KEY} in Pulumi.staging.yaml: {CNPG_KEY} declares an upgrade from 16")
    assert "the stack's state has the registry on PostgreSQL 17" in message


def test_an_undeclared_rds_major_change_is_refused_and_a_declared_one_goes_ahead(sent: list[str]) -> None:
    deployed = run("prod")
    message = refused("prod", deployed, {"postgres": {"version": "18"}}, sent)
    assert message.startswith(f"{MANAGED_KEY} in Pulumi.prod.yaml: rag:postgres.version goes from 17 to 18")
    assert "rag:postgres.managed.applyImmediately true -s prod" in message
    declared = {"version": "18", "managed": {"applyImmediately": True, "majorUpgrade": {"fromVersion": "17"}}}
    assert (
        against("prod", deployed, {"postgres": declared}).by_name("postgres-instance").inputs["engineVersion"]
        == "18"
    )


def test_an_undeclared_cloud_sql_major_change_is_refused_not_silently_ignored(sent: list[str]) -> None:
    # Without the declaration the program keeps Cloud SQL's databaseVersion out of the update (ignore_changes): the
    # `up` would succeed with the stack file naming a major the instance does not run.
    deployed = run("prod", **GKE)
    message = refused("prod", deployed, deep_merge(GKE, {"postgres": {"version": "18"}}), sent)
    assert message.startswith(f"{MANAGED_KEY} in Pulumi.prod.yaml: rag:postgres.version goes from 17 to 18")


def test_an_undeclared_registry_mode_switch_is_refused_before_anything_is_sent(sent: list[str]) -> None:
    # Another postgres.mode creates a new, empty registry, rolls the service onto it and deletes the old one last
    # (in prod the protected delete fails after the switch): refused naming the declaration and the migration.
    message = refused("staging", run("staging"), {"postgres": {"mode": "managed"}}, sent)
    assert message.startswith(
        f"{guards.MODE_SWITCH_KEY} in Pulumi.staging.yaml: rag:postgres.mode goes from cloudnative to managed"
    )
    assert f"pulumi config set --path {guards.MODE_SWITCH_KEY} cloudnative -s staging" in message
    assert guards.MODE_SWITCH_RUNBOOK in message
    message = refused("prod", run("prod"), {"postgres": {"mode": "cloudnative"}}, sent)
    assert message.startswith(
        f"{guards.MODE_SWITCH_KEY} in Pulumi.prod.yaml: rag:postgres.mode goes from managed to cloudnative"
    )
    # A declaration naming the wrong mode does not pass either (it names the mode postgres.mode asks for).
    with pytest.raises(ConfigError, match=r"rag:postgres\.modeSwitch\.fromMode in Pulumi\.staging\.yaml"):
        against(
            "staging",
            run("staging"),
            {"postgres": {"mode": "managed", "modeSwitch": {"fromMode": "managed"}}},
        )


def test_a_declared_registry_mode_switch_takes_any_major_and_is_recorded() -> None:
    deployed = run("staging")
    declared = {"mode": "managed", "version": "18", "modeSwitch": {"fromMode": "cloudnative"}}
    moved = against("staging", deployed, {"postgres": declared})
    assert moved.by_name("postgres-instance").inputs["databaseVersion"] == "POSTGRES_18"
    assert not moved.of_type(guards.CNPG_CLUSTER)
    annotations = moved.by_name("namespace").inputs["metadata"]["annotations"]
    assert annotations["rag.platform/registry-mode-switch"].startswith("cloudnative->managed (")
    # Done: the next `up` passes with the declaration still set, and once it is cleared.
    assert against("staging", moved, {"postgres": declared}).by_name("postgres-instance")
    assert against("staging", moved, {"postgres": {"mode": "managed", "version": "18"}}).by_name(
        "postgres-instance"
    )
    # A first `up` may pick either mode without a declaration.
    assert run("staging", postgres={"mode": "managed"}).by_name("postgres-instance")


# ---------------------------------------------------------------------------------------------- Qdrant replicas
def test_a_scale_down_without_the_drain_is_refused_and_with_it_goes_ahead(sent: list[str]) -> None:
    deployed = run("staging")
    message = refused("staging", deployed, {"qdrant": {"replicas": 2}}, sent)
    assert message.startswith(
        "rag:qdrant.scaleDownTo in Pulumi.staging.yaml: Refusing to scale Qdrant on stack 'staging' from 3 to 2"
    )
    assert "(qdrant-2)" in message
    assert "pulumi config set --path rag:qdrant.scaleDownTo 2 -s staging" in message
    drained = against("staging", deployed, {"qdrant": {"replicas": 2, "scaleDownTo": 2}})
    assert drained.by_name("qdrant-statefulset").inputs["spec"]["replicas"] == 2


def test_a_scale_up_goes_ahead() -> None:
    deployed = run("dev")
    assert deployed.by_name("qdrant-statefulset").inputs["spec"]["replicas"] == 1
    grown = against("dev", deployed, {"qdrant": {"replicas": 3}})
    assert grown.by_name("qdrant-statefulset").inputs["spec"]["replicas"] == 3
    # ... and the grown state then guards its own count.
    with pytest.raises(guards.DeployedStateRefusal, match="from 3 to 1 replicas"):
        against("dev", grown, {})


# ---------------------------------------------------------------------------------------------- Valkey
VALKEY_KEY = "rag:redis.incluster.downgradeFrom"


def test_a_valkey_downgrade_that_cannot_load_the_append_only_file_is_refused_and_a_declared_one_goes_ahead(
    sent: list[str],
) -> None:
    """REVIEW8 finding 4 (valkey-io/valkey#2888): 9.x's append-only file is RDB 80, which 8.x cannot load: the pod
    would crash-loop until the file is removed by hand."""
    deployed = against("staging", run("staging"), {"redis": {"version": "9.0.1"}})
    assert guards.deployed_state(state_of(deployed)["resources"]).valkey_major == "9"
    message = refused("staging", deployed, {"redis": {"version": "8.1.3"}}, sent)
    assert message.startswith(
        f"{VALKEY_KEY} in Pulumi.staging.yaml: Refusing to run Valkey 8.1.3 on stack 'staging' over the "
        "append-only file Valkey 9 wrote"
    )
    assert "valkey-io/valkey#2888" in message
    assert f"pulumi config set --path {VALKEY_KEY} 9 -s staging" in message
    assert guards.DAY_TWO_DOC in message
    assert "rag:redis.version back to a 9.x release" in message
    # The preview shows it too; a declaration from another major does not pass.
    refused("staging", deployed, {"redis": {"version": "8.1.3"}}, sent, preview=True)
    refused("staging", deployed, {"redis": {"version": "8.1.3", "incluster": {"downgradeFrom": 10}}}, sent)
    # Declared (the CLI stores `9` as an integer): the 8.x pod moves the unreadable file aside first.
    down = against("staging", deployed, {"redis": {"version": "8.1.3", "incluster": {"downgradeFrom": 9}}})
    pod = down.by_name("redis-statefulset").inputs["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["initContainers"]] == ["valkey/valkey:8.1.3"]
    assert "initContainers" not in deployed.by_name("redis-statefulset").inputs["spec"]["template"]["spec"]
    # Done: the state runs 8.x, the next `up` passes with or without the declaration.
    assert guards.deployed_state(state_of(down)["resources"]).valkey_major == "8"
    against("staging", down, {"redis": {"version": "8.1.3"}})


def test_valkey_downgrades_within_a_format_and_upgrades_go_ahead() -> None:
    deployed = against("staging", run("staging"), {"redis": {"version": "9.1.0"}})
    assert against("staging", deployed, {"redis": {"version": "9.0.1"}}).by_name("redis-statefulset")
    eight = run("staging")
    for version in ("8.0.1", "7.2.8", "9.0.1"):
        assert against("staging", eight, {"redis": {"version": version}}).by_name("redis-statefulset")
    # A managed cache keeps no in-cluster append-only file: moving to it is not this check's business.
    managed = against("staging", deployed, {"redis": {"mode": "managed", "version": "8.1.3"}})
    assert managed.by_name("redis-instance")


# ---------------------------------------------------------------------------------------------- namespace
def test_moving_a_deployed_stack_to_another_namespace_is_refused_before_anything_is_sent(
    sent: list[str],
) -> None:
    # A new namespace re-creates every object there, empty, and deletes the old namespace with its PVCs.
    deployed = run("dev")
    message = refused("dev", deployed, {"namespace": "rag-two"}, sent)
    assert message.startswith(
        "rag:namespace in Pulumi.dev.yaml: Refusing to move stack 'dev' from namespace 'rag' to 'rag-two'"
    )
    assert "pulumi config set rag:namespace rag -s dev" in message
    assert guards.DAY_TWO_DOC in message
    # The namespace it runs in deploys as before; a first `up` may name any namespace.
    assert against("dev", deployed, {}).by_name("namespace").inputs["metadata"]["name"] == "rag"
    assert run("dev", namespace="rag-two").by_name("namespace").inputs["metadata"]["name"] == "rag-two"


# ---------------------------------------------------------------------------------------------- cluster (EYES8 M7)
EKS_STAGING = target_overrides("staging", "eks")


@pytest.mark.parametrize(
    ("change", "key", "was"),
    [
        ({"cluster": {"eks": {"region": "eu-central-1"}}}, "cluster.eks.region", "eu-west-1"),
        ({"cluster": {"eks": {"vpcCidr": "10.8.0.0/16"}}}, "cluster.eks.vpcCidr", "10.0.0.0/16"),
        ({"cluster": {"eks": {"availabilityZones": 2}}}, "cluster.eks.availabilityZones", "3"),
        (target_overrides("staging", "gke"), "cluster.provider", "eks"),
    ],
)
def test_moving_a_deployed_stack_to_another_cluster_is_refused_before_anything_is_sent(
    sent: list[str], change: dict[str, Any], key: str, was: str
) -> None:
    # staging on EKS: nothing is protected outside prod, so the replacement would delete the cluster with its volumes.
    deployed = run("staging", "eks")
    message = refused("staging", deployed, deep_merge(EKS_STAGING, change), sent)
    assert message.startswith(
        f"rag:{key} in Pulumi.staging.yaml: Refusing to change {key} of stack 'staging'"
    )
    if key == "cluster.eks.availabilityZones":  # fewer zones: the cluster stays, the zonal volumes strand
        assert "EBS volumes are zonal" in message
    else:
        assert "new, empty one" in message
    assert f"pulumi config set --path rag:{key} {was} -s staging" in message
    # The same cluster deploys as before.
    assert against("staging", deployed, EKS_STAGING).by_name("vpc").inputs["cidrBlock"] == "10.0.0.0/16"


def test_more_zones_are_refused_as_a_change_eks_itself_refuses_half_way(sent: list[str]) -> None:
    wider = deep_merge(EKS_STAGING, {"cluster": {"eks": {"availabilityZones": 3}}})
    narrower = deep_merge(EKS_STAGING, {"cluster": {"eks": {"availabilityZones": 2}}})
    deployed = run_stack("staging", config_overrides=narrower)  # a stack first deployed with two zones
    message = refused("staging", deployed, wider, sent)
    assert message.startswith(
        "rag:cluster.eks.availabilityZones in Pulumi.staging.yaml: Refusing to change "
        "cluster.eks.availabilityZones of stack 'staging' from 2 to 3"
    )
    assert "EKS accepts subnets only in the zones the cluster was created with" in message


def test_another_gke_region_or_an_existing_cluster_moved_to_a_cloud_is_refused(sent: list[str]) -> None:
    gke = run("staging")
    message = refused("staging", gke, {"cluster": {"gke": {"region": "europe-west4"}}}, sent)
    assert message.startswith(
        "rag:cluster.gke.region in Pulumi.staging.yaml: Refusing to change cluster.gke.region"
    )
    existing = run("dev")
    message = refused("dev", existing, target_overrides("dev", "eks"), sent)
    assert "from 'existing' to 'eks'" in message


def test_a_smaller_cloudnative_volume_is_refused_before_anything_is_sent(sent: list[str]) -> None:
    # CloudNativePG's webhook refuses a shrink only when the Cluster is applied, in the middle of the `up`.
    deployed = run("staging")
    size = deployed.by_name("postgres-cluster").inputs["spec"]["storage"]["size"]
    key = guards.STORAGE_SHRINK_KEY
    message = refused("staging", deployed, {"postgres": {"cloudnative": {"storage": {"size": "1Gi"}}}}, sent)
    assert message.startswith(
        f"{key} in Pulumi.staging.yaml: Refusing to shrink the CloudNativePG registry's"
    )
    assert f"from {size} to 1Gi" in message
    assert f"pulumi config set --path {key} {size} -s staging" in message
    # A larger volume is resized in place; the same size (in other units too) is no change.
    larger = against("staging", deployed, {"postgres": {"cloudnative": {"storage": {"size": "100Gi"}}}})
    assert larger.by_name("postgres-cluster").inputs["spec"]["storage"]["size"] == "100Gi"
    assert guards.storage_shrink_refusal("s", "10Gi", "10240Mi") is None
    assert guards.storage_shrink_refusal("s", None, "1Gi") is None


def test_an_update_that_adds_registry_instances_or_grows_its_volumes_waits_the_long_bound() -> None:
    # REVIEW_INFRA21 M2: the Cluster's update waits for readyInstances == instances, so raising `instances` waits for
    # each new replica's clone (pg_basebackup, growing with the data): 30 minutes could fail a healthy scale-up.
    deployed = run("staging")
    cluster = deployed.by_name("postgres-cluster")
    assert cluster.inputs["spec"]["instances"] == 2
    # No Cluster in the state: the short bound (what a bare `up` after a failed first one waits).
    assert cluster.update_timeout == "30m"
    same = against("staging", deployed, {})
    assert same.by_name("postgres-cluster").update_timeout == "30m"
    scaled = against("staging", deployed, {"postgres": {"cloudnative": {"instances": 3}}})
    assert scaled.by_name("postgres-cluster").inputs["spec"]["instances"] == 3
    assert scaled.by_name("postgres-cluster").update_timeout == "60m"
    grown = against("staging", deployed, {"postgres": {"cloudnative": {"storage": {"size": "100Gi"}}}})
    assert grown.by_name("postgres-cluster").update_timeout == "60m"
    # Once the state records the larger Cluster, its next plain update is back on the short bound; fewer
    # instances (a scale-down waits for nothing new) too.
    again = against("staging", scaled, {"postgres": {"cloudnative": {"instances": 3}}})
    assert again.by_name("postgres-cluster").update_timeout == "30m"
    assert against("staging", scaled, {}).by_name("postgres-cluster").update_timeout == "30m"
    # The same size in other units is no growth.
    size = cluster.inputs["spec"]["storage"]["size"]
    assert size == "10Gi"
    same_size = against("staging", deployed, {"postgres": {"cloudnative": {"storage": {"size": "10240Mi"}}}})
    assert same_size.by_name("postgres-cluster").update_timeout == "30m"


# ---------------------------------------------------------------------------------------------- StatefulSet volumes
STAGING_QDRANT_SIZE = "20Gi"
STAGING_VALKEY_SIZE = "2Gi"
QDRANT_VOLUME_KEY = "rag:qdrant.storage.replaceFrom"
VALKEY_VOLUME_KEY = "rag:redis.incluster.storage.replaceFrom"


def template(run_: StackRun, name: str) -> dict[str, Any]:
    return run_.by_name(name).inputs["spec"]["volumeClaimTemplates"][0]["spec"]


def test_a_new_qdrant_volume_template_in_prod_is_refused_before_anything_is_sent_and_a_declared_one_goes_ahead(
    sent: list[str],
) -> None:
    """REVIEW12 F4: volumeClaimTemplates are immutable, so the `up` replaces the protected StatefulSet and stopped
    there, after every step before it had been applied. Now refused before anything is sent, unless declared."""
    deployed = run("prod")
    assert template(deployed, "qdrant-statefulset")["resources"]["requests"]["storage"] == "100Gi"
    grow = {"qdrant": {"storage": {"size": "200Gi"}}}
    message = refused("prod", deployed, grow, sent)
    assert message.startswith(
        f"{QDRANT_VOLUME_KEY} in Pulumi.prod.yaml: Refusing to change the Qdrant StatefulSet's volume template on "
        "stack 'prod' from 100Gi/gp3 to 200Gi/gp3:"
    )
    assert guards.VOLUME_RUNBOOK in message
    assert f"pulumi config set --path {QDRANT_VOLUME_KEY} 100Gi/gp3 -s prod" in message
    assert "pulumi config set --path rag:qdrant.storage.size 100Gi -s prod" in message
    refused("prod", deployed, grow, sent, preview=True)
    # Another class is a new template too; so is a declaration that names another one than the state's.
    other_class = refused("prod", deployed, {"qdrant": {"storage": {"storageClass": "io2"}}}, sent)
    assert "from 100Gi/gp3 to 100Gi/io2" in other_class
    assert "storageClass 'gp3'" in other_class
    wrong = refused(
        "prod", deployed, {"qdrant": {"storage": {"size": "200Gi", "replaceFrom": "100Gi"}}}, sent
    )
    assert f"({QDRANT_VOLUME_KEY} '100Gi' does not name the deployed template '100Gi/gp3')" in wrong
    # The same size in other units is no new template.
    against("prod", deployed, {"qdrant": {"storage": {"size": "102400Mi"}}})
    # Declared (the runbook's PVC patch and unprotect done): the new template, recorded on the StatefulSet.
    declared = {"qdrant": {"storage": {"size": "200Gi", "replaceFrom": "100Gi/gp3"}}}
    grown = against("prod", deployed, declared)
    assert template(grown, "qdrant-statefulset")["resources"]["requests"]["storage"] == "200Gi"
    annotations = grown.by_name("qdrant-statefulset").inputs["metadata"]["annotations"]
    assert annotations["rag.platform/volume-replaced-from"] == f"100Gi/gp3 ({guards.VOLUME_RUNBOOK})"
    assert "rag.platform/volume-replaced-from" not in deployed.by_name("qdrant-statefulset").inputs[
        "metadata"
    ].get("annotations", {})
    # Left on after the replace it names nothing deployed: harmless for the same template, refused for the next.
    against("prod", grown, declared)
    later = refused(
        "prod", grown, {"qdrant": {"storage": {"size": "400Gi", "replaceFrom": "100Gi/gp3"}}}, sent
    )
    assert "from 200Gi/gp3 to 400Gi/gp3" in later
    assert "does not name the deployed template '200Gi/gp3'" in later


def test_a_new_cluster_storage_class_in_prod_is_refused_with_the_cluster_key_as_the_way_back(
    sent: list[str],
) -> None:
    """s21-daytwo: the Qdrant volume template takes `cluster.eks.storageClass` when its own class is unset, so a
    change of only the cluster key is a new template; the way back names that key, not qdrant.storage's."""
    deployed = run("prod")
    message = refused("prod", deployed, {"cluster": {"eks": {"storageClass": "io2"}}}, sent)
    assert message.startswith(f"{QDRANT_VOLUME_KEY} in Pulumi.prod.yaml: ")
    assert "from 100Gi/gp3 to 100Gi/io2" in message
    assert "pulumi config set --path rag:cluster.eks.storageClass 'gp3' -s prod" in message
    assert "qdrant.storage.storageClass" not in message


def test_a_new_valkey_volume_template_in_prod_is_refused_and_a_declared_one_goes_ahead(
    sent: list[str],
) -> None:
    incluster = {"redis": {"mode": "incluster"}}
    deployed = run("prod", **incluster)
    assert template(deployed, "redis-statefulset")["resources"]["requests"]["storage"] == STAGING_VALKEY_SIZE
    grow = {"redis": {"mode": "incluster", "incluster": {"storage": {"size": "8Gi"}}}}
    message = refused("prod", deployed, grow, sent)
    assert message.startswith(
        f"{VALKEY_VOLUME_KEY} in Pulumi.prod.yaml: Refusing to change the Valkey StatefulSet's volume template on "
        f"stack 'prod' from {STAGING_VALKEY_SIZE}/gp3 to 8Gi/gp3:"
    )
    assert f"pulumi config set --path {VALKEY_VOLUME_KEY} {STAGING_VALKEY_SIZE}/gp3 -s prod" in message
    declared = deep_merge(
        grow, {"redis": {"incluster": {"storage": {"replaceFrom": f"{STAGING_VALKEY_SIZE}/gp3"}}}}
    )
    grown = against("prod", deployed, declared)
    assert template(grown, "redis-statefulset")["resources"]["requests"]["storage"] == "8Gi"
    annotations = grown.by_name("redis-statefulset").inputs["metadata"]["annotations"]
    assert annotations["rag.platform/volume-replaced-from"].startswith(f"{STAGING_VALKEY_SIZE}/gp3 ")
    # Moving the cache to ElastiCache is not a template change of this StatefulSet.
    assert against("prod", deployed, {}).by_name("redis-replication-group")


def test_a_new_volume_template_outside_prod_goes_ahead_undeclared() -> None:
    # Nothing is protected there: the replace (delete first) goes through; the docs say the PVCs keep their size.
    deployed = run("staging")
    bigger = {"qdrant": {"storage": {"size": "40Gi"}}, "redis": {"incluster": {"storage": {"size": "4Gi"}}}}
    grown = against("staging", deployed, bigger)
    assert template(grown, "qdrant-statefulset")["resources"]["requests"]["storage"] == "40Gi"
    assert template(grown, "redis-statefulset")["resources"]["requests"]["storage"] == "4Gi"


# ---------------------------------------------------------------------------------------------- backup bucket
def test_turning_backups_off_is_refused_while_the_stack_holds_the_bucket_it_created(sent: list[str]) -> None:
    # The created bucket leaves the program; outside prod force_destroy would empty it with every backup in it.
    deployed = run("staging")
    bucket = guards.deployed_state(state_of(deployed)["resources"]).backup_bucket
    assert bucket is not None
    assert bucket.startswith("rag-staging-qdrant-backups")
    message = refused("staging", deployed, {"backups": {"enabled": False}}, sent)
    assert message.startswith(
        f"{guards.DISCARD_KEY} in Pulumi.staging.yaml: Refusing to delete the backup bucket {bucket!r}"
    )
    assert f"pulumi config set --path {guards.DISCARD_KEY} {bucket} -s staging" in message
    assert guards.BUCKET_DOC in message
    # Naming another bucket drops the created one just the same; prod (protected: a half-applied `up`) too.
    refused("staging", deployed, {"backups": {"bucket": "rag-elsewhere"}}, sent)
    prod = run("prod")
    assert refused("prod", prod, {"backups": {"enabled": False}}, sent).startswith(
        f"{guards.DISCARD_KEY} in Pulumi.prod.yaml"
    )
    # Accepted: the bucket goes, and the acceptance is recorded.
    off = against("staging", deployed, {"backups": {"enabled": False, "discardBucket": bucket}})
    assert not [r for r in off.resources if r.urn.endswith("::qdrant-backups-bucket")]
    annotations = off.by_name("namespace").inputs["metadata"]["annotations"]
    assert annotations["rag.platform/backups-bucket-discarded"] == bucket
    # Backups on as before, and a stack that never created a bucket, deploy unasked.
    assert against("staging", deployed, {}).urns == deployed.urns
    assert against("dev", run("dev"), {"backups": {"enabled": False}}).by_name("namespace")


# ---------------------------------------------------------------------------------------------- preview, errors
def test_a_preview_shows_the_refusal(sent: list[str]) -> None:
    deployed = run("staging")
    message = refused("staging", deployed, {"qdrant": {"replicas": 2}}, sent, preview=True)
    assert "from 3 to 2 replicas" in message
    message = refused("staging", deployed, {"postgres": {"version": "18"}}, sent, preview=True)
    assert message.startswith(f"{CNPG_KEY} in Pulumi.staging.yaml")
    assert against("staging", deployed, {}, preview=True).urns == deployed.urns


def test_the_refusal_is_a_run_error_the_cli_prints_as_its_one_line_and_ragops_shows(sent: list[str]) -> None:
    # pulumi-language-python-exec logs str(e) of a pulumi.RunError, where any other exception gets a traceback; the
    # CLI prints it as `error: <message>`, and `ragops up` (whose own history check passed) shows that line alone.
    assert issubclass(guards.DeployedStateRefusal, pulumi.RunError)
    message = refused("prod", run("prod"), {"postgres": {"version": "18"}}, sent)
    output = f"Diagnostics:\n  pulumi:pulumi:Stack (rag-prod):\n    error: {message}\n"
    assert program_refusal(output) == message


class EngineError(grpc.RpcError):
    """How the engine answers an invoke its provider failed (resmon.Invoke returns the error as a gRPC status)."""

    def __init__(self, reason: str = "snapshot integrity failure") -> None:
        self.reason = reason

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return f"invocation of {guards.READ_RESOURCE_OUTPUTS} returned an error: {self.reason}"


def test_a_state_the_backend_cannot_read_warns_and_deploys(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append(message))
    answer = PlatformMocks.call

    def failing(self: PlatformMocks, args: Any) -> Any:
        if args.token == guards.READ_RESOURCE_OUTPUTS:
            raise EngineError()
        return answer(self, args)

    monkeypatch.setattr(PlatformMocks, "call", failing)
    again = against("staging", run("staging"), {"qdrant": {"replicas": 2}})
    assert again.by_name("qdrant-statefulset").inputs["spec"]["replicas"] == 2
    assert [
        w for w in warnings if "snapshot integrity failure" in w and "does not check for an undeclared" in w
    ]


def test_the_program_reads_its_own_stack_by_its_fully_qualified_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # The service backend refuses a stack reference that is not <org>/<project>/<stack>.
    names: list[str] = []
    answer = PlatformMocks.call

    def recording(self: PlatformMocks, args: Any) -> Any:
        if args.token.startswith("pulumi:pulumi:read"):
            names.append(args.args.get("name") or args.args.get("stackName"))
        return answer(self, args)

    monkeypatch.setattr(PlatformMocks, "call", recording)
    against("staging", run("staging"), {})
    assert names == ["organization/rag/staging", "organization/rag/staging"]


def test_a_backend_that_parses_bare_stack_names_only_is_read_by_the_bare_name(
    monkeypatch: pytest.MonkeyPatch, sent: list[str]
) -> None:
    # A DIY backend in the legacy (pre-project) layout parses a stack name only (tokens.ParseStackName): "/" fails.
    answer = PlatformMocks.call

    def legacy(self: PlatformMocks, args: Any) -> Any:
        if args.token.startswith("pulumi:pulumi:read") and "/" in str(
            args.args.get("name") or args.args.get("stackName")
        ):
            raise EngineError()
        return answer(self, args)

    monkeypatch.setattr(PlatformMocks, "call", legacy)
    message = refused("staging", run("staging"), {"qdrant": {"replicas": 2}}, sent)
    assert "from 3 to 2 replicas" in message


def test_when_no_name_answers_the_warning_gives_the_full_names_error(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append(message))

    answer = PlatformMocks.call

    def unreachable(self: PlatformMocks, args: Any) -> Any:
        if not args.token.startswith("pulumi:pulumi:read"):
            return answer(self, args)
        name = str(args.args.get("name") or args.args.get("stackName"))
        raise EngineError(
            "dial tcp: connection refused" if "/" in name else "should be of the form '<org>/<p>/<s>'"
        )

    monkeypatch.setattr(PlatformMocks, "call", unreachable)
    assert against("staging", run("staging"), {"qdrant": {"replicas": 2}}).by_name("qdrant-statefulset")
    assert [w for w in warnings if "connection refused" in w and "does not check" in w]


# ------------------------------------------------------------------------------ resource references in the state
def test_a_resource_reference_in_the_state_does_not_fail_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """REVIEW6 W2: a resource's outputs in the state may hold a resource reference (a component registering a
    resource as an output; a helm v4 Chart's `resources`). Asked with references accepted, the SDK rebuilds each one
    through `pulumi:pulumi:getResource`, which the engine answers only for resources of this run (none yet at the
    guard), and the whole run failed from a background task. The reads now ask for plain IDs, as the engine then
    sends them (the offline monitor downgrades references the same way)."""
    deployed = run("staging")
    state = state_of(deployed)
    reference = {
        rpc._special_sig_key: rpc._special_resource_sig,
        "urn": "urn:pulumi:staging::rag::kubernetes:helm.sh/v4:Chart$kubernetes:apiextensions.k8s.io/v1:"
        "CustomResourceDefinition::envoy-crds:gateways.gateway.networking.k8s.io",
        "id": "gateways.gateway.networking.k8s.io",
        "packageVersion": "4.34.2",
    }
    state["resources"]["urn:pulumi:staging::rag::kubernetes:helm.sh/v4:Chart::envoy-crds"] = {
        "type": "kubernetes:helm.sh/v4:Chart",
        "outputs": {"resources": [reference]},
    }
    again = run_stack("staging", live={"state": state})
    assert again.urns == deployed.urns
    # The guard still reads the state it needs, with the reference among it.
    assert guards.NO_RESOURCE_REFERENCES not in os.environ  # restored after the reads
    # With references accepted (the SDK's default), the same state fails the run past the guard.
    monkeypatch.setattr(guards, "_without_resource_references", contextlib.nullcontext)
    with pytest.raises(Exception, match="unknown resource"):
        run_stack("staging", live={"state": state})


# ---------------------------------------------------------------------------------------------- database and owner
@pytest.mark.parametrize(
    ("stack", "overrides", "kind"),
    [
        (
            "staging",
            {},
            "cloudnative",
        ),  # the Cluster's bootstrap: never run again, the service points at nothing
        ("prod", {}, "rds"),  # db_name / username ForceNew: a new, empty instance
        ("prod", GKE, "cloudsql"),  # sql.Database / sql.User name ForceNew: a new, empty database
    ],
)
@pytest.mark.parametrize("key", ["database", "user"])
def test_renaming_the_registry_database_or_owner_is_refused_before_anything_is_sent(
    stack: str, overrides: dict[str, Any], kind: str, key: str, sent: list[str]
) -> None:
    deployed = run(stack, **overrides)
    names = guards.deployed_state(state_of(deployed)["resources"]).registry_names
    assert [n.kind for n in names] == [kind]
    assert (names[0].database, names[0].owner) == ("rag", "rag")
    message = refused(stack, deployed, deep_merge(overrides, {"postgres": {key: "renamed"}}), sent)
    assert message.startswith(
        f"rag:postgres.{key} in Pulumi.{stack}.yaml: rag:postgres.{key} goes from 'rag' to 'renamed'"
    )
    assert guards.RENAME_EFFECT[kind] in message
    assert f"pulumi config set --path rag:postgres.{key} rag -s {stack}" in message
    # The same names deploy as before.
    assert against(stack, deployed, overrides).by_name("qdrant-statefulset") is not None


def test_a_declared_mode_switch_creates_the_new_registry_under_any_names() -> None:
    # The new registry is empty and created in this `up`: its names are free; the old one's are not compared.
    switched = against(
        "staging",
        run("staging"),
        {"postgres": {"mode": "managed", "modeSwitch": {"fromMode": "cloudnative"}, "database": "registry"}},
    )
    assert switched.resources  # not refused
    assert (
        guards.registry_names_refusal("s", True, guards.deployed_state({}).registry_names, "x", "y") is None
    )
    cnpg = guards.RegistryNames("cloudnative", "rag", "rag")
    assert guards.registry_names_refusal("s", True, (cnpg,), "x", "y") is None
    assert guards.registry_names_refusal("s", False, (cnpg,), "rag", "rag") is None
    # A name the state does not record (a restored RDS instance sends none) is not compared.
    assert (
        guards.registry_names_refusal("s", True, (guards.RegistryNames("rds", None, None),), "x", "y") is None
    )


def test_switching_a_deployed_gke_cluster_to_or_from_autopilot_is_refused(sent: list[str]) -> None:
    # enable_autopilot is ForceNew: a same-name replacement of the cluster, which the providers' identity and the
    # Kubernetes objects' state would not survive.
    deployed = run("staging")
    to_autopilot = {"cluster": {"gke": {"autopilot": True}}, "monitoring": {"enabled": False}}
    message = refused("staging", deployed, to_autopilot, sent)
    assert message.startswith(
        "rag:cluster.gke.autopilot in Pulumi.staging.yaml: Refusing to change cluster.gke.autopilot of stack "
        "'staging' from False to True"
    )
    assert "pulumi config set --path rag:cluster.gke.autopilot false -s staging" in message
    autopilot = run("staging", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False})
    message = refused("staging", autopilot, {"monitoring": {"enabled": False}}, sent)
    assert "from True to False" in message
    # The same kind deploys as before.
    assert against("staging", deployed, {}).by_name("gke").inputs.get("enableAutopilot") in (None, False)


def _without_cluster_identifier(state: dict[str, Any]) -> dict[str, Any]:
    """`state` as a stack deployed before the Kubernetes providers carried a clusterIdentifier left it."""
    resources = {}
    for urn, entry in state["resources"].items():
        if entry["type"] == "pulumi:providers:kubernetes":
            entry = {
                **entry,
                "outputs": {k: v for k, v in entry["outputs"].items() if k != "clusterIdentifier"},
            }
        resources[urn] = entry
    return {**state, "resources": resources}


def test_moving_the_gke_endpoint_in_the_up_that_adds_the_cluster_identifier_is_refused(
    sent: list[str],
) -> None:
    # REVIEW_INFRA21 M1: pulumi-kubernetes' DiffConfig ignores an identifier being added, so the first `up` after
    # the identifier landed still replaces the provider (and every Kubernetes object) if the kubeconfig's server moves.
    deployed = run("staging")
    assert deployed.by_name("k8s").inputs["clusterIdentifier"]
    assert deployed.by_name("gke").inputs["privateClusterConfig"]["enablePrivateEndpoint"] is False
    old = _without_cluster_identifier(state_of(deployed))
    assert guards.deployed_state(old["resources"]).k8s_identified is False
    flip = {"cluster": {"gke": {"privateEndpoint": True}}}
    sent.clear()
    with pytest.raises(guards.DeployedStateRefusal) as caught:
        run_stack("staging", config_overrides=flip, live={"state": old})
    assert sent == []
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "rag:cluster.gke.privateEndpoint in Pulumi.staging.yaml: Refusing to switch the GKE cluster's private "
        "endpoint on stack 'staging' in the same `up` that gives its Kubernetes providers their clusterIdentifier"
    )
    assert "Run one `up` without the endpoint change first" in message
    assert "pulumi config set --path rag:cluster.gke.privateEndpoint false -s staging" in message
    # That one `up` without the switch goes ahead and records the identifier; the switch then goes ahead too.
    migrated = run_stack("staging", live={"state": old})
    assert migrated.by_name("k8s").inputs["clusterIdentifier"]
    assert guards.deployed_state(state_of(migrated)["resources"]).k8s_identified is True
    switched = against("staging", migrated, flip)
    assert switched.by_name("gke").inputs["privateClusterConfig"]["enablePrivateEndpoint"] is True
    # A first `up` (no provider in the state) and a stack without a GKE cluster have nothing to refuse.
    assert guards.endpoint_move_refusal("s", None, False, True) is None
    assert guards.endpoint_move_refusal("s", False, None, True) is None
