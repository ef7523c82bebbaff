"""`RagService` (`rag:app:RagService`): the RAG API and its ingestion worker on Kubernetes.

Creates, all parented to the component and named `f"{name}-<role>"`:
- optionally the Namespace (`create_namespace`),
- ServiceAccount (annotations carry the workload-identity / IRSA binding),
- ConfigMap of non-secret settings (its name carries a hash of the content, so a settings change rolls the pods)
  and a Secret with DATABASE_URL, REDIS_URL, QDRANT_API_KEY, API_KEYS and ADMIN_API_KEY (Pulumi secrets that
  stay secret),
- the API Deployment (startup/liveness probes on /healthz, readiness on /readyz, restricted security context,
  read-only root filesystem with emptyDirs for /tmp and DATA_DIR, zone/host topology spread), its Service,
  an autoscaling/v2 HPA and a PodDisruptionBudget when more than one replica can run,
- the worker Deployment (`python -m service.worker`, its own replica count) when a Redis queue exists,
- NetworkPolicies: default deny for the namespace, then gateway -> API, API/worker -> Qdrant/Postgres/Redis/DNS,
  monitoring -> /metrics,
- optionally a ServiceMonitor for the API and a PodMonitor for the worker (port `metrics`), created only after
  the monitoring CRDs (`monitoring_crds`).

The spec builders below are pure functions of the args; the component only wires them into resources.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import embedding_models
from infra.components import prometheus_operator, specs
from infra.components.specs import EgressTarget, Resources, require

APP = "rag"
DATA_DIR = "/var/lib/rag"
WORKER_METRICS_PORT = 9100  # the worker serves Prometheus metrics here, on the container port named `metrics`
READINESS_PATH = "/readyz/serving"  # the API's readiness probe and GKE's load-balancer health check
PRE_STOP_SECONDS = 10  # EndpointSlice -> kube-proxy / Envoy / cloud LB propagation, a few seconds in practice
API_TERMINATION_GRACE_SECONDS = (
    PRE_STOP_SECONDS + 35
)  # then uvicorn's drain of in-flight requests (answers stream)

# What a service pod's memory limit must hold (`pod_memory_parts`, checked by `make plan`'s `pod-memory`; the
# figures and how they were measured: docs/infra.md, "Pod memory"). MiB. A service process with its embedding
# model, and a second model it may hold, follow the model (`infra.embedding_models`: 800 and 560 MiB for the
# stacks' default BAAI/bge-small-en-v1.5).
#: The embedded vector store (no QDRANT_URL): qdrant-edge at 100k chunks (731 MB service RSS against 334 MB empty,
#: docs/benchmarks.md); more data needs more.
EMBEDDED_STORE_MIB = 400
#: The multiprocessing forkserver the extraction workers fork from (the parsers preloaded), charged once to the pod.
FORKSERVER_MIB = 60
#: The service's own defaults when the settings do not name them (service/app/core/config.py).
SERVICE_DEFAULTS = {
    "WORKERS": 1,
    "EXTRACT_WORKERS": 2,
    "EXTRACT_MEMORY_MB": 512,
    "EMBEDDING_MODEL": "sentence-transformers/all-MiniLM-L6-v2",
}
#: Headroom over the counted parts: kernel memory charged to the pod's cgroup (page tables, socket buffers),
#: allocator fragmentation, request bodies in flight (MAX_DOCUMENT_BYTES each). The larger of the two.
HEADROOM_FRACTION = 0.10
HEADROOM_MIN_MIB = 128
#: Settings the worker receives with the shared ConfigMap but never uses: it never calls the LLM (only the API's
#: NetworkPolicy lets it out to the provider).
API_ONLY_SETTINGS = frozenset({"LLM_BASE_URL"})
SECRET_KEYS = ("DATABASE_URL", "REDIS_URL", "QDRANT_API_KEY", "API_KEYS")
ENVIRONMENTS = ("development", "test", "staging", "production")


@dataclass(frozen=True)
class Autoscaling:
    """HorizontalPodAutoscaler (autoscaling/v2) settings of the API Deployment."""

    min_replicas: int = 2
    max_replicas: int = 5
    cpu_utilization: int = 70
    """Target average CPU utilisation, percent of the request."""
    memory_utilization: int | None = None
    """Optional target average memory utilisation, percent of the request."""
    scale_down_window_seconds: int = 300
    """How long load must stay low before replicas are removed (avoids flapping)."""


@dataclass(frozen=True)
class WorkerSettings:
    """The ingestion worker Deployment (`python -m service.worker`); needs a Redis queue."""

    enabled: bool = True
    replicas: int = 1
    concurrency: int = 2
    """JOBS_MAX_CONCURRENCY inside each worker pod."""
    resources: Resources = field(
        default_factory=lambda: Resources(
            cpu_request="250m", memory_request="512Mi", cpu_limit="2", memory_limit="1Gi"
        )
    )


@dataclass(frozen=True)
class NetworkAccess:
    """Which NetworkPolicies to create and whom they let in and out."""

    enabled: bool = True
    default_deny: bool = True
    """Create the namespace-wide default-deny policy (data components bring their own allow policies)."""
    gateway_namespaces: tuple[str, ...] = ()
    """Namespaces whose pods (gateway/ingress proxies) may call the API."""
    gateway_cidrs: tuple[str, ...] = ()
    """Source ranges of cloud load balancers that reach pods directly. With no namespace and no CIDR the API
    port is open to any source (the Service is ClusterIP; the gateway is the only way in from outside)."""
    monitoring_namespace: str | None = "monitoring"
    """Namespace of Prometheus, allowed to scrape /metrics; None to disallow."""
    egress: tuple[EgressTarget, ...] = ()
    """Backends the API and worker may reach (use each data component's `egress_target`)."""
    api_egress: tuple[EgressTarget, ...] = ()
    """Further destinations of the API only (the LLM provider): the worker never calls them."""


@dataclass(frozen=True)
class RagServiceArgs:
    """Arguments of `RagService`; plain values, plus Pulumi Inputs for image, endpoints and secrets."""

    namespace: str
    """Kubernetes namespace of every object."""
    image: pulumi.Input[str]
    """Container image, pinned (`repo@sha256:...` from ServiceImage, or a version tag)."""
    environment: str = "development"
    """ENVIRONMENT of the service: development, test, staging or production."""
    qdrant_url: pulumi.Input[str] | None = None
    """QDRANT_URL; None keeps the embedded local-mode Qdrant (dev only)."""
    qdrant_api_key: pulumi.Input[str] | None = None
    """QDRANT_API_KEY (secret)."""
    database_url: pulumi.Input[str] | None = None
    """DATABASE_URL (secret), `postgresql+psycopg://...`; None keeps SQLite in DATA_DIR."""
    redis_url: pulumi.Input[str] | None = None
    """REDIS_URL (secret); enables the Redis cache, rate-limit storage and the worker queue."""
    api_keys: pulumi.Input[str] | None = None
    """API_KEYS (secret): `{"key": "tenant"}` JSON or `key:tenant,...`; required in production."""
    llm_api_key: pulumi.Input[str] | None = None
    """LLM_API_KEY (secret): the LLM provider's key, for POST /v1/answer."""
    admin_api_key: pulumi.Input[str] | None = None
    """ADMIN_API_KEY (secret): the bearer key of the /v1/admin routes (blue/green re-index); None: they answer 403."""
    qdrant_replication_factor: int = 1
    """QDRANT_REPLICATION_FACTOR for new collections (use QdrantCluster.replication_factor)."""
    qdrant_shard_number: int = 1
    """QDRANT_SHARD_NUMBER for new collections (use QdrantCluster.shard_number)."""
    settings: Mapping[str, str] = field(default_factory=dict)
    """Further non-secret environment variables (LOG_LEVEL, RATE_LIMIT_SEARCH, ...)."""
    replicas: int = 1
    """API replicas when autoscaling is off."""
    autoscaling: Autoscaling | None = None
    resources: Resources = field(
        default_factory=lambda: Resources(
            cpu_request="250m", memory_request="1Gi", cpu_limit="2", memory_limit="2304Mi"
        )
    )
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    port: int = 8000
    run_as_user: int = 10001
    """UID the service image runs as (its Dockerfile's USER)."""
    service_account_annotations: Mapping[str, str] = field(default_factory=dict)
    """E.g. `eks.amazonaws.com/role-arn` or `iam.gke.io/gcp-service-account`."""
    create_namespace: bool = False
    network: NetworkAccess = field(default_factory=NetworkAccess)
    service_monitor: bool = False
    monitoring_crds: tuple[pulumi.Resource, ...] = ()
    """Resources that install the monitoring.coreos.com CRDs (Monitoring.crds_ready); the ServiceMonitor waits."""
    monitor_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels the cluster's Prometheus selects monitors by (`Monitoring.monitor_labels`; mode `existing`)."""
    backends: tuple[pulumi.Resource, ...] = ()
    """What the API and worker read at start-up (the data components' `ready`: RDS/Cloud SQL instance and user,
    ElastiCache/Memorystore, the Qdrant StatefulSet...). The Deployments wait for them, so their rollout await
    does not start while a managed database is still being created (15-30 minutes)."""
    pdb_min_available: int | None = None
    """minAvailable of the API's PodDisruptionBudget (None: maxUnavailable 1)."""
    pdb_enabled: bool = True
    """Create the API (and worker) PodDisruptionBudgets when more than one pod can run."""
    depends_on: tuple[pulumi.Resource, ...] = ()
    """Resources every child waits for (e.g. a Namespace created elsewhere)."""


# ---------------------------------------------------------------------------------------------- validation
def validate_args(args: RagServiceArgs) -> None:
    """Raise ComponentArgsError with a full sentence when the args cannot produce a working service."""
    specs.check_dns_label(args.namespace, "RagServiceArgs.namespace")
    require(
        args.environment in ENVIRONMENTS,
        f"RagServiceArgs.environment {args.environment!r} must be one of {', '.join(ENVIRONMENTS)}.",
    )
    if isinstance(args.image, str):
        specs.check_image(args.image, "RagServiceArgs.image")
    require(1 <= args.replicas <= 100, "RagServiceArgs.replicas must be between 1 and 100.")
    require(1 <= args.port <= 65535, "RagServiceArgs.port must be a TCP port between 1 and 65535.")
    require(args.run_as_user > 0, "RagServiceArgs.run_as_user must be a non-root UID (greater than 0).")
    require(
        1 <= args.qdrant_replication_factor <= 10,
        "RagServiceArgs.qdrant_replication_factor must be between 1 and 10.",
    )
    require(
        1 <= args.qdrant_shard_number <= 64, "RagServiceArgs.qdrant_shard_number must be between 1 and 64."
    )
    if args.environment == "production":
        require(
            args.api_keys is not None, "RagServiceArgs.api_keys is required when environment is production."
        )
        require(
            args.qdrant_url is not None,
            "RagServiceArgs.qdrant_url is required when environment is production.",
        )
        require(
            args.database_url is not None,
            "RagServiceArgs.database_url is required when environment is production.",
        )
    scaling = args.autoscaling
    if scaling is not None:
        require(scaling.min_replicas >= 1, "RagServiceArgs.autoscaling.min_replicas must be at least 1.")
        require(
            scaling.max_replicas >= scaling.min_replicas,
            "RagServiceArgs.autoscaling.max_replicas must not be below min_replicas.",
        )
        require(
            1 <= scaling.cpu_utilization <= 100,
            "RagServiceArgs.autoscaling.cpu_utilization must be a percentage between 1 and 100.",
        )
        require(
            scaling.memory_utilization is None or 1 <= scaling.memory_utilization <= 100,
            "RagServiceArgs.autoscaling.memory_utilization must be a percentage between 1 and 100.",
        )
    if args.pdb_min_available is not None:
        floor = scaling.min_replicas if scaling is not None else args.replicas
        require(
            1 <= args.pdb_min_available < max(floor, 2),
            f"RagServiceArgs.pdb_min_available must be at least 1 and below the smallest replica count ({floor}): "
            "otherwise no pod may ever be evicted and node drains block.",
        )
    args.resources.validate("RagServiceArgs.resources")
    args.worker.resources.validate("RagServiceArgs.worker.resources")
    require(args.worker.replicas >= 1, "RagServiceArgs.worker.replicas must be at least 1.")
    require(1 <= args.worker.concurrency <= 64, "RagServiceArgs.worker.concurrency must be between 1 and 64.")
    require(
        not (args.worker.enabled and args.redis_url is None),
        "RagServiceArgs.worker.enabled needs redis_url: the worker consumes the Redis job queue "
        "(without Redis the API runs jobs in-process; set worker.enabled=False).",
    )
    specs.check_env_names(list(args.settings), "RagServiceArgs.settings")
    clash = sorted(set(args.settings) & {*SECRET_KEYS, *managed_setting_names()})
    require(
        not clash,
        f"RagServiceArgs.settings must not set {', '.join(clash)}: the component manages those variables.",
    )
    require(
        not (args.service_monitor and args.network.enabled and args.network.monitoring_namespace is None),
        "RagServiceArgs.service_monitor needs network.monitoring_namespace so Prometheus may scrape the pods.",
    )


def managed_setting_names() -> tuple[str, ...]:
    """Environment variables the component sets itself in the ConfigMap."""
    return (
        "ENVIRONMENT",
        "HOST",
        "PORT",
        "DATA_DIR",
        "QDRANT_URL",
        "QDRANT_REPLICATION_FACTOR",
        "QDRANT_SHARD_NUMBER",
        "JOBS_IN_PROCESS",
    )


def pod_memory_parts(
    role: str, env: Mapping[str, str], image_models: Sequence[str] = ()
) -> list[tuple[str, float]]:
    """What the memory limit of one service pod must hold, in MiB, part by part (headroom last).

    `role` is `api` or `worker`; `env` the pod's settings (ConfigMap and env; EMBEDDING_MODEL is the model each
    process serves); `image_models` the embedding models the image holds. A process holds at most one more than
    the one it serves (the shadow while a model change re-indexes, or the standby kept for rollback after the
    switch): the largest of the others is counted.

    An extraction worker is counted at its whole EXTRACT_MEMORY_MB: that is its RLIMIT_AS, a cap on its address
    space, and every page it has resident is mapped, so its resident set (what the cgroup charges) stays below it.
    The true peak is lower (a worker's address space also holds the interpreter and libraries it shares with the
    forkserver, charged once), which only adds to the headroom. Only the API extracts: the worker ingests jobs
    that carry already-extracted text, and its Extractor pool starts on the first extraction, which never comes.
    """
    processes = int(env.get("WORKERS", SERVICE_DEFAULTS["WORKERS"]))
    served = str(env.get("EMBEDDING_MODEL") or SERVICE_DEFAULTS["EMBEDDING_MODEL"])
    parts: list[tuple[str, float]] = [
        (f"{processes} service process(es) with {served}", processes * embedding_models.process_mib(served))
    ]
    others = {m for m in image_models if m and m.lower() != served.lower()}
    if others:
        second = max(sorted(others), key=embedding_models.extra_model_mib)
        parts.append(
            (
                f"a second embedding model per process ({second})",
                processes * embedding_models.extra_model_mib(second),
            )
        )
    if not env.get("QDRANT_URL"):
        parts.append(("the embedded vector store (100k chunks)", processes * EMBEDDED_STORE_MIB))
    if role == "api":
        workers = int(env.get("EXTRACT_WORKERS", SERVICE_DEFAULTS["EXTRACT_WORKERS"]))
        memory = int(env.get("EXTRACT_MEMORY_MB", SERVICE_DEFAULTS["EXTRACT_MEMORY_MB"]))
        parts.append(("the extraction forkserver", processes * FORKSERVER_MIB))
        # EXTRACT_MEMORY_MB is in MB of 2**20 bytes (sandbox.py: memory_mb * 1024 * 1024).
        parts.append(
            (f"EXTRACT_WORKERS x EXTRACT_MEMORY_MB ({workers} x {memory})", processes * workers * memory)
        )
    counted = sum(mib for _, mib in parts)
    parts.append(("headroom", max(HEADROOM_MIN_MIB, HEADROOM_FRACTION * counted)))
    return parts


def pod_memory_mib(role: str, env: Mapping[str, str], image_models: Sequence[str] = ()) -> float:
    """The smallest memory limit (MiB) one service pod needs: `pod_memory_parts` summed."""
    return sum(mib for _, mib in pod_memory_parts(role, env, image_models))


# ---------------------------------------------------------------------------------------------- pure specs
def client_selector(name: str) -> dict[str, str]:
    """Labels matching both the API and the worker pods of the RagService called `name`.

    Plain strings, so data components can admit the service in their NetworkPolicies before it exists.
    """
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": name}


def wants_pdb(replicas: int, autoscaling: Autoscaling | None) -> bool:
    """A PDB only makes sense when more than one pod can run at the same time."""
    return (autoscaling.min_replicas if autoscaling is not None else replicas) > 1


def api_pdb_spec(match: Mapping[str, str], min_available: int | None) -> dict[str, Any]:
    """The API's PodDisruptionBudget: `minAvailable` when configured, else at most one pod evicted at a time."""
    if min_available is None:
        return specs.pdb_spec(match)
    return {"minAvailable": min_available, "selector": {"matchLabels": dict(match)}}


def config_data(args: RagServiceArgs, qdrant_url: str | None) -> dict[str, str]:
    """The ConfigMap content: managed non-secret settings plus `args.settings`."""
    data = {
        "ENVIRONMENT": args.environment,
        "HOST": "0.0.0.0",  # noqa: S104 - inside the pod the server must listen on the pod IP
        "PORT": str(args.port),
        "DATA_DIR": DATA_DIR,
        "LOG_JSON": "true",
        "QDRANT_REPLICATION_FACTOR": str(args.qdrant_replication_factor),
        "QDRANT_SHARD_NUMBER": str(args.qdrant_shard_number),
        "JOBS_MAX_CONCURRENCY": str(args.worker.concurrency),
    }
    if not args.worker.enabled:
        # No worker consumes the Redis queue: the API runs the jobs itself (rows in the registry; several
        # replicas share them by lease), Redis keeps serving the cache and rate limits.
        data["JOBS_IN_PROCESS"] = "true"
    if qdrant_url is not None:
        data["QDRANT_URL"] = qdrant_url
    data.update(args.settings)
    return data


SECRETS_ANNOTATION = "rag.platform/secrets-hmac-sha256"


def secrets_digest(values: Mapping[str, str], salt: str) -> str:
    """HMAC-SHA256 over the Secret's values (the pod template's SECRETS_ANNOTATION), keyed with the stack's secret
    salt. The values include keys a user may have chosen by hand (rag:serviceApiKeys, rag:adminApiKey): pod
    templates are readable by more people than Secrets, and a plain hash of a weak key can be brute-forced offline."""
    return hmac.new(
        salt.encode(), json.dumps(dict(values), sort_keys=True).encode(), hashlib.sha256
    ).hexdigest()


def config_map_name(base: str, data: Mapping[str, str]) -> str:
    """`<base>-config-<hash>`: a content change renames the ConfigMap, which rolls the Deployments."""
    digest = hashlib.sha256(json.dumps(dict(data), sort_keys=True).encode()).hexdigest()[:10]
    return f"{base}-config-{digest}"


def pod_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """emptyDirs for the only writable paths under the read-only root filesystem: /tmp and DATA_DIR."""
    volumes = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}},
    ]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": DATA_DIR}]  # noqa: S108
    return volumes, mounts


