"""`Monitoring` (`rag:ops:Monitoring`): kube-prometheus-stack, the service's alerts and its Grafana dashboard.

Creates the monitoring Namespace, the Grafana admin Secret (password from a Pulumi secret), the
kube-prometheus-stack Helm release (pinned; its chart installs the monitoring.coreos.com CRDs; Prometheus is
told to pick up every ServiceMonitor/PodMonitor/PrometheusRule, not only the chart's own), a `PrometheusRule`
with the service's alerts, and a dashboard ConfigMap labelled `grafana_dashboard: "1"` that Grafana's sidecar
loads.

CRD ordering: `crds_ready` is the release; everything needing those CRDs (the rule here, the ServiceMonitors of
RagService and QdrantCluster) depends on it, so nothing is created before the CRDs exist.

Alert and panel queries use the metric names of service/app/core/metrics.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components import prometheus_operator, specs
from infra.components.specs import Resources, require

CHART = "kube-prometheus-stack"
REPO = "https://prometheus-community.github.io/helm-charts"
CHART_VERSION = "78.3.0"
ADMIN_SECRET_KEYS = ("admin-user", "admin-password")
# kube-prometheus-stack 78.3.0 values (charts/kube-prometheus-stack/values.yaml at the chart's tag).
CONTROL_PLANE_COMPONENTS = ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy")
CONTROL_PLANE_RULES = (
    "etcd",
    "kubeControllerManager",
    "kubeSchedulerAlerting",
    "kubeSchedulerRecording",
    "kubeProxy",
)

# Metric names exported by the service (service/app/core/metrics.py).
M_REQUESTS = "rag_http_requests_total"
M_REQUEST_SECONDS = "rag_http_request_duration_seconds"
M_EMBED_SECONDS = "rag_embedding_duration_seconds"
M_EMBED_FAILURES = "rag_embedding_failures_total"
M_SEARCH_SECONDS = "rag_search_duration_seconds"
M_CACHE = "rag_search_cache_requests_total"
M_QUEUE = "rag_queue_depth"
M_JOBS = "rag_jobs_total"
M_CHUNKS = "rag_chunks_ingested_total"
M_FAILURES = "rag_failures_total"
M_LLM_REQUESTS = "rag_llm_requests_total"
M_LLM_SECONDS = "rag_llm_request_duration_seconds"


@dataclass(frozen=True)
class AlertThresholds:
    """When the service's alerts fire."""

    error_ratio: float = 0.05
    """Share of responses that are 5xx over 5 minutes."""
    p95_latency_seconds: float = 1.0
    restarts_per_30m: int = 3
    embedding_failures_per_10m: int = 5
    llm_error_ratio: float = 0.1
    """Share of LLM calls (POST /v1/answer) that failed over 10 minutes."""
    llm_p95_latency_seconds: float = 30.0
    """p95 of successful LLM calls, start to last token."""


@dataclass(frozen=True)
class MonitoringArgs:
    """Arguments of `Monitoring`."""

    service_namespace: str
    """Namespace of the RAG service and Qdrant (alerts and the dashboard are scoped to it)."""
    grafana_admin_password: pulumi.Input[str]
    """Grafana admin password (a Pulumi secret)."""
    namespace: str = "monitoring"
    chart_version: str = CHART_VERSION
    service_job: str = "rag"
    """Prometheus `job` of the service's ServiceMonitor (the Service name)."""
    qdrant_job: str = "qdrant"
    """Prometheus `job` of Qdrant's ServiceMonitor (its client Service name)."""
    retention: str = "15d"
    storage_size: str = "20Gi"
    storage_class: str | None = None
    prometheus_resources: Resources = field(
        default_factory=lambda: Resources(
            cpu_request="250m", memory_request="1Gi", cpu_limit="2", memory_limit="2Gi"
        )
    )
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    depends_on: tuple[pulumi.Resource, ...] = ()


