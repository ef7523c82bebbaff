"""`PostgresDatabase` (`rag:data:PostgresDatabase`): the service's registry database, outputting DATABASE_URL.

Modes:
- `cloudnative`: the CloudNativePG operator (its official Helm chart, pinned, from
  https://cloudnative-pg.github.io/charts; skip with `install_operator=False` when the cluster has it) and a
  `postgresql.cnpg.io/v1` `Cluster` that waits for the operator release (whose chart installs the CRDs):
  N instances with streaming replication and automated failover, PVC storage, initdb bootstrap of the database
  owned by the app user whose password comes from a Pulumi secret (a `kubernetes.io/basic-auth` Secret),
  pod anti-affinity, a PodDisruptionBudget (the operator creates it), and a NetworkPolicy.
  With `backup_bucket`, continuous backups to object storage through the Barman Cloud plugin (CNPG-I): the
  plugin's chart (plugin-barman-cloud 0.7.0 = plugin v0.13.0, from the operator's chart repository, in the
  operator's namespace, after the operator and after cert-manager, which issues the plugin's mTLS certificates;
  its chart templates the `objectstores.barmancloud.cnpg.io` CRD), a `barmancloud.cnpg.io/v1` `ObjectStore`
  `<cluster>-archive` with the destination `s3://` / `gs://<bucket>/<backup_prefix>`, gzip WAL and data, workload
  identity credentials (IRSA / GKE Workload Identity annotations on the ServiceAccount the operator creates for the
  instances, `serviceAccountTemplate`; the plugin's sidecar runs in the instance pod with it) and the retention
  policy; the Cluster's `spec.plugins` entry `barman-cloud.cloudnative-pg.io` (`isWALArchiver`, parameters
  `barmanObjectName` and `serverName` = `archive_name`), waiting for the plugin and the ObjectStore; and a
  `ScheduledBackup` with `method: plugin`. With `recovery_source`, the Cluster is bootstrapped by `recovery` from
  an `externalClusters` entry whose `plugin` reads the same ObjectStore under the source's server name (optionally
  to a point in time) instead of `initdb`; it then archives under a new `archive_name` (barman-cloud refuses to
  archive into a non-empty location, and the old archive must stay intact to restore from again). Shapes verified
  in plugin-barman-cloud web/docs/{usage,migration,parameters}.md and internal/cnpgi/ at v0.13.0, and in the
  Cluster/ScheduledBackup CRDs of chart 0.29.0 (infra/schemas/). The ObjectStore leaves `serverName` empty (the
  plugin docs: kept "solely for API compatibility ... must always be left empty").

  Upgrading a stack deployed with the in-tree `barmanObjectStore` (chart 0.26.1): one `up` upgrades the operator
  (which still serves in-tree archiving at 1.30), installs the plugin, creates the ObjectStore and then applies the
  Cluster with `spec.backup` removed and `spec.plugins` added in one server-side apply (the operator's webhook
  refuses both together: "Cannot enable a WAL archiver plugin when barmanObjectStore is configured"). The server
  name stays the archive's, so WAL and base backups continue in the same place; PostgreSQL retries any segment
  the restart leaves unarchived, so the archive gets no hole (docs/infra.md, "CloudNativePG 1.27.1 to 1.30.0").

The operator is chart 0.29.0 = CloudNativePG 1.30.0 (released 2026-06-29, end of life ~December 2026), the newest
release in the stored sources (cloudnative-pg/cloudnative-pg tags up to v1.30.0 at a95a534, 2026-08-21;
cloudnative-pg/charts tags up to cloudnative-pg-v0.29.0 at b21ad2d, 2026-07-20). It supports Kubernetes 1.34, 1.35
and 1.36 (docs/src/supported_releases.md at v1.30.0; 1.30-1.33 "tested, but not supported"); 1.29.x ended on
2026-09-29 and 1.27.x (the previous pin) on 2026-03-09.
- `rds`: an AWS RDS PostgreSQL instance, storage-encrypted, not public, in its own subnet group and security
  group, with automated backups (kept after the instance is deleted, for their retention days, unless
  `retain_backups_on_delete` is False), a final snapshot on deletion and `deletion_protection` following `protect`.
  The final snapshot's identifier is `<final_snapshot_prefix>-<8 hex>`: the prefix carries the stack (snapshot
  identifiers are unique per account and region, so a fixed name collides across stacks) and the random suffix is
  drawn once per instance lifetime (a `random.RandomId`, destroyed with the stack), so a second destroy of the same
  stack does not fail on the snapshot the first one left.
- `cloudsql`: a GCP Cloud SQL PostgreSQL instance on a private IP, plus its database and user. The edition is
  set from the tier: PostgreSQL 16+ instances default to ENTERPRISE_PLUS, which refuses the shared-core and
  `db-custom-*` tiers (pulumi-gcp 10.2.0 `DatabaseInstanceSettings.edition` docstring). The RDS-shaped settings
  map onto it (`cloudsql_backup_configuration`, `cloudsql_disk`):
  - `allocated_storage_gb` is the disk a new instance starts with, and `max_allocated_storage_gb` the ceiling
    `disk_autoresize` grows it to (`disk_autoresize_limit`, as RDS's `max_allocated_storage`). The size of a
    running disk is left to autoresize (`settings.diskSize` in `ignore_changes`): a size below the grown one is a
    replacement of the instance (terraform-provider-google `ForceNewIfChange("settings.0.disk_size",
    IsDiskShrinkage)`), so a raised `allocated_storage_gb` reaches a running instance as its higher ceiling only.
    A clone declares no size (it starts with its source's disk; the provider's post-clone settings update would
    otherwise try to shrink a grown one).
  - `backup_retention_days` N keeps N+1 daily automated backups (`retained_backups`, COUNT: one older than the
    window, the base a restore to its first hour starts from) and N days of transaction logs for point-in-time
    recovery, at most the edition's: 7 on ENTERPRISE, 35 on ENTERPRISE_PLUS (`transaction_log_retention_days`
    docstring; Cloud SQL also refuses logs kept as long as the backups: "backup retention should be >
    transaction log retention"). N = 0 (RDS: no automated backups) is refused: Cloud SQL's REGIONAL availability
    and the restore clone need backups and point-in-time recovery. The backups run before the maintenance hour
    (`start_time`, `cloudsql_backup_start_time`).
  - Deleting the instance keeps its backups, as RDS keeps its final snapshot and automated backups
    (`cloudsql_backups_on_delete`).
  - `auto_minor_version_upgrade` False is refused: Cloud SQL applies minor versions in its maintenance window and
    has no switch to turn that off (Cloud SQL "Database versions and version policies": "Cloud SQL keeps your
    instances up-to-date with patches and minor version updates automatically").

Managed majors and maintenance (rds, cloudsql). The instance runs the major only (minors come in the weekly
maintenance window); `apply_immediately` says whether RDS applies a change at `pulumi up` or in that window. A
major upgrade is declared (`upgrade_from`) rather than implied by a new version: RDS gets
`allow_major_version_upgrade` only then, and its parameter group is one per major (`<name>-params-<major>`, family
`postgres<major>`, create-only): the target's group is declared next to the running one, which stays until the
declaration is cleared, so no `up` deletes a group an instance still holds. Cloud SQL runs a changed
`database_version` at once as an in-place upgrade, so without a declaration the version is in `ignore_changes`.
RDS Blue/Green (`blue_green_update`) is not used: for PostgreSQL it needs logical replication (a static parameter,
a reboot), and the provider switches over and deletes the old instance without a final snapshot by itself.

Managed restores (rds, cloudsql). `restore_name` declares a second instance, `<name>-<restore_name>-instance`
with a fixed cloud name (`restore_identifier`), created from an RDS snapshot or point in time, or as a Cloud SQL
clone at a point in time, of the original by default; the URL follows it and the original stays declared (and
protected) until `keep_original` is False. The restore inputs are create-only (a change would replace the
instance), so they are in `ignore_changes`. A clone carries the database and the app user: neither is declared on
it. The alternative, restoring into the original's logical resource, would be a replacement: the old instance
deleted in the same `up` (refused in prod, lost in staging).

No Bitnami charts or images anywhere (their free catalogue was withdrawn in 2025).
All modes output `url` = `postgresql+psycopg://user:password@host:5432/db` as a Pulumi secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import pulumi
import pulumi_aws as aws
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra.components import aws_network, prometheus_operator, specs
from infra.components.specs import EgressTarget, Resources, require

PORT = 5432
METRICS_PORT = 9187
CNPG_CHART = "cloudnative-pg"
CNPG_REPO = "https://cloudnative-pg.github.io/charts"
CNPG_CHART_VERSION = "0.29.0"
CNPG_OPERATOR_VERSION = "1.30.0"
"""The operator the chart runs (its appVersion): supported on Kubernetes 1.34-1.36 (infra/chart_values.py)."""
BARMAN_CLOUD_CHART = "plugin-barman-cloud"
BARMAN_CLOUD_CHART_VERSION = "0.7.0"
"""The Barman Cloud plugin chart (cloudnative-pg/charts, plugin v0.13.0), from the operator's chart repository."""
BARMAN_CLOUD_PLUGIN = "barman-cloud.cloudnative-pg.io"
"""The plugin's name in `Cluster.spec.plugins`, `externalClusters[].plugin` and `ScheduledBackup.pluginConfiguration`
(plugin-barman-cloud internal/cnpgi/metadata/constants.go `PluginName` at v0.13.0)."""
PG_CATALOG = (
    "https://github.com/cloudnative-pg/artifacts/blob/ce5057c5f37ca1727ebb4f18681094d10124d59b/image-catalogs"
)
#: The operand image of each PostgreSQL major, by exact minor, build and digest, from CloudNativePG's image
#: catalogs of 2026-08-17 (`PG_CATALOG`/catalog-standard-trixie.yaml): the `standard` images, without barman-cloud
#: (the plugin's sidecar carries it; the `system` images that have it are deprecated with the in-tree support). A floating `postgresql:<major>` tag (the
#: deprecated `system` images on bullseye) changes under a running cluster at its next pod restart and was
#: frozen with bullseye's end of support; a new minor is a deliberate change here. The move from bullseye to trixie
#: is safe for the registry's indexes: CloudNativePG's initdb defaults LC_COLLATE and LC_CTYPE to `C`
#: (docs/src/bootstrap.md at v1.30.0), which no glibc update re-orders.
PG_IMAGES: Mapping[str, str] = {
    "14": "ghcr.io/cloudnative-pg/postgresql:14.24-202608170814-standard-trixie"
    "@sha256:2251ca32ca24152bad5d9ddbc9ac4e95e98d6cff4002e98a5484e542ce2cae36",
    "15": "ghcr.io/cloudnative-pg/postgresql:15.19-202608170814-standard-trixie"
    "@sha256:613c7a0417887cd2626a2bfb31fa4e1d86c3088e575fd66bc227007dc69a5487",
    "16": "ghcr.io/cloudnative-pg/postgresql:16.15-202608170814-standard-trixie"
    "@sha256:3df9103d7f89c8abc2870463d4d446944c81b5f1f4b707c590895dc003ecbb65",
    "17": "ghcr.io/cloudnative-pg/postgresql:17.11-202608170816-standard-trixie"
    "@sha256:91e0de662d53895a45f1396f4ee1a75daeb0c26fc87853afc9c8f43e01fdaa21",
    "18": "ghcr.io/cloudnative-pg/postgresql:18.6-202608170814-standard-trixie"
    "@sha256:771f9eab5225587af259d84680cc69a5b6e374ac32bb24effafde1f3368a1241",
}
DEFAULT_PG_IMAGE = PG_IMAGES["17"]
# The operator reads the major from the tag's leading number (cloudnative-pg/machinery reference.New strips the
# digest first); a pinned image also names its minor.
_PINNED_PG_IMAGE = re.compile(r"^[^@]+:(?P<major>\d+)\.\d+[^/@:]*(@sha256:[0-9a-f]{64})?$")
#: The Barman Cloud plugin's sidecar (`plugin-barman-cloud` container, a native sidecar of every instance pod, and
#: of the recovery Job): without them it runs with no requests (the scheduler and the capacity checks see nothing,
#: and in a quota'd namespace the LimitRange's 250m CPU limit would throttle the compression). It runs the plugin's
#: Go manager and, per WAL segment and backup, the Python barman-cloud tools: up to `wal.maxParallel` (2) archivers
#: at once and a base backup gzipping `data.jobs` (2) streams. An estimate, not measured: 100m / 256Mi requested,
#: 1 CPU / 1Gi at most. The plugin reads them from the ObjectStore (plugin-barman-cloud v0.13.0
#: internal/cnpgi/operator/lifecycle_resources.go); a change reaches the pods at the Cluster's next reconciliation,
#: as a rolling restart (web/docs/usage.md: "could generate a rollout of the Cluster").
BACKUP_SIDECAR_RESOURCES = Resources(
    cpu_request="100m", memory_request="256Mi", cpu_limit="1", memory_limit="1Gi"
)
MODES = ("cloudnative", "rds", "cloudsql")
BACKUP_CLOUDS = ("aws", "gcp")
MAJOR_UPGRADE_ANNOTATION = "rag.dev/postgres-major-upgrade"
"""On the Cluster during a declared major upgrade: `<from>-><to>` (kubectl shows why every instance is down)."""
WAIT_FOR_ANNOTATION = "pulumi.com/waitFor"
"""pulumi-kubernetes awaits no custom resource by default (a CR is "created" once the API server accepts it); with
this annotation (`metadata.ReadyCondition`) it waits, on create and on every update, until the expressions hold. On
the Cluster, the API and worker (which exit when the registry does not answer) start only once Postgres is up."""
CLUSTER_READY = "condition=Ready"
"""CloudNativePG v1.30.0 `ConditionClusterReady` ("Ready"): True only while the phase is "Cluster in healthy state"
(pkg/resources/status `SetClusterReadyCondition`, applied with every phase the operator registers)."""
CLUSTER_APPLIED_IMAGE = "{.status.pgDataImageInfo.image}"
"""The image the data directory last ran (CloudNativePG v1.30.0 `ClusterStatus.PGDataImageInfo`): the operator sets
it to `spec.imageName` when it takes up a minor change, and after a major upgrade only once pg_upgrade has finished
(pkg/reconciler/majorupgrade `majorVersionUpgradeHandleCompletion`); never from the spec by itself."""
CLUSTER_READY_INSTANCES = "{.status.readyInstances}"
"""The instance pods that are ready (`ClusterStatus.ReadyInstances`, counted at every reconciliation)."""
CLUSTER_TIMEOUTS = pulumi.CustomTimeouts(create="30m", update="60m")
"""The longest an `up` waits for the Cluster (`cluster_wait_for`; the provider's default is 10 minutes). Create: a
first bootstrap on a new cluster waits for a node scale-up, pulls the operand and plugin images through NAT, runs
initdb and then clones each replica in turn; 30 minutes is about twice that on cold nodes (a restore from the archive
grows with the data and may take longer: the operator goes on, and the next `up` waits again). Update: 60 minutes is
the runbook's bound for a major upgrade (pg_upgrade, then every replica re-cloned), and only an update that declares
one, or that adds instances or grows the volumes (`PostgresDatabaseArgs.grows`), waits that long
(`cluster_timeouts`)."""
CLUSTER_UPDATE_TIMEOUT = "30m"
"""An update of the Cluster that neither declares a major upgrade nor grows it: what it can wait for is a Cluster
that is not healthy (a failover, a bootstrap still running, a rolling restart) becoming healthy; the create's bound.
It is also how long a bare `pulumi up` waits (and then fails) after a failed first `up` left the Cluster
unrecoverable: pulumi-kubernetes' `waitFor` await has no failure exit (await/internal/awaiter.go `Await` ends on the
condition or the deadline; a condition's error is ignored while it waits), so only the deadline ends it
(docs/runbooks.md). An update that raises `instances` waits for each new replica's clone (pg_basebackup, growing with
the data), so it gets the 60 minutes (REVIEW_INFRA21 M2); a clone that outlasts even those fails the `up` while the
operator goes on cloning, and the next `up` waits again."""