def _settings_env_from(config_name: Any, secret_name: str) -> list[dict[str, Any]]:
    """Every key of the settings ConfigMap and the Secret as environment variables (API and worker alike)."""
    return [{"configMapRef": {"name": config_name}}, {"secretRef": {"name": secret_name}}]


def _restricted_runtime(resources: Resources, run_as_user: int) -> dict[str, Any]:
    """Resources, the restricted security context and the writable-dir mounts every service container carries."""
    _, mounts = pod_volumes()
    return {
        "resources": specs.resources_spec(resources),
        "securityContext": specs.container_security_context(run_as_user),
        "volumeMounts": mounts,
    }


def api_container(
    image: Any, port: int, resources: Resources, run_as_user: int, config_name: Any, secret_name: str
) -> dict[str, Any]:
    """The API container: HTTP port, probes on /healthz and /readyz, settings from the ConfigMap and Secret."""
    return {
        "name": "api",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [specs.container_port("http", port)],
        "envFrom": _settings_env_from(config_name, secret_name),
        # Loading the embedding model can take a while: the startup probe holds off liveness until /healthz answers.
        "startupProbe": specs.http_probe("/healthz", "http", period=5, timeout=3, failures=60),
        "livenessProbe": specs.http_probe("/healthz", "http", period=10, timeout=3, failures=3),
        # Only what this pod cannot serve without (service/app/api/routes/health.py SERVING_CHECKS): a probe that
        # failed on the shared database or Redis would take every replica out of the load balancer at once.
        "readinessProbe": specs.http_probe(READINESS_PATH, "http", period=5, timeout=5, failures=3),
        # Endpoint removal and SIGTERM happen at the same time: keep serving while the gateway's proxies and the
        # cloud load balancer stop sending (EndpointSlice propagation), then uvicorn drains in-flight requests.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SECONDS)]}}},
        **_restricted_runtime(resources, run_as_user),
    }