def validate_args(args: MonitoringArgs) -> None:
    """Raise ComponentArgsError with a full sentence when the args cannot produce working monitoring."""
    specs.check_dns_label(args.namespace, "MonitoringArgs.namespace")
    specs.check_dns_label(args.service_namespace, "MonitoringArgs.service_namespace")
    specs.check_quantity(args.storage_size, "MonitoringArgs.storage_size")
    args.prometheus_resources.validate("MonitoringArgs.prometheus_resources")
    require(
        args.retention[:-1].isdigit() and args.retention[-1] in "hdwy",
        f"MonitoringArgs.retention {args.retention!r} must look like 15d (a number and h, d, w or y).",
    )
    t = args.thresholds
    require(0 < t.error_ratio < 1, "MonitoringArgs.thresholds.error_ratio must be between 0 and 1.")
    require(t.p95_latency_seconds > 0, "MonitoringArgs.thresholds.p95_latency_seconds must be positive.")
    require(t.restarts_per_30m >= 1, "MonitoringArgs.thresholds.restarts_per_30m must be at least 1.")
    require(
        t.embedding_failures_per_10m >= 1,
        "MonitoringArgs.thresholds.embedding_failures_per_10m must be at least 1.",
    )


# ---------------------------------------------------------------------------------------------- pure specs
def chart_values(args: MonitoringArgs, admin_secret: str) -> dict[str, Any]:
    """kube-prometheus-stack values: discover every monitor/rule, persistent Prometheus, sidecar dashboards."""
    volume_spec = specs.pvc_spec(args.storage_size, args.storage_class)
    return {
        "crds": {"enabled": True},
        "prometheus": {
            "prometheusSpec": {
                "retention": args.retention,
                # Without these, Prometheus only selects objects labelled with this release's name.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "resources": specs.resources_spec(args.prometheus_resources),
                "storageSpec": {"volumeClaimTemplate": {"spec": volume_spec}},
            }
        },
        "grafana": {
            "admin": {
                "existingSecret": admin_secret,
                "userKey": ADMIN_SECRET_KEYS[0],
                "passwordKey": ADMIN_SECRET_KEYS[1],
            },
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": "grafana_dashboard",
                    "labelValue": "1",
                    "searchNamespace": "ALL",
                }
            },
        },
        "alertmanager": {"enabled": True},
        # Managed control planes (EKS, GKE) expose no controller-manager, scheduler or etcd endpoints, and GKE's
        # Dataplane V2 has no kube-proxy (kind binds them all to 127.0.0.1): these scrapes could only fail, and
        # their `*Down` alerts fire for ever. `<component>.enabled: false` removes the ServiceMonitor and its
        # rules (the rule templates of chart 78.3.0 are gated on it); the defaultRules switches say so too.
        **{component: {"enabled": False} for component in CONTROL_PLANE_COMPONENTS},
        "defaultRules": {"rules": dict.fromkeys(CONTROL_PLANE_RULES, False)},
    }


