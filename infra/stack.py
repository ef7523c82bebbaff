"""The stack's wiring: checked config + cluster target -> component args -> components -> stack outputs.

`infra/__main__.py` loads the config, the secrets and the cluster target, calls `build` and exports what it
returns. Everything that maps config onto a component's args is a small pure function here (`qdrant_args`,
`postgres_args`, ...): no resource is created in them, so they are unit-tested without the engine. `build` creates
the resources in order (namespace, monitoring, data stores, image, service, TLS entry, backups) and wires each
component's outputs into the next one's args. Providers come from the cluster target and reach every component
through `opts`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra.clusters import ClusterTarget
from infra.components.backups import QdrantBackups, QdrantBackupsArgs, backup_selector, upload_memory_bytes
from infra.components.gateway import TlsGateway, TlsGatewayArgs, lb_source_cidrs
from infra.components.image import RegistryAuth, ServiceImage, ServiceImageArgs, current_git_sha
from infra.components.monitoring import (
    DASHBOARD_LABELS,
    MONITORING_NAMESPACE,
    AlertReceivers,
    AlertThresholds,
    ClusterAutoscalerTarget,
    Monitoring,
    MonitoringArgs,
)
from infra.components.postgres import CNPG_CHART_VERSION, PostgresDatabase, PostgresDatabaseArgs, pg_image
from infra.components.qdrant import ALT_API_KEY_SINCE, QdrantCluster, QdrantClusterArgs
from infra.components.rag_service import (
    READINESS_PATH,
    Autoscaling,
    NetworkAccess,
    RagService,
    RagServiceArgs,
    WorkerSettings,
    client_selector,
)
from infra.components.redis import RedisCache, RedisCacheArgs, elasticache_maintenance_window
from infra.components.specs import ComponentArgsError, EgressTarget, Resources, quantity_value
from infra.config import PROJECT, ConfigError, Secrets, StackConfig, label_pairs, stack_file
from infra.config import Resources as ConfigResources
from infra.guards import POSTGRES_NAME, QDRANT_NAME, RELEASED_ANNOTATION
from infra.naming import HASH_LENGTH, cloud_name, sanitize, stack_hash

ROOT = Path(__file__).resolve().parent.parent
SERVICE_NAME = "rag"  # the RagService component's name: its pods' labels admit it to the data stores
BACKUPS_NAME = "qdrant-backups"
#: Where the CloudNativePG archives live in the backup bucket (Qdrant snapshots are under `qdrant/`).
REGISTRY_BACKUP_PREFIX = "postgres"
# The bucket name's scope part (region or project ID, projects are up to 30 characters) is cut beyond this.
SCOPE_LIMIT = 30
# RDS snapshot identifiers are at most 255 characters; the component appends "-" and 8 hex characters.
FINAL_SNAPSHOT_PREFIX_LIMIT = 255 - 9
SERVICE_ENVIRONMENT = {"dev": "development", "staging": "staging", "prod": "production"}
ISSUERS = {
    "selfSigned": "selfsigned",
    "letsencrypt-staging": "letsencrypt-staging",
    "letsencrypt": "letsencrypt-prod",
}
CLIENTS = (client_selector(SERVICE_NAME),)
#: Where the eks target installs Envoy Gateway (infra/clusters/eks.py ENVOY_GATEWAY_NAMESPACE, not imported here so
#: the program does not load pulumi_aws on other targets; test_stack checks the two agree).
EKS_PROXY_NAMESPACE = "envoy-gateway-system"


#: The config key (under `rag:`) each component argument the components refuse is built from: `config_errors` turns
#: a ComponentArgsError about one of them into a ConfigError naming the key and the stack file, which the language
#: host prints as one line (a ComponentArgsError is a ValueError: a bare `pulumi up` printed its traceback). Looked up
#: by the longest prefix of the field the message starts with (`...resources.memory_limit` -> `...resources`).
#: Arguments the program derives itself (passwords, network IDs, ports, the image it built) are not here: a refusal
#: of one of those is a bug of the program and keeps its traceback. tests/infra/test_component_errors.py checks that
#: every field a component refuses is one or the other, and that each key is declared.
ARG_KEYS: Mapping[str, str] = {
    "QdrantClusterArgs.namespace": "namespace",
    "QdrantClusterArgs.image": "qdrant.version",
    "QdrantClusterArgs.replicas": "qdrant.replicas",
    "QdrantClusterArgs.replication_factor": "qdrant.replicationFactor",
    "QdrantClusterArgs.scale_down_acknowledged": "qdrant.scaleDownTo",
    "QdrantClusterArgs.shard_number": "qdrant.shardNumber",
    "QdrantClusterArgs.storage_size": "qdrant.storage.size",
    "QdrantClusterArgs.snapshots_size": "qdrant.snapshotsStorage.size",
    "QdrantClusterArgs.resources": "qdrant.resources",
    "QdrantClusterArgs.alt_api_key": "qdrantApiKeyNext",
    "PostgresDatabaseArgs.mode": "postgres.mode",
    "PostgresDatabaseArgs.namespace": "namespace",
    "PostgresDatabaseArgs.database": "postgres.database",
    "PostgresDatabaseArgs.username": "postgres.user",
    "PostgresDatabaseArgs.image": "postgres.version",
    "PostgresDatabaseArgs.instances": "postgres.cloudnative.instances",
    "PostgresDatabaseArgs.storage_size": "postgres.cloudnative.storage.size",
    "PostgresDatabaseArgs.resources": "postgres.cloudnative.resources",
    "PostgresDatabaseArgs.backup_sidecar_resources": "postgres.cloudnative.backupSidecarResources",
    "PostgresDatabaseArgs.major_upgrade_from": "postgres.cloudnative.majorUpgrade.fromVersion",
    "PostgresDatabaseArgs.archive_name": "postgres.cloudnative.archiveName",
    "PostgresDatabaseArgs.recovery_source": "postgres.cloudnative.recovery.source",
    "PostgresDatabaseArgs.recovery_target_time": "postgres.cloudnative.recovery.targetTime",
    "PostgresDatabaseArgs.archive_retention_days": "backups.retentionDays",
    "PostgresDatabaseArgs.backup_schedule": "backups.schedule",
    "PostgresDatabaseArgs.allocated_storage_gb": "postgres.managed.storageGb",
    "PostgresDatabaseArgs.backup_retention_days": "postgres.managed.backupRetentionDays",
    "PostgresDatabaseArgs.auto_minor_version_upgrade": "postgres.managed.autoMinorVersionUpgrade",
    "PostgresDatabaseArgs.maintenance_day": "postgres.managed.maintenanceWindow.day",
    "PostgresDatabaseArgs.apply_immediately": "postgres.managed.applyImmediately",
    "PostgresDatabaseArgs.upgrade_from": "postgres.managed.majorUpgrade.fromVersion",
    "PostgresDatabaseArgs.restore_name": "postgres.managed.restore.name",
    "PostgresDatabaseArgs.restore_snapshot": "postgres.managed.restore.snapshot",
    "PostgresDatabaseArgs.restore_time": "postgres.managed.restore.time",
    "PostgresDatabaseArgs.keep_original": "postgres.managed.restore.keepOriginal",
    "RedisCacheArgs.mode": "redis.mode",
    "RedisCacheArgs.namespace": "namespace",
    "RedisCacheArgs.image": "redis.version",
    "RedisCacheArgs.storage_size": "redis.incluster.storage.size",
    "RedisCacheArgs.resources": "redis.incluster.resources",
    "RedisCacheArgs.aof_set_aside_from": "redis.incluster.downgradeFrom",
    "RedisCacheArgs.maxmemory": "redis.incluster.resources",  # from the memory limit: the stack sets no maxmemory
    "RedisCacheArgs.num_cache_clusters": "redis.managed.replicas",
    "RedisCacheArgs.memory_size_gb": "redis.managed.memorySizeGb",
    "ServiceImageArgs.existing_ref": "image",
    "RagServiceArgs.namespace": "namespace",
    "RagServiceArgs.environment": "environment",
    "RagServiceArgs.replicas": "service.replicas",
    "RagServiceArgs.resources": "service.resources",
    "RagServiceArgs.autoscaling.min_replicas": "service.autoscaling.minReplicas",
    "RagServiceArgs.autoscaling.max_replicas": "service.autoscaling.maxReplicas",
    "RagServiceArgs.autoscaling.cpu_utilization": "service.autoscaling.targetCpuUtilization",
    "RagServiceArgs.pdb_min_available": "service.pdb.minAvailable",
    "RagServiceArgs.worker.enabled": "service.worker.enabled",
    "RagServiceArgs.worker.replicas": "service.worker.replicas",
    "RagServiceArgs.worker.resources": "service.worker.resources",
    "RagServiceArgs.worker.concurrency": "service.settings.jobsMaxConcurrency",
    "RagServiceArgs.settings": "service.settings",
    "RagServiceArgs.qdrant_replication_factor": "qdrant.replicationFactor",
    "RagServiceArgs.qdrant_shard_number": "qdrant.shardNumber",
    "TlsGatewayArgs.namespace": "namespace",
    "TlsGatewayArgs.hostname": "gateway.hostname",
    "TlsGatewayArgs.gateway_class_name": "gateway.className",
    "TlsGatewayArgs.entry": "gateway.ingress.enabled",
    "TlsGatewayArgs.issuer": "tls.issuer",
    "TlsGatewayArgs.acme_email": "tls.email",
    "TlsGatewayArgs.existing_cluster_issuer": "tls.clusterIssuer",
    "TlsGatewayArgs.issuer_kind": "tls.installCertManager",
    "MonitoringArgs.service_namespace": "namespace",
    "MonitoringArgs.namespace": "monitoring.existing.namespace",
    "MonitoringArgs.storage_size": "monitoring.storage.size",
    "MonitoringArgs.retention": "monitoring.retention",
    "MonitoringArgs.runbook_url": "monitoring.runbookUrl",
    "MonitoringArgs.qdrant_replicas": "qdrant.replicas",
    "MonitoringArgs.postgres_instances": "postgres.cloudnative.instances",
    "MonitoringArgs.receivers": "monitoring.alerting",
    "MonitoringArgs.receivers.email_smarthost": "monitoring.alerting.email.smarthost",
    "MonitoringArgs.thresholds.error_ratio": "monitoring.alerts.errorRatePercent",
    "MonitoringArgs.thresholds.p95_latency_seconds": "monitoring.alerts.latencyP95Seconds",
    "MonitoringArgs.thresholds.queue_oldest_job_age_seconds": "monitoring.alerts.queueOldestJobAgeSeconds",
    "MonitoringArgs.thresholds.certificate_expiry_days": "monitoring.alerts.certificateExpiryDays",
    "MonitoringArgs.thresholds.backup_max_age_hours": "monitoring.alerts.backupMaxAgeHours",
    "QdrantBackupsArgs.namespace": "namespace",
    "QdrantBackupsArgs.bucket_name": "backups.bucket",
    "QdrantBackupsArgs.schedule": "backups.schedule",
    "QdrantBackupsArgs.retention_days": "backups.retentionDays",
    "QdrantBackupsArgs.restore_scratch_size": "qdrant.storage.size",
}


def config_key_of(field: str | None) -> str | None:
    """The `rag:` key a component argument comes from (ARG_KEYS, longest prefix first), None if none does."""
    parts = (field or "").split(".")
    for end in range(len(parts), 1, -1):
        key = ARG_KEYS.get(".".join(parts[:end]))
        if key is not None:
            return f"{PROJECT}:{key}"
    return None


@contextmanager
def config_errors(config: StackConfig) -> Iterator[None]:
    """Re-raise a component's refusal of an argument built from config as a ConfigError naming the key and the
    stack file: a RunError the language host prints as that one line, not a ValueError's traceback."""
    try:
        yield
    except ComponentArgsError as error:
        key = config_key_of(error.field)
        if key is None:
            raise
        raise ConfigError(key, stack_file(config.stack), str(error).rstrip(".")) from error