def cluster_timeouts(args: PostgresDatabaseArgs) -> pulumi.CustomTimeouts:
    """The Cluster's custom timeouts: the update waits 60 minutes while a major upgrade is declared or the update
    grows the Cluster (`args.grows`), 30 otherwise."""
    long = args.major_upgrade_from is not None or args.grows
    return pulumi.CustomTimeouts(
        create=CLUSTER_TIMEOUTS.create, update=CLUSTER_TIMEOUTS.update if long else CLUSTER_UPDATE_TIMEOUT
    )


RECOVERY_SOURCE = "origin"
"""Name of the externalClusters entry a recovery bootstraps from."""
# barman-cloud server names and CNPG cluster names: DNS labels.
_ARCHIVE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# CloudNativePG's recoveryTarget.targetTime: RFC 3339 with an explicit offset.
_TARGET_TIME = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2})?)$"
# robfig/cron, which the operator's ScheduledBackup uses: six fields (seconds first) or a descriptor.
_SCHEDULE6 = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){5}\S+)$"
_IDENT = r"^[a-z_][a-z0-9_]{0,62}$"
# RDS restore_time and the Cloud SQL clone's point_in_time: RFC 3339 in UTC ("Zulu").
_UTC_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# RDS CreateDBInstance: MasterUsername 1-16 letters, digits or underscores, starting with a letter; DBName (PostgreSQL)
# 1-63 letters, digits or underscores, starting with a letter. "rdsadmin" is RDS's own account.
_RDS_USER = r"^[a-z][a-z0-9_]{0,15}$"
_RDS_DB = r"^[a-z][a-z0-9_]{0,62}$"
RDS_RESERVED_USERS = frozenset({"rdsadmin", "rdsrepladmin", "rds_superuser", "postgres_fdw"})
# RDS snapshot identifiers: 1-255 letters, digits and hyphens, starting with a letter, no trailing or double hyphen.
_SNAPSHOT_ID = r"^[A-Za-z](?:-?[A-Za-z0-9])*$"
SNAPSHOT_SUFFIX_BYTES = 4
# ENTERPRISE_PLUS runs only the predefined db-perf-optimized-N-* tiers; every other tier (shared-core, db-custom-*)
# needs ENTERPRISE (pulumi-gcp 10.2.0 `DatabaseInstanceSettings.edition`/`tier` docstrings).
ENTERPRISE_PLUS_TIER_PREFIX = "db-perf-optimized-"
#: The most days of transaction logs (point-in-time recovery) each Cloud SQL edition keeps (pulumi-gcp 10.2.0
#: `DatabaseInstanceSettingsBackupConfiguration.transaction_log_retention_days`: 1-7, Enterprise Plus 1-35).
CLOUDSQL_LOG_RETENTION_MAX_DAYS: Mapping[str, int] = {"ENTERPRISE": 7, "ENTERPRISE_PLUS": 35}
#: Cloud SQL's smallest PD_SSD data disk, GB (`DatabaseInstanceSettings.disk_size` docstring).
CLOUDSQL_MIN_DISK_GB = 10
#: Days Cloud SQL keeps the final backup it takes when the instance is deleted: the most it allows
#: (`DatabaseInstanceSettingsFinalBackupConfig.retention_days`, 1-365), so at least any `backup_retention_days`
#: (1-35). RDS's final snapshot never expires; a year is the closest Cloud SQL comes.
CLOUDSQL_FINAL_BACKUP_RETENTION_DAYS = 365
#: Hours Cloud SQL's daily backup window lasts from `backup_configuration.start_time` (a backup starts in it).
CLOUDSQL_BACKUP_WINDOW_HOURS = 4