def worker_container(
    image: Any, resources: Resources, run_as_user: int, config_name: Any, secret_name: str
) -> dict[str, Any]:
    """The worker container: same image and settings, `python -m service.worker`, its Prometheus metrics and
    probes on the port named `metrics` (WORKER_METRICS_PORT), scraped by the worker PodMonitor."""
    return {
        "name": "worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "service.worker"],
        "env": [{"name": "WORKER_METRICS_PORT", "value": str(WORKER_METRICS_PORT)}],
        "ports": [{"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"}],
        # The worker's /healthz and /readyz fail once it has not polled the queue for WORKER_STALE_SECONDS
        # (service/app/jobs/health.py): a worker that stopped consuming is restarted, not left 'running'.
        # The startup probe covers loading the model before the first poll.
        "startupProbe": specs.http_probe("/healthz", "metrics", period=5, timeout=3, failures=60),
        "livenessProbe": specs.http_probe("/healthz", "metrics", period=15, timeout=5, failures=3),
        "readinessProbe": specs.http_probe("/readyz", "metrics", period=10, timeout=5, failures=3),
        "envFrom": _settings_env_from(config_name, secret_name),
        **_restricted_runtime(resources, run_as_user),
    }


def worker_pod_monitor_spec(match: Mapping[str, str], namespace: str) -> dict[str, Any]:
    """PodMonitor for the worker pods' `metrics` port (jobs, queue depth, oldest job age, last poll)."""
    return {
        "namespaceSelector": {"matchNames": [namespace]},
        "selector": {"matchLabels": dict(match)},
        "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
    }