def alert_rules(args: MonitoringArgs) -> list[dict[str, Any]]:
    """The service's alerting rules: 5xx ratio, p95 latency, embedding failures, Qdrant down, restarts, jobs."""
    ns = args.service_namespace
    job = args.service_job
    sel = f'namespace="{ns}", job="{job}"'
    t = args.thresholds

    def rule(
        alert: str, expr: str, for_: str, severity: str, summary: str, description: str
    ) -> dict[str, Any]:
        return {
            "alert": alert,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity, "service": job},
            "annotations": {"summary": summary, "description": description},
        }

    return [
        rule(
            "RagHighErrorRate",
            f'sum(rate({M_REQUESTS}{{{sel}, status=~"5.."}}[5m]))'
            f" / clamp_min(sum(rate({M_REQUESTS}{{{sel}}}[5m])), 1e-9) > {t.error_ratio}",
            "5m",
            "critical",
            "The RAG API answers too many requests with 5xx.",
            f"More than {t.error_ratio:.0%} of responses were 5xx over the last 5 minutes.",
        ),
        rule(
            "RagHighLatencyP95",
            f"histogram_quantile(0.95, sum by (le) (rate({M_REQUEST_SECONDS}_bucket{{{sel}}}[5m])))"
            f" > {t.p95_latency_seconds}",
            "10m",
            "warning",
            "The RAG API is slow.",
            f"p95 request latency has been above {t.p95_latency_seconds}s for 10 minutes.",
        ),
        rule(
            "RagEmbeddingFailures",
            f"sum(increase({M_EMBED_FAILURES}{{{sel}}}[10m])) > {t.embedding_failures_per_10m}",
            "5m",
            "warning",
            "Embedding calls are failing.",
            f"More than {t.embedding_failures_per_10m} embedding calls raised in the last 10 minutes.",
        ),
        rule(
            "RagLlmErrorRate",
            f'sum(rate({M_LLM_REQUESTS}{{{sel}, outcome="error"}}[10m]))'
            f' / clamp_min(sum(rate({M_LLM_REQUESTS}{{{sel}, outcome=~"ok|error"}}[10m])), 1e-9)'
            f" > {t.llm_error_ratio}",
            "5m",
            "critical",
            "The LLM behind /v1/answer is failing.",
            f"More than {t.llm_error_ratio:.0%} of LLM calls failed over 10 minutes; "
            "rag_llm_errors_total{cause} says why (timeout, rate_limited, server_error, circuit_open...).",
        ),
        rule(
            "RagLlmLatencyP95",
            f'histogram_quantile(0.95, sum by (le) (rate({M_LLM_SECONDS}_bucket{{{sel}, outcome="ok"}}[10m])))'
            f" > {t.llm_p95_latency_seconds}",
            "10m",
            "warning",
            "The LLM behind /v1/answer is slow.",
            f"p95 of LLM calls has been above {t.llm_p95_latency_seconds}s for 10 minutes.",
        ),
        rule(
            "QdrantDown",
            f'up{{namespace="{ns}", job="{args.qdrant_job}"}} == 0'
            f' or absent(up{{namespace="{ns}", job="{args.qdrant_job}"}})',
            "2m",
            "critical",
            "A Qdrant node is down or not scraped.",
            "Prometheus cannot scrape a Qdrant node (or none at all) for 2 minutes.",
        ),
        rule(
            "RagPodRestarting",
            f'increase(kube_pod_container_status_restarts_total{{namespace="{ns}"}}[30m])'
            f" > {t.restarts_per_30m}",
            "0m",
            "warning",
            "A pod of the RAG stack keeps restarting.",
            f"Container {{{{ $labels.pod }}}}/{{{{ $labels.container }}}} restarted more than "
            f"{t.restarts_per_30m} times in 30 minutes.",
        ),
        rule(
            "RagIngestionJobsFailing",
            f'sum(increase({M_JOBS}{{namespace="{ns}", status="failed"}}[15m])) > 0',
            "15m",
            "warning",
            "Ingestion jobs are failing.",
            "Asynchronous ingestion jobs failed during the last 15 minutes.",
        ),
    ]


def prometheus_rule_spec(args: MonitoringArgs) -> dict[str, Any]:
    """PrometheusRule spec with one group of service alerts."""
    return {"groups": [{"name": "rag-service", "rules": alert_rules(args)}]}