@dataclass(frozen=True)
class PostgresDatabaseArgs:
    """Arguments of `PostgresDatabase`; the fields of the modes not chosen are ignored."""

    mode: Literal["cloudnative", "rds", "cloudsql"]
    password: pulumi.Input[str]
    """Password of the application user (a Pulumi secret)."""
    database: str = "rag"
    username: str = "rag"
    protect: bool = False
    """Protect the database resource from deletion (prod: True; RDS/Cloud SQL deletion protection too)."""
    depends_on: tuple[pulumi.Resource, ...] = ()
    # --- cloudnative
    namespace: str | None = None
    instances: int = 1
    storage_size: str = "10Gi"
    storage_class: str | None = None
    image: str = DEFAULT_PG_IMAGE
    resources: Resources = field(
        default_factory=lambda: Resources(
            cpu_request="250m", memory_request="512Mi", cpu_limit="2", memory_limit="1Gi"
        )
    )
    install_operator: bool = True
    operator_namespace: str = "cnpg-system"
    operator_chart_version: str = CNPG_CHART_VERSION
    operator: pulumi.Resource | None = None
    """An operator release created elsewhere, waited for when `install_operator` is False."""
    network_policy: bool = True
    client_selectors: tuple[Mapping[str, str], ...] = ()
    pod_monitor: bool = False
    """Create a PodMonitor scraping the instances' metrics port (9187)."""
    monitoring_namespace: str | None = "monitoring"
    """Namespace of Prometheus, admitted on 9187 by the NetworkPolicy; None to disallow."""
    monitoring_crds: tuple[pulumi.Resource, ...] = ()
    """Resources installing the monitoring.coreos.com CRDs (Monitoring.crds_ready); the PodMonitor waits."""
    monitor_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels the cluster's Prometheus selects monitors by (`Monitoring.monitor_labels`; mode `existing`)."""
    backup_bucket: pulumi.Input[str] | None = None
    """Bucket receiving WAL and base backups (cloudnative); None: no backups."""
    backup_cloud: Literal["aws", "gcp"] | None = None
    """Whose object storage `backup_bucket` is: S3 (IRSA credentials) or GCS (GKE Workload Identity)."""
    backup_prefix: str = "postgres"
    backup_schedule: str = "0 0 3 * * *"
    """ScheduledBackup schedule: six cron fields, seconds first (robfig/cron), in UTC."""
    archive_retention_days: int = 14
    """Recovery window kept in the archive (`retentionPolicy`): barman-cloud deletes older base backups and WAL."""
    backup_service_account_annotations: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Workload identity annotations of the instances' ServiceAccount (the role may write to the bucket)."""
    backup_waits: tuple[pulumi.Resource, ...] = ()
    """What must exist before the instances archive (the bucket, its write grant)."""
    cert_manager: tuple[pulumi.Resource, ...] = ()
    """What installs cert-manager (its release): the Barman Cloud plugin's chart creates an Issuer and the
    Certificates of the plugin's mTLS with the operator, so the plugin release waits for it."""
    barman_cloud_chart_version: str = BARMAN_CLOUD_CHART_VERSION
    backup_sidecar_resources: Resources = field(default_factory=lambda: BACKUP_SIDECAR_RESOURCES)
    """The Barman Cloud plugin's sidecar in each instance pod (and in a recovery's restore Job): `ObjectStore`
    `spec.instanceSidecarConfiguration.resources`."""
    archive_name: str | None = None
    """barman-cloud server name the cluster archives under; None: the cluster name."""
    recovery_source: str | None = None
    """Archive (server name) in the bucket to bootstrap from by `recovery`; None: `initdb`, a new database."""
    recovery_target_time: str | None = None
    """Point-in-time target of the recovery (RFC 3339); None: replay the whole archive."""
    major_upgrade_from: int | None = None
    """The major the Cluster runs when `image` names a higher one: a declared in-place major upgrade, recorded on
    the Cluster (`MAJOR_UPGRADE_ANNOTATION`); None: `image` must be the major the Cluster runs."""
    grows: bool = False
    """This update raises `instances` or `storage_size` above what the stack's state records (infra/guards.py
    `registry_grows`): the Cluster's update then waits for new replicas' clones, so it gets the long update bound
    (`cluster_timeouts`)."""
    # --- rds
    vpc_id: pulumi.Input[str] | None = None
    subnet_ids: tuple[pulumi.Input[str], ...] = ()
    allowed_cidrs: tuple[str, ...] = ()
    instance_class: str = "db.t4g.medium"
    allocated_storage_gb: int = 50
    """The storage a new instance starts with, GB (RDS `allocated_storage`; Cloud SQL `disk_size`, at creation)."""
    max_allocated_storage_gb: int = 200
    """The ceiling storage autoscaling grows to, GB (RDS `max_allocated_storage`; Cloud SQL `disk_autoresize_limit`)."""
    engine_version: str = "17"
    multi_az: bool = True
    backup_retention_days: int = 7
    """Days of automated backups and point-in-time recovery (RDS `backup_retention_period`; Cloud SQL: N+1 daily
    backups and up to N days of transaction logs, `cloudsql_backup_configuration`)."""
    retain_backups_on_delete: bool = True
    """Keep the automated backups when the instance is deleted (a destroy, a restore with `keep_original` False), for
    their retention days, so point-in-time recovery outlives the instance: RDS `delete_automated_backups` False
    (the provider's default, True, deletes them at once: "Whether to remove automated backups immediately after the
    DB instance is deleted"), Cloud SQL `retain_backups_on_delete`. Both are read from the state (RDS) or the
    instance (Cloud SQL) at deletion: the value a delete uses is the one the last `up` recorded."""
    final_snapshot_prefix: str = "rag-postgres-final"
    """Start of the RDS final snapshot's identifier (give it the stack: identifiers are per account and region);
    a random suffix drawn once per instance lifetime follows."""
    maintenance_day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "sun"
    """Day of the weekly maintenance window (rds, cloudsql), UTC."""
    maintenance_hour: int = 3
    """Hour (UTC) the one-hour maintenance window starts; backups run before it (RDS in the hour before it, Cloud
    SQL's 4-hour window ending an hour before it)."""
    apply_immediately: bool = False
    """RDS: apply a modification at `pulumi up` (True) or in the next maintenance window (False)."""
    auto_minor_version_upgrade: bool = True
    """Take new minor versions in the maintenance window (RDS; Cloud SQL always does, and refuses False)."""
    upgrade_from: str | None = None
    """The major the RDS / Cloud SQL instance runs while `engine_version` / `database_version` names a newer one:
    a declared major upgrade. None: no upgrade, and a changed version does not touch a Cloud SQL instance."""
    restore_name: str | None = None
    """A restore (rds, cloudsql): a new instance `<name>-<restore_name>` becomes the registry."""
    restore_identifier: str | None = None
    """The restored instance's cloud name (RDS identifier, Cloud SQL instance name): unique per account/project."""
    restore_snapshot: str | None = None
    """RDS: the DB snapshot (identifier or ARN) the restored instance is created from."""
    restore_source_instance: str | None = None
    """The instance a point-in-time restore reads (RDS identifier, Cloud SQL name); None: this stack's original."""
    restore_time: str | None = None
    """The point in time (RFC 3339, UTC); None: RDS's latest restorable time, or a Cloud SQL clone of now."""
    keep_original: bool = True
    """Keep declaring the instance the stack had before the restore (protected in prod) until this is False."""
    # --- cloudsql
    region: str | None = None
    private_network: pulumi.Input[str] | None = None
    tier: str = "db-custom-2-7680"
    database_version: str = "POSTGRES_17"
    availability_type: Literal["ZONAL", "REGIONAL"] = "REGIONAL"