def proxy_namespaces(config: StackConfig) -> tuple[str, ...]:
    """Who reaches the API pods through the gateway when it runs in the cluster: `rag:gateway.proxyNamespaces`
    (the Gateway or Ingress controller's proxies); on eks the stack's own Envoy Gateway is always among them.
    A cloud-managed Gateway class sends traffic from its load balancer's ranges instead (`lb_source_cidrs`)."""
    namespaces = tuple(config.gateway.proxyNamespaces)
    if config.cluster.provider == "eks" and EKS_PROXY_NAMESPACE not in namespaces:
        namespaces = (EKS_PROXY_NAMESPACE, *namespaces)
    return namespaces


# --- small mappings ----------------------------------------------------------------------------------------------


def resources(spec: ConfigResources) -> Resources:
    """Config requests/limits -> the components' Resources."""
    return Resources(
        cpu_request=spec.requests.cpu,
        memory_request=spec.requests.memory,
        cpu_limit=spec.limits.cpu,
        memory_limit=spec.limits.memory,
    )


def storage_class(configured: str, cluster: ClusterTarget) -> str | None:
    """A component's storage class: its own config, else the cluster target's, else the cluster default."""
    return configured or cluster.storage_class or None


def managed_mode(kind: str, cluster: ClusterTarget) -> str:
    """The component mode of a managed data store on this cloud."""
    modes = {
        "postgres": {"eks": "rds", "gke": "cloudsql"},
        "redis": {"eks": "elasticache", "gke": "memorystore"},
    }
    return modes[kind][cluster.provider_name]


def postgres_mode(config: StackConfig, cluster: ClusterTarget) -> str:
    """`cloudnative`, or the cloud's managed mode (`rds`, `cloudsql`)."""
    return "cloudnative" if config.postgres.mode == "cloudnative" else managed_mode("postgres", cluster)


def redis_mode(config: StackConfig, cluster: ClusterTarget) -> str:
    """`incluster`, or the cloud's managed mode (`elasticache`, `memorystore`)."""
    return "incluster" if config.redis.mode == "incluster" else managed_mode("redis", cluster)


#: Regions where S3 has no account regional namespace (S3 user guide, "Namespaces for general purpose buckets"),
#: and partitions it is not documented for: there the bucket goes to the global namespace, still named per account.
S3_GLOBAL_ONLY_REGIONS = frozenset({"me-south-1", "me-central-1"})
S3_ACCOUNT_ID_LENGTH = 12
BUCKET_NAME_LIMIT = 63


def s3_account_regional(region: str) -> bool:
    """Whether a bucket of `region` is created in the account's regional namespace (only that account may create
    a name ending in `-<account>-<region>-an`; nobody can squat on it)."""
    return region not in S3_GLOBAL_ONLY_REGIONS and not region.startswith(("cn-", "us-gov-", "eusc-"))


def s3_bucket_name(stack: str, account_id: str, region: str) -> str:
    """`rag-<stack>-qdrant-backups-<account>-<region>[-an]`: S3 bucket names are unique across every AWS account
    of the partition, so the default name carries the account ID (a name without it is the same for every
    adopter of the example stacks, and the second one's CreateBucket fails with BucketAlreadyExists)."""
    suffix = f"-{account_id}-{region}" + ("-an" if s3_account_regional(region) else "")
    return cloud_name(stack, BACKUPS_NAME, limit=BUCKET_NAME_LIMIT - len(suffix)) + suffix


def gcs_bucket_name(stack: str, project: str) -> str:
    """`rag-<stack>-qdrant-backups-<project>`: GCS bucket names are global, project IDs are too."""
    scope = sanitize(project)
    if len(scope) > SCOPE_LIMIT:  # a long project ID: keep its start and a hash of all of it
        scope = f"{scope[: SCOPE_LIMIT - HASH_LENGTH - 1].strip('-')}-{stack_hash(scope)}"
    return cloud_name(stack, BACKUPS_NAME, scope, limit=BUCKET_NAME_LIMIT)


def aws_account_id(cluster: ClusterTarget) -> pulumi.Output[str]:
    """The AWS account the target's provider deploys into (STS GetCallerIdentity)."""
    import pulumi_aws as aws  # only on the aws target: the other targets never load the AWS SDK

    return aws.get_caller_identity_output(
        opts=pulumi.InvokeOutputOptions(provider=cluster.cloud_provider)
    ).account_id


