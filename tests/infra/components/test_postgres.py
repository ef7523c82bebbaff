"""Tests of the PostgresDatabase component: CloudNativePG, RDS and Cloud SQL modes."""

from __future__ import annotations

import re

import pulumi
import pulumi_kubernetes as k8s
import pytest

from infra.components import postgres as pg
from infra.components.rag_service import client_selector
from infra.components.specs import ComponentArgsError

from .conftest import Program, assert_all_parented, is_secret, resolve, run_components, validate_manifests

PASSWORD = "pa:ss@word/1"
ENCODED = "pa%3Ass%40word%2F1"


def cloudnative(**overrides: object) -> pg.PostgresDatabaseArgs:
    values: dict[str, object] = {
        "mode": "cloudnative",
        "password": pulumi.Output.secret(PASSWORD),
        "namespace": "rag",
        "instances": 3,
        "storage_size": "20Gi",
        "client_selectors": (client_selector("rag"),),
        "protect": True,
    }
    values.update(overrides)
    return pg.PostgresDatabaseArgs(**values)  # type: ignore[arg-type]


def rds(**overrides: object) -> pg.PostgresDatabaseArgs:
    values: dict[str, object] = {
        "mode": "rds",
        "password": pulumi.Output.secret(PASSWORD),
        "vpc_id": "vpc-1",
        "subnet_ids": ("subnet-a", "subnet-b"),
        "allowed_cidrs": ("10.0.0.0/16",),
        "protect": True,
    }
    values.update(overrides)
    return pg.PostgresDatabaseArgs(**values)  # type: ignore[arg-type]


def run_db(args: pg.PostgresDatabaseArgs) -> Program:
    return run_components(lambda: pg.PostgresDatabase("postgres", args))


def test_database_url_uses_psycopg_and_encodes_credentials() -> None:
    assert pg.database_url("rag", PASSWORD, "db.rag.svc", "rag") == (
        f"postgresql+psycopg://rag:{ENCODED}@db.rag.svc:5432/rag"
    )


def test_cluster_spec_bootstraps_the_app_owner() -> None:
    spec = pg.cluster_spec(cloudnative(storage_class="standard-rwo"), "postgres-app-credentials")
    assert spec["instances"] == 3
    assert spec["bootstrap"]["initdb"] == {
        "database": "rag",
        "owner": "rag",
        "secret": {"name": "postgres-app-credentials"},
    }
    assert spec["storage"] == {"size": "20Gi", "storageClass": "standard-rwo"}
    assert spec["affinity"]["podAntiAffinityType"] == "required"
    assert spec["enableSuperuserAccess"] is False
    assert "bitnami" not in spec["imageName"]
    assert pg.cluster_spec(cloudnative(instances=1), "s")["affinity"]["podAntiAffinityType"] == "preferred"


def test_every_pinned_operand_image_names_its_major_minor_and_digest() -> None:
    """Each PostgreSQL major the config accepts (14-18) has an image pinned by minor and digest, whose tag the
    operator reads as that major (it strips the digest, then takes the tag's leading number)."""
    assert set(pg.PG_IMAGES) == {"14", "15", "16", "17", "18"}
    for major, image in pg.PG_IMAGES.items():
        assert pg.pg_image_major(image) == int(major), image
        assert re.search(r":\d+\.\d+-\d{12}-[a-z]+-trixie@sha256:[0-9a-f]{64}$", image), image
    assert pg.pg_image_major("ghcr.io/cloudnative-pg/postgresql:17.11-standard-trixie") == 17
    assert pg.pg_image_major("ghcr.io/cloudnative-pg/postgresql:17@sha256:" + "0" * 64) is None
    with pytest.raises(ValueError, match="No pinned CloudNativePG image for PostgreSQL 13"):
        pg.pg_image("13")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda: cloudnative(namespace=None), "namespace is required"),
        (lambda: cloudnative(database="Rag-DB"), "SQL identifier"),
        (lambda: cloudnative(instances=0), "instances"),
        (lambda: cloudnative(image="postgres:latest"), "latest"),
        (lambda: cloudnative(image="ghcr.io/cloudnative-pg/postgresql:17"), "exact PostgreSQL minor"),
        (
            lambda: cloudnative(image="ghcr.io/cloudnative-pg/postgresql:17-standard-trixie"),
            "exact PostgreSQL minor",
        ),
        (lambda: rds(subnet_ids=("subnet-a",)), "two subnets"),
        (lambda: rds(allocated_storage_gb=10), "allocated_storage_gb"),
        (lambda: pg.PostgresDatabaseArgs(mode="cloudsql", password="x"), "region"),
        (lambda: pg.PostgresDatabaseArgs(mode="bitnami", password="x"), "mode"),  # type: ignore[arg-type]
    ],
)
def test_invalid_args_fail_with_a_sentence(args: object, message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        pg.validate_args(args())  # type: ignore[operator]
    assert str(info.value).endswith(".")


def test_cloudnative_policy_admits_clients_and_operator_and_opens_egress() -> None:
    spec = pg.network_policy_spec(cloudnative(), "postgres")
    assert spec["podSelector"]["matchLabels"] == {"cnpg.io/cluster": "postgres"}
    assert spec["ingress"][0]["from"][0] == {"podSelector": {"matchLabels": client_selector("rag")}}
    assert spec["ingress"][1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "cnpg-system"}}}
    ]
    assert spec["ingress"][2]["ports"] == [{"protocol": "TCP", "port": 9187}]
    # Egress must be listed (allow-all) or the namespace default-deny would cut the instances off the API server.
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == [{}]