HPA_OWNED = "spec.replicas"
"""The API Deployment's field the HPA sets once it runs (`ignore_changes` on the Deployment)."""


def deployment_spec(
    container: Mapping[str, Any],
    *,
    match: Mapping[str, str],
    pod_labels: Mapping[str, str],
    replicas: int | None,
    service_account: str,
    run_as_user: int,
    termination_grace_seconds: int = 30,
    pod_annotations: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Deployment spec; `replicas=None` leaves the count out (the API Deployment sends it also with an HPA, and
    ignores its later changes: `HPA_OWNED`)."""
    volumes, _ = pod_volumes()
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(match)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": dict(pod_labels),
                **({"annotations": dict(pod_annotations)} if pod_annotations else {}),
            },
            "spec": {
                "serviceAccountName": service_account,
                # The service never calls the Kubernetes API; IRSA/Workload Identity do not need this token.
                "automountServiceAccountToken": False,
                "securityContext": specs.pod_security_context(run_as_user, run_as_user),
                "terminationGracePeriodSeconds": termination_grace_seconds,
                "topologySpreadConstraints": specs.topology_spread(match),
                "containers": [dict(container)],
                "volumes": volumes,
            },
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return spec


def _utilization_metric(resource: str, percent: int) -> dict[str, Any]:
    """An autoscaling/v2 Resource metric targeting an average utilisation (percent of the pods' request)."""
    return {
        "type": "Resource",
        "resource": {"name": resource, "target": {"type": "Utilization", "averageUtilization": percent}},
    }


def hpa_spec(target_deployment: str, scaling: Autoscaling) -> dict[str, Any]:
    """autoscaling/v2 HPA: CPU (and optionally memory) utilisation, fast scale-up, slow stabilised scale-down."""
    metrics = [_utilization_metric("cpu", scaling.cpu_utilization)]
    if scaling.memory_utilization is not None:
        metrics.append(_utilization_metric("memory", scaling.memory_utilization))
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target_deployment},
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": metrics,
        "behavior": {
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 60},
                    {"type": "Pods", "value": 4, "periodSeconds": 60},
                ],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": scaling.scale_down_window_seconds,
                "selectPolicy": "Min",
                "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
            },
        },
    }