def backup_bucket(config: StackConfig, cluster: ClusterTarget) -> pulumi.Input[str]:
    """The configured bucket, or a name unique to the account (AWS, an Output of the caller's account ID) or the
    project (GCP) and the stack."""
    if config.backups.bucket:
        return config.backups.bucket
    if cluster.cloud == "aws":
        # Checked here with a placeholder of the account ID's fixed length, so a name the API refuses fails at
        # preview time with the stack's name, not deep in the update.
        s3_bucket_name(config.stack, "0" * S3_ACCOUNT_ID_LENGTH, cluster.region)
        return aws_account_id(cluster).apply(
            lambda account: s3_bucket_name(config.stack, account, cluster.region)
        )
    return gcs_bucket_name(config.stack, cluster.network.get("project") or cluster.region)


# --- component args ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryBackup:
    """Where the in-cluster registry archives: the stack's backup bucket, as the `registry` workload identity."""

    bucket: pulumi.Input[str]
    annotations: Mapping[str, pulumi.Input[str]]
    waits: tuple[pulumi.Resource, ...] = ()


def with_seconds(schedule: str) -> str:
    """A five-field cron schedule (`rag:backups.schedule`) as the six fields, seconds first, CloudNativePG reads."""
    return f"0 {schedule.strip()}"


def namespace_metadata(config: StackConfig) -> dict[str, Any]:
    """The platform namespace; an ephemeral stack's says whose it is and when it expires, and a declared move of the
    registry to the other `postgres.mode` is recorded on it (infra/guards.py)."""
    annotations = (
        {"rag.dev/ephemeral-owner": config.ephemeral.owner, "rag.dev/expires-at": config.ephemeral.expiresAt}
        if config.ephemeral is not None
        else {}
    )
    if config.postgres.modeSwitch.fromMode:  # a declared registry switch, recorded where its data lived
        annotations["rag.platform/registry-mode-switch"] = (
            f"{config.postgres.modeSwitch.fromMode}->{config.postgres.mode} (docs/operations.md#moving-the-registry-to-the-other-mode)"
        )
    if config.backups.discardBucket:  # an accepted deletion of the backup bucket, with its backups
        annotations["rag.platform/backups-bucket-discarded"] = config.backups.discardBucket
    return {
        "name": config.namespace,
        "annotations": annotations,
        "labels": {
            "app.kubernetes.io/part-of": "rag",
            # Enforce baseline; warn/audit against restricted (the platform's own pods meet it).
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
        },
    }


def cluster_autoscaler_target(config: StackConfig) -> ClusterAutoscalerTarget | None:
    """The Cluster Autoscaler the eks target installs (rag:cluster.eks.clusterAutoscaler), for its scrape and alerts;
    None on the other targets (GKE's autoscaler is Google's, with no metrics endpoint in the cluster)."""
    if config.cluster.provider != "eks" or not config.cluster.eks.clusterAutoscaler.enabled:
        return None
    # Imported here: loading the eks target pulls in pulumi_aws, which a dev run never needs.
    from infra.clusters.eks import CLUSTER_AUTOSCALER_NAMESPACE, CLUSTER_AUTOSCALER_SERVICE_LABELS

    return ClusterAutoscalerTarget(
        namespace=CLUSTER_AUTOSCALER_NAMESPACE,
        service_labels=CLUSTER_AUTOSCALER_SERVICE_LABELS,
        job_label="app.kubernetes.io/instance",  # the release's name: job="cluster-autoscaler"
    )


def existing_prometheus(config: StackConfig) -> bool:
    """Whether the stack's monitors and rules go to the cluster's own Prometheus Operator (`monitoring.mode`)."""
    return config.monitoring.enabled and config.monitoring.mode == "existing"


def prometheus_namespace(config: StackConfig) -> str:
    """Where Prometheus scrapes from: the stack's kube-prometheus-stack, or the cluster's own Prometheus."""
    return config.monitoring.existing.namespace if existing_prometheus(config) else MONITORING_NAMESPACE


def monitor_labels(config: StackConfig) -> dict[str, str]:
    """The labels every ServiceMonitor/PodMonitor/PrometheusRule carries so the cluster's Prometheus selects it
    (none when the stack installs Prometheus: it selects every object)."""
    return label_pairs(config.monitoring.existing.selectorLabels) if existing_prometheus(config) else {}


def _refuse_receiver_secrets(config: StackConfig, secrets: Secrets | None) -> None:
    """The receivers' secrets configure the stack's own Alertmanager; with mode existing none is installed. An
    e-mail receiver with a username authenticates to its smarthost: without `rag:smtpPassword` every e-mailed alert
    fails (Alertmanager: "missing password for PLAIN auth mechanism")."""
    if secrets is None:
        return
    email = config.monitoring.alerting.email
    if (
        config.monitoring.enabled
        and not existing_prometheus(config)
        and email.to
        and email.username
        and secrets.smtp_password is None
    ):
        raise ConfigError(
            "rag:smtpPassword",
            stack_file(config.stack),
            "missing: monitoring.alerting.email.username is set, so Alertmanager logs in to the smarthost, and "
            "without a password every e-mailed alert fails: `pulumi config set --secret rag:smtpPassword ...`, or "
            "clear the username for a relay that takes mail without a login",
        )
    if not existing_prometheus(config):
        return
    for key, value in (
        ("slackWebhookUrl", secrets.slack_webhook_url),
        ("pagerdutyRoutingKey", secrets.pagerduty_routing_key),
        ("smtpPassword", secrets.smtp_password),
    ):
        if value is not None:
            raise ConfigError(
                f"rag:{key}",
                stack_file(config.stack),
                "set, but monitoring.mode existing installs no Alertmanager: route the alerts (labels severity "
                "and service) in the cluster's own Alertmanager, and remove the key (pulumi config rm)",
            )


def monitoring_args(
    config: StackConfig,
    cluster: ClusterTarget,
    *,
    grafana_admin_password: pulumi.Input[str] | None,
    secrets: Secrets | None = None,
    depends_on: tuple[pulumi.Resource, ...] = (),
) -> MonitoringArgs:
    """kube-prometheus-stack (or the cluster's own Prometheus Operator), the alerts of every component of the stack
    and their receivers (`rag:monitoring`)."""
    mon = config.monitoring
    alerting = mon.alerting
    backups_on = config.backups.enabled and cluster.cloud is not None
    _refuse_receiver_secrets(config, secrets)
    existing = existing_prometheus(config)
    return MonitoringArgs(
        service_namespace=config.namespace,
        grafana_admin_password=grafana_admin_password,
        namespace=prometheus_namespace(config),
        mode="existing" if existing else "install",
        selector_labels=monitor_labels(config),
        dashboard_labels=(label_pairs(mon.existing.dashboardLabels) if existing else dict(DASHBOARD_LABELS)),
        chart_version=mon.chartVersion,
        service_job=SERVICE_NAME,
        qdrant_job="qdrant",
        qdrant_replicas=config.qdrant.replicas,
        postgres_mode=postgres_mode(config, cluster),
        postgres_cluster="postgres",
        postgres_instances=config.postgres.cloudnative.instances,
        redis_mode=redis_mode(config, cluster),
        redis_statefulset="redis",
        worker=config.service.worker.enabled,
        volume_stats=mon.alerts.volumeStats,
        backup_cronjob=BACKUPS_NAME if backups_on else None,
        postgres_backups=backups_on and postgres_mode(config, cluster) == "cloudnative",
        tls_enabled=config.tls.enabled,
        cluster_dns="kube-dns" if config.cluster.provider == "gke" else "coredns",
        runbook_url=mon.runbookUrl,
        receivers=AlertReceivers(
            slack_webhook_url=secrets.slack_webhook_url if secrets else None,
            slack_channel=alerting.slack.channel,
            pagerduty_routing_key=secrets.pagerduty_routing_key if secrets else None,
            email_to=alerting.email.to,
            email_from=alerting.email.sender,
            email_smarthost=alerting.email.smarthost,
            email_username=alerting.email.username,
            email_password=secrets.smtp_password if secrets else None,
        ),
        retention=mon.retention,
        storage_size=mon.storage.size,
        storage_class=storage_class(mon.storage.storageClass, cluster),
        thresholds=AlertThresholds(
            error_ratio=mon.alerts.errorRatePercent / 100,
            p95_latency_seconds=mon.alerts.latencyP95Seconds,
            llm_error_ratio=config.llm.alerts.errorRatePercent / 100,
            llm_p95_latency_seconds=config.llm.alerts.latencyP95Seconds,
            queue_oldest_job_age_seconds=mon.alerts.queueOldestJobAgeSeconds,
            certificate_expiry_days=mon.alerts.certificateExpiryDays,
            backup_max_age_hours=mon.alerts.backupMaxAgeHours,
        ),
        cluster_autoscaler=cluster_autoscaler_target(config),
        depends_on=(*cluster.depends_on, *depends_on),
    )