def test_cloudnative_cluster_waits_for_the_operator_release() -> None:
    program = run_db(cloudnative())
    component = assert_all_parented(program, "rag:data:PostgresDatabase")
    assert {r.name for r in program.resources if r is not component} == {
        "postgres-operator",
        "postgres-app-credentials",
        "postgres-cluster",
        "postgres-netpol",
    }
    release = program.named("postgres-operator")
    assert release.type == "kubernetes:helm.sh/v3:Release"
    assert release.inputs["chart"] == "cloudnative-pg"
    assert release.inputs["version"] == pg.CNPG_CHART_VERSION
    assert release.inputs["repositoryOpts"]["repo"] == "https://cloudnative-pg.github.io/charts"
    cluster = program.named("postgres-cluster")
    assert cluster.type == "kubernetes:postgresql.cnpg.io/v1:Cluster"
    assert release.urn in cluster.depends_on
    assert cluster.protect is True
    # The credentials are rebuilt from config and the state; a protected Secret could not be replaced when its
    # data changes (pulumi-kubernetes replaces a Secret whose data changes), so a new password stopped prod's up.
    assert program.named("postgres-app-credentials").protect is False
    assert release.protect is False


def test_cloudnative_password_stays_secret() -> None:
    program = run_db(cloudnative())
    secret = program.named("postgres-app-credentials")
    assert secret.inputs["type"] == "kubernetes.io/basic-auth"
    assert "stringData" in secret.secret_paths
    assert PASSWORD not in repr(program.named("postgres-cluster").inputs)
    db: pg.PostgresDatabase = program.result
    assert is_secret(db.url)
    assert resolve(db.url) == f"postgresql+psycopg://rag:{ENCODED}@postgres-rw.rag.svc:5432/rag"
    assert db.egress_target.pod_labels == {"cnpg.io/cluster": "postgres"}
    assert validate_manifests(program) == 2


def test_pod_monitor_waits_for_monitoring_crds() -> None:
    def build() -> pg.PostgresDatabase:
        crds = k8s.helm.v3.Release("crds", chart="kube-prometheus-stack", version="1.0.0")
        return pg.PostgresDatabase("postgres", cloudnative(pod_monitor=True, monitoring_crds=(crds,)))

    program = run_components(build)
    monitor = program.named("postgres-podmonitor")
    assert monitor.type == "kubernetes:monitoring.coreos.com/v1:PodMonitor"
    assert program.urn_of("crds") in monitor.depends_on
    assert monitor.inputs["spec"]["selector"]["matchLabels"] == {"cnpg.io/cluster": "postgres"}
    assert "postgres-podmonitor" not in {r.name for r in run_db(cloudnative()).resources}


def test_cloudnative_can_use_an_operator_installed_elsewhere() -> None:
    program = run_db(cloudnative(install_operator=False))
    assert "kubernetes:helm.sh/v3:Release" not in program.types()


