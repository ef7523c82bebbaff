"""The in-cluster (CloudNativePG) registry is backed up to the stack's backup bucket, and can be recovered.

Whole-program runs of the real stack files: where the registry is CloudNativePG on a cloud target with
`rag:backups.enabled`, the Cluster archives WAL and base backups to `<bucket>/postgres/` as its own workload
identity (`registry`), granted on the bucket and waited for, on `rag:backups`' schedule and retention, with a
protected ScheduledBackup in prod; a managed registry (RDS / Cloud SQL, backed up by the cloud) gets none of it;
`postgres.cloudnative.recovery` bootstraps a new cluster from the archive. The bucket's lifecycle expires only the
Qdrant snapshot prefix by age: an age rule over `postgres/` would delete the base backup the recovery window needs.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.components import postgres as pg
from infra.config import ConfigError
from infra.offline import StackRun, run_stack
from tests.infra.conftest import run

CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
SCHEDULED = "kubernetes:postgresql.cnpg.io/v1:ScheduledBackup"
OBJECT_STORE = "kubernetes:barmancloud.cnpg.io/v1:ObjectStore"


def spec_of(result: StackRun) -> dict[str, Any]:
    (cluster,) = result.of_type(CLUSTER)
    return cluster.inputs["spec"]


def store_of(result: StackRun) -> dict[str, Any]:
    """The ObjectStore's spec, after checking the Cluster's plugin entry names it."""
    (store,) = result.of_type(OBJECT_STORE)
    (plugin,) = spec_of(result)["plugins"]
    assert plugin["name"] == "barman-cloud.cloudnative-pg.io"
    assert plugin["parameters"]["barmanObjectName"] == store.inputs["metadata"]["name"]
    return store.inputs["spec"]


def test_staging_archives_the_registry_to_its_backup_bucket_as_its_own_identity() -> None:
    result = run("staging")  # GKE, cloudnative, backups on: as committed
    spec = spec_of(result)
    store = store_of(result)["configuration"]
    bucket = result.by_name("qdrant-backups-bucket")
    assert store["destinationPath"] == f"gs://{bucket.inputs['name']}/postgres"
    assert store["googleCredentials"] == {"gkeEnvironment": True}
    assert store_of(result)["retentionPolicy"] == "7d"  # Pulumi.staging.yaml backups.retentionDays
    assert spec["plugins"][0]["parameters"]["serverName"] == "postgres"  # the archive the in-tree setup wrote
    # The plugin's chart issues its certificates with the stack's cert-manager: it waits for that release, and the
    # Cluster for the plugin and the ObjectStore.
    plugin = result.by_name("postgres-barman-cloud")
    assert result.by_name("gateway-cert-manager").urn in plugin.depends_on
    assert result.by_name("postgres-operator").urn in plugin.depends_on
    cluster = result.by_name("postgres-cluster")
    assert {plugin.urn, result.by_name("postgres-object-store").urn} <= set(cluster.depends_on)
    (scheduled,) = result.of_type(SCHEDULED)
    assert (
        scheduled.inputs["spec"]["schedule"] == "0 0 3 * * *"
    )  # backups.schedule "0 3 * * *", seconds first
    # The operator names the instances' ServiceAccount after the Cluster: that KSA is bound to the registry GSA.
    binding = result.by_name("wi-registry-binding")
    assert binding.inputs["member"].endswith("[rag/postgres]")
    email = spec["serviceAccountTemplate"]["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert email.startswith("rag-staging-registry@")
    grant = result.by_name("wi-registry-bucket")
    assert grant.inputs["role"] == "roles/storage.objectAdmin"
    assert grant.inputs["member"] == f"serviceAccount:{email}"
    # WAL is archived from the instances' first start: the grant exists by then.
    assert grant.urn in result.by_name("postgres-cluster").depends_on


def test_eks_archives_with_irsa_and_prod_protects_the_schedule() -> None:
    result = run("prod", "eks", postgres={"mode": "cloudnative"})
    spec = spec_of(result)
    store = store_of(result)
    assert store["configuration"]["s3Credentials"] == {"inheritFromIAMRole": True}
    assert store["configuration"]["destinationPath"].startswith("s3://")
    assert store["configuration"]["destinationPath"].endswith("/postgres")
    assert store["retentionPolicy"] == "30d"  # Pulumi.prod.yaml backups.retentionDays
    assert result.by_name("postgres-object-store").protect is True
    assert "eks.amazonaws.com/role-arn" in spec["serviceAccountTemplate"]["metadata"]["annotations"]
    role = result.by_name("irsa-registry")
    assert "system:serviceaccount:rag:postgres" in role.inputs["assumeRolePolicy"]
    policy = result.by_name("irsa-registry-bucket")
    assert policy.urn in result.by_name("postgres-cluster").depends_on
    (scheduled,) = result.of_type(SCHEDULED)
    assert scheduled.inputs["spec"]["schedule"] == "0 30 2 * * *"
    assert scheduled.protect is True
    assert result.by_name("postgres-cluster").protect is True


@pytest.mark.parametrize(
    ("stack", "target", "overrides"),
    [
        ("prod", None, {}),  # managed registry: RDS keeps its own automated backups
        ("dev", "existing", {}),  # no bucket off the clouds
        ("dev", "gke", {"backups": {"enabled": False}}),
    ],
)
def test_no_archive_where_the_registry_is_not_in_cluster_or_nothing_is_backed_up(
    stack: str, target: str | None, overrides: dict
) -> None:
    result = run(stack, target, **overrides)
    assert not result.of_type(SCHEDULED)
    for cluster in result.of_type(CLUSTER):
        assert "backup" not in cluster.inputs["spec"]
        assert "plugins" not in cluster.inputs["spec"]
    assert not result.of_type(OBJECT_STORE)
    assert not [r for r in result.resources if r.name.startswith(("irsa-registry", "wi-registry-b"))]


def test_recovery_bootstraps_a_new_cluster_from_the_archive() -> None:
    result = run(
        "staging",
        postgres={
            "cloudnative": {
                "archiveName": "postgres-r1",
                "recovery": {"source": "postgres", "targetTime": "2026-11-26T03:00:00Z"},
            }
        },
    )
    spec = spec_of(result)
    assert spec["bootstrap"]["recovery"]["recoveryTarget"] == {"targetTime": "2026-11-26T03:00:00Z"}
    (origin,) = spec["externalClusters"]
    (plugin,) = spec["plugins"]
    # The old archive is read from the same ObjectStore (bucket and prefix) under its own server name.
    assert origin["plugin"]["name"] == plugin["name"]
    assert origin["plugin"]["parameters"] == {
        "barmanObjectName": plugin["parameters"]["barmanObjectName"],
        "serverName": "postgres",
    }
    assert plugin["parameters"]["serverName"] == "postgres-r1"


def _error(stack: str, overrides: dict) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        run_stack(stack, config_overrides=overrides)
    return caught.value


def test_a_recovery_target_time_must_be_rfc_3339() -> None:
    # The rules themselves (a new archiveName, a source, backups on) are cases of tests/infra/test_config_errors.py.
    with pytest.raises(ConfigError) as caught:
        run_stack(
            "staging",
            config_overrides={"postgres": {"cloudnative": {"recovery": {"targetTime": "26/11/2026"}}}},
        )
    assert caught.value.key == "rag:postgres.cloudnative.recovery.targetTime"
    assert caught.value.stack_file == "Pulumi.staging.yaml"
    assert "invalid value" in str(caught.value)


def test_bucket_lifecycle_expires_only_the_snapshot_prefix_by_age() -> None:
    gcs = run("staging").by_name("qdrant-backups-bucket").inputs["lifecycleRules"]
    (aged,) = [rule for rule in gcs if "age" in rule["condition"]]
    assert aged["condition"]["matchesPrefixes"] == ["qdrant/"]
    assert [rule["condition"] for rule in gcs if "age" not in rule["condition"]] == [
        {"daysSinceNoncurrentTime": 7}
    ]
    s3 = run("prod").by_name("qdrant-backups-bucket-lifecycle").inputs["rules"]
    expiring = [rule for rule in s3 if "expiration" in rule]
    assert [rule["filter"] for rule in expiring] == [{"prefix": "qdrant/"}]
    (noncurrent,) = [rule for rule in s3 if "noncurrentVersionExpiration" in rule]
    assert noncurrent["filter"] == {"prefix": ""}  # barman-cloud's deletes under postgres/ leave versions too


def test_a_declared_major_upgrade_moves_the_image_annotates_the_cluster_and_archives_anew() -> None:
    """staging 17 -> 18: the pinned 18 image (CloudNativePG then runs pg_upgrade in place), the Cluster annotated
    with the declared step, and archiving under the new major's archive name; the old archive is left intact."""
    result = run(
        "staging",
        postgres={
            "version": "18",
            "cloudnative": {"archiveName": "postgres-pg18", "majorUpgrade": {"fromVersion": "17"}},
        },
    )
    (cluster,) = result.of_type(CLUSTER)
    assert cluster.inputs["spec"]["imageName"] == pg.PG_IMAGES["18"]
    assert cluster.inputs["metadata"]["annotations"][pg.MAJOR_UPGRADE_ANNOTATION] == "17->18"
    assert spec_of(result)["plugins"][0]["parameters"]["serverName"] == "postgres-pg18"
    # Without the declaration the Cluster carries no such annotation (and 17 stays the image).
    (plain,) = run("staging").of_type(CLUSTER)
    assert pg.MAJOR_UPGRADE_ANNOTATION not in plain.inputs["metadata"]["annotations"]
    assert plain.inputs["spec"]["imageName"] == pg.PG_IMAGES["17"]
