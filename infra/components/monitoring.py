"""`Monitoring` (`rag:ops:Monitoring`): kube-prometheus-stack, the stack's alerts, their receivers and the dashboard.

Creates the monitoring Namespace, the Grafana admin Secret (password from a Pulumi secret), the
kube-prometheus-stack Helm release (pinned; its chart installs the monitoring.coreos.com CRDs, and upgrades them
with a version bump through its CRD upgrade hook, `CRD_UPGRADE_JOB`; Prometheus is
told to pick up every ServiceMonitor/PodMonitor/PrometheusRule, not only the chart's own), Alertmanager routing by
severity to the configured receivers (their credentials in a Secret mounted as files, never in the chart's values),
a PodMonitor for cert-manager (certificate expiry), a `PrometheusRule` with the alerts of every component and a
dashboard ConfigMap labelled `grafana_dashboard: "1"` that Grafana's sidecar loads.

Why rule expressions are built here rather than shipped as a YAML file: each depends on the stack (data-store
modes, replica counts, whether backups and TLS exist, thresholds), and the tests feed exactly what the program
declares to promtool. Managed data stores export nothing to the cluster's Prometheus, so their alerts use the
service's own failure counters; in-cluster ones use their exporters' series.

CRD ordering: `crds_ready` is the release; everything needing those CRDs (the rule here, the ServiceMonitors of
RagService and QdrantCluster) depends on it, so nothing is created before the CRDs exist.

Mode `existing` (a cluster that already runs Prometheus Operator) installs none of the above: a second operator
would reconcile the first one's objects, the CRD upgrade job would re-apply the CRDs at this chart's version, and a
second node exporter cannot bind the nodes' port 9100. It creates only the rule, the cert-manager/autoscaler
monitors and the dashboard ConfigMap in the service's namespace, labelled for the existing Prometheus's selectors
(`selector_labels`; the stack's other components take the same labels from `monitor_labels`) and Grafana's sidecar
(`dashboard_labels`), after reading the existing CRDs (`Monitoring` says why a read). Routing stays with the
cluster's Alertmanager.

Alert and panel queries use the metric names of service/app/core/metrics.py and the worker's agreed series
(`WORKER_METRICS`). `python -m infra.components.monitoring` rewrites docs/grafana/rag-service.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s

from infra.components import prometheus_operator, specs
from infra.components.specs import Resources, require

CHART = "kube-prometheus-stack"
REPO = "https://prometheus-community.github.io/helm-charts"
CHART_VERSION = "78.3.0"
#: The chart's CRDs sit in its `crds` subchart's `crds/` directory (charts/kube-prometheus-stack/charts/crds at tag
#: kube-prometheus-stack-78.3.0): Helm installs that directory when a CRD is missing and never upgrades it, so a
#: raised `rag:monitoring.chartVersion` would run the new operator against the old CRDs (new fields pruned, or
#: refused). The chart's own remedy is `crds.upgradeJob` (templates/upgrade/*.yaml in that subchart): a
#: pre-install/pre-upgrade/pre-rollback hook Job that runs `kubectl apply --server-side` on the CRDs bundled with
#: the chart version being installed, before Helm touches the operator, and deletes nothing. `forceConflicts`
#: because the CRDs were first created by Helm's `crds/` install under another field manager, whose fields a
#: server-side apply otherwise refuses to change. The busybox image (it unpacks the bundle) is pinned, not the
#: chart's `latest`; the kubectl image defaults to the cluster's own version (registry.k8s.io/kubectl).
CRD_UPGRADE_JOB: dict[str, Any] = {
    "enabled": True,
    "forceConflicts": True,
    "image": {"busybox": {"tag": "1.37.0"}},
    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
}
ADMIN_SECRET_KEYS = ("admin-user", "admin-password")
#: Where the stack installs kube-prometheus-stack (mode `install`).
MONITORING_NAMESPACE = "monitoring"
#: kube-prometheus-stack 78.3.0's Grafana sidecar (values.yaml `grafana.sidecar.dashboards`: label
#: `grafana_dashboard`, labelValue "1", searchNamespace ALL).
DASHBOARD_LABELS = {"grafana_dashboard": "1"}
#: The CustomResourceDefinitions of the objects this stack creates for Prometheus Operator (mode `existing` reads
#: them first: see `Monitoring`).
MONITORING_CRDS = tuple(
    f"{plural}.monitoring.coreos.com" for plural in ("servicemonitors", "podmonitors", "prometheusrules")
)
RELEASE_NAME = "kube-prometheus-stack"
# The grafana subchart's fullname is `<release>-grafana`; its Service listens on port 80.
GRAFANA_SERVICE = f"{RELEASE_NAME}-grafana"
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
M_JOBS = "rag_jobs_total"
M_CHUNKS = "rag_chunks_ingested_total"
M_FAILURES = "rag_failures_total"
M_LLM_REQUESTS = "rag_llm_requests_total"
M_LLM_SECONDS = "rag_llm_request_duration_seconds"
# Exported by the worker on its `metrics` port (agreed names; scraped by RagService's worker PodMonitor).
M_JOB_SECONDS = "rag_job_duration_seconds"
M_QUEUE_DEPTH = "rag_queue_depth"
M_QUEUE_OLDEST_AGE = "rag_queue_oldest_job_age_seconds"
M_WORKER_POLL = "rag_worker_last_poll_timestamp_seconds"
M_JOBS_RUNNING = "rag_jobs_running"
M_JOBS_RUNNING_OLDEST_AGE = "rag_jobs_running_oldest_age_seconds"
M_JOBS_RECLAIMED = "rag_jobs_reclaimed_total"
M_REINDEX_INTERRUPTED = "rag_reindex_interrupted"
WORKER_METRICS = frozenset(
    {
        M_JOBS,
        M_JOB_SECONDS,
        M_QUEUE_DEPTH,
        M_QUEUE_OLDEST_AGE,
        M_WORKER_POLL,
        M_JOBS_RUNNING_OLDEST_AGE,
        M_JOBS_RECLAIMED,
    }
)


@dataclass(frozen=True)
class AlertThresholds:
    """When the service's alerts fire."""

    error_ratio: float = 0.05
    """Share of responses that are 5xx over 5 minutes."""
    p95_latency_seconds: float = 1.0
    restarts_per_30m: int = 3
    embedding_failures_per_10m: int = 5
    queue_oldest_job_age_seconds: int = 900
    """A queued job older than this means the workers do not keep up (or do not consume)."""
    worker_poll_stale_seconds: int = 120
    """A worker that has not polled the queue for this long is not consuming."""
    job_running_age_seconds: int = 1800
    """A job attempt running this long is stuck (a 10 MB document embeds in minutes), and half-way to the
    service's GC_GRACE_SECONDS (3600), after which its write can no longer commit."""
    jobs_reclaimed_per_30m: int = 3
    """Jobs taken over from dead or stalled workers (lease expired) in 30 minutes; one OOM-killed worker
    accounts for up to its JOBS_MAX_CONCURRENCY (2)."""
    certificate_expiry_days: int = 14
    """cert-manager renews at 2/3 of a certificate's life; this close to expiry, renewal has failed."""
    backup_max_age_hours: int = 26
    """A daily backup schedule plus slack: no successful backup for this long is an incident."""
    llm_error_ratio: float = 0.1
    """Share of LLM calls (POST /v1/answer) that failed over 10 minutes."""
    llm_p95_latency_seconds: float = 30.0
    """p95 of successful LLM calls, start to last token."""
    unschedulable_pod_minutes: int = 10
    """A pod of the stack Pending as unschedulable this long: no node fits it, and (on EKS) the Cluster Autoscaler
    did not add one within the minutes a node takes to join."""
    volume_free_ratio: float = 0.15
    """A data volume (Qdrant, Valkey, CloudNativePG) with less free space than this share of its capacity: grow it
    while it can still be done calmly (a resize takes minutes to hours, and Qdrant's optimizer needs headroom)."""
    volume_critical_free_ratio: float = 0.05
    """Less free than this: writes are about to fail."""