def qdrant_alt_api_key(config: StackConfig, secrets: Secrets) -> pulumi.Input[str] | None:
    """`rag:qdrantApiKeyNext`, refused (naming the key and stack file) on a Qdrant without `alt_api_key`."""
    if secrets.qdrant_api_key_next is None:
        return None
    version = tuple(int(v) for v in config.qdrant.version.lstrip("v").split(".")[:2])
    if version < ALT_API_KEY_SINCE:
        raise ConfigError(
            "rag:qdrantApiKeyNext",
            stack_file(config.stack),
            f"Qdrant {config.qdrant.version} (qdrant.version) accepts one key only; a second one (alt_api_key) "
            "needs Qdrant >= v1.17.0: upgrade first (docs/infra.md#upgrading-qdrant), or rotate with a short "
            "outage (docs/runbooks.md#rotate-the-qdrant-api-key)",
        )
    return secrets.qdrant_api_key_next


def throwaway_in_kept_namespace(config: StackConfig) -> bool:
    """A PR stack (`rag:ephemeral`) in a namespace it does not delete (`rag:namespaceMode` patch/existing, e.g. one
    namespace for every PR stack in turn): its destroy must take the StatefulSets' claims too, or the next PR stack
    there starts on this one's Qdrant data and Valkey cache. CloudNativePG's claims go with its `Cluster` anyway."""
    return config.ephemeral is not None and config.namespaceMode != "create"


def qdrant_args(
    config: StackConfig,
    cluster: ClusterTarget,
    *,
    api_key: pulumi.Input[str],
    alt_api_key: pulumi.Input[str] | None = None,
    monitoring_crds: tuple[pulumi.Resource, ...] = (),
    depends_on: tuple[pulumi.Resource, ...] = (),
) -> QdrantClusterArgs:
    """The Qdrant cluster (`rag:qdrant`); the service (and the backup job, when on) may reach it."""
    cfg = config.qdrant
    return QdrantClusterArgs(
        namespace=config.namespace,
        api_key=api_key,
        alt_api_key=alt_api_key,
        replicas=cfg.replicas,
        scale_down_acknowledged=cfg.scaleDownTo or None,
        volume_replaced_from=cfg.storage.replaceFrom,
        replication_factor=cfg.replicationFactor,
        shard_number=cfg.shardNumber,
        image=f"qdrant/qdrant:{cfg.version}-unprivileged",
        storage_size=cfg.storage.size,
        storage_class=storage_class(cfg.storage.storageClass, cluster),
        # Only the backup and restore jobs take snapshots: without backups no scratch volume (O12).
        snapshots_size=cfg.snapshots_size if config.backups.enabled else None,
        snapshots_storage_class=storage_class(cfg.snapshotsStorage.storageClass, cluster),
        resources=resources(cfg.resources),
        protect=config.protect,
        # patch/existing: a destroy leaves the namespace, so it must not leave the Qdrant pods running in it.
        namespace_deleted_after=config.namespaceMode == "create",
        claims_deleted_with_statefulset=throwaway_in_kept_namespace(config),
        pdb=cfg.pdb.enabled,
        client_selectors=(*CLIENTS, backup_selector(BACKUPS_NAME)) if config.backups.enabled else CLIENTS,
        service_monitor=config.monitoring.enabled,
        monitoring_namespace=prometheus_namespace(config),
        monitoring_crds=monitoring_crds,
        monitor_labels=monitor_labels(config),
        depends_on=depends_on,
    )


def postgres_args(
    config: StackConfig,
    cluster: ClusterTarget,
    *,
    password: pulumi.Input[str],
    monitoring_crds: tuple[pulumi.Resource, ...] = (),
    ready: tuple[pulumi.Resource, ...] = (),
    backup: RegistryBackup | None = None,
    cert_manager: tuple[pulumi.Resource, ...] = (),
    grows: bool = False,
) -> PostgresDatabaseArgs:
    """Postgres (`rag:postgres`): CloudNativePG in the namespace, or RDS/Cloud SQL in the target's network.

    With `backup` (the stack's backup bucket, cloudnative mode), the Cluster archives to it on `rag:backups`'
    schedule and retention, and `postgres.cloudnative.recovery` bootstraps it from an archive there."""
    cfg = config.postgres
    mode = postgres_mode(config, cluster)
    network = cluster.network
    cnpg = cfg.cloudnative
    managed, restore = cfg.managed, cfg.managed.restore
    return PostgresDatabaseArgs(
        backup_bucket=backup.bucket if backup is not None else None,
        backup_cloud=cluster.cloud if backup is not None else None,
        backup_prefix=REGISTRY_BACKUP_PREFIX,
        backup_schedule=with_seconds(config.backups.schedule),
        archive_retention_days=config.backups.retentionDays,
        backup_service_account_annotations=backup.annotations if backup is not None else {},
        backup_waits=backup.waits if backup is not None else (),
        cert_manager=cert_manager,
        archive_name=cnpg.archiveName or None,
        recovery_source=cnpg.recovery.source or None,
        recovery_target_time=cnpg.recovery.targetTime or None,
        major_upgrade_from=int(cnpg.majorUpgrade.fromVersion) if cnpg.majorUpgrade.fromVersion else None,
        mode=mode,
        password=password,
        database=cfg.database,
        username=cfg.user,
        protect=config.protect,
        depends_on=ready if mode == "cloudnative" else tuple(cluster.depends_on),
        namespace=config.namespace,
        install_operator=cfg.cloudnative.installOperator,
        operator_chart_version=cnpg.operatorChartVersion or CNPG_CHART_VERSION,
        instances=cfg.cloudnative.instances,
        grows=grows,
        storage_size=cfg.cloudnative.storage.size,
        storage_class=storage_class(cfg.cloudnative.storage.storageClass, cluster),
        image=pg_image(cfg.version),
        resources=resources(cfg.cloudnative.resources),
        backup_sidecar_resources=resources(cfg.cloudnative.backupSidecarResources),
        client_selectors=CLIENTS,
        pod_monitor=config.monitoring.enabled,
        monitoring_namespace=prometheus_namespace(config),
        monitoring_crds=monitoring_crds,
        monitor_labels=monitor_labels(config),
        vpc_id=network.get("vpc_id"),
        subnet_ids=tuple(network.get("private_subnet_ids", ())),
        # RDS: its security group admits the VPC. Cloud SQL: its private IP lies in the private services range, the
        # only place the service's egress may reach on 5432 (without a range the rule would admit any address).
        allowed_cidrs=tuple(network[key] for key in ("vpc_cidr", "private_services_cidr") if key in network),
        instance_class=cfg.managed.instanceClass,
        # The major version only: RDS applies minor upgrades itself (auto_minor_version_upgrade), and a pinned
        # minor would make every later `up` try to downgrade the instance back to it.
        engine_version=cfg.version,
        allocated_storage_gb=cfg.managed.storageGb,
        max_allocated_storage_gb=max(cfg.managed.storageGb * 4, 200),
        multi_az=cfg.managed.multiAz,
        backup_retention_days=cfg.managed.backupRetentionDays,
        retain_backups_on_delete=managed.retainBackupsOnDelete,
        final_snapshot_prefix=cloud_name(
            config.stack, POSTGRES_NAME, "final", limit=FINAL_SNAPSHOT_PREFIX_LIMIT
        ),
        maintenance_day=managed.maintenanceWindow.day,
        maintenance_hour=managed.maintenanceWindow.hour,
        apply_immediately=managed.applyImmediately,
        auto_minor_version_upgrade=managed.autoMinorVersionUpgrade,
        upgrade_from=managed.majorUpgrade.fromVersion or None,
        restore_name=restore.name or None,
        # RDS identifiers are 1-63 characters; Cloud SQL instance names 1-98 (and unusable for a week once deleted).
        restore_identifier=cloud_name(config.stack, POSTGRES_NAME, restore.name, limit=63)
        if restore.name
        else None,
        restore_snapshot=restore.snapshot or None,
        restore_source_instance=restore.sourceInstance or None,
        restore_time=restore.time or None,
        keep_original=restore.keepOriginal,
        region=cluster.region or None,
        private_network=network.get("network_id"),
        tier=cfg.managed.tier,
        database_version=f"POSTGRES_{cfg.version}",
        availability_type="REGIONAL" if cfg.managed.multiAz else "ZONAL",
    )