def test_rds_is_encrypted_private_and_deletion_protected() -> None:
    program = run_db(rds())
    assert_all_parented(program, "rag:data:PostgresDatabase")
    instance = program.one("aws:rds/instance:Instance")
    assert instance.name == "postgres-instance"
    inputs = instance.inputs
    assert inputs["storageEncrypted"] is True
    assert inputs["publiclyAccessible"] is False
    assert inputs["deletionProtection"] is True
    assert inputs["skipFinalSnapshot"] is False
    # Stack-specific prefix + a suffix drawn once per instance lifetime (a second destroy must not collide).
    assert inputs["finalSnapshotIdentifier"].startswith("rag-postgres-final-")
    suffix = program.one("random:index/randomId:RandomId")
    assert suffix.inputs["byteLength"] == 4
    assert "password" in instance.secret_paths
    assert instance.protect is True
    sg = program.one("aws:ec2/securityGroup:SecurityGroup")
    assert sg.inputs["ingress"][0]["fromPort"] == 5432
    db: pg.PostgresDatabase = program.result
    assert is_secret(db.url)
    assert resolve(db.url) == (
        f"postgresql+psycopg://rag:{ENCODED}@postgres-instance.abc.eu-west-1.rds.amazonaws.com:5432/rag"
    )


def test_rds_outside_prod_is_deletable() -> None:
    program = run_db(rds(protect=False))
    instance = program.one("aws:rds/instance:Instance")
    assert instance.inputs["deletionProtection"] is False
    assert instance.protect is False


def test_cloudsql_private_instance_database_and_user() -> None:
    args = pg.PostgresDatabaseArgs(
        mode="cloudsql",
        password=pulumi.Output.secret(PASSWORD),
        region="europe-west1",
        private_network="projects/p/global/networks/n",
        protect=True,
    )
    program = run_db(args)
    assert_all_parented(program, "rag:data:PostgresDatabase")
    instance = program.one("gcp:sql/databaseInstance:DatabaseInstance")
    assert instance.inputs["settings"]["ipConfiguration"]["ipv4Enabled"] is False
    assert instance.inputs["deletionProtection"] is True
    assert instance.protect is True
    assert program.one("gcp:sql/database:Database").inputs["name"] == "rag"
    user = program.one("gcp:sql/user:User")
    assert "password" in user.secret_paths
    db: pg.PostgresDatabase = program.result
    assert resolve(db.url) == f"postgresql+psycopg://rag:{ENCODED}@10.0.0.7:5432/rag"
    assert is_secret(db.url)


# ---------------------------------------------------------------------------------------------- registry backups
BUCKET = "rag-staging-backups"