@dataclass(frozen=True)
class ClusterAutoscalerTarget:
    """Where the Kubernetes Cluster Autoscaler runs, for its ServiceMonitor and alerts (EKS; None elsewhere)."""

    namespace: str
    service_labels: Mapping[str, str]
    """Labels of its metrics Service (the chart's `cluster-autoscaler.instance-name`)."""
    job_label: str
    """The Service label whose value is the scrape's `job` (its value in `service_labels`)."""
    port: str = "http"
    """The Service's metrics port name (chart value `service.portName`, default `http`, port 8085)."""

    @property
    def job(self) -> str:
        """Prometheus `job` of the scrape."""
        return str(self.service_labels[self.job_label])


@dataclass(frozen=True)
class AlertReceivers:
    """Where Alertmanager sends the alerts; every receiver is optional, secrets stay Pulumi secrets.

    critical alerts go to PagerDuty (when configured) and to Slack and e-mail; warnings to Slack and e-mail.
    """

    slack_webhook_url: pulumi.Input[str] | None = None
    """Slack incoming-webhook URL (secret); enables Slack."""
    slack_channel: str = ""
    """Channel override (the webhook's own channel when empty)."""
    pagerduty_routing_key: pulumi.Input[str] | None = None
    """PagerDuty Events API v2 routing key (secret); enables paging for critical alerts."""
    email_to: str = ""
    """Recipient address; enables e-mail."""
    email_from: str = ""
    email_smarthost: str = ""
    """SMTP server as host:port."""
    email_username: str = ""
    email_password: pulumi.Input[str] | None = None
    """SMTP password (secret)."""

    @property
    def names(self) -> tuple[str, ...]:
        """The configured receiver kinds, e.g. ('slack', 'pagerduty')."""
        kinds = (
            ("slack", self.slack_webhook_url is not None),
            ("pagerduty", self.pagerduty_routing_key is not None),
            ("email", bool(self.email_to)),
        )
        return tuple(kind for kind, on in kinds if on)


@dataclass(frozen=True)
class MonitoringArgs:
    """Arguments of `Monitoring`."""

    service_namespace: str
    """Namespace of the RAG service and Qdrant (alerts and the dashboard are scoped to it)."""
    grafana_admin_password: pulumi.Input[str] | None
    """Grafana admin password (a Pulumi secret); None with mode `existing` (no Grafana of ours)."""
    namespace: str = MONITORING_NAMESPACE
    """Namespace of Prometheus: the one this component installs (`install`), or the cluster's own (`existing`)."""
    mode: Literal["install", "existing"] = "install"
    """`install`: kube-prometheus-stack in `namespace`. `existing`: the cluster already runs Prometheus Operator; no
    operator, Prometheus, Alertmanager or Grafana is installed, and the rule, monitors and dashboard are created in
    `service_namespace`, labelled with `selector_labels` / `dashboard_labels` so the existing ones pick them up."""
    selector_labels: Mapping[str, str] = field(default_factory=dict)
    """`existing`: the labels the cluster's Prometheus selects ServiceMonitors, PodMonitors and PrometheusRules by
    (kube-prometheus-stack's default selectors: `release: <its release name>`). Every component's monitors carry
    them (`monitor_labels`)."""
    dashboard_labels: Mapping[str, str] = field(default_factory=lambda: dict(DASHBOARD_LABELS))
    """The labels Grafana's dashboard sidecar loads ConfigMaps by; empty: no dashboard ConfigMap (`existing`)."""
    chart_version: str = CHART_VERSION
    service_job: str = "rag"
    """Prometheus `job` of the service's ServiceMonitor (the Service name)."""
    qdrant_job: str = "qdrant"
    """Prometheus `job` of Qdrant's ServiceMonitor (its client Service name)."""
    qdrant_replicas: int = 1
    """Qdrant nodes that should be up."""
    qdrant_statefulset: str = "qdrant"
    """Name of Qdrant's StatefulSet (its data claims are `storage-<name>-<n>`)."""
    postgres_mode: str = "cloudnative"
    """`cloudnative` (CNPG exporter series) or a managed mode (`rds`, `cloudsql`: the service's own series)."""
    postgres_cluster: str = "postgres"
    """Name of the CNPG Cluster (its pods are `<name>-<n>`)."""
    postgres_instances: int = 1
    postgres_backups: bool = False
    """The CNPG registry archives with the Barman Cloud plugin: alerts on failed or stopped base backups and WAL
    archiving (`RegistryBackupFailed`, `RegistryBackupMissing`, `RegistryWalArchivingFailing`)."""
    redis_mode: str = "incluster"
    """`incluster` (the StatefulSet's kube-state-metrics series) or managed (the service's own series)."""
    redis_statefulset: str = "redis"
    worker: bool = True
    """The stack runs the worker Deployment (`rag:service.worker.enabled`), which exports its last poll of the queue.
    False: the API pods run the jobs (JOBS_IN_PROCESS) and export no poll time, so `RagQueueNoConsumer` reads the
    jobs running and finished instead."""
    volume_stats: bool = True
    """The cluster's kubelets report volume stats for the stack's claims (`monitoring.alerts.volumeStats`). False
    (hostPath volumes, e.g. kind's local-path class, export none): `RagVolumeStatsMissing` is left out, since it
    would fire for good there."""
    backup_cronjob: str | None = None
    """Name of the Qdrant backup CronJob; None when backups are off (no backup alerts)."""
    tls_enabled: bool = True
    cluster_dns: str = "coredns"
    """The cluster's DNS: `coredns` (EKS, kind, most clusters: metrics on 9153) or `kube-dns` (GKE Standard's
    default add-on: metrics on the sidecar's 10054 and kubedns' 10055). The chart scrapes the one named here."""
    """Whether the stack has cert-manager certificates (expiry alerts, cert-manager scraping)."""
    runbook_url: str = "docs/runbooks.md"
    """Base of every alert's `runbook_url` annotation (`<base>#<alert in lower case>`)."""
    receivers: AlertReceivers = field(default_factory=AlertReceivers)
    retention: str = "15d"
    storage_size: str = "20Gi"
    storage_class: str | None = None
    prometheus_resources: Resources = field(
        default_factory=lambda: Resources(
            cpu_request="250m", memory_request="1Gi", cpu_limit="2", memory_limit="2Gi"
        )
    )
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    cluster_autoscaler: ClusterAutoscalerTarget | None = None
    """The cluster's Cluster Autoscaler: scraped, and alerted on when it cannot add nodes (None: not running)."""
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
    for name in (
        "queue_oldest_job_age_seconds",
        "worker_poll_stale_seconds",
        "job_running_age_seconds",
        "jobs_reclaimed_per_30m",
        "certificate_expiry_days",
        "unschedulable_pod_minutes",
    ):
        require(getattr(t, name) >= 1, f"MonitoringArgs.thresholds.{name} must be at least 1.")
    require(t.backup_max_age_hours >= 1, "MonitoringArgs.thresholds.backup_max_age_hours must be at least 1.")
    require(args.qdrant_replicas >= 1, "MonitoringArgs.qdrant_replicas must be at least 1.")
    require(args.postgres_instances >= 1, "MonitoringArgs.postgres_instances must be at least 1.")
    require(bool(args.runbook_url), "MonitoringArgs.runbook_url must not be empty.")
    require(
        args.mode in ("install", "existing"),
        f"MonitoringArgs.mode {args.mode!r} must be install or existing.",
    )
    if args.mode == "install":
        require(
            args.grafana_admin_password is not None,
            "MonitoringArgs.grafana_admin_password is required when the component installs Grafana.",
        )
    else:
        require(
            not args.receivers.names,
            "MonitoringArgs.receivers must be empty with mode existing: the cluster's own Alertmanager routes "
            "the alerts (the stack does not configure it).",
        )
    r = args.receivers
    if r.email_to:
        require(
            bool(r.email_from and r.email_smarthost),
            "MonitoringArgs.receivers needs email_from and email_smarthost (host:port) to send e-mail.",
        )
        require(
            ":" in r.email_smarthost,
            f"MonitoringArgs.receivers.email_smarthost {r.email_smarthost!r} must be host:port.",
        )