def redis_args(
    config: StackConfig,
    cluster: ClusterTarget,
    *,
    password: pulumi.Input[str],
    ready: tuple[pulumi.Resource, ...] = (),
) -> RedisCacheArgs:
    """Redis (`rag:redis`): a Valkey StatefulSet, or ElastiCache/Memorystore in the target's network."""
    cfg = config.redis
    mode = redis_mode(config, cluster)
    network = cluster.network
    return RedisCacheArgs(
        mode=mode,
        password=password,
        protect=config.protect,
        depends_on=ready if mode == "incluster" else tuple(cluster.depends_on),
        namespace=config.namespace,
        image=f"valkey/valkey:{cfg.version}",
        storage_size=cfg.incluster.storage.size,
        storage_class=storage_class(cfg.incluster.storage.storageClass, cluster),
        resources=resources(cfg.incluster.resources),
        aof_set_aside_from=cfg.incluster.downgradeFrom,
        volume_replaced_from=cfg.incluster.storage.replaceFrom,
        claims_deleted_with_statefulset=throwaway_in_kept_namespace(config),
        client_selectors=CLIENTS,
        vpc_id=network.get("vpc_id"),
        subnet_ids=tuple(network.get("private_subnet_ids", ())),
        allowed_cidrs=tuple(network[key] for key in ("vpc_cidr", "private_services_cidr") if key in network),
        node_type=cfg.managed.nodeType,
        # ElastiCache for Valkey takes major.minor (7.2, 8.0, 8.1): the same release line as the in-cluster image.
        engine_version=".".join(cfg.version.split(".")[:2]),
        num_cache_clusters=1 + cfg.managed.replicas,
        apply_immediately=cfg.managed.applyImmediately,
        # The hour after the registry's, so a pending change and AWS's patches land in a declared hour, never
        # together with the registry's own maintenance.
        maintenance_window=elasticache_maintenance_window(
            config.postgres.managed.maintenanceWindow.day, config.postgres.managed.maintenanceWindow.hour
        ),
        region=cluster.region or None,
        authorized_network=network.get("network_id"),
        memory_size_gb=cfg.managed.memorySizeGb,
        tier=cfg.managed.tier,
    )


def image_args(
    config: StackConfig, cluster: ClusterTarget, *, git_sha: str | None, context_dir: str
) -> ServiceImageArgs:
    """The service image: a promoted digest (`rag:image`) copied by digest into this stack's own registry and
    deployed from there (its nodes can pull it; the source's registry need not be reachable from them), or built
    from service/Dockerfile and pushed, with the embedding models of `rag:embedding` baked in (EMBEDDING_MODEL is
    the one the service uses)."""
    registry = cluster.registry
    return ServiceImageArgs(
        build_args={
            "EMBEDDING_MODEL": config.embedding.model,
            "EMBEDDING_MODELS": " ".join(config.embedding.image_models),
        },
        existing_ref=config.image or None,
        copy_to=registry.repository if config.image else None,
        repository=registry.repository,
        git_sha=None if config.image else git_sha,
        registry=(
            RegistryAuth(address=registry.server, username=registry.username, password=registry.password)
            if registry.username is not None and registry.password is not None
            else None
        ),
        context_dir=context_dir,
        cache_repository=registry.cache_repository,
        protect_build=registry.expires_untagged and not config.image,
    )


@dataclass(frozen=True)
class DataStores:
    """What the service reads from the data store components: where they are, and how to reach them."""

    qdrant_url: pulumi.Input[str]
    qdrant_api_key: pulumi.Input[str]
    qdrant_replication_factor: int
    qdrant_shard_number: int
    database_url: pulumi.Input[str]
    redis_url: pulumi.Input[str]
    egress: tuple[EgressTarget, ...]
    """Qdrant, Postgres and Redis, for the service's egress NetworkPolicy."""
    ready: tuple[pulumi.Resource, ...] = ()
    """What the service's workloads wait for (each component's `ready`)."""

    @classmethod
    def of(cls, qdrant: QdrantCluster, postgres: PostgresDatabase, redis: RedisCache) -> DataStores:
        """The outputs of the three components."""
        return cls(
            qdrant_url=qdrant.endpoint,
            qdrant_api_key=qdrant.api_key,
            qdrant_replication_factor=qdrant.replication_factor,
            qdrant_shard_number=qdrant.shard_number,
            database_url=postgres.url,
            redis_url=redis.url,
            egress=(qdrant.egress_target, postgres.egress_target, redis.egress_target),
            ready=(*qdrant.ready, *postgres.ready, *redis.ready),
        )


def llm_egress(config: StackConfig) -> tuple[EgressTarget, ...]:
    """The API's way out to the LLM provider: baseUrl's port to `llm.egressCidrs` minus `llm.egressExcept`, and
    for an in-cluster server (baseUrl `http://<service>.<namespace>.svc[.cluster.local]:<port>`) the pods of its
    namespace.

    A NetworkPolicy cannot name a host (FQDN policies are CNI extensions: Cilium's CiliumNetworkPolicy
    toFQDNs, Calico Enterprise, GKE Dataplane V2's FQDNNetworkPolicy), so the portable rule is the provider's
    port to the internet without the private ranges the cluster lives in. That rule never admits an in-cluster
    server: the Service's ClusterIP is rewritten (DNAT, by kube-proxy or the CNI's own load balancer) to a backend
    pod's IP and its targetPort before the policy is evaluated, and both lie in the excluded private ranges. So an
    in-cluster server gets a rule of its own, to the pods of its namespace on the port they listen on: baseUrl's
    port, or `llm.targetPort` when its Service maps another (e.g. port 80 to vLLM's 8000). The Service's selector
    lives in the cluster, not in this stack; the server's namespace keeps its own ingress policies.
    """
    llm = config.llm
    if not llm.enabled:
        return ()
    targets = []
    if llm.egressCidrs:
        targets.append(EgressTarget("llm", llm.port, cidrs=llm.egressCidrs, except_cidrs=llm.egressExcept))
    namespace = llm.in_cluster_namespace(config.namespace)
    if namespace is not None:
        targets.append(EgressTarget("llm-in-cluster", llm.pod_port, namespace=namespace))
    return tuple(targets)