def backed_up(cloud: str = "gcp", **overrides: object) -> pg.PostgresDatabaseArgs:
    annotation = (
        {"iam.gke.io/gcp-service-account": "registry@p.iam.gserviceaccount.com"}
        if cloud == "gcp"
        else {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/registry"}
    )
    values: dict[str, object] = {
        "backup_bucket": BUCKET,
        "backup_cloud": cloud,
        "backup_schedule": "0 30 2 * * *",
        "archive_retention_days": 21,
        "backup_service_account_annotations": annotation,
    }
    values.update(overrides)
    return cloudnative(**values)


def _cnpg_objects(program: Program) -> dict[str, dict]:
    from infra import render

    from .conftest import manifest

    found = {}
    for api, kind in (
        ("postgresql.cnpg.io/v1", "Cluster"),
        ("postgresql.cnpg.io/v1", "ScheduledBackup"),
        ("barmancloud.cnpg.io/v1", "ObjectStore"),
    ):
        doc = manifest(program.one(f"kubernetes:{api}:{kind}"))
        validated_by, errors = render.validate_manifest(doc)
        # Strictly, against the CRD schema of the pinned operator and plugin (infra/schemas/).
        assert errors == [], (kind, errors)
        assert validated_by.startswith(f"{api.split('/')[0]}/{kind.lower()}_v1.yaml ("), validated_by
        found[kind] = doc
    return found


@pytest.mark.parametrize(
    ("cloud", "scheme", "credentials"),
    [
        ("gcp", "gs", {"googleCredentials": {"gkeEnvironment": True}}),
        ("aws", "s3", {"s3Credentials": {"inheritFromIAMRole": True}}),
    ],
)
def test_backups_archive_to_the_bucket_with_workload_identity(
    cloud: str, scheme: str, credentials: dict
) -> None:
    program = run_db(backed_up(cloud))
    objects = _cnpg_objects(program)
    spec = objects["Cluster"]["spec"]
    # The in-tree barmanObjectStore is gone: the operator's webhook refuses it next to a WAL archiver plugin.
    assert "backup" not in spec
    (plugin,) = spec["plugins"]
    assert plugin == {
        "name": "barman-cloud.cloudnative-pg.io",
        "isWALArchiver": True,
        "parameters": {"barmanObjectName": "postgres-archive", "serverName": "postgres"},
    }
    # The plugin entry names the ObjectStore the component creates, in the Cluster's namespace.
    store = objects["ObjectStore"]
    assert store["metadata"]["name"] == plugin["parameters"]["barmanObjectName"]
    assert store["metadata"]["namespace"] == objects["Cluster"]["metadata"]["namespace"]
    configuration = store["spec"]["configuration"]
    assert configuration["destinationPath"] == f"{scheme}://{BUCKET}/postgres"
    assert "serverName" not in configuration  # the plugin docs: "must always be left empty"
    assert {k: v for k, v in configuration.items() if k.endswith("Credentials")} == credentials
    assert store["spec"]["retentionPolicy"] == "21d"
    # The operator creates the instances' ServiceAccount from this template: the workload identity binds to it
    # (the plugin's sidecar runs in the instance pod, with its ServiceAccount).
    annotations = spec["serviceAccountTemplate"]["metadata"]["annotations"]
    assert annotations == backed_up(cloud).backup_service_account_annotations
    assert "initdb" in spec["bootstrap"]
    assert "externalClusters" not in spec
    assert spec["imageName"] == pg.DEFAULT_PG_IMAGE
    assert "-standard-" in spec["imageName"]
    scheduled = objects["ScheduledBackup"]["spec"]
    assert scheduled["schedule"] == "0 30 2 * * *"
    assert scheduled["cluster"] == {"name": "postgres"}
    assert scheduled["method"] == "plugin"
    assert scheduled["pluginConfiguration"] == {"name": plugin["name"]}
    # Stateful: protected with the Cluster (prod), and created after it.
    backup = program.named("postgres-scheduled-backup")
    assert backup.protect is True
    assert program.named("postgres-cluster").urn in backup.depends_on
    assert program.named("postgres-object-store").protect is True
    db: pg.PostgresDatabase = program.result
    assert resolve(db.backup_destination) == f"{scheme}://{BUCKET}/postgres"
    assert db.archive_name == "postgres"


def test_the_plugin_installs_after_cert_manager_and_the_operator_and_the_cluster_waits_for_it() -> None:
    """Order on a real `up`: cert-manager (the plugin chart's Issuer and Certificates), the operator, the plugin
    (whose chart installs the ObjectStore CRD), the ObjectStore, then the Cluster that names both."""

    def build() -> pg.PostgresDatabase:
        cert_manager = k8s.core.v1.ConfigMap("cert-manager")  # stands in for the cert-manager release
        return pg.PostgresDatabase("postgres", backed_up(cert_manager=(cert_manager,)))

    program = run_components(build)
    operator = program.named("postgres-operator")
    plugin = program.named("postgres-barman-cloud")
    store = program.named("postgres-object-store")
    cluster = program.named("postgres-cluster")
    assert plugin.type == "kubernetes:helm.sh/v3:Release"
    assert plugin.inputs["chart"] == "plugin-barman-cloud"
    assert plugin.inputs["version"] == pg.BARMAN_CLOUD_CHART_VERSION
    assert plugin.inputs["repositoryOpts"]["repo"] == pg.CNPG_REPO
    # "must be installed in the same namespace as the CloudNativePG operator"
    assert plugin.inputs["namespace"] == operator.inputs["namespace"] == "cnpg-system"
    assert plugin.inputs["values"]["crds"] == {"create": True}
    assert {program.urn_of("cert-manager"), operator.urn} <= set(plugin.depends_on)
    assert plugin.urn in store.depends_on
    assert {store.urn, plugin.urn} <= set(cluster.depends_on)
    assert program.result.barman_cloud is not None
    # Without backups there is neither a plugin nor an ObjectStore.
    plain = run_db(cloudnative())
    assert "postgres-barman-cloud" not in {r.name for r in plain.resources}
    assert not plain.by_type("kubernetes:barmancloud.cnpg.io/v1:ObjectStore")


def test_an_operator_installed_elsewhere_brings_the_plugin_and_the_object_store_waits_for_it() -> None:
    def build() -> pg.PostgresDatabase:
        operator = k8s.core.v1.ConfigMap("shared-operator")
        return pg.PostgresDatabase("postgres", backed_up(install_operator=False, operator=operator))

    program = run_components(build)
    assert "postgres-barman-cloud" not in {r.name for r in program.resources}
    assert program.urn_of("shared-operator") in program.named("postgres-object-store").depends_on
    assert program.named("postgres-object-store").urn in program.named("postgres-cluster").depends_on


def test_no_bucket_no_backups() -> None:
    program = run_db(cloudnative())
    spec = program.named("postgres-cluster").inputs["spec"]
    assert "backup" not in spec
    assert "plugins" not in spec
    assert "serviceAccountTemplate" not in spec
    assert not program.by_type("kubernetes:postgresql.cnpg.io/v1:ScheduledBackup")
    assert program.result.backup_destination is None


def test_the_cluster_waits_for_the_bucket_grant() -> None:
    def build() -> pg.PostgresDatabase:
        grant = k8s.core.v1.ConfigMap("grant")  # stands in for the cloud IAM grant
        return pg.PostgresDatabase("postgres", backed_up(backup_waits=(grant,)))

    program = run_components(build)
    assert program.urn_of("grant") in program.named("postgres-cluster").depends_on


def test_recovery_bootstraps_from_the_old_archive_and_archives_under_a_new_name() -> None:
    args = backed_up(
        "aws",
        archive_name="postgres-r1",
        recovery_source="postgres",
        recovery_target_time="2026-11-26T03:00:00Z",
    )
    objects = _cnpg_objects(run_db(args))
    spec = objects["Cluster"]["spec"]
    recovery = spec["bootstrap"]["recovery"]
    assert "initdb" not in spec["bootstrap"]
    assert recovery["source"] == pg.RECOVERY_SOURCE
    # The app owner and its password Secret are set as on initdb, so DATABASE_URL keeps working.
    assert (recovery["database"], recovery["owner"], recovery["secret"]) == (
        "rag",
        "rag",
        {"name": "postgres-app-credentials"},
    )
    assert recovery["recoveryTarget"] == {"targetTime": "2026-11-26T03:00:00Z"}
    (origin,) = spec["externalClusters"]
    assert origin == {
        "name": pg.RECOVERY_SOURCE,
        "plugin": {
            "name": "barman-cloud.cloudnative-pg.io",
            "parameters": {
                "barmanObjectName": objects["ObjectStore"]["metadata"]["name"],
                "serverName": "postgres",
            },
        },
    }
    # Reads the old archive from the same bucket and prefix; archives under the new name.
    assert objects["ObjectStore"]["spec"]["configuration"]["destinationPath"] == f"s3://{BUCKET}/postgres"
    (plugin,) = spec["plugins"]
    assert plugin["parameters"]["serverName"] == "postgres-r1"
    # Without a target time the whole archive is replayed.
    spec = pg.cluster_spec(
        backed_up(archive_name="postgres-r1", recovery_source="postgres"),
        "s",
        f"gs://{BUCKET}/postgres",
        "postgres",
    )
    assert "recoveryTarget" not in spec["bootstrap"]["recovery"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda: cloudnative(recovery_source="postgres"), "needs backup_bucket"),
        (lambda: backed_up(recovery_source="postgres"), "archive_name must name a new archive"),
        (lambda: backed_up(archive_name="postgres", recovery_source="postgres"), "non-empty location"),
        (lambda: backed_up(recovery_target_time="2026-11-26T03:00:00Z"), "needs recovery_source"),
        (
            lambda: backed_up(
                archive_name="r1", recovery_source="postgres", recovery_target_time="yesterday"
            ),
            "RFC 3339",
        ),
        (lambda: backed_up(backup_schedule="0 3 * * *"), "six-field"),
        (lambda: backed_up(backup_cloud=None), "backup_cloud"),
        (lambda: backed_up(archive_retention_days=0), "at least 1"),
        (lambda: backed_up(archive_name="Postgres_1"), "DNS label"),
    ],
)
def test_invalid_backup_args_fail_with_a_sentence(args: object, message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        pg.validate_args(args())  # type: ignore[operator]
    assert str(info.value).endswith(".")