# ---------------------------------------------------------------------------------------------- pure specs
RECEIVERS_SECRET_KEYS = {
    "slack": "slack-webhook-url",
    "pagerduty": "pagerduty-routing-key",
    "email": "smtp-password",
}


def receivers_secret_name(name: str) -> str:
    """The Secret holding the receivers' credentials, mounted into Alertmanager (alertmanagerSpec.secrets)."""
    return f"{name}-alertmanager-receivers"


def alertmanager_config(receivers: AlertReceivers, secret_name: str) -> dict[str, Any]:
    """Alertmanager's routing by severity: critical -> PagerDuty + Slack + e-mail, warning -> Slack + e-mail.

    Credentials are read from files of the mounted Secret (`*_file` fields), so they never appear in the chart's
    values. With no receiver configured every alert goes to the `null` receiver: `make plan` warns about it.
    """
    mount = f"/etc/alertmanager/secrets/{secret_name}"

    def configs(critical: bool) -> dict[str, Any]:
        receiver: dict[str, Any] = {}
        if receivers.slack_webhook_url is not None:
            slack: dict[str, Any] = {
                "api_url_file": f"{mount}/{RECEIVERS_SECRET_KEYS['slack']}",
                "send_resolved": True,
                "title": "[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.namespace }})",
                "text": "{{ range .Alerts }}{{ .Annotations.summary }}\n{{ .Annotations.description }}\n"
                "Runbook: {{ .Annotations.runbook_url }}\n{{ end }}",
            }
            if receivers.slack_channel:
                slack["channel"] = receivers.slack_channel
            receiver["slack_configs"] = [slack]
        if critical and receivers.pagerduty_routing_key is not None:
            receiver["pagerduty_configs"] = [
                {
                    "routing_key_file": f"{mount}/{RECEIVERS_SECRET_KEYS['pagerduty']}",
                    "send_resolved": True,
                    "severity": "critical",
                }
            ]
        if receivers.email_to:
            email: dict[str, Any] = {
                "to": receivers.email_to,
                "from": receivers.email_from,
                "smarthost": receivers.email_smarthost,
                "send_resolved": True,
            }
            if receivers.email_username:
                email["auth_username"] = receivers.email_username
            if receivers.email_password is not None:
                email["auth_password_file"] = f"{mount}/{RECEIVERS_SECRET_KEYS['email']}"
            receiver["email_configs"] = [email]
        return receiver

    routes: list[dict[str, Any]] = [{"receiver": "null", "matchers": ['alertname = "Watchdog"']}]
    named: list[dict[str, Any]] = [{"name": "null"}]
    if receivers.names:
        for severity in ("critical", "warning"):
            body = configs(critical=severity == "critical")
            if body:
                named.append({"name": f"rag-{severity}", **body})
                routes.append({"receiver": f"rag-{severity}", "matchers": [f'severity = "{severity}"']})
    return {
        "route": {
            "receiver": "null",
            "group_by": ["namespace", "alertname"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": routes,
        },
        "receivers": named,
    }


def chart_values(
    args: MonitoringArgs, admin_secret: str, receivers_secret: str | None = None
) -> dict[str, Any]:
    """kube-prometheus-stack values: discover every monitor/rule, persistent Prometheus, sidecar dashboards,
    Alertmanager routing from the receivers (their credentials mounted from `receivers_secret`)."""
    volume_spec = specs.pvc_spec(args.storage_size, args.storage_class)
    secret_name = receivers_secret or receivers_secret_name("monitoring")
    alertmanager: dict[str, Any] = {
        "enabled": True,
        "config": alertmanager_config(args.receivers, secret_name),
    }
    if receivers_secret is not None:
        alertmanager["alertmanagerSpec"] = {"secrets": [receivers_secret]}
    return {
        "crds": {"enabled": True, "upgradeJob": CRD_UPGRADE_JOB},
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
        "alertmanager": alertmanager,
        # Managed control planes (EKS, GKE) expose no controller-manager, scheduler or etcd endpoints, and GKE's
        # Dataplane V2 has no kube-proxy (kind binds them all to 127.0.0.1): these scrapes could only fail, and
        # their `*Down` alerts fire for ever. `<component>.enabled: false` removes the ServiceMonitor and its
        # rules (the rule templates of chart 78.3.0 are gated on it); the defaultRules switches say so too.
        **{component: {"enabled": False} for component in CONTROL_PLANE_COMPONENTS},
        # The chart scrapes CoreDNS (k8s-app=kube-dns, port 9153) by default; GKE runs kube-dns under the same
        # label with nothing on 9153, so every coredns target would be down and TargetDown fire for ever.
        "coreDns": {"enabled": args.cluster_dns == "coredns"},
        "kubeDns": {"enabled": args.cluster_dns == "kube-dns"},
        "defaultRules": {"rules": dict.fromkeys(CONTROL_PLANE_RULES, False)},
    }


def cert_manager_pod_monitor_spec() -> dict[str, Any]:
    """Scrape cert-manager's controller (port `http-metrics`, 9402, in the jetstack chart) wherever it runs:
    the certificate expiry and readiness series come from it."""
    return {
        "namespaceSelector": {"any": True},
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "cert-manager",
                "app.kubernetes.io/component": "controller",
            }
        },
        "podMetricsEndpoints": [{"port": "http-metrics", "interval": "60s"}],
    }


def cluster_autoscaler_service_monitor_spec(target: ClusterAutoscalerTarget) -> dict[str, Any]:
    """Scrape the Cluster Autoscaler's metrics Service (chart cluster-autoscaler 9.59.0: port `http` -> 8085,
    `/metrics`). Declared here, not with the chart's own `serviceMonitor.enabled`: that template is not gated on the
    ServiceMonitor CRD, which kube-prometheus-stack installs only after the cluster (and its autoscaler) exist."""
    return {
        "namespaceSelector": {"matchNames": [target.namespace]},
        "selector": {"matchLabels": dict(target.service_labels)},
        # The job is the value of this Service label (prometheus-operator `jobLabel`): the alerts' `job` does not
        # depend on the Service name the chart picks.
        "jobLabel": target.job_label,
        "endpoints": [{"port": target.port, "path": "/metrics", "interval": "30s"}],
    }


#: The Barman Cloud plugin's series, exported by every instance's exporter (port 9187) without a prefix of the
#: operator's: plugin-barman-cloud internal/cnpgi/instance/metrics.go at v0.13.0 (`barman-cloud.cloudnative-pg.io`
#: with `.` and `-` as `_`, web/docs/observability.md). Both are 0 until the first backup of that kind.
REGISTRY_LAST_BACKUP = "barman_cloud_cloudnative_pg_io_last_available_backup_timestamp"
REGISTRY_LAST_FAILED_BACKUP = "barman_cloud_cloudnative_pg_io_last_failed_backup_timestamp"