def service_spec(match: Mapping[str, str], port: int) -> dict[str, Any]:
    """ClusterIP Service in front of the API pods (the gateway routes to it)."""
    return {
        "type": "ClusterIP",
        "selector": dict(match),
        "ports": [specs.service_port("http", port)],
    }


def _backend_egress(network: NetworkAccess) -> list[dict[str, Any]]:
    """Egress of the API and the worker alike: DNS, then each data service they use."""
    return [specs.dns_egress_rule(), *(specs.egress_rule(t) for t in network.egress)]


def api_network_policy(match: Mapping[str, str], port: int, network: NetworkAccess) -> dict[str, Any]:
    """API pods: in from the gateway (and Prometheus) on the HTTP port; out to DNS and the data services."""
    gateway_peers: list[dict[str, Any]] = [specs.namespace_peer(ns) for ns in network.gateway_namespaces]
    gateway_peers += [{"ipBlock": {"cidr": cidr}} for cidr in network.gateway_cidrs]
    ingress = [specs.ingress_rule([port], gateway_peers or None)]
    if network.monitoring_namespace is not None and gateway_peers:
        ingress.append(specs.ingress_rule([port], [specs.namespace_peer(network.monitoring_namespace)]))
    egress = [*_backend_egress(network), *(specs.egress_rule(t) for t in network.api_egress)]
    return specs.network_policy_spec(match, ingress=ingress, egress=egress)