def service_args(
    config: StackConfig,
    *,
    image: pulumi.Input[str],
    stores: DataStores,
    api_keys: pulumi.Input[str],
    llm_api_key: pulumi.Input[str] | None = None,
    admin_api_key: pulumi.Input[str] | None = None,
    service_account_annotations: Mapping[str, pulumi.Input[str]],
    monitoring_crds: tuple[pulumi.Resource, ...] = (),
    ready: tuple[pulumi.Resource, ...] = (),
) -> RagServiceArgs:
    """The API and its worker (`rag:service`), reached through the gateway (`rag:gateway`)."""
    cfg = config.service
    settings = {
        **cfg.settings.env(),
        **config.llm.env(),
        "EMBEDDING_MODEL": config.embedding.model,
        # How the service creates its collections in the Qdrant server (and updates an existing one to it).
        "QDRANT_VECTORS_ON_DISK": str(config.qdrant.collection.vectorsOnDisk).lower(),
        "QDRANT_QUANTIZATION": config.qdrant.collection.quantization,
    }
    settings.pop("JOBS_MAX_CONCURRENCY")  # the component sets it from the worker's concurrency
    scaling = cfg.autoscaling
    lb_cidrs = lb_source_cidrs(config.gateway.className) if config.tls.enabled else ()
    return RagServiceArgs(
        namespace=config.namespace,
        image=image,
        environment=SERVICE_ENVIRONMENT[config.environment],
        qdrant_url=stores.qdrant_url,
        qdrant_api_key=stores.qdrant_api_key,
        database_url=stores.database_url,
        redis_url=stores.redis_url,
        api_keys=api_keys,
        llm_api_key=llm_api_key if config.llm.enabled and not config.llm.keyless else None,
        admin_api_key=admin_api_key,
        qdrant_replication_factor=stores.qdrant_replication_factor,
        qdrant_shard_number=stores.qdrant_shard_number,
        settings=settings,
        replicas=cfg.replicas,
        autoscaling=(
            Autoscaling(
                min_replicas=scaling.minReplicas,
                max_replicas=scaling.maxReplicas,
                cpu_utilization=scaling.targetCpuUtilization,
            )
            if scaling.enabled
            else None
        ),
        resources=resources(cfg.resources),
        worker=WorkerSettings(
            enabled=cfg.worker.enabled,
            replicas=max(cfg.worker.replicas, 1),
            concurrency=cfg.settings.jobsMaxConcurrency,
            resources=resources(cfg.worker.resources),
        ),
        service_account_annotations=service_account_annotations,
        network=NetworkAccess(
            gateway_namespaces=() if lb_cidrs else proxy_namespaces(config),
            gateway_cidrs=lb_cidrs,
            egress=stores.egress,
            api_egress=llm_egress(config),
            monitoring_namespace=prometheus_namespace(config),
        ),
        service_monitor=config.monitoring.enabled,
        monitoring_crds=monitoring_crds,
        monitor_labels=monitor_labels(config),
        backends=stores.ready,
        pdb_enabled=cfg.pdb.enabled,
        pdb_min_available=cfg.pdb.minAvailable,
        depends_on=ready,
    )


def gateway_args(
    config: StackConfig,
    *,
    service_name: str,
    service_port: int,
    ready: tuple[pulumi.Resource, ...] = (),
    gateway_crds: tuple[pulumi.Resource, ...] = (),
    backend: pulumi.Input[pulumi.Resource] | None = None,
) -> TlsGatewayArgs:
    """The TLS entry (`rag:tls`, `rag:gateway`) in front of the service (`backend`: its Service, awaited)."""
    tls = config.tls
    gateway = config.gateway
    return TlsGatewayArgs(
        namespace=config.namespace,
        hostname=gateway.hostname,
        service_name=service_name,
        service_port=service_port,
        health_check_path=READINESS_PATH,
        issuer=ISSUERS[tls.issuer],
        acme_email=tls.email or None,
        entry="ingress" if gateway.ingress.enabled else "gateway",
        gateway_class_name=gateway.className,
        ingress_class_name=gateway.ingress.className or None,
        cert_manager_version=tls.certManagerVersion,
        install_cert_manager=tls.installCertManager,
        # GKE Autopilot refuses the chart's leader-election Role and lease in kube-system (a managed namespace).
        leader_election_in_own_namespace=config.cluster.provider == "gke" and config.cluster.gke.autopilot,
        # Only the stack that owns the cluster's cert-manager may own a cluster-wide issuer name.
        issuer_kind="ClusterIssuer" if tls.installCertManager else "Issuer",
        existing_cluster_issuer=tls.clusterIssuer or None,
        gateway_crds=gateway_crds,
        # A cloud load balancer is the entry there: the first `up` waits for its address (`ingressAddress`).
        wait_for_address=config.cluster.provider in ("eks", "gke"),
        backend=backend,
        depends_on=ready,
    )