def validate_args(args: PostgresDatabaseArgs) -> None:
    """Raise ComponentArgsError with a full sentence when the args cannot produce a reachable database."""
    require(args.mode in MODES, f"PostgresDatabaseArgs.mode {args.mode!r} must be one of {', '.join(MODES)}.")
    require(args.password is not None, "PostgresDatabaseArgs.password is required.")
    require(
        bool(re.match(_IDENT, args.database)),
        f"PostgresDatabaseArgs.database {args.database!r} must be a lower-case SQL identifier.",
    )
    require(
        bool(re.match(_IDENT, args.username)),
        f"PostgresDatabaseArgs.username {args.username!r} must be a lower-case SQL identifier.",
    )
    if args.mode == "cloudnative":
        specs.check_in_cluster_store("PostgresDatabaseArgs", args)
        target = pg_image_major(args.image) or 0
        require(
            args.major_upgrade_from is None or (target >= 16 and args.major_upgrade_from < target),
            f"PostgresDatabaseArgs.major_upgrade_from {args.major_upgrade_from} must be below the image's major, "
            "which must be 16 or later (CloudNativePG refuses a downgrade and upgrades only to 16+).",
        )
        require(
            pg_image_major(args.image) is not None,
            f"PostgresDatabaseArgs.image {args.image!r} must name an exact PostgreSQL minor (a tag such as "
            "17.11-202608170816-standard-trixie, optionally with a digest): a floating major tag changes the "
            "server under a running cluster.",
        )
        require(1 <= args.instances <= 9, "PostgresDatabaseArgs.instances must be between 1 and 9.")
        _validate_backups(args)
    if args.mode == "rds":
        require(args.vpc_id is not None, "PostgresDatabaseArgs.vpc_id is required in rds mode.")
        require(
            len(args.subnet_ids) >= 2,
            "PostgresDatabaseArgs.subnet_ids must list at least two subnets in rds mode.",
        )
        require(
            len(args.allowed_cidrs) >= 1,
            "PostgresDatabaseArgs.allowed_cidrs must list who may connect in rds mode.",
        )
        require(
            args.max_allocated_storage_gb >= args.allocated_storage_gb >= 20,
            "PostgresDatabaseArgs.allocated_storage_gb must be at least 20 and not above max_allocated_storage_gb.",
        )
        require(
            bool(re.match(_RDS_USER, args.username)) and args.username not in RDS_RESERVED_USERS,
            f"PostgresDatabaseArgs.username {args.username!r} is not a valid RDS master user name: 1-16 letters, "
            "digits or underscores starting with a letter, not an RDS-reserved name.",
        )
        require(
            bool(re.match(_RDS_DB, args.database)),
            f"PostgresDatabaseArgs.database {args.database!r} is not a valid RDS database name: it must start "
            "with a letter.",
        )
        prefix_room = 255 - 1 - 2 * SNAPSHOT_SUFFIX_BYTES
        require(
            bool(re.match(_SNAPSHOT_ID, args.final_snapshot_prefix))
            and len(args.final_snapshot_prefix) <= prefix_room,
            f"PostgresDatabaseArgs.final_snapshot_prefix {args.final_snapshot_prefix!r} is not a valid start of an "
            f"RDS snapshot identifier: letters, digits and single hyphens, starting with a letter, at most "
            f"{prefix_room} characters.",
        )
    if args.mode in ("rds", "cloudsql"):
        _validate_managed(args)
    if args.mode == "cloudsql":
        require(args.region is not None, "PostgresDatabaseArgs.region is required in cloudsql mode.")
        require(
            args.max_allocated_storage_gb >= args.allocated_storage_gb >= CLOUDSQL_MIN_DISK_GB,
            f"PostgresDatabaseArgs.allocated_storage_gb must be at least {CLOUDSQL_MIN_DISK_GB} (Cloud SQL's "
            "smallest PD_SSD disk) and not above max_allocated_storage_gb.",
        )
        require(
            1 <= args.backup_retention_days <= 35,
            f"PostgresDatabaseArgs.backup_retention_days {args.backup_retention_days} must be 1-35 in cloudsql "
            "mode: Cloud SQL's REGIONAL availability and its restore clone need automated backups and "
            "point-in-time recovery.",
        )
        require(
            args.auto_minor_version_upgrade,
            "PostgresDatabaseArgs.auto_minor_version_upgrade must be True in cloudsql mode: Cloud SQL applies "
            "minor versions in its maintenance window and has no switch to turn that off.",
        )
        require(
            args.private_network is not None,
            "PostgresDatabaseArgs.private_network is required in cloudsql mode.",
        )


def _validate_managed(args: PostgresDatabaseArgs) -> None:
    require(
        args.maintenance_day in DAYS and 0 <= args.maintenance_hour <= 23,
        "PostgresDatabaseArgs.maintenance_day must be mon..sun and maintenance_hour 0-23.",
    )
    major = engine_major(args)
    if args.upgrade_from is not None:
        require(
            args.upgrade_from.isdigit() and int(args.upgrade_from) < int(major),
            f"PostgresDatabaseArgs.upgrade_from {args.upgrade_from!r} must be a major below the target {major}.",
        )
        require(
            args.apply_immediately,
            "PostgresDatabaseArgs.apply_immediately must be True for a major upgrade: it runs while `up` is watched.",
        )
        require(
            args.restore_name is None,
            "PostgresDatabaseArgs.upgrade_from and restore_name exclude each other.",
        )
    if args.restore_name is None:
        require(
            args.restore_snapshot is None
            and args.restore_source_instance is None
            and args.restore_time is None,
            "PostgresDatabaseArgs.restore_snapshot/restore_source_instance/restore_time need restore_name.",
        )
        require(args.keep_original, "PostgresDatabaseArgs.keep_original=False needs restore_name.")
        return
    require(
        bool(re.match(_ARCHIVE, args.restore_name)) and args.restore_identifier is not None,
        f"PostgresDatabaseArgs.restore_name {args.restore_name!r} must be a DNS label, with restore_identifier.",
    )
    require(
        args.restore_snapshot is None or (args.restore_source_instance is None and args.restore_time is None),
        "PostgresDatabaseArgs.restore_snapshot excludes a point in time (restore_source_instance, restore_time).",
    )
    require(
        args.restore_snapshot is None or args.mode == "rds",
        "PostgresDatabaseArgs.restore_snapshot is an RDS snapshot: Cloud SQL restores by a clone at a point in time.",
    )
    require(
        args.restore_time is None or bool(re.match(_UTC_TIME, args.restore_time)),
        f"PostgresDatabaseArgs.restore_time {args.restore_time!r} must be an RFC 3339 UTC time (…Z).",
    )