ACME_SOLVER_LABELS = {"acme.cert-manager.io/http01-solver": "true"}
ACME_SOLVER_PORT = 8089


def acme_solver_network_policy() -> dict[str, Any]:
    """cert-manager runs HTTP-01 solver pods in the Certificate's namespace; the default deny would starve them.

    Let's Encrypt reaches them through the gateway from addresses we cannot list, so port 8089 is open to all.
    """
    return specs.network_policy_spec(
        ACME_SOLVER_LABELS, ingress=[specs.ingress_rule([ACME_SOLVER_PORT], None)], egress=[]
    )


def worker_network_policy(match: Mapping[str, str], network: NetworkAccess) -> dict[str, Any]:
    """Worker pods serve only their metrics, to Prometheus; out to DNS and the data services."""
    ingress = (
        [specs.ingress_rule([WORKER_METRICS_PORT], [specs.namespace_peer(network.monitoring_namespace)])]
        if network.monitoring_namespace is not None
        else []
    )
    return specs.network_policy_spec(match, ingress=ingress, egress=_backend_egress(network))


# ---------------------------------------------------------------------------------------------- component
class RagService(pulumi.ComponentResource):
    """The RAG API Deployment, its worker, Service, autoscaling, disruption budget, settings and policies."""

    namespace: str
    service_name: str
    service_port: int
    selector_labels: dict[str, str]
    """Labels selecting the API pods (for gateways and other components' NetworkPolicies)."""
    client_labels: dict[str, str]
    """Labels selecting the API and worker pods (equal to `client_selector(name)`)."""
    url: pulumi.Output[str]
    """In-cluster URL of the API, http://<service>.<namespace>.svc:<port>."""
    deployment_name: str
    service_account_name: str
    service: k8s.core.v1.Service
    """The API's Service (`service_name`): what an entry routing to it waits for (`TlsGatewayArgs.backend`)."""

    def __init__(self, name: str, args: RagServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        validate_args(args)
        super().__init__("rag:app:RagService", name, None, opts)

        ns = args.namespace
        base = name
        worker_name = f"{base}-worker"
        specs.check_dns_label(worker_name, "RagService name")
        waits: list[pulumi.Resource] = list(args.depends_on)

        if args.create_namespace:
            namespace = k8s.core.v1.Namespace(
                f"{name}-namespace",
                metadata={
                    "name": ns,
                    "labels": {
                        "app.kubernetes.io/part-of": specs.PART_OF,
                        # Enforce baseline; warn/audit against restricted (our own pods already meet it).
                        "pod-security.kubernetes.io/enforce": "baseline",
                        "pod-security.kubernetes.io/warn": "restricted",
                        "pod-security.kubernetes.io/audit": "restricted",
                    },
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
            )
            waits.append(namespace)

        def child(extra: list[pulumi.Resource] | None = None) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=[*waits, *(extra or [])])

        api_match = specs.selector_labels(APP, base, "api")
        api_labels = specs.labels(APP, base, "api")
        worker_match = specs.selector_labels(APP, base, "worker")
        worker_labels = specs.labels(APP, base, "worker")
        common = specs.labels(APP, base, "service")

        sa_name = base
        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=specs.metadata(sa_name, ns, common, args.service_account_annotations),
            opts=child(),
        )

        data = pulumi.Output.from_input(args.qdrant_url).apply(lambda url: config_data(args, url))
        config_name = data.apply(lambda d: config_map_name(base, d))
        config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata={"name": config_name, "namespace": ns, "labels": common},
            data=data,
            opts=child(),
        )

        secret_name = f"{base}-secrets"
        secret_values = {
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "QDRANT_API_KEY": args.qdrant_api_key,
            "API_KEYS": args.api_keys,
            "LLM_API_KEY": args.llm_api_key,
            "ADMIN_API_KEY": args.admin_api_key,
        }
        string_data = {k: pulumi.Output.secret(v) for k, v in secret_values.items() if v is not None}
        # The pods read the Secret into their environment at start only: a changed value (a rotated Qdrant or
        # database key) must restart them, or they keep the old one until something else does.
        salt = random.RandomPassword(f"{name}-digest-salt", length=32, special=False, opts=child()).result
        secrets_annotation = {
            SECRETS_ANNOTATION: pulumi.Output.unsecret(
                pulumi.Output.all(salt, pulumi.Output.all(**string_data)).apply(
                    lambda v: secrets_digest(v[1], v[0])
                )
            )
        }
        secret = k8s.core.v1.Secret(
            f"{name}-secrets",
            metadata=specs.metadata(secret_name, ns, common),
            type="Opaque",
            string_data=string_data,
            opts=child(),
        )

        # The pods read the ServiceAccount, ConfigMap and Secret by name, and connect to the data stores at
        # start-up: the Deployments (and their rollout await) wait for all of them.
        reads = [service_account, config_map, secret, *args.backends]
        # With an HPA the Deployment still sends `replicas` (the HPA's floor when it is created) and ignores later
        # changes of it. Under server-side apply a field the provider's manager owned and no longer sends is
        # removed, which resets it to 1: dropping `replicas` when autoscaling is turned on took the API to one pod
        # (kubernetes.io, "Migrating Deployments and StatefulSets to horizontal autoscaling"). With `ignoreChanges`
        # pulumi-kubernetes sends the live count while it owns the field and leaves it out once the HPA's
        # kube-controller-manager does (provider/pkg/await/await.go, handleSSAIgnoreFields): no reset, no conflict.
        api_replicas = args.autoscaling.min_replicas if args.autoscaling is not None else args.replicas
        api_opts = child(reads)
        if args.autoscaling is not None:
            api_opts = pulumi.ResourceOptions.merge(
                api_opts, pulumi.ResourceOptions(ignore_changes=[HPA_OWNED])
            )
        deployment = k8s.apps.v1.Deployment(
            f"{name}-api",
            metadata=specs.metadata(base, ns, api_labels),
            spec=deployment_spec(
                api_container(
                    args.image, args.port, args.resources, args.run_as_user, config_name, secret_name
                ),
                match=api_match,
                pod_labels=api_labels,
                replicas=api_replicas,
                service_account=sa_name,
                run_as_user=args.run_as_user,
                termination_grace_seconds=API_TERMINATION_GRACE_SECONDS,
                pod_annotations=secrets_annotation,
            ),
            opts=api_opts,
        )

        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=specs.metadata(base, ns, api_labels),
            spec=service_spec(api_match, args.port),
            opts=child(),
        )

        if args.autoscaling is not None:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{name}-hpa",
                metadata=specs.metadata(base, ns, api_labels),
                spec=hpa_spec(base, args.autoscaling),
                opts=child([deployment]),
            )

        if args.pdb_enabled and wants_pdb(args.replicas, args.autoscaling):
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb",
                metadata=specs.metadata(base, ns, api_labels),
                spec=api_pdb_spec(api_match, args.pdb_min_available),
                opts=child(),
            )

        if args.worker.enabled:
            k8s.apps.v1.Deployment(
                f"{name}-worker",
                metadata=specs.metadata(worker_name, ns, worker_labels),
                spec=deployment_spec(
                    worker_container(
                        args.image, args.worker.resources, args.run_as_user, config_name, secret_name
                    ),
                    match=worker_match,
                    pod_labels=worker_labels,
                    replicas=args.worker.replicas,
                    service_account=sa_name,
                    run_as_user=args.run_as_user,
                    # Let a running ingestion job finish before the pod is killed.
                    termination_grace_seconds=120,
                    pod_annotations=secrets_annotation,
                ),
                opts=child(reads),
            )
            if args.pdb_enabled and args.worker.replicas > 1:
                k8s.policy.v1.PodDisruptionBudget(
                    f"{name}-worker-pdb",
                    metadata=specs.metadata(worker_name, ns, worker_labels),
                    spec=specs.pdb_spec(worker_match),
                    opts=child(),
                )

        if args.network.enabled:
            if args.network.default_deny:
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-default-deny",
                    metadata=specs.metadata("default-deny", ns, common),
                    spec=specs.default_deny_spec(),
                    opts=child(),
                )
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-acme-solver-netpol",
                    metadata=specs.metadata("acme-http01-solver", ns, common),
                    spec=acme_solver_network_policy(),
                    opts=child(),
                )
            k8s.networking.v1.NetworkPolicy(
                f"{name}-api-netpol",
                metadata=specs.metadata(base, ns, api_labels),
                spec=api_network_policy(api_match, args.port, args.network),
                opts=child(),
            )
            if args.worker.enabled:
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-worker-netpol",
                    metadata=specs.metadata(worker_name, ns, worker_labels),
                    spec=worker_network_policy(worker_match, args.network),
                    opts=child(),
                )

        if args.service_monitor:
            prometheus_operator.monitoring_object(
                f"{name}-servicemonitor",
                "ServiceMonitor",
                metadata=specs.metadata(base, ns, {**api_labels, **args.monitor_labels}),
                spec=specs.service_monitor_spec(api_match, ns, port="http"),
                opts=child(list(args.monitoring_crds)),
            )
            if args.worker.enabled:
                prometheus_operator.monitoring_object(
                    f"{name}-worker-podmonitor",
                    "PodMonitor",
                    metadata=specs.metadata(worker_name, ns, {**worker_labels, **args.monitor_labels}),
                    spec=worker_pod_monitor_spec(worker_match, ns),
                    opts=child(list(args.monitoring_crds)),
                )

        self.namespace = ns
        self.service_name = base
        self.service_port = args.port
        self.selector_labels = api_match
        self.client_labels = client_selector(base)
        self.deployment_name = base
        self.service_account_name = sa_name
        self.url = pulumi.Output.from_input(f"http://{base}.{ns}.svc:{args.port}")
        self.register_outputs(
            {
                "namespace": ns,
                "serviceName": base,
                "servicePort": args.port,
                "url": self.url,
            }
        )
