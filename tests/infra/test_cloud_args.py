"""The `cloud-args` deployability check and `infra.naming`: values a cloud API refuses, names that collide.

Each test reintroduces a defect the program had (a fixed RDS final snapshot name, Google service account IDs cut
to 30 characters, one Artifact Registry repository per project, a Cloud SQL custom tier on the PostgreSQL 16+
default edition, ...) in a small recorded program and shows the check fails on it and passes on the fix. The
matrix runs the real program under the longest ephemeral stack name on both clouds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from infra import deployability as d
from infra import naming
from infra.offline import ACCOUNT_ID, PROJECT_DIR, RecordedResource, StackRun, run_stack
from infra.workflows.ephemeral import MAX_NAME_LENGTH
from tests.infra.conftest import run, target_overrides
from tests.infra.test_deployability import findings, program, res

#: The longest ephemeral stack name `ragops ephemeral up` accepts (infra/workflows/ephemeral.py NAME_RE).
LONG = "pr-123456-a-very-long-branch-name-abcdef"
assert len(LONG) == MAX_NAME_LENGTH


def named(stack: str, *resources: RecordedResource, **config: Any) -> StackRun:
    return dataclasses.replace(program(*resources, **config), stack=stack)


def cloud_findings(result: StackRun) -> list[d.Finding]:
    return findings(result, "cloud-args")


# --------------------------------------------------------------------------------------------- naming
def test_cloud_name_keeps_the_readable_form_when_it_fits() -> None:
    assert naming.cloud_name("prod", limit=40) == "rag-prod"
    assert naming.cloud_name("prod", "backup", limit=30) == "rag-prod-backup"
    assert naming.cloud_name("prod", "cache", limit=256, prefix="rag-service") == "rag-service-prod-cache"


def test_cloud_name_cuts_long_stacks_without_losing_the_role_or_the_stack() -> None:
    names = {
        role: naming.cloud_name(LONG, role, limit=30, minimum=6) for role in ("backup", "service", "nodes")
    }
    assert len(set(names.values())) == 3  # the old [:30] cut made backup and service collide
    for role, name in names.items():
        assert len(name) <= 30
        assert name.endswith(f"-{role}")
        assert naming.stack_hash(LONG) in name
    other = naming.cloud_name(LONG[:-1] + "x", "backup", limit=30)
    assert other != names["backup"]  # two long stacks sharing a prefix still differ


@pytest.mark.parametrize("stack", ["My_Stack.eu", "a--b", "x" * 100, "pr-9-"])
def test_cloud_name_is_valid_for_any_pulumi_stack_name(stack: str) -> None:
    for limit in (30, 40, 63):
        name = naming.cloud_name(stack, "service", limit=limit, minimum=6)
        assert len(name) <= limit
        assert "--" not in name
        assert not name.endswith("-")
        assert name == name.lower()
    # A name that had to be changed to fit the charset carries the hash: `my-stack` must not share it.
    assert naming.cloud_name("My_Stack", limit=63) != naming.cloud_name("my-stack", limit=63)


# --------------------------------------------------------------------------------------------- names
def test_a_fixed_rds_final_snapshot_name_is_a_finding() -> None:
    inputs = {"engine": "postgres", "skipFinalSnapshot": False, "finalSnapshotIdentifier": "postgres-final"}
    old = res("aws:rds/instance:Instance", "postgres-instance", inputs)
    messages = [f.message for f in cloud_findings(named("pr-42", old))]
    assert any("does not carry the stack" in m for m in messages)  # collides across stacks
    assert any("DBSnapshotAlreadyExists" in m for m in messages)  # collides across runs of one stack

    suffix = res("random:index/randomId:RandomId", "postgres-final-snapshot-suffix")
    fixed = res(
        "aws:rds/instance:Instance",
        "postgres-instance",
        {**inputs, "finalSnapshotIdentifier": "rag-pr-42-postgres-final-0a1b2c3d"},
        deps=(suffix,),
    )
    assert cloud_findings(named("pr-42", suffix, fixed)) == []
    bad = res(
        "aws:rds/instance:Instance",
        "postgres-instance",
        {**inputs, "finalSnapshotIdentifier": "rag-pr-42--final-"},
        deps=(suffix,),
    )
    assert "does not match" in cloud_findings(named("pr-42", suffix, bad))[0].message


def test_cut_google_service_account_ids_collide_and_long_cluster_names_are_refused() -> None:
    old = [
        res("gcp:serviceaccount/account:Account", f"wi-{role}", {"accountId": f"rag-{LONG}-{role}"[:30]})
        for role in ("backup", "service")
    ]
    cluster = res(d.GKE_CLUSTER, "gke", {"name": f"rag-{LONG}", "datapathProvider": "ADVANCED_DATAPATH"})
    messages = [f.message for f in cloud_findings(named(LONG, *old, cluster))]
    assert any("is also the name of wi-backup" in m for m in messages)
    assert any("GKE cluster name" in m and "44 characters" in m for m in messages)


def test_a_project_wide_name_must_carry_the_stack() -> None:
    shared = res("gcp:artifactregistry/repository:Repository", "registry", {"repositoryId": "rag"})
    (finding,) = cloud_findings(named("pr-7", shared))
    assert "unique per project and location" in finding.message
    own = res("gcp:artifactregistry/repository:Repository", "registry", {"repositoryId": "rag-pr-7"})
    assert cloud_findings(named("pr-7", own)) == []


def test_bucket_names_follow_s3_and_gcs_rules() -> None:
    # S3 names carry the account ID (tests/infra/test_backup_bucket.py): here the offline one.
    s3 = res("aws:s3/bucket:Bucket", "b", {"bucket": f"Rag-pr-7-backups-{ACCOUNT_ID}-s3alias"})
    gcs = res("gcp:storage/bucket:Bucket", "g", {"name": "rag-pr-7-google-backups"})
    s3_finding, gcs_finding = cloud_findings(named("pr-7", s3, gcs))
    assert "does not match" in s3_finding.message
    assert "S3 reserves" in s3_finding.message
    assert "'google'" in gcs_finding.message
    own = res("aws:s3/bucket:Bucket", "b", {"bucket": f"rag-pr-7-backups-{ACCOUNT_ID}"})
    assert cloud_findings(named("pr-7", own)) == []
    (shared,) = cloud_findings(
        named("pr-7", res("aws:s3/bucket:Bucket", "b", {"bucket": "rag-pr-7-backups"}))
    )
    assert "does not carry the account ID" in shared.message


# --------------------------------------------------------------------------------------------- values
def test_cloud_sql_custom_tier_needs_the_enterprise_edition_from_postgres_16() -> None:
    settings = {"tier": "db-custom-2-7680"}
    old = res(
        "gcp:sql/databaseInstance:DatabaseInstance",
        "pg",
        {"databaseVersion": "POSTGRES_17", "settings": settings},
    )
    (finding,) = cloud_findings(named("t", old))
    assert "defaults to ENTERPRISE_PLUS" in finding.message
    fixed = res(
        "gcp:sql/databaseInstance:DatabaseInstance",
        "pg",
        {"databaseVersion": "POSTGRES_17", "settings": {**settings, "edition": "ENTERPRISE"}},
    )
    assert cloud_findings(named("t", fixed)) == []
    odd = res(
        "gcp:sql/databaseInstance:DatabaseInstance",
        "pg",
        {"databaseVersion": "POSTGRES_15", "settings": {"tier": "db-custom-3-1024"}},
    )
    assert "vCPUs" in cloud_findings(named("t", odd))[0].message


def test_memorystore_and_elasticache_versions_are_ones_the_api_lists() -> None:
    good = res("gcp:redis/instance:Instance", "r", {"redisVersion": "REDIS_7_2", "tier": "STANDARD_HA"})
    assert cloud_findings(named("t", good)) == []
    bad = res("gcp:redis/instance:Instance", "r", {"redisVersion": "REDIS_8_0", "tier": "STANDARD"})
    assert len(cloud_findings(named("t", bad))) == 2
    group = {"engine": "valkey", "transitEncryptionEnabled": True, "nodeType": "cache.m7g.large"}
    full = res("aws:elasticache/replicationGroup:ReplicationGroup", "c", {**group, "engineVersion": "8.1.4"})
    assert "MAJOR.MINOR" in cloud_findings(named("t", full))[0].message
    ok = res("aws:elasticache/replicationGroup:ReplicationGroup", "c", {**group, "engineVersion": "8.1"})
    assert cloud_findings(named("t", ok)) == []
    no_tls = res(
        "aws:elasticache/replicationGroup:ReplicationGroup",
        "c",
        {**group, "engineVersion": "8.1", "transitEncryptionEnabled": False, "authToken": "x" * 40},
    )
    assert "transitEncryptionEnabled" in cloud_findings(named("t", no_tls))[0].message


def test_an_eks_version_the_installed_envoy_gateway_does_not_support_is_a_finding() -> None:
    """EKS 1.37 would pass the version format, but Envoy Gateway v1.9 (the EKS target's gateway) lists 1.33-1.36."""
    for version in ("1.33", "1.36"):
        assert cloud_findings(named("t", res("aws:eks/cluster:Cluster", "eks", {"version": version}))) == []
    for version in ("1.32", "1.37"):
        (finding,) = cloud_findings(named("t", res("aws:eks/cluster:Cluster", "eks", {"version": version})))
        assert "Envoy Gateway" in finding.message
        assert version in finding.message
        assert "rag:cluster.eks.version" in finding.fix


def test_a_build_cache_in_an_immutable_ecr_repository_is_a_finding() -> None:
    repo = res(
        "aws:ecr/repository:Repository",
        "registry",
        {"name": "rag-service-t", "imageTagMutability": "IMMUTABLE"},
    )
    ref = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rag-service-t:buildcache"
    image = res("docker-build:index:Image", "image", {"cacheTo": [{"registry": {"ref": ref}}]})
    (finding,) = cloud_findings(named("t", repo, image))
    assert "IMMUTABLE" in finding.message
    assert finding.name == "image"


# --------------------------------------------------------------------------------------------- real program
def test_dropping_the_random_snapshot_suffix_from_the_real_program_is_caught() -> None:
    result = run("prod", "eks")
    instance = result.by_name("postgres-instance")
    assert instance.inputs["finalSnapshotIdentifier"].startswith("rag-prod-postgres-final-")
    cut = dataclasses.replace(
        instance, depends_on=tuple(u for u in instance.depends_on if "randomId" not in u)
    )
    broken = dataclasses.replace(result, resources=[cut if r is instance else r for r in result.resources])
    assert [f.name for f in cloud_findings(broken)] == ["postgres-instance"]


def test_cloud_sql_gets_the_edition_its_tier_runs_on() -> None:
    settings = run("prod", "gke").by_name("postgres-instance").inputs["settings"]
    assert (settings["tier"], settings["edition"]) == ("db-custom-2-7680", "ENTERPRISE")


@pytest.mark.parametrize(("base", "target"), [("dev", "gke"), ("prod", "eks")])
def test_the_longest_ephemeral_stack_name_deploys_on_both_clouds(base: str, target: str) -> None:
    stack_doc = yaml.safe_load((PROJECT_DIR / f"Pulumi.{base}.yaml").read_text(encoding="utf-8"))
    overrides = {**target_overrides(base, target), "backups": {"enabled": True}}
    if base == "dev":  # backups need a snapshot volume twice the data (a restore unpacks next to the upload)
        overrides["qdrant"] = {"snapshotsStorage": {"size": "20Gi"}}
    result = run_stack(LONG, stack_config=stack_doc["config"], config_overrides=overrides)
    assert cloud_findings(result) == []
    named_resources = [r for r in result.resources if r.type in {rule.type for rule in d.NAME_RULES}]
    assert len(named_resources) >= 4