def _validate_backups(args: PostgresDatabaseArgs) -> None:
    if args.backup_bucket is None:
        require(
            args.recovery_source is None,
            "PostgresDatabaseArgs.recovery_source needs backup_bucket: a recovery reads the archive from it.",
        )
        return
    require(
        args.backup_cloud in BACKUP_CLOUDS,
        "PostgresDatabaseArgs.backup_cloud must be 'aws' or 'gcp' when backup_bucket is set.",
    )
    require(
        bool(re.match(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", args.backup_prefix)),
        f"PostgresDatabaseArgs.backup_prefix {args.backup_prefix!r} must be a relative object path without spaces.",
    )
    require(
        bool(re.match(_SCHEDULE6, args.backup_schedule.strip())),
        f"PostgresDatabaseArgs.backup_schedule {args.backup_schedule!r} is not a six-field cron schedule "
        "(seconds first, as the operator's ScheduledBackup reads it).",
    )
    require(
        args.archive_retention_days >= 1, "PostgresDatabaseArgs.archive_retention_days must be at least 1."
    )
    args.backup_sidecar_resources.validate("PostgresDatabaseArgs.backup_sidecar_resources")
    for label, value in (("archive_name", args.archive_name), ("recovery_source", args.recovery_source)):
        require(
            value is None or bool(re.match(_ARCHIVE, value)),
            f"PostgresDatabaseArgs.{label} {value!r} must be a DNS label (lower-case letters, digits, hyphens).",
        )
    if args.recovery_source is not None:
        require(
            args.archive_name is not None and args.archive_name != args.recovery_source,
            f"PostgresDatabaseArgs.archive_name must name a new archive when recovering from "
            f"{args.recovery_source!r}: barman-cloud refuses to archive into a non-empty location, and the "
            "source must stay intact.",
        )
    require(
        args.recovery_target_time is None or args.recovery_source is not None,
        "PostgresDatabaseArgs.recovery_target_time needs recovery_source.",
    )
    require(
        args.recovery_target_time is None or bool(re.match(_TARGET_TIME, args.recovery_target_time)),
        f"PostgresDatabaseArgs.recovery_target_time {args.recovery_target_time!r} must be an RFC 3339 time with "
        "an offset, e.g. 2026-11-26T03:00:00Z.",
    )


# ---------------------------------------------------------------------------------------------- pure specs
def engine_major(args: PostgresDatabaseArgs) -> str:
    """The PostgreSQL major the managed instance runs (or is upgraded to): `17` of `17`, `17.5` or `POSTGRES_17`."""
    version = args.engine_version if args.mode == "rds" else args.database_version.removeprefix("POSTGRES_")
    return version.split(".")[0].split("_")[0]


def rds_maintenance_window(day: str, hour: int) -> str:
    """RDS `maintenance_window` (ddd:hh24:mi-ddd:hh24:mi, UTC): one hour from `hour` on `day`."""
    end_day = DAYS[(DAYS.index(day) + 1) % 7] if hour == 23 else day
    return f"{day}:{hour:02d}:00-{end_day}:{(hour + 1) % 24:02d}:00"


def rds_backup_window(hour: int) -> str:
    """RDS `backup_window` (daily, UTC): the half hour starting an hour before the maintenance window, which
    RDS requires not to overlap it (its default is a random half hour of the region's block, which may)."""
    start = (hour - 1) % 24
    return f"{start:02d}:00-{start:02d}:30"


def cloudsql_backup_start_time(hour: int) -> str:
    """Cloud SQL `backup_configuration.start_time` ("HH:MM", UTC) for the maintenance window at `hour`: its 4-hour
    backup window (a backup starts in it) ends an hour before maintenance, leaving the last backup started an hour
    to finish, as RDS's window does (`rds_backup_window`). Unset, Cloud SQL picks a random window that may overlap
    the maintenance hour (a restart during a backup)."""
    return f"{(hour - CLOUDSQL_BACKUP_WINDOW_HOURS - 1) % 24:02d}:00"


def cloudsql_maintenance_window(day: str, hour: int) -> dict[str, Any]:
    """Cloud SQL `settings.maintenance_window`: day 1 (Monday) to 7 (Sunday), hour 0-23 UTC, stable track."""
    return {"day": DAYS.index(day) + 1, "hour": hour, "update_track": "stable"}


def rds_parameters() -> list[dict[str, str]]:
    """The registry's DB parameter group settings (dynamic parameters: applied without a reboot)."""
    return [
        # TLS for every client, whatever the major's default (RDS turned it on by default only from 15).
        {"name": "rds.force_ssl", "value": "1", "apply_method": "immediate"},
        # Slow statements (over one second) into the PostgreSQL log, for the registry's latency alerts.
        {"name": "log_min_duration_statement", "value": "1000", "apply_method": "immediate"},
    ]


def cloudsql_edition(tier: str) -> str:
    """The Cloud SQL edition a tier runs on: db-perf-optimized-N-* is ENTERPRISE_PLUS, the rest ENTERPRISE."""
    return "ENTERPRISE_PLUS" if tier.startswith(ENTERPRISE_PLUS_TIER_PREFIX) else "ENTERPRISE"


def cloudsql_log_retention_days(retention_days: int, tier: str) -> int:
    """Days of transaction logs (the point-in-time recovery window) Cloud SQL keeps for `retention_days` of
    backups: as many, at most the edition's limit (`CLOUDSQL_LOG_RETENTION_MAX_DAYS`)."""
    return min(retention_days, CLOUDSQL_LOG_RETENTION_MAX_DAYS[cloudsql_edition(tier)])


def cloudsql_backup_configuration(retention_days: int, tier: str, maintenance_hour: int) -> dict[str, Any]:
    """Cloud SQL `settings.backup_configuration` for RDS-style `retention_days` (1-35): daily automated backups,
    started before the maintenance window (`cloudsql_backup_start_time`), N+1 of them kept (the oldest is the base
    a restore to the window's first hour starts from; Cloud SQL also needs more backups than days of logs), and
    point-in-time recovery over `cloudsql_log_retention_days`."""
    return {
        "enabled": True,
        "start_time": cloudsql_backup_start_time(maintenance_hour),
        "point_in_time_recovery_enabled": True,
        "transaction_log_retention_days": cloudsql_log_retention_days(retention_days, tier),
        "backup_retention_settings": {"retained_backups": retention_days + 1, "retention_unit": "COUNT"},
    }


def cloudsql_backups_on_delete(*, retain: bool = True) -> dict[str, Any]:
    """What Cloud SQL keeps when the instance is deleted (a `destroy`, a restore with `keep_original` False): by
    default nothing ("if you don't take a final backup ... Cloud SQL deletes all backups"), where RDS leaves a final
    snapshot. So the automated backups are retained (`retain_backups_on_delete`, by the backup retention setting)
    and a final backup is taken, kept `CLOUDSQL_FINAL_BACKUP_RETENTION_DAYS` (`final_backup_config`). Cloud SQL
    reads both from the instance's settings when it deletes it (the provider's delete sends only a description):
    an instance has them once an `up` has set them, an in-place settings update (neither field is ForceNew in
    terraform-provider-google's `resource_sql_database_instance.go`). `retain` False (a throwaway stack) lets the
    automated backups go with the instance; the final backup is still taken, as RDS still takes its final
    snapshot."""
    return {
        "retain_backups_on_delete": retain,
        "final_backup_config": {"enabled": True, "retention_days": CLOUDSQL_FINAL_BACKUP_RETENTION_DAYS},
    }


def cloudsql_disk(args: PostgresDatabaseArgs, *, clone: bool) -> dict[str, Any]:
    """Cloud SQL disk settings: PD_SSD grown by autoresize up to `max_allocated_storage_gb`, starting at
    `allocated_storage_gb` (a clone starts with its source's disk instead)."""
    disk: dict[str, Any] = {
        "disk_type": "PD_SSD",
        "disk_autoresize": True,
        "disk_autoresize_limit": args.max_allocated_storage_gb,
    }
    if not clone:
        disk["disk_size"] = args.allocated_storage_gb
    return disk


def pg_image_major(image: str) -> int | None:
    """The PostgreSQL major of a pinned operand image, or None when the tag does not name an exact minor."""
    match = _PINNED_PG_IMAGE.match(image)
    return int(match["major"]) if match else None


def pg_image(major: str) -> str:
    """The pinned operand image of PostgreSQL `major` (a key of PG_IMAGES)."""
    if major not in PG_IMAGES:
        raise ValueError(
            f"No pinned CloudNativePG image for PostgreSQL {major}; known: {', '.join(PG_IMAGES)}."
        )
    return PG_IMAGES[major]


def database_url(user: str, password: str, host: str, database: str, port: int = PORT) -> str:
    """DATABASE_URL for SQLAlchemy + psycopg 3, with user and password percent-encoded."""
    return f"postgresql+psycopg://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"


def operator_values() -> dict[str, Any]:
    """Helm values of the CloudNativePG operator chart (its CRDs are part of the chart)."""
    return {
        "crds": {"create": True},
        "replicaCount": 1,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }


def barman_cloud_values() -> dict[str, Any]:
    """Helm values of the plugin-barman-cloud chart (its CRD and its cert-manager Issuer and Certificates are part
    of the chart)."""
    return {
        "crds": {"create": True},
        "replicaCount": 1,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    }


def backup_destination(cloud: str, bucket: str, prefix: str) -> str:
    """barman-cloud's destinationPath: s3://bucket/prefix or gs://bucket/prefix."""
    return f"{'s3' if cloud == 'aws' else 'gs'}://{bucket}/{prefix}"


def object_store_configuration(cloud: str, destination: pulumi.Input[str]) -> dict[str, Any]:
    """The plugin's `ObjectStore.spec.configuration` (the in-tree `barmanObjectStore` shape, without `serverName`,
    which the plugin takes as a Cluster parameter) with workload-identity credentials: the pod's IRSA role (boto3
    reads the web identity token the EKS webhook projects) or its GKE Workload Identity (the metadata server).
    gzip: in both the WAL and the data compression enums."""
    store: dict[str, Any] = {"destinationPath": destination}
    if cloud == "aws":
        store["s3Credentials"] = {"inheritFromIAMRole": True}
    else:
        store["googleCredentials"] = {"gkeEnvironment": True}
    store["wal"] = {"compression": "gzip", "maxParallel": 2}
    store["data"] = {"compression": "gzip", "jobs": 2}
    return store


def object_store_spec(args: PostgresDatabaseArgs, destination: pulumi.Input[str]) -> dict[str, Any]:
    """`barmancloud.cnpg.io/v1` `ObjectStore`: where the archive is, how long it is kept (the plugin's sidecar
    applies `retentionPolicy` to every server name under `destinationPath` that it archives) and what the sidecar
    requests (`BACKUP_SIDECAR_RESOURCES`)."""
    assert args.backup_cloud is not None
    return {
        "configuration": object_store_configuration(args.backup_cloud, destination),
        "retentionPolicy": f"{args.archive_retention_days}d",
        "instanceSidecarConfiguration": {"resources": specs.resources_spec(args.backup_sidecar_resources)},
    }


def object_store_name(cluster_name: str) -> str:
    """Name of the cluster's ObjectStore (the `barmanObjectName` its plugin entries carry)."""
    return f"{cluster_name}-archive"


def archive_name(args: PostgresDatabaseArgs, cluster_name: str) -> str:
    """The server name this cluster archives under."""
    return args.archive_name or cluster_name


def plugins_spec(args: PostgresDatabaseArgs, cluster_name: str) -> list[dict[str, Any]]:
    """`spec.plugins`: the Barman Cloud plugin as the WAL archiver (and base backups), into the ObjectStore under the
    server name `archive_name`, set explicitly so the archive a stack started in-tree continues in place."""
    return [
        {
            "name": BARMAN_CLOUD_PLUGIN,
            "isWALArchiver": True,
            "parameters": {
                "barmanObjectName": object_store_name(cluster_name),
                "serverName": archive_name(args, cluster_name),
            },
        }
    ]


def scheduled_backup_spec(args: PostgresDatabaseArgs, cluster_name: str) -> dict[str, Any]:
    """A base backup by the plugin on the schedule (WAL is archived continuously), the first one right after
    creation, taken from a standby when there is one; each Backup object is owned by the ScheduledBackup."""
    return {
        "schedule": args.backup_schedule,
        "cluster": {"name": cluster_name},
        "method": "plugin",
        "pluginConfiguration": {"name": BARMAN_CLOUD_PLUGIN},
        "immediate": True,
        "backupOwnerReference": "self",
        "target": "prefer-standby",
    }


def cluster_spec(
    args: PostgresDatabaseArgs,
    app_secret: str,
    destination: pulumi.Input[str] | None = None,
    cluster_name: str = "",
) -> dict[str, Any]:
    """The CNPG `Cluster` spec: instances, storage, initdb (or recovery) bootstrap with the app owner,
    anti-affinity, and the Barman Cloud plugin archiving to the cluster's ObjectStore when the args have a backup
    bucket."""
    storage: dict[str, Any] = {"size": args.storage_size}
    if args.storage_class is not None:
        storage["storageClass"] = args.storage_class
    owner = {"database": args.database, "owner": args.username, "secret": {"name": app_secret}}
    bootstrap: dict[str, Any] = {"initdb": owner}
    spec: dict[str, Any] = {}
    if destination is not None and args.backup_bucket is not None:
        spec["plugins"] = plugins_spec(args, cluster_name)
        if args.backup_service_account_annotations:
            spec["serviceAccountTemplate"] = {
                "metadata": {"annotations": dict(args.backup_service_account_annotations)}
            }
        if args.recovery_source is not None:
            recovery: dict[str, Any] = {"source": RECOVERY_SOURCE, **owner}
            if args.recovery_target_time is not None:
                recovery["recoveryTarget"] = {"targetTime": args.recovery_target_time}
            bootstrap = {"recovery": recovery}
            # The same ObjectStore (bucket and prefix) holds the source archive under another server name.
            spec["externalClusters"] = [
                {
                    "name": RECOVERY_SOURCE,
                    "plugin": {
                        "name": BARMAN_CLOUD_PLUGIN,
                        "parameters": {
                            "barmanObjectName": object_store_name(cluster_name),
                            "serverName": args.recovery_source,
                        },
                    },
                }
            ]
    return {
        "instances": args.instances,
        "imageName": args.image,
        "primaryUpdateStrategy": "unsupervised",
        "enableSuperuserAccess": False,
        "storage": storage,
        "bootstrap": bootstrap,
        "postgresql": {"parameters": {"max_connections": "200", "shared_buffers": "128MB"}},
        "resources": specs.resources_spec(args.resources),
        "affinity": {
            "enablePodAntiAffinity": True,
            "topologyKey": specs.HOST_KEY,
            "podAntiAffinityType": "required" if args.instances > 1 else "preferred",
        },
        # The operator's budget over the primary is minAvailable 1: with one instance it allows no eviction, so
        # the node under dev's (or a PR stack's) database could not be drained, upgraded or scaled down (CNPG
        # "Kubernetes upgrade and maintenance"). One instance is down during a drain either way.
        "enablePDB": args.instances > 1,
        **spec,
    }


def cluster_wait_for(args: PostgresDatabaseArgs) -> list[str]:
    """What `pulumi up` waits for on the Cluster (`WAIT_FOR_ANNOTATION`, a JSON list: every expression must hold on
    the same observed object, pulumi-kubernetes `condition.All`): Ready, the data directory on the declared image and
    every declared instance ready.

    Ready alone passes at once on an update: CloudNativePG's condition carries no observedGeneration and the Cluster
    has no `status.observedGeneration` (v1.30.0 api/v1/cluster_types.go), so the provider's generation check
    (condition/kubectl.go `checkCondition`) cannot see that the operator has not reacted, and the Ready=True left by
    the last healthy loop satisfies it. The other two expressions are status the operator writes and the pre-change
    Cluster cannot have when the image or the instance count changes: a major upgrade is waited for until
    pg_upgrade has finished and the cluster is healthy again with all its instances. What they cannot see (the
    Cluster records no applied generation: cloudnative-pg#11390) is a change the operator applies as a rolling
    restart without a new image (resources, parameters that need a restart, the backup sidecar; a larger storage size
    is an in-place PVC resize, no restart), and the restart a minor image change starts after
    the operator has taken the image up: the wait can end before the restart begins (docs/infra.md)."""
    return [
        CLUSTER_READY,
        f"jsonpath={CLUSTER_APPLIED_IMAGE}={args.image}",
        f"jsonpath={CLUSTER_READY_INSTANCES}={args.instances}",
    ]


def cluster_metadata(
    args: PostgresDatabaseArgs, cluster_name: str, ns: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    """The Cluster's metadata: `pulumi up` waits for it (`cluster_wait_for`); a declared major upgrade is annotated
    `<from>-><to>`."""
    annotations = {WAIT_FOR_ANNOTATION: json.dumps(cluster_wait_for(args))}
    if args.major_upgrade_from is not None:
        annotations[MAJOR_UPGRADE_ANNOTATION] = f"{args.major_upgrade_from}->{pg_image_major(args.image)}"
    return specs.metadata(cluster_name, ns, labels, annotations)


def pod_monitor_spec(cluster_name: str) -> dict[str, Any]:
    """PodMonitor for the instances' exporter (the operator names the container port `metrics`)."""
    return {
        "selector": {"matchLabels": cluster_pod_labels(cluster_name)},
        "podMetricsEndpoints": [{"port": "metrics", "interval": "30s"}],
    }


def cluster_pod_labels(cluster_name: str) -> dict[str, str]:
    """Labels CloudNativePG puts on every instance pod of a cluster."""
    return {"cnpg.io/cluster": cluster_name}


def network_policy_spec(args: PostgresDatabaseArgs, cluster_name: str) -> dict[str, Any]:
    """Clients and peer instances on 5432; the operator on the instance manager's status port 8000.

    Egress is allowed everywhere (an empty rule): instances talk to the Kubernetes API, whose address differs
    per cluster, and to their peers. Listing Egress explicitly matters: the namespace's default-deny policy
    would otherwise block it.
    """
    match = cluster_pod_labels(cluster_name)
    clients = specs.pod_peers(args.client_selectors)
    ingress = [
        specs.ingress_rule([PORT], [*clients, specs.pod_peer(match)]),
        specs.ingress_rule([8000, PORT], [specs.namespace_peer(args.operator_namespace)]),
    ]
    if args.monitoring_namespace is not None:
        ingress.append(specs.ingress_rule([METRICS_PORT], [specs.namespace_peer(args.monitoring_namespace)]))
    return specs.network_policy_spec(match, ingress=ingress, egress=[{}])


def _secret_url(
    args: PostgresDatabaseArgs, password: pulumi.Output[str], host: pulumi.Input[str]
) -> pulumi.Output[str]:
    """DATABASE_URL of the app user once password and host are known, kept secret."""
    return pulumi.Output.secret(
        pulumi.Output.all(password, host).apply(
            lambda values: database_url(args.username, values[0], values[1], args.database)
        )
    )


# ---------------------------------------------------------------------------------------------- component
class PostgresDatabase(pulumi.ComponentResource):
    """CloudNativePG in the cluster, RDS, or Cloud SQL; outputs a secret DATABASE_URL."""

    url: pulumi.Output[str]
    """DATABASE_URL (secret)."""
    egress_target: EgressTarget
    ready: tuple[pulumi.Resource, ...]
    """What must exist before a client starts (the CNPG Cluster, or the instance, database and user)."""
    operator: pulumi.Resource | None
    """The operator Helm release (cloudnative mode with install_operator), for others to depend on."""
    backup_destination: pulumi.Output[str] | None
    """Where the CloudNativePG archive lives (s3://... / gs://...); None without backups."""
    archive_name: str | None
    """The server name the cluster archives under, the `recovery_source` of a later restore."""
    instance: pulumi.CustomResource | None
    """The RDS / Cloud SQL instance DATABASE_URL points at (the restored one after a restore); None in cloudnative."""
    barman_cloud: pulumi.Resource | None
    """The Barman Cloud plugin release (cloudnative mode with backups and install_operator)."""
    object_store: pulumi.Resource | None
    """The cluster's `ObjectStore` (cloudnative mode with backups)."""

    def __init__(
        self, name: str, args: PostgresDatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        validate_args(args)
        super().__init__("rag:data:PostgresDatabase", name, None, opts)
        self.operator = None
        self.backup_destination = None
        self.archive_name = None
        self.instance = None
        self.barman_cloud = None
        self.object_store = None
        if args.mode == "cloudnative":
            self.url, self.egress_target = self._cloudnative(name, args)
        elif args.mode == "rds":
            self.url, self.egress_target = self._rds(name, args)
        else:
            self.url, self.egress_target = self._cloudsql(name, args)
        self.register_outputs({"url": self.url})

    def _opts(
        self, args: PostgresDatabaseArgs, *, protect: bool = False, extra: tuple[pulumi.Resource, ...] = ()
    ) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, protect=protect, depends_on=[*args.depends_on, *extra])

    def _cloudnative(self, name: str, args: PostgresDatabaseArgs) -> tuple[pulumi.Output[str], EgressTarget]:
        ns = args.namespace or ""
        cluster_name = name
        specs.check_dns_label(f"{cluster_name}-app", "PostgresDatabase name")
        object_labels = specs.labels("postgres", name, "database")
        password = pulumi.Output.secret(args.password)
        operator: pulumi.Resource | None = args.operator
        if args.install_operator:
            operator = k8s.helm.v3.Release(
                f"{name}-operator",
                name="cnpg",
                chart=CNPG_CHART,
                version=args.operator_chart_version,
                repository_opts={"repo": CNPG_REPO},
                namespace=args.operator_namespace,
                create_namespace=True,
                atomic=True,
                wait_for_jobs=True,
                timeout=600,
                values=operator_values(),
                opts=self._opts(args),
            )
            self.operator = operator
        app_secret = f"{cluster_name}-app-credentials"
        secret = k8s.core.v1.Secret(
            f"{name}-app-credentials",
            metadata=specs.metadata(app_secret, ns, object_labels),
            type="kubernetes.io/basic-auth",
            string_data={"username": args.username, "password": password},
            # Not protected, unlike the Cluster: its content is rebuilt from `postgres.user` and the stack's
            # RandomPassword by any `up`, and a Secret whose data changes is replaced (pulumi-kubernetes,
            # enableSecretMutable off), which the engine refuses for a protected resource: a new password or user
            # would stop prod's `up` here (REVIEW7 finding 1, as for the Valkey and Qdrant key Secrets).
            opts=self._opts(args),
        )
        waits = (secret, *((operator,) if operator is not None else ()))
        destination: pulumi.Output[str] | None = None
        if args.backup_bucket is not None:
            cloud, prefix = args.backup_cloud or "", args.backup_prefix
            destination = pulumi.Output.from_input(args.backup_bucket).apply(
                lambda bucket: backup_destination(cloud, bucket, prefix)
            )
            # The instances archive WAL from their first start: the bucket and the write grant come first, and the
            # Cluster names the plugin and its ObjectStore: the operator rejects (or fails to reconcile) a plugin it
            # cannot reach, and the sidecar reads the ObjectStore when the pod starts.
            waits = (*waits, *args.backup_waits, *self._barman_cloud(name, args, operator, destination, ns))
        cluster = k8s.apiextensions.CustomResource(
            f"{name}-cluster",
            api_version="postgresql.cnpg.io/v1",
            kind="Cluster",
            metadata=cluster_metadata(args, cluster_name, ns, object_labels),
            spec=cluster_spec(args, app_secret, destination, cluster_name),
            opts=pulumi.ResourceOptions.merge(
                self._opts(args, protect=args.protect, extra=waits),
                pulumi.ResourceOptions(custom_timeouts=cluster_timeouts(args)),
            ),
        )
        self.backup_destination = destination
        self.archive_name = archive_name(args, cluster_name) if destination is not None else None
        if destination is not None:
            k8s.apiextensions.CustomResource(
                f"{name}-scheduled-backup",
                api_version="postgresql.cnpg.io/v1",
                kind="ScheduledBackup",
                metadata=specs.metadata(cluster_name, ns, object_labels),
                spec=scheduled_backup_spec(args, cluster_name),
                opts=self._opts(args, protect=args.protect, extra=(cluster,)),
            )
        if args.network_policy:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-netpol",
                metadata=specs.metadata(cluster_name, ns, object_labels),
                spec=network_policy_spec(args, cluster_name),
                opts=self._opts(args),
            )
        if args.pod_monitor:
            prometheus_operator.monitoring_object(
                f"{name}-podmonitor",
                "PodMonitor",
                metadata=specs.metadata(cluster_name, ns, {**object_labels, **args.monitor_labels}),
                spec=pod_monitor_spec(cluster_name),
                opts=self._opts(args, extra=args.monitoring_crds),
            )
        self.ready = (secret, cluster)
        # CloudNativePG serves the primary as the `<cluster>-rw` Service.
        host = f"{cluster_name}-rw.{ns}.svc"
        url = _secret_url(args, password, host)
        return url, EgressTarget("postgres", PORT, cluster_pod_labels(cluster_name))

    def _barman_cloud(
        self,
        name: str,
        args: PostgresDatabaseArgs,
        operator: pulumi.Resource | None,
        destination: pulumi.Output[str],
        ns: str,
    ) -> tuple[pulumi.Resource, ...]:
        """The Barman Cloud plugin (with the operator it serves, after cert-manager) and the cluster's ObjectStore;
        returns what the Cluster waits for."""
        plugin: pulumi.Resource | None = None
        if args.install_operator:
            # In the operator's namespace (the plugin docs: "must be installed in the same namespace as the
            # CloudNativePG operator"), whose chart repository ships it; its CRD is templated (crds.create).
            plugin = k8s.helm.v3.Release(
                f"{name}-barman-cloud",
                name="barman-cloud",
                chart=BARMAN_CLOUD_CHART,
                version=args.barman_cloud_chart_version,
                repository_opts={"repo": CNPG_REPO},
                namespace=args.operator_namespace,
                create_namespace=True,
                atomic=True,
                timeout=600,
                values=barman_cloud_values(),
                opts=self._opts(
                    args, extra=(*((operator,) if operator is not None else ()), *args.cert_manager)
                ),
            )
            self.barman_cloud = plugin
        store = k8s.apiextensions.CustomResource(
            f"{name}-object-store",
            api_version="barmancloud.cnpg.io/v1",
            kind="ObjectStore",
            metadata=specs.metadata(object_store_name(name), ns, specs.labels("postgres", name, "database")),
            spec=object_store_spec(args, destination),
            # The CRD comes with the plugin's chart (or with the plugin installed elsewhere: args.operator).
            opts=self._opts(
                args,
                protect=args.protect,
                extra=(plugin,) if plugin is not None else ((args.operator,) if args.operator else ()),
            ),
        )
        self.object_store = store
        return (store, *((plugin,) if plugin is not None else ()))

    def _rds(self, name: str, args: PostgresDatabaseArgs) -> tuple[pulumi.Output[str], EgressTarget]:
        network = aws_network.private_access(
            name,
            aws.rds.SubnetGroup,
            args,
            port=PORT,
            subnets_description="Private subnets of the RAG database",
            sg_description="RAG database: PostgreSQL from the cluster only",
            rule_description="PostgreSQL from the Kubernetes cluster",
            opts=self._opts(args),
        )
        password = pulumi.Output.secret(args.password)
        major = engine_major(args)
        # One parameter group per major, named by it: a major upgrade declares the target's group next to the
        # running one (a group's family is create-only), and the old group is deleted only when `upgrade_from` is
        # cleared. It is what the pre-upgrade snapshot needs if the upgrade must be undone by a restore, and it is
        # never deleted while the instance could still hold it (DeleteDBParameterGroup refuses a group in use).
        groups = {
            version: aws.rds.ParameterGroup(
                f"{name}-params-{version}",
                family=f"postgres{version}",
                description=f"RAG registry, PostgreSQL {version}",
                parameters=rds_parameters(),
                opts=self._opts(args),
            )
            for version in dict.fromkeys([*([args.upgrade_from] if args.upgrade_from else []), major])
        }
        original: aws.rds.Instance | None = None
        if args.restore_name is None or args.keep_original:
            original = self._rds_instance(name, args, network, password, groups[major])
        instance = original
        if args.restore_name is not None:
            source: pulumi.Input[str] | None = args.restore_source_instance or (
                original.identifier if original is not None else None
            )
            instance = self._rds_instance(
                f"{name}-{args.restore_name}",
                args,
                network,
                password,
                groups[major],
                restored=True,
                restore_source=source,
            )
        assert instance is not None
        self.instance = instance
        self.ready = (instance,)
        url = _secret_url(args, password, instance.address)
        return url, EgressTarget("postgres", PORT, cidrs=tuple(args.allowed_cidrs))

    def _rds_instance(
        self,
        name: str,
        args: PostgresDatabaseArgs,
        network: aws_network.PrivateAccess,
        password: pulumi.Output[str],
        group: aws.rds.ParameterGroup,
        *,
        restored: bool = False,
        restore_source: pulumi.Input[str] | None = None,
    ) -> aws.rds.Instance:
        """`<name>-instance`: the original instance, or (`restore_source` or a snapshot) a restored one."""
        # Drawn once per instance lifetime: destroyed with the stack, so the next destroy names a new snapshot.
        suffix = random.RandomId(
            f"{name}-final-snapshot-suffix",
            byte_length=SNAPSHOT_SUFFIX_BYTES,
            opts=pulumi.ResourceOptions(parent=self),
        )
        restore: dict[str, Any] = {}
        ignore: list[str] = []
        if restored:
            # Create-only inputs (a change forces a new instance; clearing `restore_to_point_in_time` too:
            # hashicorp/terraform-provider-aws#34522): ignored once it exists, so keeping, changing or clearing the
            # restore keys later never replaces the registry.
            ignore = ["snapshotIdentifier", "restoreToPointInTime"]
            # The database and the master user are the source's: RDS copies them with the data, the restore APIs take
            # no master user, and DBName is documented as not applying to PostgreSQL restores (RestoreDBInstance-
            # FromDBSnapshot: "only applies to RDS for Oracle and RDS for SQL Server", which is why the provider drops
            # it on that path; RestoreDBInstanceToPointInTime once said the same of PostgreSQL, and the provider sends
            # it there as given). So no db_name is sent, and both are ignored once the instance exists: each is
            # ForceNew in the provider, and a source with other names would otherwise replace the restored registry
            # at the next `up`. The source must therefore hold `database` owned by `username` (this stack's own
            # instances always do; the password is the stack's too: the snapshot path resets it, and a point in time
            # of the stack's own lineage already has it).
            ignore += ["dbName", "username"]
            restore["identifier"] = args.restore_identifier
            if args.restore_snapshot is not None:
                restore["snapshot_identifier"] = args.restore_snapshot
            elif restore_source is not None:
                point: dict[str, Any] = {"source_db_instance_identifier": restore_source}
                if args.restore_time is not None:
                    point["restore_time"] = args.restore_time
                else:
                    point["use_latest_restorable_time"] = True
                restore["restore_to_point_in_time"] = point
        return aws.rds.Instance(
            f"{name}-instance",
            engine="postgres",
            engine_version=engine_major(args),
            # AWS refuses a change of major without it; it is set only while an upgrade is declared, so a
            # version changed by mistake fails (and its parameter group of the other family cannot attach).
            allow_major_version_upgrade=args.upgrade_from is not None,
            parameter_group_name=group.name,
            instance_class=args.instance_class,
            allocated_storage=args.allocated_storage_gb,
            max_allocated_storage=args.max_allocated_storage_gb,
            storage_type="gp3",
            storage_encrypted=True,
            db_name=None if restored else args.database,
            username=args.username,
            password=password,
            port=PORT,
            db_subnet_group_name=network.subnet_group_name,
            vpc_security_group_ids=[network.security_group_id],
            publicly_accessible=False,
            multi_az=args.multi_az,
            backup_retention_period=args.backup_retention_days,
            backup_window=rds_backup_window(args.maintenance_hour),
            maintenance_window=rds_maintenance_window(args.maintenance_day, args.maintenance_hour),
            deletion_protection=args.protect,
            delete_automated_backups=not args.retain_backups_on_delete,
            skip_final_snapshot=False,
            final_snapshot_identifier=suffix.hex.apply(lambda hex_: f"{args.final_snapshot_prefix}-{hex_}"),
            copy_tags_to_snapshot=True,
            auto_minor_version_upgrade=args.auto_minor_version_upgrade,
            performance_insights_enabled=True,
            apply_immediately=args.apply_immediately,
            **restore,
            opts=pulumi.ResourceOptions.merge(
                self._opts(args, protect=args.protect), pulumi.ResourceOptions(ignore_changes=ignore)
            ),
        )

    def _cloudsql(self, name: str, args: PostgresDatabaseArgs) -> tuple[pulumi.Output[str], EgressTarget]:
        password = pulumi.Output.secret(args.password)
        original: gcp.sql.DatabaseInstance | None = None
        ready: tuple[pulumi.Resource, ...] = ()
        if args.restore_name is None or args.keep_original:
            original = self._cloudsql_instance(name, args)
            user = gcp.sql.User(
                f"{name}-user",
                instance=original.name,
                name=args.username,
                password=password,
                opts=self._opts(args),
            )
            # The database waits for the user, so a destroy deletes the database first: the service's migrations
            # make the user own every table in it, and Cloud SQL's DeleteUser runs DROP ROLE, which PostgreSQL
            # refuses while the role owns objects (pulumi-gcp sql.User `deletion_policy` docstring: Postgres users
            # "cannot be deleted from the API if they have been granted SQL roles"). Users are real deletes, never
            # ABANDON: an abandoned role would keep a working password on the instance.
            database = gcp.sql.Database(
                f"{name}-database",
                instance=original.name,
                name=args.database,
                opts=self._opts(args, protect=args.protect, extra=(user,)),
            )
            ready = (original, database, user)
        instance = original
        if args.restore_name is not None:
            source = args.restore_source_instance or (original.name if original is not None else None)
            instance = self._cloudsql_instance(
                f"{name}-{args.restore_name}", args, restored=True, clone_source=source
            )
            # A clone carries the source's databases and roles, the app user with its password included: the
            # stack declares neither on it (creating them again would fail on the existing names).
            ready = (instance,)
        assert instance is not None
        self.instance = instance
        # The URL only carries the instance's address: a client must also wait for the database and its user.
        self.ready = ready
        url = _secret_url(args, password, instance.private_ip_address)
        return url, EgressTarget("postgres", PORT, cidrs=tuple(args.allowed_cidrs))

    def _cloudsql_instance(
        self,
        name: str,
        args: PostgresDatabaseArgs,
        *,
        restored: bool = False,
        clone_source: pulumi.Input[str] | None = None,
    ) -> gcp.sql.DatabaseInstance:
        """`<name>-instance`: the original instance, or (`clone_source`) a clone of an instance at a point in time."""
        extra: dict[str, Any] = {}
        # Without a declared upgrade a changed version is ignored: Cloud SQL would run it at once as an in-place
        # major upgrade (pg_upgrade, the instance down), unannounced.
        ignore = [] if args.upgrade_from is not None else ["databaseVersion"]
        # The running disk's size is autoresize's: a declared size below a grown disk would replace the instance.
        ignore.append("settings.diskSize")
        if restored:
            extra["name"] = args.restore_identifier
            # Create-only (the provider clones only when it creates the instance): ignored afterwards, so keeping,
            # changing or clearing the restore keys never touches the registry.
            ignore.append("clone")
            if clone_source is not None:
                clone: dict[str, Any] = {"source_instance_name": clone_source}
                if args.restore_time is not None:
                    clone["point_in_time"] = args.restore_time
                extra["clone"] = clone
        return gcp.sql.DatabaseInstance(
            f"{name}-instance",
            region=args.region,
            database_version=f"POSTGRES_{engine_major(args)}",
            deletion_protection=args.protect,
            settings={
                "tier": args.tier,
                "edition": cloudsql_edition(args.tier),
                "availability_type": args.availability_type,
                **cloudsql_disk(args, clone=restored),
                "ip_configuration": {
                    "ipv4_enabled": False,
                    "private_network": args.private_network,
                    "ssl_mode": "ENCRYPTED_ONLY",
                },
                "backup_configuration": cloudsql_backup_configuration(
                    args.backup_retention_days, args.tier, args.maintenance_hour
                ),
                **cloudsql_backups_on_delete(retain=args.retain_backups_on_delete),
                "maintenance_window": cloudsql_maintenance_window(
                    args.maintenance_day, args.maintenance_hour
                ),
                "deletion_protection_enabled": args.protect,
            },
            **extra,
            opts=pulumi.ResourceOptions.merge(
                self._opts(args, protect=args.protect), pulumi.ResourceOptions(ignore_changes=ignore)
            ),
        )