def backup_resources(storage_size: str) -> Resources:
    """The backup job's resources: the memory limit holds the S3 upload buffer of a snapshot as large as a node's
    data (`upload_memory_bytes`), and never less than 512Mi."""
    need = upload_memory_bytes(quantity_value(storage_size))
    limit_mi = max(512, -(-need // 2**20))
    return Resources(cpu_request="100m", memory_request="128Mi", cpu_limit="1", memory_limit=f"{limit_mi}Mi")


def backups_args(
    config: StackConfig,
    cluster: ClusterTarget,
    *,
    qdrant: QdrantCluster,
    service_account_annotations: Mapping[str, pulumi.Input[str]],
    ready: tuple[pulumi.Resource, ...] = (),
) -> QdrantBackupsArgs:
    """The Qdrant snapshot CronJob (`rag:backups`), writing to the target cloud's object storage."""
    if cluster.cloud is None:
        raise ValueError("Backups need a cloud cluster target: snapshots go to GCS or S3.")
    return QdrantBackupsArgs(
        namespace=config.namespace,
        cloud=cluster.cloud,
        bucket_name=backup_bucket(config, cluster),
        qdrant_peer_urls=tuple(qdrant.peer_urls),
        qdrant_api_key_secret=qdrant.api_key_secret_name,
        qdrant_target=qdrant.egress_target,
        schedule=config.backups.schedule,
        service_account_annotations=service_account_annotations,
        create_bucket=not config.backups.bucket,
        bucket_namespace=(
            "account-regional"
            if cluster.cloud == "aws" and not config.backups.bucket and s3_account_regional(cluster.region)
            else None
        ),
        bucket_location=cluster.region.upper() if cluster.cloud == "gcp" else None,
        retention_days=config.backups.retentionDays,
        restore_scratch_size=config.qdrant.storage.size,
        resources=backup_resources(config.qdrant.storage.size),
        node_data_bytes=quantity_value(config.qdrant.storage.size),
        transfer_bytes_per_second=config.backups.transferMiBps * 2**20,
        restore_scratch_storage_class=storage_class(config.qdrant.storage.storageClass, cluster),
        aws_region=cluster.region if cluster.cloud == "aws" else None,
        protect=config.protect,
        # Outside prod a destroy must not stop at a bucket the backups filled (BucketNotEmpty).
        force_destroy=not config.protect,
        depends_on=ready,
    )


def grafana_access(monitoring: Monitoring) -> dict[str, str] | None:
    """How a user reaches Grafana: it has no public route, so through `kubectl port-forward` (None: the Grafana
    is the cluster's own, not the stack's)."""
    ns, svc = monitoring.namespace, monitoring.grafana_service
    if svc is None or monitoring.grafana_admin_secret is None:
        return None
    return {
        "namespace": ns,
        "service": svc,
        "portForward": f"kubectl -n {ns} port-forward svc/{svc} 3000:80",
        "url": "http://localhost:3000",
        "user": "admin",
        "adminSecret": monitoring.grafana_admin_secret,
    }


def tls_issuer_output(config: StackConfig) -> str | None:
    """What issues the entry point's certificate (the ``tlsIssuer`` output, which ``ragops`` verifies HTTPS by):
    ``selfSigned``/``letsencrypt-staging``/``letsencrypt``, or ``clusterIssuer:<name>`` for an existing
    ClusterIssuer (``tls.issuer`` is then unused: reporting it would make ragops verify the wrong CA)."""
    if not config.tls.enabled:
        return None
    if config.tls.clusterIssuer:
        return f"clusterIssuer:{config.tls.clusterIssuer}"
    return config.tls.issuer


def embedding_output(config: StackConfig) -> dict[str, Any]:
    """The index config the stack deploys, and the models its image holds (`ragops up`/`promote` compare it
    before and after an update to follow the re-index a change starts; None: a promotion that did not record
    them)."""
    settings = config.service.settings
    if config.image:
        promoted = config.promotion.models if config.promotion is not None else None
        image_models = list(promoted) if promoted is not None else None
    else:
        image_models = list(config.embedding.image_models)
    return {
        "model": config.embedding.model,
        "chunkSize": settings.chunkSize,
        "chunkOverlap": settings.chunkOverlap,
        "imageModels": image_models,
    }


def outputs(
    config: StackConfig,
    cluster: ClusterTarget,
    *,
    service_url: pulumi.Input[str],
    image_ref: pulumi.Input[str],
    qdrant_endpoint: pulumi.Input[str],
    ingress_address: pulumi.Input[str | None] | None = None,
    api_keys: pulumi.Input[str] | None = None,
    admin_api_key: pulumi.Input[str] | None = None,
    grafana: Mapping[str, str] | None = None,
    grafana_admin_password: pulumi.Input[str] | None = None,
    alert_receivers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The stack outputs of the contract, in export order. Credentials are secret outputs
    (`pulumi stack output apiKeys --show-secrets`)."""
    return {
        "serviceUrl": service_url,
        # The load balancer's address to point DNS at, of whichever entry (Gateway or Ingress) is deployed, read at
        # every `up`; None without TLS (no entry) and until the controller assigns one.
        "ingressAddress": ingress_address,
        "imageDigest": image_ref,
        "qdrantEndpoint": qdrant_endpoint,
        "kubeconfig": cluster.kubeconfig,
        "promotion": dict(config.promotion_raw) if config.promotion_raw else None,
        "ephemeral": dict(config.ephemeral_raw) if config.ephemeral_raw else None,
        "apiKeys": pulumi.Output.secret(api_keys) if api_keys is not None else None,
        "adminApiKey": pulumi.Output.secret(admin_api_key) if admin_api_key is not None else None,
        "embedding": embedding_output(config),
        "tlsIssuer": tls_issuer_output(config),
        "grafana": dict(grafana) if grafana is not None else None,
        "grafanaAdminPassword": (
            pulumi.Output.secret(grafana_admin_password) if grafana_admin_password is not None else None
        ),
        # None also with the cluster's own Prometheus: its Alertmanager routes the alerts, not the stack.
        "alertReceivers": list(alert_receivers)
        if config.monitoring.enabled and not existing_prometheus(config)
        else None,
    }


# --- the stack ---------------------------------------------------------------------------------------------------


def _needs_private_services(mode: str, managed: str, cluster: ClusterTarget) -> list[pulumi.Resource]:
    # Cloud SQL's private IP and Memorystore's private service access need the private services peering first.
    return [cluster.network["private_services"]] if mode == managed else []


def _llm_api_key(config: StackConfig, secrets: Secrets) -> pulumi.Input[str] | None:
    llm = config.llm
    if llm.enabled and not llm.keyless and secrets.llm_api_key is None:
        raise ConfigError(
            "rag:llmApiKey",
            stack_file(config.stack),
            "missing: llm.enabled needs the provider's key (pulumi config set --secret rag:llmApiKey ...), "
            "or llm.keyless for a server without one",
        )
    return secrets.llm_api_key


#: What a container that names no resources gets in a quota'd namespace (a ResourceQuota on requests and limits
#: refuses such a pod otherwise). The platform's own containers all name theirs; this covers what others start there
#: (an operator's helper pod, a `kubectl run` while debugging).
CONTAINER_DEFAULTS = {
    "defaultRequest": {"cpu": "50m", "memory": "64Mi"},
    "default": {"cpu": "250m", "memory": "256Mi"},
}


def namespace_quota_spec(config: StackConfig) -> dict[str, Any]:
    """The ResourceQuota (`rag:namespaceQuota`): the sums of requests and limits, PVC storage and count, pods.

    Kubernetes refuses a pod (or a PVC) that would take the namespace past it: a Deployment's rollout then waits
    (`exceeded quota` in its ReplicaSet's events), so the sizes leave room for one surge pod per Deployment."""
    quota = config.namespaceQuota
    return {
        "hard": {
            "requests.cpu": quota.requests.cpu,
            "requests.memory": quota.requests.memory,
            "limits.cpu": quota.limits.cpu,
            "limits.memory": quota.limits.memory,
            "requests.storage": quota.storage,
            "persistentvolumeclaims": str(quota.persistentVolumeClaims),
            "pods": str(quota.pods),
        }
    }


def limit_range_spec() -> dict[str, Any]:
    """Container defaults for a quota'd namespace (see CONTAINER_DEFAULTS)."""
    return {"limits": [{"type": "Container", **CONTAINER_DEFAULTS}]}


def namespace_quota(
    config: StackConfig, cluster: ClusterTarget, namespace: tuple[pulumi.Resource, ...]
) -> tuple[pulumi.Resource, ...]:
    """The namespace's ResourceQuota and LimitRange when `rag:namespaceQuota.enabled` (PR stacks), else none; they
    wait for `namespace` (what `stack_namespace` returns).

    Every workload waits for both: a pod admitted before the LimitRange exists would get no defaults."""
    if not config.namespaceQuota.enabled:
        return ()
    opts = pulumi.ResourceOptions(provider=cluster.k8s_provider, depends_on=list(namespace))
    labels = {"app.kubernetes.io/part-of": "rag"}
    metadata = {"name": "rag-quota", "namespace": config.namespace, "labels": labels}
    quota = k8s.core.v1.ResourceQuota(
        "namespace-quota", metadata=metadata, spec=namespace_quota_spec(config), opts=opts
    )
    limits = k8s.core.v1.LimitRange(
        "namespace-limits", metadata={**metadata, "name": "rag-defaults"}, spec=limit_range_spec(), opts=opts
    )
    return (quota, limits)


def stack_namespace(
    config: StackConfig, cluster: ClusterTarget, *, release: bool = False
) -> tuple[pulumi.Resource, ...]:
    """The stack's namespace as `rag:namespaceMode` says (what every namespaced object waits for).

    - `create`: a Namespace with `namespace_metadata`; `pulumi destroy` deletes it, with everything in it. Since
      pulumi-kubernetes 4.29 (#2926) a create is a client-side create, so on a cluster where the namespace
      already exists the first `up` fails with AlreadyExists (the provider's `upsertExistingObjects` would adopt
      it instead, and the destroy would then delete the platform team's namespace).
    - `patch`: a NamespacePatch: the same labels and annotations applied with server-side apply under a field
      manager of its own. A label another manager holds at another value is a conflict that fails the update
      (never forced: the platform's pod-security level wins). Its delete (`pulumi destroy`, or another mode)
      only gives up its fields (pulumi-kubernetes ssa.Relinquish): the labels nobody else holds go, the
      namespace stays. A server-side apply creates a missing object, so a missing namespace is created (if the
      deployer may), and then also stays.
    - `existing`: nothing; the namespace and its pod-security labels are its owner's. The `rag.platform/*` and
      ephemeral annotations are then recorded nowhere in the cluster (they are records for people: the guards
      read the stack's state, infra/guards.py).

    Without a Namespace object everything waits for the cluster target's own prerequisites, as the Namespace did.

    `release`: the stack created the namespace and the mode now says another owner has it (infra/guards.py
    `namespace_release`). Dropping the Namespace from the program would delete it, so this `up` keeps it with
    `retain_on_delete` (the engine reads that option from the state when it deletes) and the
    RELEASED_ANNOTATION; the next `up` drops it from the stack, and the cluster keeps it (docs/operations.md).
    """
    after_cluster = pulumi.ResourceOptions(provider=cluster.k8s_provider, depends_on=list(cluster.depends_on))
    metadata = namespace_metadata(config)
    if config.namespaceMode == "create" or release:
        if release:
            metadata["annotations"][RELEASED_ANNOTATION] = config.namespaceMode
            pulumi.log.warn(
                f"rag:namespaceMode {config.namespaceMode} in {config.stack_file}: this update keeps namespace "
                f"{config.namespace!r}, which the stack created, and marks it to be kept when it leaves the stack; "
                "run `pulumi up` once more to hand it over (docs/operations.md#deploying-into-a-namespace-the-"
                "platform-team-owns)."
            )
        opts = pulumi.ResourceOptions.merge(after_cluster, pulumi.ResourceOptions(retain_on_delete=release))
        return (k8s.core.v1.Namespace("namespace", metadata=metadata, opts=opts),)
    if config.namespaceMode == "patch":
        return (k8s.core.v1.NamespacePatch("namespace", metadata=metadata, opts=after_cluster),)
    return tuple(cluster.depends_on)


def build(
    config: StackConfig,
    cluster: ClusterTarget,
    secrets: Secrets,
    *,
    release_namespace: bool = False,
    registry_grows: bool = False,
) -> dict[str, Any]:
    """Create every component of the stack on `cluster`; returns the stack outputs to export.

    `release_namespace`: hand the namespace the stack created over to its owner (`stack_namespace`).
    `registry_grows`: this `up` adds instances to the CloudNativePG Cluster or grows its volumes (infra/guards.py
    `registry_grows`), so its update waits the long bound. A component's
    refusal of an argument built from config is a ConfigError naming the key and the stack file (`config_errors`).
    """
    with config_errors(config), declared_later() as api_service:
        return _build(
            config,
            cluster,
            secrets,
            release_namespace=release_namespace,
            registry_grows=registry_grows,
            api_service=api_service,
        )


@contextmanager
def declared_later() -> Iterator[asyncio.Future[pulumi.Resource | None]]:
    """A resource the program declares further down, for one declared before it to wait for (`depends_on` takes an
    awaitable). The program sets it once the resource exists. A program that fails before sets it to None (no
    dependency) on the way out: the SDK waits for every pending registration after a failure
    (runtime/stack.py `run_pulumi_func` -> `wait_for_rpcs`), so an unset one would hang the `up` for good, and an
    exception would replace the program's own error."""
    later: asyncio.Future[pulumi.Resource | None] = asyncio.get_event_loop().create_future()
    try:
        yield later
    finally:
        if not later.done():
            later.set_result(None)


def _build(
    config: StackConfig,
    cluster: ClusterTarget,
    secrets: Secrets,
    *,
    release_namespace: bool,
    registry_grows: bool,
    api_service: asyncio.Future[pulumi.Resource | None],
) -> dict[str, Any]:
    in_cluster = pulumi.ResourceOptions(provider=cluster.k8s_provider)
    # Data stores may be managed cloud resources: a component picks the provider of each child's package.
    data_opts = pulumi.ResourceOptions(
        providers=[p for p in (cluster.k8s_provider, cluster.cloud_provider) if p is not None]
    )
    namespace = stack_namespace(config, cluster, release=release_namespace)
    ready = (*namespace, *namespace_quota(config, cluster, namespace))

    # Monitoring first: its CRDs gate every ServiceMonitor, PodMonitor and PrometheusRule.
    monitoring_crds: tuple[pulumi.Resource, ...] = ()
    monitoring: Monitoring | None = None
    grafana_password: pulumi.Output[str] | None = None
    if config.monitoring.enabled:
        if not existing_prometheus(config):
            grafana_password = random.RandomPassword(
                "grafana-admin-password-random", length=32, special=False
            ).result
        monitoring = Monitoring(
            "monitoring",
            monitoring_args(
                config,
                cluster,
                grafana_admin_password=grafana_password,
                secrets=secrets,
                # With the cluster's own Prometheus, the rule and dashboard live in the service's namespace.
                depends_on=ready if existing_prometheus(config) else (),
            ),
            opts=in_cluster,
        )
        monitoring_crds = (monitoring.crds_ready,)

    qdrant = QdrantCluster(
        QDRANT_NAME,
        qdrant_args(
            config,
            cluster,
            api_key=secrets.qdrant_api_key,
            alt_api_key=qdrant_alt_api_key(config, secrets),
            monitoring_crds=monitoring_crds,
            depends_on=ready,
        ),
        opts=in_cluster,
    )
    # Backups run on cloud targets only (the config validator refuses them elsewhere). Created before the
    # registry, which archives into the same bucket.
    registry_backup: RegistryBackup | None = None
    if config.backups.enabled and cluster.cloud is not None and cluster.workload_identity is not None:
        backups = QdrantBackups(
            BACKUPS_NAME,
            backups_args(
                config,
                cluster,
                qdrant=qdrant,
                service_account_annotations=cluster.workload_identity(
                    config.namespace, BACKUPS_NAME, "backup"
                ),
                # The job reads Qdrant's API-key Secret by name and calls every node.
                ready=(*ready, *qdrant.ready),
            ),
            opts=data_opts,
        )
        if cluster.grant_bucket_write is not None:
            cluster.grant_bucket_write("backup", backups.bucket_name)
        if postgres_mode(config, cluster) == "cloudnative":
            # The operator names the instances' ServiceAccount after the Cluster.
            annotations = cluster.workload_identity(config.namespace, POSTGRES_NAME, "registry")
            grant = (
                cluster.grant_bucket_write("registry", backups.bucket_name)
                if cluster.grant_bucket_write is not None
                else None
            )
            registry_backup = RegistryBackup(
                bucket=backups.bucket_name,
                annotations=annotations,
                waits=(grant,) if isinstance(grant, pulumi.Resource) else (),
            )

    # The TLS entry before the registry: its cert-manager also serves the Barman Cloud plugin's certificates, which
    # the registry's backups need. It routes to the service by name and port (checked once the service exists), and
    # what routes there waits for the service's Service (declared below): a destroy deletes the Gateway, and GKE's
    # load balancer with it, before the Service whose NEGs that load balancer uses (REVIEW9 R9).
    gateway: TlsGateway | None = None
    if config.tls.enabled:
        gateway = TlsGateway(
            "gateway",
            gateway_args(
                config,
                service_name=SERVICE_NAME,
                service_port=RagServiceArgs.port,
                ready=ready,
                gateway_crds=cluster.gateway_api,
                backend=api_service,
            ),
            opts=in_cluster,
        )

    postgres = PostgresDatabase(
        POSTGRES_NAME,
        postgres_args(
            config,
            cluster,
            password=random.RandomPassword("postgres-password-random", length=32, special=False).result,
            monitoring_crds=monitoring_crds,
            ready=ready,
            backup=registry_backup,
            cert_manager=(gateway.cert_manager,) if gateway is not None and gateway.cert_manager else (),
            grows=registry_grows,
        ),
        opts=pulumi.ResourceOptions.merge(
            data_opts,
            pulumi.ResourceOptions(
                depends_on=_needs_private_services(postgres_mode(config, cluster), "cloudsql", cluster)
            ),
        ),
    )
    redis = RedisCache(
        "redis",
        redis_args(
            config,
            cluster,
            password=random.RandomPassword("redis-password-random", length=40, special=False).result,
            ready=ready,
        ),
        opts=pulumi.ResourceOptions.merge(
            data_opts,
            pulumi.ResourceOptions(
                depends_on=_needs_private_services(redis_mode(config, cluster), "memorystore", cluster)
            ),
        ),
    )

    image = ServiceImage(
        "service-image",
        image_args(
            config,
            cluster,
            git_sha=None if config.image else current_git_sha(),
            # Relative to the working directory, so state (and the offline snapshots) carry no checkout path.
            context_dir=os.path.relpath(ROOT),
        ),
    )

    service = RagService(
        SERVICE_NAME,
        service_args(
            config,
            image=image.ref,
            stores=DataStores.of(qdrant, postgres, redis),
            api_keys=secrets.service_api_keys,
            llm_api_key=_llm_api_key(config, secrets),
            admin_api_key=secrets.admin_api_key,
            service_account_annotations=(
                cluster.workload_identity(config.namespace, SERVICE_NAME, "service")
                if cluster.workload_identity
                else {}
            ),
            monitoring_crds=monitoring_crds,
            # The first pull of the image needs the nodes' read grant on the stack's registry (gke/eks).
            ready=(*ready, *cluster.image_pull),
        ),
        opts=in_cluster,
    )
    api_service.set_result(service.service)

    service_url: pulumi.Input[str] = service.url
    ingress_address: pulumi.Input[str | None] | None = None
    if gateway is not None:
        if (service.service_name, service.service_port) != (SERVICE_NAME, RagServiceArgs.port):
            raise ValueError("The gateway was built for another Service name or port than the service has.")
        service_url = gateway.url
        ingress_address = gateway.address

    return outputs(
        config,
        cluster,
        service_url=service_url,
        ingress_address=ingress_address,
        image_ref=image.ref,
        qdrant_endpoint=qdrant.endpoint,
        api_keys=secrets.service_api_keys,
        admin_api_key=secrets.admin_api_key,
        grafana=grafana_access(monitoring) if monitoring is not None else None,
        grafana_admin_password=grafana_password,
        alert_receivers=monitoring.receivers if monitoring is not None else (),
    )
