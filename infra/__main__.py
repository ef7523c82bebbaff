"""The Pulumi program (`main: infra/`): config -> cluster target -> components -> stack outputs.

The CLI runs this file as a script, so it first makes the repository root importable; everything else lives in
the `infra` package (config checks in infra/config.py, cluster targets in infra/clusters/, building blocks in
infra/components/). `infra/offline.py` runs this same file under mocks. This file only maps the checked config
onto the components' args and wires their outputs into each other; providers are built by the cluster target at
the top level and reach every component through `opts`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
# Running a directory puts infra/ itself first on sys.path, where config.py or policy/ could shadow other
# top-level modules; the package is imported from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402
import pulumi_kubernetes as k8s  # noqa: E402
import pulumi_random as random  # noqa: E402

from infra.clusters import ClusterTarget, build_cluster  # noqa: E402
from infra.components.backups import QdrantBackups, QdrantBackupsArgs, backup_selector  # noqa: E402
from infra.components.gateway import TlsGateway, TlsGatewayArgs, lb_source_cidrs  # noqa: E402
from infra.components.image import RegistryAuth, ServiceImage, ServiceImageArgs, current_git_sha  # noqa: E402
from infra.components.monitoring import AlertThresholds, Monitoring, MonitoringArgs  # noqa: E402
from infra.components.postgres import PostgresDatabase, PostgresDatabaseArgs  # noqa: E402
from infra.components.qdrant import QdrantCluster, QdrantClusterArgs  # noqa: E402
from infra.components.rag_service import (  # noqa: E402
    Autoscaling,
    NetworkAccess,
    RagService,
    RagServiceArgs,
    WorkerSettings,
    client_selector,
)
from infra.components.redis import RedisCache, RedisCacheArgs  # noqa: E402
from infra.components.specs import Resources  # noqa: E402
from infra.config import Resources as ConfigResources  # noqa: E402
from infra.config import StackConfig, load_config, load_secrets  # noqa: E402

SERVICE_NAME = "rag"  # the RagService component's name: its pods' labels admit it to the data stores
BACKUPS_NAME = "qdrant-backups"
SERVICE_ENVIRONMENT = {"dev": "development", "staging": "staging", "prod": "production"}
ISSUERS = {
    "selfSigned": "selfsigned",
    "letsencrypt-staging": "letsencrypt-staging",
    "letsencrypt": "letsencrypt-prod",
}
# Who reaches the API pods through the gateway: a cloud-managed Gateway class sends traffic from its load
# balancer ranges straight to the pods (`lb_source_cidrs`); in-cluster implementations proxy from these namespaces.
PROXY_NAMESPACES = ("envoy-gateway-system",)


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


def backup_bucket(config: StackConfig, cluster: ClusterTarget) -> str:
    """The configured bucket, or a name derived from the stack and project/region (buckets are global)."""
    if config.backups.bucket:
        return config.backups.bucket
    scope = cluster.network.get("project") or cluster.region
    return f"rag-{config.stack}-qdrant-backups-{scope}"[:63].rstrip("-.")


config = load_config()
secrets = load_secrets()
cluster = build_cluster(config)
network = cluster.network
in_cluster = pulumi.ResourceOptions(provider=cluster.k8s_provider)
# Data stores may be managed cloud resources: a component picks the provider of each child's package.
data_opts = pulumi.ResourceOptions(
    providers=[p for p in (cluster.k8s_provider, cluster.cloud_provider) if p is not None]
)

# An ephemeral stack's namespace says whose it is and when it expires, for anyone looking at the cluster.
ephemeral_annotations = (
    {"rag.dev/ephemeral-owner": config.ephemeral.owner, "rag.dev/expires-at": config.ephemeral.expiresAt}
    if config.ephemeral is not None
    else {}
)
namespace = k8s.core.v1.Namespace(
    "namespace",
    metadata={
        "name": config.namespace,
        "annotations": ephemeral_annotations,
        "labels": {
            "app.kubernetes.io/part-of": "rag",
            # Enforce baseline; warn/audit against restricted (the platform's own pods meet it).
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
        },
    },
    opts=pulumi.ResourceOptions(provider=cluster.k8s_provider, depends_on=list(cluster.depends_on)),
)
ready = (namespace,)

# --- monitoring first: its CRDs gate every ServiceMonitor and PrometheusRule ------------------------------------
monitoring = None
if config.monitoring.enabled:
    mon = config.monitoring
    monitoring = Monitoring(
        "monitoring",
        MonitoringArgs(
            service_namespace=config.namespace,
            grafana_admin_password=random.RandomPassword(
                "grafana-admin-password-random", length=32, special=False
            ).result,
            chart_version=mon.chartVersion,
            service_job=SERVICE_NAME,
            qdrant_job="qdrant",
            retention=mon.retention,
            storage_size=mon.storage.size,
            storage_class=storage_class(mon.storage.storageClass, cluster),
            thresholds=AlertThresholds(
                error_ratio=mon.alerts.errorRatePercent / 100,
                p95_latency_seconds=mon.alerts.latencyP95Seconds,
            ),
            depends_on=tuple(cluster.depends_on),
        ),
        opts=in_cluster,
    )
monitoring_crds = (monitoring.crds_ready,) if monitoring is not None else ()

# --- data stores ------------------------------------------------------------------------------------------------
clients = (client_selector(SERVICE_NAME),)
qdrant_cfg = config.qdrant
qdrant = QdrantCluster(
    "qdrant",
    QdrantClusterArgs(
        namespace=config.namespace,
        api_key=secrets.qdrant_api_key,
        replicas=qdrant_cfg.replicas,
        replication_factor=qdrant_cfg.replicationFactor,
        image=f"qdrant/qdrant:{qdrant_cfg.version}-unprivileged",
        storage_size=qdrant_cfg.storage.size,
        storage_class=storage_class(qdrant_cfg.storage.storageClass, cluster),
        snapshots_size=qdrant_cfg.snapshotsStorage.size,
        resources=resources(qdrant_cfg.resources),
        protect=config.protect,
        client_selectors=(*clients, backup_selector(BACKUPS_NAME)) if config.backups.enabled else clients,
        service_monitor=monitoring is not None,
        monitoring_crds=monitoring_crds,
        depends_on=ready,
    ),
    opts=in_cluster,
)

pg_cfg = config.postgres
pg_mode = "cloudnative" if pg_cfg.mode == "cloudnative" else managed_mode("postgres", cluster)
postgres = PostgresDatabase(
    "postgres",
    PostgresDatabaseArgs(
        mode=pg_mode,
        password=random.RandomPassword("postgres-password-random", length=32, special=False).result,
        database=pg_cfg.database,
        username=pg_cfg.user,
        protect=config.protect,
        depends_on=ready if pg_mode == "cloudnative" else tuple(cluster.depends_on),
        namespace=config.namespace,
        install_operator=pg_cfg.cloudnative.installOperator,
        instances=pg_cfg.cloudnative.instances,
        storage_size=pg_cfg.cloudnative.storage.size,
        storage_class=storage_class(pg_cfg.cloudnative.storage.storageClass, cluster),
        image=f"ghcr.io/cloudnative-pg/postgresql:{pg_cfg.version}",
        resources=resources(pg_cfg.cloudnative.resources),
        client_selectors=clients,
        pod_monitor=monitoring is not None,
        monitoring_crds=monitoring_crds,
        vpc_id=network.get("vpc_id"),
        subnet_ids=tuple(network.get("private_subnet_ids", ())),
        allowed_cidrs=(network["vpc_cidr"],) if "vpc_cidr" in network else (),
        instance_class=pg_cfg.managed.instanceClass,
        allocated_storage_gb=pg_cfg.managed.storageGb,
        max_allocated_storage_gb=max(pg_cfg.managed.storageGb * 4, 200),
        multi_az=pg_cfg.managed.multiAz,
        backup_retention_days=pg_cfg.managed.backupRetentionDays,
        region=cluster.region or None,
        private_network=network.get("network_id"),
        tier=pg_cfg.managed.tier,
        database_version=f"POSTGRES_{pg_cfg.version}",
        availability_type="REGIONAL" if pg_cfg.managed.multiAz else "ZONAL",
    ),
    # Cloud SQL's private IP needs the private services peering first.
    opts=pulumi.ResourceOptions.merge(
        data_opts,
        pulumi.ResourceOptions(depends_on=[network["private_services"]] if pg_mode == "cloudsql" else []),
    ),
)

redis_cfg = config.redis
redis_mode = "incluster" if redis_cfg.mode == "incluster" else managed_mode("redis", cluster)
redis_cidrs = tuple(network[key] for key in ("vpc_cidr", "private_services_cidr") if key in network)
redis = RedisCache(
    "redis",
    RedisCacheArgs(
        mode=redis_mode,
        password=random.RandomPassword("redis-password-random", length=40, special=False).result,
        protect=config.protect,
        depends_on=ready if redis_mode == "incluster" else tuple(cluster.depends_on),
        namespace=config.namespace,
        image=f"valkey/valkey:{redis_cfg.version}",
        storage_size=redis_cfg.incluster.storage.size,
        storage_class=storage_class(redis_cfg.incluster.storage.storageClass, cluster),
        resources=resources(redis_cfg.incluster.resources),
        client_selectors=clients,
        vpc_id=network.get("vpc_id"),
        subnet_ids=tuple(network.get("private_subnet_ids", ())),
        allowed_cidrs=redis_cidrs,
        node_type=redis_cfg.managed.nodeType,
        num_cache_clusters=1 + redis_cfg.managed.replicas,
        region=cluster.region or None,
        authorized_network=network.get("network_id"),
        memory_size_gb=redis_cfg.managed.memorySizeGb,
        tier=redis_cfg.managed.tier,
    ),
    opts=pulumi.ResourceOptions.merge(
        data_opts,
        pulumi.ResourceOptions(
            depends_on=[network["private_services"]] if redis_mode == "memorystore" else []
        ),
    ),
)

# --- the service image: a promoted digest as is, or built from service/Dockerfile and pushed -------------------
registry = cluster.registry
image = ServiceImage(
    "service-image",
    ServiceImageArgs(
        existing_ref=config.image or None,
        repository=registry.repository,
        git_sha=None if config.image else current_git_sha(),
        registry=(
            RegistryAuth(address=registry.server, username=registry.username, password=registry.password)
            if registry.username is not None and registry.password is not None
            else None
        ),
        # Relative to the working directory, so state (and the offline snapshots) carry no checkout path.
        context_dir=os.path.relpath(_ROOT),
    ),
)
image_ref = image.ref

# --- the service ------------------------------------------------------------------------------------------------
svc_cfg = config.service
settings = svc_cfg.settings.env()
settings.pop("JOBS_MAX_CONCURRENCY")  # the component sets it from the worker's concurrency
scaling = svc_cfg.autoscaling
lb_cidrs = lb_source_cidrs(config.gateway.className) if config.tls.enabled else ()
service = RagService(
    SERVICE_NAME,
    RagServiceArgs(
        namespace=config.namespace,
        image=image_ref,
        environment=SERVICE_ENVIRONMENT[config.environment],
        qdrant_url=qdrant.endpoint,
        qdrant_api_key=qdrant.api_key,
        database_url=postgres.url,
        redis_url=redis.url,
        api_keys=secrets.service_api_keys,
        qdrant_replication_factor=qdrant.replication_factor,
        settings=settings,
        replicas=svc_cfg.replicas,
        autoscaling=(
            Autoscaling(
                min_replicas=scaling.minReplicas,
                max_replicas=scaling.maxReplicas,
                cpu_utilization=scaling.targetCpuUtilization,
            )
            if scaling.enabled
            else None
        ),
        resources=resources(svc_cfg.resources),
        worker=WorkerSettings(
            enabled=svc_cfg.worker.enabled,
            replicas=max(svc_cfg.worker.replicas, 1),
            concurrency=svc_cfg.settings.jobsMaxConcurrency,
            resources=resources(svc_cfg.worker.resources),
        ),
        service_account_annotations=(
            cluster.workload_identity(config.namespace, SERVICE_NAME, "service")
            if cluster.workload_identity
            else {}
        ),
        network=NetworkAccess(
            gateway_namespaces=() if lb_cidrs else PROXY_NAMESPACES,
            gateway_cidrs=lb_cidrs,
            egress=(qdrant.egress_target, postgres.egress_target, redis.egress_target),
        ),
        service_monitor=monitoring is not None,
        monitoring_crds=monitoring_crds,
        depends_on=ready,
    ),
    opts=in_cluster,
)

# --- TLS entry --------------------------------------------------------------------------------------------------
service_url: pulumi.Input[str] = service.url
if config.tls.enabled:
    gateway_cfg = config.gateway
    gateway = TlsGateway(
        "gateway",
        TlsGatewayArgs(
            namespace=config.namespace,
            hostname=gateway_cfg.hostname,
            service_name=service.service_name,
            service_port=service.service_port,
            issuer=ISSUERS[config.tls.issuer],
            acme_email=config.tls.email or None,
            entry="ingress" if gateway_cfg.ingress.enabled else "gateway",
            gateway_class_name=gateway_cfg.className,
            ingress_class_name=gateway_cfg.ingress.className or None,
            cert_manager_version=config.tls.certManagerVersion,
            install_cert_manager=config.tls.installCertManager,
            # Only the stack that owns the cluster's cert-manager may own a cluster-wide issuer name.
            issuer_kind="ClusterIssuer" if config.tls.installCertManager else "Issuer",
            existing_cluster_issuer=config.tls.clusterIssuer or None,
            depends_on=ready,
        ),
        opts=in_cluster,
    )
    service_url = gateway.url

# --- backups (cloud targets; the config validator refuses them elsewhere) ----------------------------------------
if config.backups.enabled and cluster.cloud is not None and cluster.workload_identity is not None:
    bucket = backup_bucket(config, cluster)
    backups = QdrantBackups(
        BACKUPS_NAME,
        QdrantBackupsArgs(
            namespace=config.namespace,
            cloud=cluster.cloud,
            bucket_name=bucket,
            qdrant_peer_urls=tuple(qdrant.peer_urls),
            qdrant_api_key_secret=qdrant.api_key_secret_name,
            qdrant_target=qdrant.egress_target,
            schedule=config.backups.schedule,
            service_account_annotations=cluster.workload_identity(config.namespace, BACKUPS_NAME, "backup"),
            create_bucket=not config.backups.bucket,
            bucket_location=cluster.region.upper() if cluster.cloud == "gcp" else None,
            retention_days=config.backups.retentionDays,
            aws_region=cluster.region if cluster.cloud == "aws" else None,
            protect=config.protect,
            depends_on=ready,
        ),
        opts=data_opts,
    )
    if cluster.grant_bucket_write is not None:
        cluster.grant_bucket_write("backup", backups.bucket_name)

pulumi.export("serviceUrl", service_url)
pulumi.export("imageDigest", image_ref)
pulumi.export("qdrantEndpoint", qdrant.endpoint)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("promotion", dict(config.promotion_raw) if config.promotion_raw else None)
pulumi.export("ephemeral", dict(config.ephemeral_raw) if config.ephemeral_raw else None)
