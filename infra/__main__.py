"""The Pulumi program (`main: infra/`): config -> cluster target -> components -> stack outputs.

The CLI runs this file as a script, so it first makes the repository root importable; everything else lives in
the `infra` package (config checks in infra/config.py, cluster targets in infra/clusters/, building blocks in
infra/components/). `infra/offline.py` runs this same file under mocks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402
import pulumi_kubernetes as k8s  # noqa: E402
import pulumi_random as random  # noqa: E402

from infra.clusters import build_cluster  # noqa: E402
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
from infra.config import load_config, load_secrets  # noqa: E402

SERVICE_NAME = "rag"  # the RagService component's name: its pods' labels admit it to the data stores
SERVICE_ENVIRONMENT = {"dev": "development", "staging": "staging", "prod": "production"}
GATEWAY_NAMESPACES = ("envoy-gateway-system", "gateway-system")  # where Gateway API proxies run


def resources(spec: ConfigResources) -> Resources:
    """Config requests/limits -> the components' Resources."""
    return Resources(
        cpu_request=spec.requests.cpu,
        memory_request=spec.requests.memory,
        cpu_limit=spec.limits.cpu,
        memory_limit=spec.limits.memory,
    )


config = load_config()
secrets = load_secrets()
cluster = build_cluster(config)
k8s_opts = pulumi.ResourceOptions(provider=cluster.k8s_provider, depends_on=list(cluster.depends_on))

namespace = k8s.core.v1.Namespace(
    "namespace",
    metadata={
        "name": config.namespace,
        "labels": {
            "app.kubernetes.io/part-of": "rag",
            # Enforce baseline; warn/audit against restricted (the platform's own pods meet it).
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
        },
    },
    opts=k8s_opts,
)
in_cluster = pulumi.ResourceOptions(provider=cluster.k8s_provider)

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
        storage_class=qdrant_cfg.storage.storageClass or cluster.storage_class or None,
        snapshots_size=qdrant_cfg.snapshotsStorage.size,
        resources=resources(qdrant_cfg.resources),
        protect=config.protect,
        client_selectors=(client_selector(SERVICE_NAME),),
        depends_on=(namespace,),
    ),
    opts=in_cluster,
)

# Managed data stores get the cloud provider too; a component picks the provider of each child's package.
data_opts = pulumi.ResourceOptions(
    providers=[p for p in (cluster.k8s_provider, cluster.cloud_provider) if p is not None]
)
network = cluster.network
clients = (client_selector(SERVICE_NAME),)

pg_cfg = config.postgres
pg_mode = (
    "cloudnative"
    if pg_cfg.mode == "cloudnative"
    else {"eks": "rds", "gke": "cloudsql"}[cluster.provider_name]
)
pg_password = random.RandomPassword("postgres-password-random", length=32, special=False).result
postgres = PostgresDatabase(
    "postgres",
    PostgresDatabaseArgs(
        mode=pg_mode,
        password=pg_password,
        database=pg_cfg.database,
        username=pg_cfg.user,
        protect=config.protect,
        depends_on=(namespace,) if pg_mode == "cloudnative" else tuple(cluster.depends_on),
        namespace=config.namespace,
        instances=pg_cfg.cloudnative.instances,
        storage_size=pg_cfg.cloudnative.storage.size,
        storage_class=pg_cfg.cloudnative.storage.storageClass or cluster.storage_class or None,
        image=f"ghcr.io/cloudnative-pg/postgresql:{pg_cfg.version}",
        resources=resources(pg_cfg.cloudnative.resources),
        client_selectors=clients,
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
    opts=pulumi.ResourceOptions.merge(
        data_opts,
        pulumi.ResourceOptions(depends_on=[network["private_services"]] if pg_mode == "cloudsql" else []),
    ),
)

redis_cfg = config.redis
redis_mode = (
    "incluster"
    if redis_cfg.mode == "incluster"
    else {"eks": "elasticache", "gke": "memorystore"}[cluster.provider_name]
)
redis_password = random.RandomPassword("redis-password-random", length=40, special=False).result
redis = RedisCache(
    "redis",
    RedisCacheArgs(
        mode=redis_mode,
        password=redis_password,
        protect=config.protect,
        depends_on=(namespace,) if redis_mode == "incluster" else tuple(cluster.depends_on),
        namespace=config.namespace,
        image=f"valkey/valkey:{redis_cfg.version}",
        storage_size=redis_cfg.incluster.storage.size,
        storage_class=redis_cfg.incluster.storage.storageClass or cluster.storage_class or None,
        resources=resources(redis_cfg.incluster.resources),
        client_selectors=clients,
        vpc_id=network.get("vpc_id"),
        subnet_ids=tuple(network.get("private_subnet_ids", ())),
        allowed_cidrs=(
            (network["vpc_cidr"],)
            if "vpc_cidr" in network
            else (network["private_services_cidr"],)
            if "private_services_cidr" in network
            else ()
        ),
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

image_ref: pulumi.Input[str]
if config.image:
    image_ref = config.image  # an immutable digest (promotion): deploy it, build nothing
else:
    import pulumi_docker_build as docker_build

    registry = cluster.registry
    # Relative to the working directory, so state (and the offline snapshots) do not carry a checkout's path.
    context = os.path.relpath(Path(_ROOT) / "service")
    built = docker_build.Image(
        "service-image",
        context={"location": context},
        dockerfile={"location": os.path.join(context, "Dockerfile")},
        platforms=["linux/amd64"],
        push=True,
        tags=[registry.repository.apply(lambda repo: f"{repo}:{pulumi.get_stack()}")],
        registries=[
            {"address": registry.server, "username": registry.username, "password": registry.password}
            if registry.username is not None
            else {"address": registry.server}
        ],
    )
    image_ref = pulumi.Output.all(registry.repository, built.digest).apply(lambda p: f"{p[0]}@{p[1]}")

svc_cfg = config.service
settings = svc_cfg.settings.env()
settings.pop("JOBS_MAX_CONCURRENCY")  # the component sets it from the worker's concurrency
scaling = svc_cfg.autoscaling
service_account_annotations = (
    cluster.workload_identity(config.namespace, SERVICE_NAME, "service") if cluster.workload_identity else {}
)
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
        service_account_annotations=service_account_annotations,
        network=NetworkAccess(
            gateway_namespaces=GATEWAY_NAMESPACES,
            egress=(qdrant.egress_target, postgres.egress_target, redis.egress_target),
        ),
        depends_on=(namespace,),
    ),
    opts=in_cluster,
)
service_url = f"https://{config.gateway.hostname}"

pulumi.export("serviceUrl", service_url)
pulumi.export("imageDigest", image_ref)
pulumi.export("qdrantEndpoint", qdrant.endpoint)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("promotion", dict(config.promotion_raw) if config.promotion_raw else None)
pulumi.export("ephemeral", dict(config.ephemeral_raw) if config.ephemeral_raw else None)