def _panel(
    panel_id: int, title: str, exprs: list[tuple[str, str]], x: int, y: int, unit: str
) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def dashboard(args: MonitoringArgs) -> dict[str, Any]:
    """The service's Grafana dashboard: traffic, errors, latency, embedding, search, cache, jobs, restarts."""
    sel = f'namespace="$namespace", job="{args.service_job}"'
    rows = [
        (
            "Requests per second by status",
            [(f"sum by (status) (rate({M_REQUESTS}{{{sel}}}[5m]))", "{{status}}")],
            "reqps",
        ),
        (
            "5xx error ratio",
            [
                (
                    f'sum(rate({M_REQUESTS}{{{sel}, status=~"5.."}}[5m])) / '
                    f"clamp_min(sum(rate({M_REQUESTS}{{{sel}}}[5m])), 1e-9)",
                    "5xx ratio",
                )
            ],
            "percentunit",
        ),
        (
            "Request latency (p50 / p95 / p99)",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate({M_REQUEST_SECONDS}_bucket{{{sel}}}[5m])))",
                    f"p{p}",
                )
                for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))
            ],
            "s",
        ),
        (
            "p95 latency by route",
            [
                (
                    f"histogram_quantile(0.95, sum by (le, route) (rate({M_REQUEST_SECONDS}_bucket{{{sel}}}[5m])))",
                    "{{route}}",
                )
            ],
            "s",
        ),
        (
            "Embedding time p95 by kind",
            [
                (
                    f"histogram_quantile(0.95, sum by (le, kind) (rate({M_EMBED_SECONDS}_bucket{{{sel}}}[5m])))",
                    "{{kind}}",
                )
            ],
            "s",
        ),
        (
            "Vector search time (p50 / p95)",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate({M_SEARCH_SECONDS}_bucket{{{sel}}}[5m])))",
                    f"p{p}",
                )
                for q, p in ((0.5, 50), (0.95, 95))
            ],
            "s",
        ),
        (
            "Search cache hit ratio",
            [
                (
                    f'sum(rate({M_CACHE}{{{sel}, result="hit"}}[5m])) / clamp_min(sum(rate({M_CACHE}{{{sel}}}[5m])), 1e-9)',
                    "hit ratio",
                )
            ],
            "percentunit",
        ),
        (
            "Ingestion: chunks per second and job queue depth",
            [
                (f'sum(rate({M_CHUNKS}{{namespace="$namespace"}}[5m]))', "chunks/s"),
                (f'max({M_QUEUE}{{namespace="$namespace"}})', "queued jobs"),
            ],
            "short",
        ),
        (
            "Jobs finished by status",
            [(f'sum by (status) (rate({M_JOBS}{{namespace="$namespace"}}[5m]))', "{{status}}")],
            "ops",
        ),
        (
            "Failures by component and embedding failures",
            [
                (f'sum by (component) (rate({M_FAILURES}{{namespace="$namespace"}}[5m]))', "{{component}}"),
                (f'sum(rate({M_EMBED_FAILURES}{{namespace="$namespace"}}[5m]))', "embedding"),
            ],
            "ops",
        ),
        (
            "Qdrant nodes up",
            [(f'sum(up{{namespace="$namespace", job="{args.qdrant_job}"}})', "up")],
            "short",
        ),
        (
            "Container restarts (30m)",
            [
                (
                    'sum by (pod) (increase(kube_pod_container_status_restarts_total{namespace="$namespace"}[30m]))',
                    "{{pod}}",
                )
            ],
            "short",
        ),
    ]
    panels = [
        _panel(i + 1, title, exprs, (i % 2) * 12, (i // 2) * 8, unit)
        for i, (title, exprs, unit) in enumerate(rows)
    ]
    return {
        "uid": "rag-service",
        "title": "RAG service",
        "tags": ["rag"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                {
                    "name": "namespace",
                    "type": "custom",
                    "query": args.service_namespace,
                    "current": {"text": args.service_namespace, "value": args.service_namespace},
                    "label": "Namespace",
                },
            ]
        },
        "panels": panels,
    }


# ---------------------------------------------------------------------------------------------- component
class Monitoring(pulumi.ComponentResource):
    """kube-prometheus-stack with the service's alerts and dashboard; `crds_ready` gates CRD users."""

    crds_ready: pulumi.Resource
    """The release installing the monitoring.coreos.com CRDs; pass it to others' `monitoring_crds`."""
    namespace: str
    """Namespace of Prometheus (for NetworkPolicies admitting scrapes)."""

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        validate_args(args)
        super().__init__("rag:ops:Monitoring", name, None, opts)
        ns = args.namespace
        object_labels = specs.labels("monitoring", name, "observability")

        def child(*extra: pulumi.Resource) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=[*args.depends_on, *extra])

        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={"name": ns, "labels": {"app.kubernetes.io/part-of": specs.PART_OF}},
            opts=child(),
        )
        admin_secret = f"{name}-grafana-admin"
        secret = k8s.core.v1.Secret(
            f"{name}-grafana-admin",
            metadata=specs.metadata(admin_secret, ns, object_labels),
            type="Opaque",
            string_data={
                ADMIN_SECRET_KEYS[0]: "admin",
                ADMIN_SECRET_KEYS[1]: pulumi.Output.secret(args.grafana_admin_password),
            },
            opts=child(namespace),
        )
        release = k8s.helm.v3.Release(
            f"{name}-stack",
            name="kube-prometheus-stack",
            chart=CHART,
            version=args.chart_version,
            repository_opts={"repo": REPO},
            namespace=ns,
            create_namespace=False,
            atomic=True,
            timeout=900,
            values=chart_values(args, admin_secret),
            opts=child(namespace, secret),
        )
        prometheus_operator.monitoring_object(
            f"{name}-rules",
            "PrometheusRule",
            metadata=specs.metadata(f"{name}-rag-alerts", ns, object_labels),
            spec=prometheus_rule_spec(args),
            opts=child(release),
        )
        k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata=specs.metadata(f"{name}-rag-dashboard", ns, {**object_labels, "grafana_dashboard": "1"}),
            data={"rag-service.json": json.dumps(dashboard(args), indent=2, sort_keys=True)},
            opts=child(namespace),
        )
        self.crds_ready = release
        self.namespace = ns
        self.register_outputs({"namespace": ns})