def registry_backup_rules(
    args: MonitoringArgs, rule: Callable[[str, str, str, str, str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Alerts on the registry's archive: the newest base backup failed, no base backup for the backup age
    threshold (stopped: the schedule, the plugin or its series gone), and WAL archiving failing on the primary
    (CloudNativePG's pg_stat_archiver query, whose times are -1 before the first attempt; standbys do not report)."""
    ns, t = args.service_namespace, args.thresholds
    psel = f'namespace="{ns}", pod=~"{args.postgres_cluster}-[0-9]+"'
    max_age = t.backup_max_age_hours * 3600
    ok, failed = f"{REGISTRY_LAST_BACKUP}{{{psel}}}", f"{REGISTRY_LAST_FAILED_BACKUP}{{{psel}}}"
    return [
        rule(
            "RegistryBackupFailed",
            f"max by (namespace) ({failed}) > on (namespace) max by (namespace) ({ok})",
            "0m",
            "warning",
            "The latest registry (Postgres) base backup failed.",
            "The Barman Cloud plugin's last failed base backup is newer than its last successful one.",
        ),
        rule(
            "RegistryBackupMissing",
            f"time() - max by (namespace) ({ok}) > {max_age} or absent({ok})",
            "1h",
            "critical",
            f"No registry (Postgres) base backup in {t.backup_max_age_hours} hours.",
            f"The Barman Cloud plugin reports no successful base backup in the last {t.backup_max_age_hours} hours "
            "(or no instance exports its series): the schedule, the plugin or the bucket grant stopped working.",
        ),
        rule(
            "RegistryWalArchivingFailing",
            f"max by (namespace, pod) (cnpg_pg_stat_archiver_last_failed_time{{{psel}}})"
            f" > on (namespace, pod) max by (namespace, pod) (cnpg_pg_stat_archiver_last_archived_time{{{psel}}})",
            "10m",
            "critical",
            "The registry's WAL archiving is failing.",
            "Postgres' last WAL archive attempt failed after its last success for 10 minutes: point-in-time "
            "recovery stops at the last archived segment, and pg_wal grows on the primary until archiving resumes.",
        ),
    ]


def cluster_autoscaling_rules(
    args: MonitoringArgs, rule: Callable[[str, str, str, str, str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Pods no node can take, and a Cluster Autoscaler that cannot add nodes for them.

    `kube_pod_status_unschedulable` and `kube_pod_status_phase` are kube-state-metrics' (the scheduler's
    PodScheduled=False/Unschedulable condition, and the phase). The autoscaler's series are its own
    (cluster-autoscaler/metrics/metrics.go, the same names in the 1.33-1.36 images chart 9.59.0 runs):
    `node_group_target_count` / `node_group_max_count` per node group (registered with
    `--emit-per-nodegroup-metrics`, which the stack sets), `unschedulable_pods_count{type="unschedulable"}`,
    `failed_scale_ups_total{reason}` (pre-set to 0 for each reason at start, so `increase` sees the first failure)
    and `node_group_backoff_status{node_group, reason}` (1 while a group is backed off after failed scale-ups).
    """
    t = args.thresholds
    # The stack's pods: the service's namespace, and the monitoring stack's when the stack installs it.
    watched = (
        (args.service_namespace, args.namespace) if args.mode == "install" else (args.service_namespace,)
    )
    pods = f'namespace=~"{"|".join(watched)}"'
    rules = [
        rule(
            "RagPodsUnschedulable",
            f"max by (namespace, pod) (kube_pod_status_unschedulable{{{pods}}}) == 1"
            f' and on (namespace, pod) max by (namespace, pod) (kube_pod_status_phase{{{pods}, phase="Pending"}}) == 1',
            f"{t.unschedulable_pod_minutes}m",
            "warning",
            "A pod of the stack cannot be scheduled.",
            f"{{{{ $labels.namespace }}}}/{{{{ $labels.pod }}}} has been Pending and unschedulable for "
            f"{t.unschedulable_pod_minutes} minutes: no node has room for its requests, or its volume's zone or "
            "its affinity rules out every node with room.",
        )
    ]
    ca = args.cluster_autoscaler
    if ca is None:
        return rules
    sel = f'namespace="{ca.namespace}", job="{ca.job}"'
    rules += [
        rule(
            "ClusterAutoscalerMaxSizeReached",
            f"max by (node_group) (cluster_autoscaler_node_group_target_count{{{sel}}})"
            f" >= max by (node_group) (cluster_autoscaler_node_group_max_count{{{sel}}})"
            f' and on () sum(cluster_autoscaler_unschedulable_pods_count{{{sel}, type="unschedulable"}}) > 0',
            "10m",
            "warning",
            "The node group is at its maximum size and pods are waiting for room.",
            "Node group {{ $labels.node_group }} has reached its maxSize while pods are unschedulable: the "
            "Cluster Autoscaler cannot add a node for them.",
        ),
        rule(
            "ClusterAutoscalerScaleUpFailing",
            f"sum by (reason) (increase(cluster_autoscaler_failed_scale_ups_total{{{sel}}}[15m])) > 0"
            f" or max by (node_group, reason) (cluster_autoscaler_node_group_backoff_status{{{sel}}}) == 1",
            "5m",
            "warning",
            "The Cluster Autoscaler's scale-ups are failing.",
            "Adding nodes failed or the node group is backed off ({{ $labels.reason }}): the cloud refused or "
            "timed out the new instances (capacity, quota, launch errors).",
        ),
        rule(
            "ClusterAutoscalerDown",
            f"absent(up{{{sel}}} == 1)",
            "10m",
            "warning",
            "The Cluster Autoscaler is not running or not scraped.",
            "No scrape of the Cluster Autoscaler has succeeded for 10 minutes: nodes are neither added for Pending "
            "pods nor removed, and its other alerts cannot fire.",
        ),
    ]
    return rules


def volume_rules(
    args: MonitoringArgs, rule: Callable[[str, str, str, str, str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """The stack's data volumes filling up, on the kubelet's volume stats.

    `kubelet_volume_stats_{available,capacity}_bytes` come from each kubelet's /metrics, labelled with the claim's
    `namespace` and `persistentvolumeclaim` (kube-prometheus-stack scrapes the kubelet by default, job `kubelet`,
    honouring those labels; its own KubePersistentVolumeFillingUp reads the same series). The job is not selected
    so a cluster's own Prometheus (`existing`) that scrapes the kubelet under another job name fires too. The
    claims: Qdrant's `storage-<sts>-N`, Valkey's `data-<sts>-N`, CloudNativePG's `<cluster>-N` (and `-N-wal`).
    The chart's generic alert stays; these name the stack's own procedure (runbook: growing the volume).
    """
    ns = args.service_namespace
    t = args.thresholds
    claims = [f"storage-{args.qdrant_statefulset}-[0-9]+"]
    if args.redis_mode == "incluster":
        claims.append(f"data-{args.redis_statefulset}-[0-9]+")
    if args.postgres_mode == "cloudnative":
        claims.append(f"{args.postgres_cluster}-[0-9]+(-wal)?")
    vsel = f'namespace="{ns}", persistentvolumeclaim=~"{"|".join(claims)}"'
    free = (
        f"max by (namespace, persistentvolumeclaim) (kubelet_volume_stats_available_bytes{{{vsel}}})"
        f" / max by (namespace, persistentvolumeclaim) (kubelet_volume_stats_capacity_bytes{{{vsel}}})"
    )
    stats = f"kubelet_volume_stats_capacity_bytes{{{vsel}}}"
    missing = [
        rule(
            "RagVolumeStatsMissing",
            # Qdrant's claims always exist and are mounted while the stack runs: no series for any claim of the
            # stack means the two alerts below cannot fire (not "the volumes are fine").
            f"absent({stats})",
            "30m",
            "warning",
            "No volume stats for the stack's claims: the volume alerts cannot fire.",
            "Prometheus has no kubelet_volume_stats_* series for any of the stack's data claims for 30 minutes: it "
            "does not scrape the kubelets (monitoring.mode existing: that Prometheus' choice), or the claims' "
            "storage driver reports no volume stats. RagVolumeFillingUp and RagVolumeAlmostFull stay silent "
            "whatever the volumes' use.",
        )
    ]
    return [
        *(missing if args.volume_stats else []),
        rule(
            "RagVolumeFillingUp",
            f"{free} < {t.volume_free_ratio}",
            "15m",
            "warning",
            "A data volume of the stack is filling up.",
            f"Volume {{{{ $labels.persistentvolumeclaim }}}} has less than {t.volume_free_ratio:.0%} of its "
            "capacity free: grow it before writes fail.",
        ),
        rule(
            "RagVolumeAlmostFull",
            f"{free} < {t.volume_critical_free_ratio}",
            "5m",
            "critical",
            "A data volume of the stack is almost full.",
            f"Volume {{{{ $labels.persistentvolumeclaim }}}} has less than {t.volume_critical_free_ratio:.0%} of "
            "its capacity free: its data store's writes are about to fail.",
        ),
    ]


def queue_no_consumer_rule(
    args: MonitoringArgs, rule: Callable[[str, str, str, str, str, str], dict[str, Any]], nsel: str
) -> dict[str, Any]:
    """`RagQueueNoConsumer`: jobs stay queued and nothing takes them. With the worker Deployment, nothing is a
    worker's poll of the queue for `worker_poll_stale_seconds`. Without one (`MonitoringArgs.worker` False) the API
    pods run the jobs and no process exports a poll time, so the worker's rule fired on any backlog that lasted 5
    minutes (a bulk upload): there it is no job running (`rag_jobs_running`, from the job table, however many API
    pods) and none finished (`rag_jobs_total`) in 10 minutes while jobs are queued."""
    t = args.thresholds
    depth = f"max by (namespace) ({M_QUEUE_DEPTH}{{{nsel}}}) > 0"
    if args.worker:
        return rule(
            "RagQueueNoConsumer",
            f"{depth} unless on (namespace) (time() - max by (namespace) ({M_WORKER_POLL}{{{nsel}}})"
            f" < {t.worker_poll_stale_seconds})",
            "5m",
            "critical",
            "Jobs are queued and no worker is consuming them.",
            f"The ingestion queue holds jobs and no worker has polled it for {t.worker_poll_stale_seconds}s.",
        )
    return rule(
        "RagQueueNoConsumer",
        f"{depth} unless on (namespace) (max by (namespace) ({M_JOBS_RUNNING}{{{nsel}}}) > 0"
        f" or sum by (namespace) (increase({M_JOBS}{{{nsel}}}[10m])) > 0)",
        "5m",
        "critical",
        "Jobs are queued and no API pod is running them (stack without a worker).",
        "The ingestion queue holds jobs, none is running and none finished in 10 minutes: the API pods "
        "(JOBS_IN_PROCESS) do not take them, or every queued job waits out a retry back-off (a data store down).",
    )


def node_rules(
    args: MonitoringArgs, rule: Callable[[str, str, str, str, str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """A pod of the stack on a node that is NotReady, and a pod whose deletion never completes.

    kube-state-metrics' series: `kube_pod_info{node}` (where each pod is scheduled), `kube_node_status_condition
    {condition="Ready", status="true"}` (1 while the node is Ready) and `kube_pod_deletion_timestamp` (the pod's
    `metadata.deletionTimestamp`: when the deletion was asked for plus the pod's grace period, i.e. the moment
    the kubelet must have stopped it). A node that stops reporting is NotReady (Unknown) within the node monitor's
    grace period; 5 minutes later the taint manager deletes its pods, and a pod on a node that cannot confirm the
    deletion stays Terminating for ever: a StatefulSet (Qdrant, Valkey) will not start that replica elsewhere while
    it exists, and its ReadWriteOnce volume stays attached to the lost node (docs/runbooks.md,
    "A node NotReady but not gone").
    """
    ns = args.service_namespace
    return [
        rule(
            "RagPodOnNotReadyNode",
            f'max by (namespace, pod, node) (kube_pod_info{{namespace="{ns}", node!=""}})'
            ' and on (node) (max by (node) (kube_node_status_condition{condition="Ready", status="true"}) == 0)',
            "5m",
            "warning",
            "A pod of the stack runs on a node that is not Ready.",
            "{{ $labels.namespace }}/{{ $labels.pod }} is on node {{ $labels.node }}, which has not been Ready for "
            "5 minutes: its containers are unreachable, and a StatefulSet's pod is not replaced until the node "
            "is back or fenced.",
        ),
        rule(
            "RagPodStuckTerminating",
            f'time() - max by (namespace, pod) (kube_pod_deletion_timestamp{{namespace="{ns}"}}) > 600',
            "0m",
            "warning",
            "A pod of the stack has been terminating for longer than its grace period.",
            "{{ $labels.namespace }}/{{ $labels.pod }} is still there 10 minutes after its grace period ended: "
            "its node does not confirm the deletion (NotReady, kubelet down) or a finalizer holds it.",
        ),
    ]


def _increase_from_zero(series: str, window: str) -> str:
    """Events in `window` of a counter, also when the counter's series is born with its first event.

    `increase()` needs two samples: a counter that first appears at 1 (a new pod's first failure, a label value
    never pre-initialised) has no increase at all. The second branch catches a series that exists now with a
    positive value but did not exist `window` ago.
    """
    return (
        f"sum by (namespace) (increase({series}[{window}])) > 0"
        f" or sum by (namespace) (({series} > 0) unless {series} offset {window}) > 0"
    )


def alert_groups(args: MonitoringArgs) -> list[dict[str, Any]]:
    """The alerting rules, grouped: service, jobs/queue, data stores, backups, certificates."""
    ns = args.service_namespace
    job = args.service_job
    sel = f'namespace="{ns}", job="{job}"'
    nsel = f'namespace="{ns}"'
    t = args.thresholds

    def rule(
        alert: str, expr: str, for_: str, severity: str, summary: str, description: str
    ) -> dict[str, Any]:
        return {
            "alert": alert,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity, "service": job},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": f"{args.runbook_url}#{alert.lower()}",
            },
        }

    service = [
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
            "RagLlmErrorRate",
            f'sum(rate({M_LLM_REQUESTS}{{{sel}, outcome="error"}}[10m]))'
            f' / clamp_min(sum(rate({M_LLM_REQUESTS}{{{sel}, outcome=~"ok|error"}}[10m])), 1e-9)'
            f" > {t.llm_error_ratio}",
            "5m",
            "critical",
            "The LLM behind /v1/answer is failing.",
            f"More than {t.llm_error_ratio:.0%} of LLM calls failed over 10 minutes; "
            "rag_llm_errors_total{cause} says why: timeout, connection, rate_limited, server_error, auth, "
            "bad_request, bad_response (a reply that is not a chat completion: a proxy's page, broken JSON or "
            "stream events), empty_response (no text), circuit_open, protocol (the server did not answer in HTTP), "
            "internal (any other failure in the service's call path); "
            "runbook ragllmerrorrate.",
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
            "RagApiDown",
            f"sum(up{{{sel}}}) == 0 or absent(up{{{sel}}})",
            "5m",
            "critical",
            "No RAG API pod is scraped as up.",
            "Prometheus has not reached any API pod's /metrics for 5 minutes.",
        ),
        rule(
            "RagEmbeddingFailures",
            # The namespace only, not the API's job: the workers (their PodMonitor's job) embed async ingests.
            f"sum(increase({M_EMBED_FAILURES}{{{nsel}}}[10m])) > {t.embedding_failures_per_10m}",
            "5m",
            "warning",
            "Embedding calls are failing.",
            f"More than {t.embedding_failures_per_10m} embedding calls raised in the last 10 minutes "
            "(API and workers together).",
        ),
        rule(
            "RagPodRestarting",
            f"increase(kube_pod_container_status_restarts_total{{{nsel}}}[30m]) > {t.restarts_per_30m}",
            "0m",
            "warning",
            "A pod of the RAG stack keeps restarting.",
            f"Container {{{{ $labels.pod }}}}/{{{{ $labels.container }}}} restarted more than "
            f"{t.restarts_per_30m} times in 30 minutes.",
        ),
    ]
    failed = f'{M_JOBS}{{{nsel}, status="failed"}}'
    jobs = [
        rule(
            "RagIngestionJobFailed",
            _increase_from_zero(failed, "15m"),
            "0m",
            "warning",
            "An ingestion job failed.",
            "At least one asynchronous ingestion job failed in the last 15 minutes.",
        ),
        queue_no_consumer_rule(args, rule, nsel),
        rule(
            "RagQueueOldestJobTooOld",
            f"max by (namespace) ({M_QUEUE_OLDEST_AGE}{{{nsel}}}) > {t.queue_oldest_job_age_seconds}",
            "5m",
            "warning",
            "Queued ingestion jobs wait too long.",
            f"The oldest queued job has waited more than {t.queue_oldest_job_age_seconds}s.",
        ),
        rule(
            "RagJobRunningTooLong",
            f"max by (namespace) ({M_JOBS_RUNNING_OLDEST_AGE}{{{nsel}}}) > {t.job_running_age_seconds}",
            "5m",
            "warning",
            "An ingestion job has been running too long.",
            f"A running ingestion job was claimed more than {t.job_running_age_seconds}s ago and its worker "
            "still renews its lease: the worker is stuck in a call, or the document is huge. A write older "
            "than GC_GRACE_SECONDS cannot commit.",
        ),
        rule(
            "RagJobsReclaimed",
            f"sum by (namespace) (increase({M_JOBS_RECLAIMED}{{{nsel}}}[30m])) > {t.jobs_reclaimed_per_30m}",
            "0m",
            "warning",
            "Ingestion jobs keep being taken over from dead or stalled workers.",
            f"More than {t.jobs_reclaimed_per_30m} jobs were reclaimed in 30 minutes after their worker's lease "
            "expired: workers are being killed (OOM, eviction) or stall longer than JOB_LEASE_SECONDS.",
        ),
        rule(
            "RagReindexInterrupted",
            # Any pod (API or worker) that follows the pointer sees it; a resumed build clears it within one
            # follow, so only a build nobody takes over (3 dead attempts, or no API replica left) lasts 15m.
            f"max by (namespace) ({M_REINDEX_INTERRUPTED}{{{nsel}}}) > 0",
            "15m",
            "warning",
            "A re-index stopped before it switched and nobody resumes it.",
            "The builder of a re-index died (OOM kill, kill -9, a lost node) and no API replica has taken its "
            "build over for 15 minutes: after 3 interrupted attempts it is not resumed automatically. Search "
            "still serves the previous index; `ragops reindex status` names the target and the error.",
        ),
    ]
    qsel = f'namespace="{ns}", job="{args.qdrant_job}"'
    datastores = [
        rule(
            "QdrantNodeDown",
            f"count(up{{{qsel}}} == 1) < {args.qdrant_replicas} or absent(up{{{qsel}}} == 1)",
            "2m",
            "critical",
            "A Qdrant node is down or not scraped.",
            f"Fewer than {args.qdrant_replicas} Qdrant node(s) answer Prometheus' scrapes.",
        ),
        rule(
            "QdrantDegraded",
            f"max(app_status_recovery_mode{{{qsel}}}) == 1"
            f" or max(cluster_pending_operations_total{{{qsel}}}) > 0",
            "15m",
            "warning",
            "Qdrant is in recovery mode or its consensus is stuck.",
            "A Qdrant node started in recovery mode, or cluster operations stayed pending for 15 minutes "
            "(collections are then not green: shards are being transferred or cannot be).",
        ),
        # `cluster_peers_total`: the peers in the consensus as each node sees it (a gauge Qdrant's /metrics has
        # exported since before v1.15). Nodes of one cluster agree; a node that founded a cluster of its own
        # (empty volume) reports 1 while the others report all of them.
        rule(
            "QdrantClusterSplit",
            f"max(cluster_peers_total{{{qsel}}}) != min(cluster_peers_total{{{qsel}}})"
            f" or min(cluster_peers_total{{{qsel}}}) < count(cluster_peers_total{{{qsel}}})",
            "10m",
            "critical",
            "Qdrant nodes disagree on the cluster's members.",
            "Qdrant nodes report different peer counts, or a node knows fewer peers than there are nodes: a node "
            "is outside the cluster (e.g. founded its own after losing its volume) and clients behind the Service "
            "see different data.",
        ),
        rule(
            "QdrantDeadPeer",
            f"max(cluster_peers_total{{{qsel}}}) > {args.qdrant_replicas}",
            "30m",
            "warning",
            "A Qdrant peer that no longer exists is still a cluster member.",
            f"Qdrant's consensus lists more peers than the {args.qdrant_replicas} node(s) configured: a replaced "
            "or removed node was never removed from the cluster; its shard replicas count as dead.",
        ),
    ]
    if args.postgres_mode == "cloudnative":
        psel = f'namespace="{ns}", pod=~"{args.postgres_cluster}-[0-9]+"'
        recovery = f"cnpg_pg_replication_in_recovery{{{psel}}}"
        datastores += [
            rule(
                "PostgresDown",
                f"count(cnpg_collector_up{{{psel}}} == 1) < {args.postgres_instances}"
                f" or absent(cnpg_collector_up{{{psel}}} == 1)",
                "2m",
                "critical",
                "A Postgres instance is down.",
                f"Fewer than {args.postgres_instances} CloudNativePG instance(s) report their database up.",
            ),
            rule(
                "PostgresFailover",
                f"sum(changes({recovery}[10m])) > 0"
                f" or ((count({recovery} == 0) or vector(0)) != 1 and on () count({recovery}) > 0)",
                "0m",
                "warning",
                "Postgres failed over or has no single primary.",
                "An instance changed role in the last 10 minutes, or the cluster has no (or more than one) primary.",
            ),
        ]
    datastores.append(
        rule(
            "PostgresUnreachableFromService",
            _increase_from_zero(f'{M_FAILURES}{{{nsel}, component="registry"}}', "5m"),
            "5m",
            "critical",
            "The service's registry (Postgres) calls are failing.",
            "Registry calls raised for 5 minutes: Postgres is down, failing over, or unreachable.",
        )
    )
    if args.redis_mode == "incluster":
        datastores.append(
            rule(
                "RedisDown",
                f'max(kube_statefulset_status_replicas_ready{{{nsel}, statefulset="{args.redis_statefulset}"}}) < 1'
                f' or absent(kube_statefulset_status_replicas_ready{{{nsel}, statefulset="{args.redis_statefulset}"}})',
                "2m",
                "critical",
                "Redis (Valkey) is down.",
                "The Redis StatefulSet has no ready replica.",
            )
        )
    datastores.append(
        rule(
            "RedisUnreachableFromService",
            _increase_from_zero(f'{M_FAILURES}{{{nsel}, component=~"cache|rate_limiter|jobs"}}', "5m"),
            "5m",
            "critical",
            "The service's Redis calls are failing.",
            "Cache, rate-limit or queue calls raised for 5 minutes: Redis is down or unreachable.",
        )
    )
    groups = [
        {"name": "rag-service", "rules": service},
        {"name": "rag-jobs", "rules": jobs},
        {"name": "rag-datastores", "rules": datastores},
        {"name": "rag-cluster-autoscaling", "rules": cluster_autoscaling_rules(args, rule)},
        {"name": "rag-nodes", "rules": node_rules(args, rule)},
        {"name": "rag-volumes", "rules": volume_rules(args, rule)},
    ]
    if args.backup_cronjob:
        cron = args.backup_cronjob
        jsel = f'{nsel}, job_name=~"{cron}-[0-9]+"'
        csel = f'{nsel}, cronjob="{cron}"'
        max_age = t.backup_max_age_hours * 3600
        groups.append(
            {
                "name": "rag-backups",
                "rules": [
                    rule(
                        "QdrantBackupFailed",
                        # The newest failed run started after the last success (or nothing ever succeeded).
                        f"max by (namespace) (kube_job_status_start_time{{{jsel}}}"
                        f' * on (namespace, job_name) group_left () (kube_job_failed{{{jsel}, condition="true"}} == 1))'
                        f" > on (namespace) (max by (namespace) (kube_cronjob_status_last_successful_time{{{csel}}})"
                        f" or on (namespace) (0 * max by (namespace) (kube_cronjob_created{{{csel}}})))",
                        "0m",
                        "warning",
                        "The latest Qdrant backup run failed.",
                        "A backup Job failed after the last successful backup.",
                    ),
                    rule(
                        "QdrantBackupMissing",
                        f"time() - max by (namespace) (kube_cronjob_status_last_successful_time{{{csel}}}) > {max_age}"
                        f" or (time() - max by (namespace) (kube_cronjob_created{{{csel}}}) > {max_age}"
                        f" unless on (namespace) kube_cronjob_status_last_successful_time{{{csel}}})",
                        "0m",
                        "critical",
                        f"No successful Qdrant backup in {t.backup_max_age_hours} hours.",
                        f"The backup CronJob has not completed successfully for {t.backup_max_age_hours} hours.",
                    ),
                ],
            }
        )
    if args.postgres_backups and args.postgres_mode == "cloudnative":
        groups.append({"name": "rag-registry-backups", "rules": registry_backup_rules(args, rule)})
    if args.tls_enabled:
        csel = f'exported_namespace="{ns}"'
        groups.append(
            {
                "name": "rag-certificates",
                "rules": [
                    rule(
                        "CertificateExpiringSoon",
                        f"min by (exported_namespace, name) (certmanager_certificate_expiration_timestamp_seconds{{{csel}}})"
                        f" - time() < {t.certificate_expiry_days * 86400}",
                        "1h",
                        "warning",
                        "A TLS certificate expires soon.",
                        f"Certificate {{{{ $labels.name }}}} expires in less than {t.certificate_expiry_days} days: "
                        "renewal is failing.",
                    ),
                    rule(
                        "CertificateNotReady",
                        f'max by (exported_namespace, name) (certmanager_certificate_ready_status{{{csel}, condition!="True"}}) == 1',
                        "15m",
                        "critical",
                        "A TLS certificate is not ready.",
                        "Certificate {{ $labels.name }} has not been Ready for 15 minutes.",
                    ),
                ],
            }
        )
    return groups


def alert_rules(args: MonitoringArgs) -> list[dict[str, Any]]:
    """Every alerting rule of every group."""
    return [r for group in alert_groups(args) for r in group["rules"]]


def prometheus_rule_spec(args: MonitoringArgs) -> dict[str, Any]:
    """PrometheusRule spec with the service's alert groups."""
    return {"groups": alert_groups(args)}


def _panel(
    panel_id: int, title: str, exprs: list[tuple[str, str]], x: int, y: int, unit: str
) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "noValue": "0"}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": _or_zero(expr), "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def _or_zero(expr: str) -> str:
    """A healthy service without events has no series for many queries: show 0, not 'No data'."""
    return f"({expr}) or vector(0)"


def dashboard(args: MonitoringArgs) -> dict[str, Any]:
    """The service's Grafana dashboard: API, embedding, search, cache, rate limits, worker/queue, data stores."""
    sel = f'namespace="$namespace", job="{args.service_job}"'
    nsel = 'namespace="$namespace"'
    qsel = f'namespace="$namespace", job="{args.qdrant_job}"'
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
            "Rate-limit rejections (429) per second",
            [(f'sum(rate({M_REQUESTS}{{{sel}, status="429"}}[5m]))', "429/s")],
            "reqps",
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
            "Worker: jobs finished per second by status",
            [(f"sum by (status) (rate({M_JOBS}{{{nsel}}}[5m]))", "{{status}}")],
            "ops",
        ),
        (
            "Worker: job duration (p50 / p95)",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate({M_JOB_SECONDS}_bucket{{{nsel}}}[5m])))",
                    f"p{p}",
                )
                for q, p in ((0.5, 50), (0.95, 95))
            ],
            "s",
        ),
        (
            "Queue: depth and oldest job age",
            [
                (f"max({M_QUEUE_DEPTH}{{{nsel}}})", "queued jobs"),
                (f"max({M_QUEUE_OLDEST_AGE}{{{nsel}}})", "oldest job age (s)"),
            ],
            "short",
        ),
        (
            "Worker: seconds since the last queue poll",
            [(f"time() - max({M_WORKER_POLL}{{{nsel}}})", "since last poll")],
            "s",
        ),
        (
            "Ingestion: chunks per second",
            [(f"sum(rate({M_CHUNKS}{{{nsel}}}[5m]))", "chunks/s")],
            "short",
        ),
        (
            "Failures by component and embedding failures",
            [
                (f"sum by (component) (rate({M_FAILURES}{{{nsel}}}[5m]))", "{{component}}"),
                (f"sum(rate({M_EMBED_FAILURES}{{{nsel}}}[5m]))", "embedding"),
            ],
            "ops",
        ),
        (
            "Qdrant: nodes up and pending cluster operations",
            [
                (f"sum(up{{{qsel}}})", "nodes up"),
                (f"max(cluster_pending_operations_total{{{qsel}}})", "pending operations"),
            ],
            "short",
        ),
        (
            "Postgres: instances up (CloudNativePG) and registry failures",
            [
                (f"sum(cnpg_collector_up{{{nsel}}})", "instances up"),
                (f'sum(rate({M_FAILURES}{{{nsel}, component="registry"}}[5m]))', "registry failures/s"),
            ],
            "short",
        ),
        (
            "Redis: ready replicas and cache/queue failures",
            [
                (
                    f'sum(kube_statefulset_status_replicas_ready{{{nsel}, statefulset="{args.redis_statefulset}"}})',
                    "ready",
                ),
                (
                    f'sum(rate({M_FAILURES}{{{nsel}, component=~"cache|rate_limiter|jobs"}}[5m]))',
                    "failures/s",
                ),
            ],
            "short",
        ),
        (
            "Container restarts (30m)",
            [
                (
                    f"sum by (pod) (increase(kube_pod_container_status_restarts_total{{{nsel}}}[30m]))",
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


def importable_dashboard() -> dict[str, Any]:
    """The dashboard as a file a user imports into any Grafana (docs/grafana/rag-service.json): the same
    builder as the ConfigMap the stack deploys, for the default namespace (`rag`, editable in the Namespace box)."""
    board = dashboard(MonitoringArgs(service_namespace="rag", grafana_admin_password=""))
    namespace = next(v for v in board["templating"]["list"] if v["name"] == "namespace")
    namespace["type"] = "textbox"
    return board


def importable_dashboard_json() -> str:
    """The committed file's exact text."""
    return json.dumps(importable_dashboard(), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------- component
class Monitoring(pulumi.ComponentResource):
    """kube-prometheus-stack with the service's alerts and dashboard, or (mode `existing`) only the alerts, monitors
    and dashboard for the cluster's own Prometheus Operator; `crds_ready` gates CRD users.

    Mode `existing` installs nothing cluster-wide: the CRDs, the operator, Prometheus, Alertmanager and Grafana are
    the cluster's. Its first step reads the three CustomResourceDefinitions (`MONITORING_CRDS`). pulumi-kubernetes
    (provider.go, v4) skips the server-side dry run of a custom resource whose kind the API server does not know
    (`gvkExists`: it may be the CRD of a resource created in the same update), so a missing CRD would pass the
    preview and fail the update at the first ServiceMonitor, after the namespace and data stores are already
    created. A read of a missing object fails in the preview itself ("resource '...' does not exist"), before
    anything is created, naming the CRD, and every monitor and rule waits for the reads. The state then holds the
    three CRDs whole (a read's outputs are what pulumi-kubernetes returns: the live object and, for a read by id,
    the inputs derived from it): kept, as every kind is created in this mode and an `APIService` read of the group
    would not tell which CRDs exist (docs/infra.md, "A cluster without the CRDs").
    """

    crds_ready: pulumi.Resource
    """The release installing the monitoring.coreos.com CRDs, or the last read of the existing CRDs; pass it to
    others' `monitoring_crds`."""
    namespace: str
    """Namespace of Prometheus (for NetworkPolicies admitting scrapes)."""
    monitor_labels: dict[str, str]
    """Labels every ServiceMonitor/PodMonitor/PrometheusRule of the stack carries so Prometheus selects it (empty
    when the stack installs Prometheus, which selects all)."""
    grafana_service: str | None
    """Grafana's Service in `namespace` (port 80), for `kubectl port-forward`; None: not the stack's Grafana."""
    grafana_admin_secret: str | None
    """The Secret holding Grafana's admin user and password; None: not the stack's Grafana."""
    receivers: tuple[str, ...]
    """The configured Alertmanager receiver kinds; empty means alerts reach nobody."""

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        validate_args(args)
        super().__init__("rag:ops:Monitoring", name, None, opts)
        object_labels = specs.labels("monitoring", name, "observability")

        def child(*extra: pulumi.Resource) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=[*args.depends_on, *extra])

        self.namespace = args.namespace
        self.receivers = args.receivers.names
        if args.mode == "existing":
            self._existing(name, args, object_labels, child)
        else:
            self._install(name, args, object_labels, child)
        self.register_outputs(
            {
                "namespace": self.namespace,
                "grafanaService": self.grafana_service,
                "grafanaAdminSecret": self.grafana_admin_secret,
            }
        )

    def _existing(
        self,
        name: str,
        args: MonitoringArgs,
        object_labels: dict[str, str],
        child: Callable[..., pulumi.ResourceOptions],
    ) -> None:
        """The rule, monitors and dashboard in the service's namespace, for the cluster's Prometheus and Grafana."""
        ns = args.service_namespace
        gate: pulumi.Resource | None = None
        for crd in MONITORING_CRDS:
            # Chained: the last read exists only once every CRD was found.
            gate = k8s.apiextensions.v1.CustomResourceDefinition.get(
                f"{name}-crd-{crd.split('.', 1)[0]}", crd, opts=child(*([gate] if gate else []))
            )
        assert gate is not None
        monitor_labels = {**object_labels, **args.selector_labels}
        self._objects(name, args, ns, monitor_labels, child(gate), child())
        self.crds_ready = gate
        self.monitor_labels = dict(args.selector_labels)
        self.grafana_service = None
        self.grafana_admin_secret = None

    def _objects(
        self,
        name: str,
        args: MonitoringArgs,
        ns: str,
        labels: dict[str, str],
        after_crds: pulumi.ResourceOptions,
        after_namespace: pulumi.ResourceOptions,
    ) -> None:
        """The PrometheusRule, the monitors of what runs outside the stack's components, and the dashboard."""
        prometheus_operator.monitoring_object(
            f"{name}-rules",
            "PrometheusRule",
            metadata=specs.metadata(f"{name}-rag-alerts", ns, labels),
            spec=prometheus_rule_spec(args),
            opts=after_crds,
        )
        if args.cluster_autoscaler is not None:
            prometheus_operator.monitoring_object(
                f"{name}-cluster-autoscaler-servicemonitor",
                "ServiceMonitor",
                metadata=specs.metadata(f"{name}-cluster-autoscaler", ns, labels),
                spec=cluster_autoscaler_service_monitor_spec(args.cluster_autoscaler),
                opts=after_crds,
            )
        if args.tls_enabled:
            prometheus_operator.monitoring_object(
                f"{name}-cert-manager-podmonitor",
                "PodMonitor",
                metadata=specs.metadata(f"{name}-cert-manager", ns, labels),
                spec=cert_manager_pod_monitor_spec(),
                opts=after_crds,
            )
        if args.dashboard_labels:
            base = specs.labels("monitoring", name, "observability")
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard",
                metadata=specs.metadata(f"{name}-rag-dashboard", ns, {**base, **args.dashboard_labels}),
                data={"rag-service.json": json.dumps(dashboard(args), indent=2, sort_keys=True)},
                opts=after_namespace,
            )

    def _install(
        self,
        name: str,
        args: MonitoringArgs,
        object_labels: dict[str, str],
        child: Callable[..., pulumi.ResourceOptions],
    ) -> None:
        """kube-prometheus-stack in its namespace, with the admin and receivers Secrets, then the objects."""
        ns = args.namespace
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
        receivers_secret: str | None = None
        credentials = {
            key: value
            for kind, key, value in (
                ("slack", RECEIVERS_SECRET_KEYS["slack"], args.receivers.slack_webhook_url),
                ("pagerduty", RECEIVERS_SECRET_KEYS["pagerduty"], args.receivers.pagerduty_routing_key),
                ("email", RECEIVERS_SECRET_KEYS["email"], args.receivers.email_password),
            )
            if value is not None
        }
        release_needs: list[pulumi.Resource] = [namespace, secret]
        if credentials:
            receivers_secret = receivers_secret_name(name)
            release_needs.append(
                k8s.core.v1.Secret(
                    f"{name}-alertmanager-receivers",
                    metadata=specs.metadata(receivers_secret, ns, object_labels),
                    type="Opaque",
                    string_data={k: pulumi.Output.secret(v) for k, v in credentials.items()},
                    opts=child(namespace),
                )
            )
        release = k8s.helm.v3.Release(
            f"{name}-stack",
            name=RELEASE_NAME,
            chart=CHART,
            version=args.chart_version,
            repository_opts={"repo": REPO},
            namespace=ns,
            create_namespace=False,
            atomic=True,
            timeout=900,
            values=chart_values(args, admin_secret, receivers_secret),
            opts=child(*release_needs),
        )
        self._objects(name, args, ns, object_labels, child(release), child(namespace))
        self.crds_ready = release
        self.monitor_labels = {}
        self.grafana_service = GRAFANA_SERVICE
        self.grafana_admin_secret = admin_secret


if __name__ == "__main__":  # python -m infra.components.monitoring: rewrite the importable dashboard
    from pathlib import Path

    target = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "rag-service.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(importable_dashboard_json(), encoding="utf-8")
    print(f"wrote {target}")
