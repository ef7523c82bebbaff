"""Every alert the program declares, evaluated by a real rule evaluator (`promtool test rules`).

The rules are not copied: each test runs the real program on a committed stack file under mocks, takes the
`PrometheusRule` it declares, writes its groups to a rules file and hands promtool series that should and should
not make the alert fire. staging has the in-cluster data stores (CloudNativePG, Valkey) and backups; prod the
managed ones (RDS, ElastiCache), whose alerts rely on the service's own series. promtool ships with Debian's
`prometheus` package (`.ci/ensure-servers` installs it); a missing promtool is an error, never a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import ConfigError, parse_config
from infra.offline import StackRun
from infra.stack import SERVICE_NAME
from tests.infra.conftest import run

REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO / "docs" / "runbooks.md"
NS = "rag"  # the committed stacks' namespace
DAY = 86400


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise RuntimeError("promtool not found: run `make servers` (apt-get install prometheus)")
    return found


def declared_groups(result: StackRun) -> list[dict[str, Any]]:
    """The groups of the PrometheusRule the program declares."""
    rules = [r for r in result.resources if r.type == "kubernetes:monitoring.coreos.com/v1:PrometheusRule"]
    assert len(rules) == 1
    return rules[0].inputs["spec"]["groups"]


def declared_alerts(result: StackRun) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in declared_groups(result) for rule in group["rules"]}


@dataclass(frozen=True)
class Case:
    """Input series for one alert and the label sets expected to fire at `at` (none: must not fire)."""

    stack: str
    alert: str
    name: str
    series: dict[str, str]
    at: str
    fires: list[dict[str, str]] = field(default_factory=list)
    interval: str = "1m"


def svc(metric: str, **labels: str) -> str:
    body = ", ".join(f'{k}="{v}"' for k, v in {"namespace": NS, "job": SERVICE_NAME, **labels}.items())
    return f"{metric}{{{body}}}"


def in_ns(metric: str, **labels: str) -> str:
    body = ", ".join(f'{k}="{v}"' for k, v in {"namespace": NS, **labels}.items())
    return f"{metric}{{{body}}}"


def ca(metric: str, **labels: str) -> str:
    """A series of the Cluster Autoscaler's scrape (its ServiceMonitor: Service `cluster-autoscaler` in kube-system)."""
    body = ", ".join(
        f'{k}="{v}"' for k, v in {"namespace": "kube-system", "job": "cluster-autoscaler", **labels}.items()
    )
    return f"{metric}{{{body}}}"


def kubelet(metric: str, claim: str, ns: str = NS) -> str:
    """A kubelet volume-stats series as kube-prometheus-stack's kubelet ServiceMonitor stores it."""
    labels = {"namespace": ns, "persistentvolumeclaim": claim, "job": "kubelet", "metrics_path": "/metrics",
              "node": "node-a", "instance": "10.0.0.1:10250"}  # fmt: skip
    return f"{metric}{{{', '.join(f'{k}={v!r}'.replace(chr(39), chr(34)) for k, v in labels.items())}}}"


GI = 1024**3
REQ = "rag_http_requests_total"
LAT = "rag_http_request_duration_seconds_bucket"
WHOLE = [{}]  # one alert without labels of its own (an aggregate)
BY_NS = [{"namespace": NS}]
RB_OK = "barman_cloud_cloudnative_pg_io_last_available_backup_timestamp"
RB_FAILED = "barman_cloud_cloudnative_pg_io_last_failed_backup_timestamp"

CASES = [
    # --- the API
    Case("staging", "RagHighErrorRate", "half the requests fail",
         {svc(REQ, status="500", route="/v1/search"): "0+10x20", svc(REQ, status="200", route="/v1/search"): "0+10x20"},
         "15m", WHOLE),
    Case("staging", "RagHighErrorRate", "no 5xx", {svc(REQ, status="200", route="/v1/search"): "0+10x20"}, "15m"),
    Case("staging", "RagHighLatencyP95", "most requests take 0.5-2 s",
         {svc(LAT, le="0.5"): "0+1x30", svc(LAT, le="2"): "0+10x30", svc(LAT, le="+Inf"): "0+10x30"}, "25m", WHOLE),
    Case("staging", "RagHighLatencyP95", "every request under 0.5 s",
         {svc(LAT, le="0.5"): "0+10x30", svc(LAT, le="2"): "0+10x30", svc(LAT, le="+Inf"): "0+10x30"}, "25m"),
    Case("staging", "RagLlmErrorRate", "a third of the LLM calls fail",
         {svc("rag_llm_requests_total", outcome="error"): "0+5x30", svc("rag_llm_requests_total", outcome="ok"): "0+10x30"},
         "25m", WHOLE),
    Case("staging", "RagLlmErrorRate", "clients cancel streams, nothing fails",
         {svc("rag_llm_requests_total", outcome="cancelled"): "0+10x30", svc("rag_llm_requests_total", outcome="ok"): "0+10x30",
          svc("rag_llm_requests_total", outcome="error"): "0x30"}, "25m"),
    Case("staging", "RagLlmLatencyP95", "most LLM calls take 30-60 s",
         {svc("rag_llm_request_duration_seconds_bucket", outcome="ok", le="30"): "0+1x40",
          svc("rag_llm_request_duration_seconds_bucket", outcome="ok", le="60"): "0+10x40",
          svc("rag_llm_request_duration_seconds_bucket", outcome="ok", le="+Inf"): "0+10x40"}, "35m", WHOLE),
    Case("staging", "RagLlmLatencyP95", "slow only when failing (errors are not latency)",
         {svc("rag_llm_request_duration_seconds_bucket", outcome="ok", le="5"): "0+10x40",
          svc("rag_llm_request_duration_seconds_bucket", outcome="ok", le="+Inf"): "0+10x40",
          svc("rag_llm_request_duration_seconds_bucket", outcome="error", le="+Inf"): "0+10x40"}, "35m"),
    Case("staging", "RagApiDown", "every API target down", {svc("up", pod="rag-1"): "0x20"}, "10m", WHOLE),
    Case("staging", "RagApiDown", "not scraped at all", {in_ns("up", job="other"): "1x20"}, "10m",
         [{"namespace": NS, "job": SERVICE_NAME}]),
    Case("staging", "RagApiDown", "one API target up",
         {svc("up", pod="rag-1"): "0x20", svc("up", pod="rag-2"): "1x20"}, "10m"),
    Case("staging", "RagEmbeddingFailures", "one failure a minute",
         {svc("rag_embedding_failures_total"): "0+1x20"}, "15m", WHOLE),
    Case("staging", "RagEmbeddingFailures", "async ingests fail in a worker (its PodMonitor's job)",
         {in_ns("rag_embedding_failures_total", job="rag/rag-worker", pod="rag-worker-1"): "0+1x20"}, "15m", WHOLE),
    Case("staging", "RagEmbeddingFailures", "no new failures", {svc("rag_embedding_failures_total"): "3x20"}, "15m"),
    Case("staging", "RagEmbeddingFailures", "another namespace's worker fails",
         {'rag_embedding_failures_total{namespace="pr-7", job="pr-7/rag-worker"}': "0+1x20"}, "15m"),
    Case("staging", "RagPodRestarting", "a container restarts every minute",
         {in_ns("kube_pod_container_status_restarts_total", pod="rag-1", container="api"): "0+1x40"}, "35m",
         [{"namespace": NS, "pod": "rag-1", "container": "api"}]),
    Case("staging", "RagPodRestarting", "restarted long ago",
         {in_ns("kube_pod_container_status_restarts_total", pod="rag-1", container="api"): "5x40"}, "35m"),
    # --- jobs and the queue
    Case("staging", "RagIngestionJobFailed", "a counter born at its first failure (a new worker pod)",
         {in_ns("rag_jobs_total", status="failed", pod="rag-worker-1"): "_x5 1x20"}, "8m", BY_NS),
    Case("staging", "RagIngestionJobFailed", "a pre-initialised counter going 0 -> 1",
         {in_ns("rag_jobs_total", status="failed", pod="rag-worker-1"): "0x5 1x20"}, "8m", BY_NS),
    Case("staging", "RagIngestionJobFailed", "no failure",
         {in_ns("rag_jobs_total", status="failed", pod="rag-worker-1"): "0x40",
          in_ns("rag_jobs_total", status="succeeded", pod="rag-worker-1"): "0+5x40"}, "30m"),
    Case("staging", "RagIngestionJobFailed", "one failure more than 15 minutes ago",
         {in_ns("rag_jobs_total", status="failed", pod="rag-worker-1"): "_x5 1x60"}, "40m"),
    Case("staging", "RagQueueNoConsumer", "jobs queued and no worker ever polled",
         {in_ns("rag_queue_depth"): "3x20"}, "10m", BY_NS),
    Case("staging", "RagQueueNoConsumer", "jobs queued and the worker stopped polling at 5m",
         {in_ns("rag_queue_depth"): "3x30", in_ns("rag_worker_last_poll_timestamp_seconds", pod="w"): "0+60x5 300x25"},
         "20m", BY_NS),
    Case("staging", "RagQueueNoConsumer", "jobs queued and a worker polling",
         {in_ns("rag_queue_depth"): "3x30", in_ns("rag_worker_last_poll_timestamp_seconds", pod="w"): "0+60x30"}, "20m"),
    Case("staging", "RagQueueNoConsumer", "an empty queue and no worker", {in_ns("rag_queue_depth"): "0x20"}, "10m"),
    Case("staging", "RagQueueOldestJobTooOld", "a job waiting 1000 s",
         {in_ns("rag_queue_oldest_job_age_seconds"): "1000x20"}, "10m", BY_NS),
    Case("staging", "RagQueueOldestJobTooOld", "jobs picked up in seconds",
         {in_ns("rag_queue_oldest_job_age_seconds"): "10x20"}, "10m"),
    Case("staging", "RagJobRunningTooLong", "one pod sees a job running for 2000 s, another none",
         {in_ns("rag_jobs_running_oldest_age_seconds", pod="rag-worker-1"): "2000+60x20",
          in_ns("rag_jobs_running_oldest_age_seconds", pod="rag-1"): "0x20"}, "10m", BY_NS),
    Case("staging", "RagJobRunningTooLong", "jobs finish within minutes",
         {in_ns("rag_jobs_running_oldest_age_seconds", pod="rag-worker-1"): "0+30x4 0+30x4 0+30x4 0+30x4"},
         "15m"),
    Case("staging", "RagJobsReclaimed", "a worker dies every few minutes",
         {in_ns("rag_jobs_reclaimed_total", pod="rag-worker-1"): "0+1x40"}, "35m", BY_NS),
    Case("staging", "RagJobsReclaimed", "two pods each took over two jobs",
         {in_ns("rag_jobs_reclaimed_total", pod="rag-worker-1"): "0x5 2x20",
          in_ns("rag_jobs_reclaimed_total", pod="rag-worker-2"): "0x5 2x20"}, "10m", BY_NS),
    Case("staging", "RagJobsReclaimed", "one OOM kill: its two jobs taken over once",
         {in_ns("rag_jobs_reclaimed_total", pod="rag-worker-1"): "0x5 2x40"}, "35m"),
    Case("staging", "RagReindexInterrupted", "one API pod has seen the dead build for 20 minutes, another not",
         {svc("rag_reindex_interrupted", pod="rag-1"): "0x5 1x30", svc("rag_reindex_interrupted", pod="rag-2"): "0x35"},
         "30m", BY_NS),
    Case("staging", "RagReindexInterrupted", "a worker pod sees it too (API pods gone)",
         {in_ns("rag_reindex_interrupted", pod="rag-worker-1"): "1x30"}, "25m", BY_NS),
    Case("staging", "RagReindexInterrupted", "a dead build resumed within minutes",
         {svc("rag_reindex_interrupted", pod="rag-1"): "0x5 1x5 0x30"}, "30m"),
    Case("prod", "RagReindexInterrupted", "interrupted for an hour", {svc("rag_reindex_interrupted", pod="rag-1"): "1x70"},
         "60m", BY_NS),
    Case("prod", "RagReindexInterrupted", "no re-index", {svc("rag_reindex_interrupted", pod="rag-1"): "0x70"}, "60m"),
    # --- Qdrant (staging runs 3 nodes)
    Case("staging", "QdrantNodeDown", "one of three nodes down",
         {in_ns("up", job="qdrant", pod=f"qdrant-{i}"): v for i, v in enumerate(("1x20", "1x20", "0x20"))},
         "10m", WHOLE),
    Case("staging", "QdrantNodeDown", "not scraped at all", {in_ns("up", job="rag"): "1x20"}, "10m", WHOLE),
    Case("staging", "QdrantNodeDown", "three nodes up",
         {in_ns("up", job="qdrant", pod=f"qdrant-{i}"): "1x20" for i in range(3)}, "10m"),
    Case("staging", "QdrantDegraded", "cluster operations stay pending",
         {in_ns("cluster_pending_operations_total", job="qdrant", pod="qdrant-0"): "2x30"}, "20m", WHOLE),
    Case("staging", "QdrantDegraded", "a node in recovery mode",
         {in_ns("app_status_recovery_mode", job="qdrant", pod="qdrant-0"): "1x30"}, "20m", WHOLE),
    Case("staging", "QdrantDegraded", "healthy",
         {in_ns("cluster_pending_operations_total", job="qdrant", pod="qdrant-0"): "0x30",
          in_ns("app_status_recovery_mode", job="qdrant", pod="qdrant-0"): "0x30"}, "20m"),
    # cluster_peers_total as each node sees it: qdrant-0 restarted on an empty volume and founded its own cluster.
    Case("staging", "QdrantClusterSplit", "pod 0 founded a one-node cluster",
         {in_ns("cluster_peers_total", job="qdrant", pod=f"qdrant-{i}"): v
          for i, v in enumerate(("3x5 1x25", "3x30", "3x30"))}, "20m", WHOLE),
    Case("staging", "QdrantClusterSplit", "two nodes see two peers, all agree on nothing else",
         {in_ns("cluster_peers_total", job="qdrant", pod=f"qdrant-{i}"): "2x30" for i in range(3)}, "20m", WHOLE),
    Case("staging", "QdrantClusterSplit", "a node joins: counts differ for a minute",
         {in_ns("cluster_peers_total", job="qdrant", pod=f"qdrant-{i}"): v
          for i, v in enumerate(("3x30", "3x30", "1 3x29"))}, "20m"),
    Case("staging", "QdrantClusterSplit", "healthy",
         {in_ns("cluster_peers_total", job="qdrant", pod=f"qdrant-{i}"): "3x30" for i in range(3)}, "20m"),
    Case("staging", "QdrantDeadPeer", "a replaced node still registered",
         {in_ns("cluster_peers_total", job="qdrant", pod=f"qdrant-{i}"): "4x60" for i in range(3)}, "50m", WHOLE),
    Case("staging", "QdrantDeadPeer", "three of three",
         {in_ns("cluster_peers_total", job="qdrant", pod=f"qdrant-{i}"): "3x60" for i in range(3)}, "50m"),
    # --- Postgres: CloudNativePG in staging (2 instances), RDS in prod
    Case("staging", "PostgresDown", "one of two instances down",
         {in_ns("cnpg_collector_up", pod="postgres-1"): "1x20", in_ns("cnpg_collector_up", pod="postgres-2"): "0x20"},
         "10m", WHOLE),
    Case("staging", "PostgresDown", "both instances up",
         {in_ns("cnpg_collector_up", pod="postgres-1"): "1x20", in_ns("cnpg_collector_up", pod="postgres-2"): "1x20"},
         "10m"),
    Case("staging", "PostgresFailover", "the replica was promoted",
         {in_ns("cnpg_pg_replication_in_recovery", pod="postgres-1"): "0x5 1x20",
          in_ns("cnpg_pg_replication_in_recovery", pod="postgres-2"): "1x5 0x20"}, "8m", WHOLE),
    Case("staging", "PostgresFailover", "no primary",
         {in_ns("cnpg_pg_replication_in_recovery", pod="postgres-1"): "1x20",
          in_ns("cnpg_pg_replication_in_recovery", pod="postgres-2"): "1x20"}, "15m", WHOLE),
    Case("staging", "PostgresFailover", "one stable primary",
         {in_ns("cnpg_pg_replication_in_recovery", pod="postgres-1"): "0x30",
          in_ns("cnpg_pg_replication_in_recovery", pod="postgres-2"): "1x30"}, "20m"),
    Case("prod", "PostgresUnreachableFromService", "registry calls fail (RDS, no exporter)",
         {svc("rag_failures_total", component="registry", pod="rag-1"): "0+1x20"}, "12m", BY_NS),
    Case("prod", "PostgresUnreachableFromService", "registry calls succeed",
         {svc("rag_failures_total", component="registry", pod="rag-1"): "0x20",
          svc("rag_failures_total", component="embedder", pod="rag-1"): "0+1x20"}, "12m"),
    # --- Redis: Valkey StatefulSet in staging, ElastiCache in prod
    Case("staging", "RedisDown", "no ready replica",
         {in_ns("kube_statefulset_status_replicas_ready", statefulset="redis"): "0x20"}, "10m", WHOLE),
    Case("staging", "RedisDown", "ready",
         {in_ns("kube_statefulset_status_replicas_ready", statefulset="redis"): "1x20"}, "10m"),
    Case("prod", "RedisUnreachableFromService", "cache calls fail",
         {svc("rag_failures_total", component="cache", pod="rag-1"): "0+2x20"}, "12m", BY_NS),
    # No traffic: only the worker's reconnect loop meets the dead Redis (one failure per back-off, <= 30 s + arq's
    # connection retries); its series come from the worker PodMonitor's job.
    Case("prod", "RedisUnreachableFromService", "an idle worker's reconnects fail every minute",
         {in_ns("rag_failures_total", component="jobs", job="rag/rag-worker", pod="rag-worker-1"): "0+1x20"}, "12m",
         BY_NS),
    Case("prod", "RedisUnreachableFromService", "one failed wake-up, then Redis is back",
         {in_ns("rag_failures_total", component="jobs", job="rag/rag-worker", pod="rag-worker-1"): "0x5 1x30"}, "20m"),
    Case("prod", "RedisUnreachableFromService", "cache calls succeed",
         {svc("rag_failures_total", component="cache", pod="rag-1"): "0x20"}, "12m"),
    # --- backups (staging: the qdrant-backups CronJob)
    Case("staging", "QdrantBackupFailed", "the run after the last success failed",
         {in_ns("kube_cronjob_status_last_successful_time", cronjob="qdrant-backups"): "1000x10",
          in_ns("kube_job_status_start_time", job_name="qdrant-backups-29000000"): "2000x10",
          in_ns("kube_job_failed", job_name="qdrant-backups-29000000", condition="true"): "1x10"}, "5m", BY_NS),
    Case("staging", "QdrantBackupFailed", "the first run ever failed",
         {in_ns("kube_cronjob_created", cronjob="qdrant-backups"): "500x10",
          in_ns("kube_job_status_start_time", job_name="qdrant-backups-29000000"): "2000x10",
          in_ns("kube_job_failed", job_name="qdrant-backups-29000000", condition="true"): "1x10"}, "5m", BY_NS),
    Case("staging", "QdrantBackupFailed", "a failed run kept in history, then a success",
         {in_ns("kube_cronjob_status_last_successful_time", cronjob="qdrant-backups"): "3000x10",
          in_ns("kube_job_status_start_time", job_name="qdrant-backups-29000000"): "2000x10",
          in_ns("kube_job_failed", job_name="qdrant-backups-29000000", condition="true"): "1x10",
          in_ns("kube_job_failed", job_name="qdrant-backups-29000000", condition="false"): "0x10"}, "5m"),
    Case("staging", "QdrantBackupMissing", "last success 27 hours ago",
         {in_ns("kube_cronjob_status_last_successful_time", cronjob="qdrant-backups"): "0x30"}, "27h", BY_NS, "1h"),
    Case("staging", "QdrantBackupMissing", "never succeeded in 27 hours",
         {in_ns("kube_cronjob_created", cronjob="qdrant-backups"): "0x30"}, "27h", BY_NS, "1h"),
    Case("staging", "QdrantBackupMissing", "a success every hour",
         {in_ns("kube_cronjob_status_last_successful_time", cronjob="qdrant-backups"): "0+3600x30",
          in_ns("kube_cronjob_created", cronjob="qdrant-backups"): "0x30"}, "27h", interval="1h"),
    # --- registry backups (staging: CloudNativePG with the Barman Cloud plugin; its series are 0 before any backup)
    Case("staging", "RegistryBackupFailed", "the newest base backup failed",
         {in_ns(RB_OK, pod="postgres-1"): "1000x10", in_ns(RB_FAILED, pod="postgres-1"): "2000x10",
          in_ns(RB_OK, pod="postgres-2"): "1000x10", in_ns(RB_FAILED, pod="postgres-2"): "2000x10"}, "5m", BY_NS),
    Case("staging", "RegistryBackupFailed", "a failure, then a success",
         {in_ns(RB_OK, pod="postgres-1"): "3000x10", in_ns(RB_FAILED, pod="postgres-1"): "2000x10"}, "5m"),
    Case("staging", "RegistryBackupFailed", "no backup yet",
         {in_ns(RB_OK, pod="postgres-1"): "0x10", in_ns(RB_FAILED, pod="postgres-1"): "0x10"}, "5m"),
    Case("staging", "RegistryBackupMissing", "no successful backup for 28 hours",
         {in_ns(RB_OK, pod="postgres-1"): "0x200"}, "28h", BY_NS, "10m"),
    Case("staging", "RegistryBackupMissing", "the plugin's series are gone",
         {in_ns("cnpg_collector_up", pod="postgres-1"): "1x200"}, "2h", BY_NS, "10m"),
    Case("staging", "RegistryBackupMissing", "a backup every 10 minutes",
         {in_ns(RB_OK, pod="postgres-1"): "0+600x200"}, "28h", interval="10m"),
    Case("staging", "RegistryWalArchivingFailing", "the primary's archive command fails",
         {in_ns("cnpg_pg_stat_archiver_last_failed_time", pod="postgres-1"): "2000x30",
          in_ns("cnpg_pg_stat_archiver_last_archived_time", pod="postgres-1"): "1000x30"}, "15m",
         [{"namespace": NS, "pod": "postgres-1"}]),
    Case("staging", "RegistryWalArchivingFailing", "archiving works, never failed (-1)",
         {in_ns("cnpg_pg_stat_archiver_last_failed_time", pod="postgres-1"): "-1x30",
          in_ns("cnpg_pg_stat_archiver_last_archived_time", pod="postgres-1"): "1000+60x30"}, "15m"),
    # --- certificates (cert-manager's own namespace is `namespace`, the certificate's is `exported_namespace`)
    Case("staging", "CertificateExpiringSoon", "expires in 10 days",
         {f'certmanager_certificate_expiration_timestamp_seconds{{namespace="cert-manager", exported_namespace="{NS}", name="rag-tls"}}': f"{10 * DAY}x200"},
         "2h", [{"exported_namespace": NS, "name": "rag-tls"}]),
    Case("staging", "CertificateExpiringSoon", "expires in 60 days",
         {f'certmanager_certificate_expiration_timestamp_seconds{{namespace="cert-manager", exported_namespace="{NS}", name="rag-tls"}}': f"{60 * DAY}x200"},
         "2h"),
    Case("staging", "CertificateNotReady", "not ready",
         {f'certmanager_certificate_ready_status{{namespace="cert-manager", exported_namespace="{NS}", name="rag-tls", condition="False"}}': "1x30",
          f'certmanager_certificate_ready_status{{namespace="cert-manager", exported_namespace="{NS}", name="rag-tls", condition="True"}}': "0x30"},
         "20m", [{"exported_namespace": NS, "name": "rag-tls"}]),
    Case("staging", "CertificateNotReady", "ready",
         {f'certmanager_certificate_ready_status{{namespace="cert-manager", exported_namespace="{NS}", name="rag-tls", condition="False"}}': "0x30",
          f'certmanager_certificate_ready_status{{namespace="cert-manager", exported_namespace="{NS}", name="rag-tls", condition="True"}}': "1x30"},
         "20m"),
    # --- pods no node takes, and the Cluster Autoscaler (prod runs on EKS with it; its series carry the scrape's
    # namespace and job, kube-state-metrics' the pod's namespace)
    Case("staging", "RagPodsUnschedulable", "unschedulable for 12 minutes",
         {in_ns("kube_pod_status_unschedulable", pod="rag-api-1", uid="u1"): "1x20",
          in_ns("kube_pod_status_phase", pod="rag-api-1", uid="u1", phase="Pending"): "1x20",
          in_ns("kube_pod_status_phase", pod="rag-api-1", uid="u1", phase="Running"): "0x20"},
         "12m", [{"namespace": NS, "pod": "rag-api-1"}]),
    Case("staging", "RagPodsUnschedulable", "scheduled after 5 minutes (a node joined)",
         {in_ns("kube_pod_status_unschedulable", pod="rag-api-1", uid="u1"): "1x5 _x15",
          in_ns("kube_pod_status_phase", pod="rag-api-1", uid="u1", phase="Pending"): "1x7 0x13"},
         "12m"),
    Case("staging", "RagPodsUnschedulable", "another stack's namespace",
         {'kube_pod_status_unschedulable{namespace="pr-7", pod="rag-api-1", uid="u2"}': "1x20",
          'kube_pod_status_phase{namespace="pr-7", pod="rag-api-1", uid="u2", phase="Pending"}': "1x20"},
         "12m"),
    # --- nodes: kube-state-metrics' pod placement, node Ready condition and pod deletion timestamp
    Case("staging", "RagPodOnNotReadyNode", "node-b stops reporting at 2m",
         {'kube_node_status_condition{node="node-b", condition="Ready", status="true"}': "1x2 0x20",
          'kube_node_status_condition{node="node-b", condition="Ready", status="unknown"}': "0x2 1x20",
          'kube_node_status_condition{node="node-a", condition="Ready", status="true"}': "1x22",
          in_ns("kube_pod_info", pod="qdrant-1", uid="u1", node="node-b"): "1x22",
          in_ns("kube_pod_info", pod="qdrant-0", uid="u0", node="node-a"): "1x22"},
         "10m", [{"namespace": NS, "pod": "qdrant-1", "node": "node-b"}]),
    Case("staging", "RagPodOnNotReadyNode", "NotReady for 3 minutes (a kubelet restart)",
         {'kube_node_status_condition{node="node-b", condition="Ready", status="true"}': "1x2 0x3 1x15",
          in_ns("kube_pod_info", pod="qdrant-1", uid="u1", node="node-b"): "1x20"},
         "10m"),
    Case("staging", "RagPodOnNotReadyNode", "another namespace's pod on the NotReady node",
         {'kube_node_status_condition{node="node-b", condition="Ready", status="true"}': "0x20",
          'kube_pod_info{namespace="pr-7", pod="qdrant-1", uid="u2", node="node-b"}': "1x20"},
         "10m"),
    Case("staging", "RagPodStuckTerminating", "grace period over 20 minutes ago",
         {in_ns("kube_pod_deletion_timestamp", pod="qdrant-1", uid="u1"): "60x30"}, "21m",
         [{"namespace": NS, "pod": "qdrant-1"}]),
    Case("staging", "RagPodStuckTerminating", "still inside its grace period (deleted at 10m, grace 30m)",
         {in_ns("kube_pod_deletion_timestamp", pod="rag-worker-1", uid="u1"): "_x10 2400x20"}, "25m"),
    Case("staging", "RagPodStuckTerminating", "gone 2 minutes after its grace period",
         {in_ns("kube_pod_deletion_timestamp", pod="qdrant-1", uid="u1"): "60x3 _x27"}, "21m"),
    Case("prod", "ClusterAutoscalerMaxSizeReached", "at maxSize with pods waiting",
         {ca("cluster_autoscaler_node_group_target_count", node_group="eks-nodes-1"): "9x20",
          ca("cluster_autoscaler_node_group_max_count", node_group="eks-nodes-1"): "9x20",
          ca("cluster_autoscaler_unschedulable_pods_count", type="unschedulable"): "2x20",
          ca("cluster_autoscaler_unschedulable_pods_count", type="scheduler_unprocessed"): "0x20"},
         "12m", [{"node_group": "eks-nodes-1"}]),
    Case("prod", "ClusterAutoscalerMaxSizeReached", "at maxSize, nothing waiting",
         {ca("cluster_autoscaler_node_group_target_count", node_group="eks-nodes-1"): "9x20",
          ca("cluster_autoscaler_node_group_max_count", node_group="eks-nodes-1"): "9x20",
          ca("cluster_autoscaler_unschedulable_pods_count", type="unschedulable"): "0x20"},
         "12m"),
    Case("prod", "ClusterAutoscalerMaxSizeReached", "pods waiting, room to grow",
         {ca("cluster_autoscaler_node_group_target_count", node_group="eks-nodes-1"): "5x20",
          ca("cluster_autoscaler_node_group_max_count", node_group="eks-nodes-1"): "9x20",
          ca("cluster_autoscaler_unschedulable_pods_count", type="unschedulable"): "2x20"},
         "12m"),
    Case("prod", "ClusterAutoscalerScaleUpFailing", "a scale-up failed (cloud provider error)",
         {ca("cluster_autoscaler_failed_scale_ups_total", reason="cloudProviderError"): "0x5 1x15",
          ca("cluster_autoscaler_failed_scale_ups_total", reason="timeout"): "0x20"},
         "12m", [{"reason": "cloudProviderError"}]),
    Case("prod", "ClusterAutoscalerScaleUpFailing", "the node group is backed off",
         {ca("cluster_autoscaler_node_group_backoff_status", node_group="eks-nodes-1", reason="cloudProviderError"): "0x3 1x17"},
         "12m", [{"node_group": "eks-nodes-1", "reason": "cloudProviderError"}]),
    Case("prod", "ClusterAutoscalerScaleUpFailing", "no failure, not backed off",
         {ca("cluster_autoscaler_failed_scale_ups_total", reason="cloudProviderError"): "0x20",
          ca("cluster_autoscaler_node_group_backoff_status", node_group="eks-nodes-1", reason="cloudProviderError"): "0x20"},
         "12m"),
    # --- data volumes: the kubelet's volume stats (kube-prometheus-stack's kubelet scrape: job kubelet, the claim's
    # namespace and persistentvolumeclaim honoured), one series per node that mounts the claim
    Case("staging", "RagVolumeFillingUp", "Qdrant's volume 90% full",
         {kubelet("kubelet_volume_stats_available_bytes", "storage-qdrant-1"): f"{GI}x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-1"): f"{10 * GI}x30",
          kubelet("kubelet_volume_stats_available_bytes", "storage-qdrant-0"): f"{8 * GI}x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-0"): f"{10 * GI}x30"},
         "20m", [{"namespace": NS, "persistentvolumeclaim": "storage-qdrant-1"}]),
    Case("staging", "RagVolumeFillingUp", "a CloudNativePG instance's volume 88% full",
         {kubelet("kubelet_volume_stats_available_bytes", "postgres-2"): f"{12 * GI // 10}x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "postgres-2"): f"{10 * GI}x30"},
         "20m", [{"namespace": NS, "persistentvolumeclaim": "postgres-2"}]),
    Case("staging", "RagVolumeFillingUp", "Valkey's volume half full",
         {kubelet("kubelet_volume_stats_available_bytes", "data-redis-0"): f"{GI}x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "data-redis-0"): f"{2 * GI}x30"}, "20m"),
    Case("staging", "RagVolumeFillingUp", "another stack's namespace, another claim",
         {kubelet("kubelet_volume_stats_available_bytes", "storage-qdrant-0", ns="pr-7"): "0x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-0", ns="pr-7"): f"{GI}x30",
          kubelet("kubelet_volume_stats_available_bytes", "scratch"): "0x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "scratch"): f"{GI}x30"}, "20m"),
    Case("staging", "RagVolumeAlmostFull", "Valkey's AOF volume 97% full",
         {kubelet("kubelet_volume_stats_available_bytes", "data-redis-0"): f"{3 * GI // 100}x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "data-redis-0"): f"{GI}x30"},
         "10m", [{"namespace": NS, "persistentvolumeclaim": "data-redis-0"}]),
    Case("staging", "RagVolumeAlmostFull", "90% full (only filling up)",
         {kubelet("kubelet_volume_stats_available_bytes", "storage-qdrant-0"): f"{GI}x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-0"): f"{10 * GI}x30"}, "10m"),
    Case("prod", "RagVolumeFillingUp", "Qdrant on prod (RDS, ElastiCache: no claims of theirs)",
         {kubelet("kubelet_volume_stats_available_bytes", "storage-qdrant-2"): "0x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-2"): f"{GI}x30"},
         "20m", [{"namespace": NS, "persistentvolumeclaim": "storage-qdrant-2"}]),
    Case("prod", "RagVolumeFillingUp", "prod has no in-cluster Postgres",
         {kubelet("kubelet_volume_stats_available_bytes", "postgres-1"): "0x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "postgres-1"): f"{GI}x30"}, "20m"),
    Case("prod", "RagVolumeAlmostFull", "Qdrant full",
         {kubelet("kubelet_volume_stats_available_bytes", "storage-qdrant-0"): "0x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-0"): f"{GI}x30"},
         "10m", [{"namespace": NS, "persistentvolumeclaim": "storage-qdrant-0"}]),
    Case("prod", "RagVolumeAlmostFull", "Qdrant 20% free",
         {kubelet("kubelet_volume_stats_available_bytes", "storage-qdrant-0"): f"{GI // 5}x30",
          kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-0"): f"{GI}x30"}, "10m"),
    # --- the volume alerts' guard: no volume stats for any of the stack's claims
    Case("staging", "RagVolumeStatsMissing", "the kubelets are not scraped (the service's series only)",
         {svc("up", pod="rag-1"): "1x40"}, "35m", BY_NS),
    Case("staging", "RagVolumeStatsMissing", "only another namespace's and another claim's stats",
         {kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-0", ns="pr-7"): f"{GI}x40",
          kubelet("kubelet_volume_stats_capacity_bytes", "scratch"): f"{GI}x40"}, "35m", BY_NS),
    Case("staging", "RagVolumeStatsMissing", "Qdrant's claims reported",
         {kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-0"): f"{GI}x40"}, "35m"),
    Case("staging", "RagVolumeStatsMissing", "missing for less than 30 minutes",
         {kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-0"): f"{GI}x15"}, "35m"),
    Case("prod", "RagVolumeStatsMissing", "nothing reported", {svc("up", pod="rag-1"): "1x40"}, "35m", BY_NS),
    Case("prod", "RagVolumeStatsMissing", "Qdrant's claims reported",
         {kubelet("kubelet_volume_stats_capacity_bytes", "storage-qdrant-2"): f"{GI}x40"}, "35m"),
    Case("prod", "ClusterAutoscalerDown", "never scraped", {}, "12m", WHOLE),
    Case("prod", "ClusterAutoscalerDown", "its target is down", {ca("up"): "0x20"}, "12m", WHOLE),
    Case("prod", "ClusterAutoscalerDown", "scraped", {ca("up"): "1x20"}, "12m"),
]  # fmt: skip


def expected_alert(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """What promtool must report: the series' labels plus the rule's, annotations with $labels expanded."""

    def expand(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)

    return {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": {k: expand(v) for k, v in rule["annotations"].items()},
    }


def run_promtool(
    tmp_path: Path, groups: list[dict[str, Any]], case: Case
) -> subprocess.CompletedProcess[str]:
    # Only the alert's own group is evaluated (at the series' interval): promtool evaluates every rule at every
    # step, and a 27-hour backup case at 1m steps would take seconds per rule.
    group = next(g for g in groups if any(r["alert"] == case.alert for r in g["rules"]))
    rule = next(r for r in group["rules"] if r["alert"] == case.alert)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": case.interval,
        "tests": [
            {
                "interval": case.interval,
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": case.at,
                        "alertname": case.alert,
                        "exp_alerts": [expected_alert(rule, labels) for labels in case.fires],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run(
        [promtool(), "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.alert}: {c.name}")
def test_alert_fires_only_on_its_series(case: Case, tmp_path: Path) -> None:
    groups = declared_groups(run(case.stack))
    result = run_promtool(tmp_path, groups, case)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_job_lease_alerts_fire_on_the_series_the_service_exports(tmp_path: Path) -> None:
    """The names and labels of the series are read from the service's own exposition (what /metrics of the API
    and of every worker serves), not retyped: the scrape adds namespace and pod, and the alerts must fire."""
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    import service.app.core.metrics  # noqa: F401 - registers the service's metrics

    exported = {
        sample.name: sample.labels
        for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
        for sample in family.samples
    }
    groups = declared_groups(run("staging"))
    for alert, name, values, at in (
        ("RagJobRunningTooLong", "rag_jobs_running_oldest_age_seconds", "1900+60x20", "10m"),
        ("RagJobsReclaimed", "rag_jobs_reclaimed_total", "0+1x40", "35m"),
        ("RagReindexInterrupted", "rag_reindex_interrupted", "1x30", "25m"),
    ):
        assert name in exported, f"the service does not export {name}"
        series = in_ns(name, pod="rag-worker-1", **exported[name])
        result = run_promtool(
            tmp_path, groups, Case("staging", alert, "exported", {series: values}, at, BY_NS)
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness can fail: a series that fires, expected not to, is reported."""
    case = next(c for c in CASES if c.alert == "RagIngestionJobFailed" and c.fires)
    quiet = Case(case.stack, case.alert, "wrongly quiet", case.series, case.at)
    result = run_promtool(tmp_path, declared_groups(run(case.stack)), quiet)
    assert result.returncode != 0
    assert "RagIngestionJobFailed" in result.stdout + result.stderr


def test_promtool_accepts_the_declared_rule_files(tmp_path: Path) -> None:
    for stack in ("dev", "staging", "prod"):
        path = tmp_path / f"{stack}.yaml"
        path.write_text(yaml.safe_dump({"groups": declared_groups(run(stack, monitoring={"enabled": True}))}))
        result = subprocess.run(
            [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_declared_alert_has_a_firing_and_a_quiet_case() -> None:
    for stack in ("staging", "prod"):
        declared = set(declared_alerts(run(stack)))
        firing = {c.alert for c in CASES if c.fires}
        quiet = {c.alert for c in CASES if not c.fires}
        tested = {c.alert for c in CASES if c.stack == stack}
        assert declared - (firing & quiet) == set(), stack
        assert tested <= declared, stack


def test_the_volume_alerts_select_the_claims_the_stack_declares() -> None:
    """The claim names the volume alerts match are the ones the recorded StatefulSets and CloudNativePG Cluster
    will create (`<template>-<statefulset>-<n>`, `<cluster>-<n>`), and no other."""
    for stack in ("staging", "prod"):
        result = run(stack)
        claims = [
            f"{template['metadata']['name']}-{r.inputs['metadata']['name']}-0"
            for r in result.resources
            if r.type == "kubernetes:apps/v1:StatefulSet"
            for template in r.inputs["spec"].get("volumeClaimTemplates", [])
        ] + [
            f"{r.inputs['metadata']['name']}-1"
            for r in result.resources
            if r.type == "kubernetes:postgresql.cnpg.io/v1:Cluster"
        ]
        expr = declared_alerts(result)["RagVolumeFillingUp"]["expr"]
        pattern = re.search(r'persistentvolumeclaim=~"([^"]+)"', expr).group(1)  # type: ignore[union-attr]
        assert all(re.fullmatch(pattern, claim) for claim in claims), (stack, claims, pattern)
        assert not re.fullmatch(pattern, "prometheus-db-0"), stack
        assert len(claims) == (3 if stack == "staging" else 1), claims  # prod: RDS and ElastiCache


def test_managed_data_stores_use_the_series_that_exist_for_them() -> None:
    prod = declared_alerts(run("prod"))  # RDS + ElastiCache: no CloudNativePG exporter, no Valkey StatefulSet
    assert {"PostgresDown", "PostgresFailover", "RedisDown"}.isdisjoint(prod)
    assert "cnpg_" not in str(prod)
    assert "kube_statefulset" not in str(prod)
    staging = declared_alerts(run("staging"))
    assert {"PostgresDown", "PostgresFailover", "RedisDown", "PostgresUnreachableFromService"} <= set(staging)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    anchors = {
        github_anchor(line.lstrip("#")) for line in RUNBOOKS.read_text().splitlines() if line.startswith("#")
    }
    for stack in ("staging", "prod"):
        for name, rule in declared_alerts(run(stack)).items():
            url = rule["annotations"]["runbook_url"]
            base, _, anchor = url.partition("#")
            assert base == "docs/runbooks.md", url
            assert anchor == name.lower(), url
            assert anchor in anchors, f"{name}: no section '{anchor}' in {RUNBOOKS}"


def test_the_runbook_base_url_is_config() -> None:
    url = "https://github.com/acme/rag/blob/main/docs/runbooks.md"
    alerts = declared_alerts(run("staging", monitoring={"runbookUrl": url}))
    assert alerts["RedisDown"]["annotations"]["runbook_url"] == f"{url}#redisdown"


def test_alert_thresholds_are_config() -> None:
    alerts = declared_alerts(
        run(
            "staging",
            monitoring={
                "alerts": {
                    "queueOldestJobAgeSeconds": 120,
                    "certificateExpiryDays": 5,
                    "backupMaxAgeHours": 50,
                }
            },
        )
    )
    assert alerts["RagQueueOldestJobTooOld"]["expr"].endswith("> 120")
    assert f"< {5 * DAY}" in alerts["CertificateExpiringSoon"]["expr"]
    assert f"> {50 * 3600}" in alerts["QdrantBackupMissing"]["expr"]


def test_receiver_config_and_secrets_reach_alertmanager() -> None:
    result = run(
        "staging",
        slackWebhookUrl="https://hooks.slack.example/T0/B0/secret-path",
        pagerdutyRoutingKey="pd-key-123",
        smtpPassword="smtp-pw-456",
        monitoring={
            "alerting": {
                "slack": {"channel": "#rag-alerts"},
                "email": {
                    "to": "oncall@example.com",
                    "sender": "alerts@example.com",
                    "smarthost": "smtp.example.com:587",
                    "username": "alerts",
                },
            }
        },
    )
    assert result.outputs["alertReceivers"] == ["slack", "pagerduty", "email"]
    secret = result.by_name("monitoring-alertmanager-receivers")
    assert secret.inputs["stringData"] == {
        "slack-webhook-url": "https://hooks.slack.example/T0/B0/secret-path",
        "pagerduty-routing-key": "pd-key-123",
        "smtp-password": "smtp-pw-456",
    }
    assert secret.secret_keys  # Pulumi secrets, never plain in state
    values = result.by_name("monitoring-stack").inputs["values"]
    receivers = {r["name"]: r for r in values["alertmanager"]["config"]["receivers"]}
    assert receivers["rag-warning"]["slack_configs"][0]["channel"] == "#rag-alerts"
    email = receivers["rag-critical"]["email_configs"][0]
    assert (email["to"], email["from"], email["smarthost"], email["auth_username"]) == (
        "oncall@example.com",
        "alerts@example.com",
        "smtp.example.com:587",
        "alerts",
    )
    assert "pd-key-123" not in str(values)
    assert "secret-path" not in str(values)


def test_an_email_receiver_without_smarthost_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"rag:monitoring\.alerting\.email\.smarthost.*Pulumi\.staging\.yaml"
    ):
        parse_config(
            {
                "monitoring": {
                    "alerting": {"email": {"to": "oncall@example.com", "sender": "alerts@example.com"}}
                }
            },
            "staging",
        )


def test_the_alerts_for_an_existing_prometheus_fire_on_their_series(tmp_path: Path) -> None:
    """`monitoring.mode: existing` (dev on an existing cluster): the PrometheusRule the cluster's Prometheus loads
    evaluates as the stack's own; pods of the cluster's monitoring namespace are not the stack's to alert on."""
    groups = declared_groups(run("dev", monitoring={"enabled": True, "mode": "existing"}))
    unschedulable = {
        'kube_pod_status_unschedulable{namespace="monitoring", pod="prometheus-0", uid="u3"}': "1x20",
        'kube_pod_status_phase{namespace="monitoring", pod="prometheus-0", uid="u3", phase="Pending"}': "1x20",
    }
    for case in (
        Case("dev", "RagApiDown", "every API target down", {svc("up", pod="rag-1"): "0x20"}, "10m", WHOLE),
        Case("dev", "RagApiDown", "one API target up", {svc("up", pod="rag-1"): "1x20"}, "10m"),
        Case(
            "dev",
            "RagPodsUnschedulable",
            "the cluster's Prometheus pod, not the stack's",
            unschedulable,
            "12m",
        ),
        Case(
            "dev",
            "RagPodsUnschedulable",
            "a pod of the stack",
            {
                in_ns("kube_pod_status_unschedulable", pod="qdrant-0", uid="u1"): "1x20",
                in_ns("kube_pod_status_phase", pod="qdrant-0", uid="u1", phase="Pending"): "1x20",
            },
            "12m",
            [{"namespace": NS, "pod": "qdrant-0"}],
        ),
    ):
        result = run_promtool(tmp_path, groups, case)
        assert result.returncode == 0, f"{case.alert}: {case.name}\n{result.stdout}{result.stderr}"
    # With the stack's own kube-prometheus-stack, its monitoring namespace's pods are the stack's.
    own = declared_groups(run("dev", monitoring={"enabled": True}))
    fires = Case(
        "dev",
        "RagPodsUnschedulable",
        "own Prometheus",
        unschedulable,
        "12m",
        [{"namespace": "monitoring", "pod": "prometheus-0"}],
    )
    result = run_promtool(tmp_path, own, fires)
    assert result.returncode == 0, result.stdout + result.stderr


NO_WORKER = [
    Case("staging", "RagQueueNoConsumer", "jobs queued, none running, none finished",
         {svc("rag_queue_depth", pod="rag-1"): "3x30", svc("rag_jobs_running", pod="rag-1"): "0x30"}, "20m", BY_NS),
    Case("staging", "RagQueueNoConsumer", "jobs finished long ago, the queue stuck since",
         {svc("rag_queue_depth", pod="rag-1"): "3x45", svc("rag_jobs_running", pod="rag-1"): "0x45",
          svc("rag_jobs_total", pod="rag-1", status="succeeded"): "0+1x5 5x40"}, "40m", BY_NS),
    # The defect: with no worker to poll, the worker's rule fired on this (a bulk upload being worked off).
    Case("staging", "RagQueueNoConsumer", "a backlog the API pods work off",
         {svc("rag_queue_depth", pod="rag-1"): "50x30", svc("rag_jobs_running", pod="rag-1"): "4x30",
          svc("rag_jobs_total", pod="rag-1", status="succeeded"): "0+5x30"}, "20m"),
    Case("staging", "RagQueueNoConsumer", "one long job running, none finished yet",
         {svc("rag_queue_depth", pod="rag-2"): "3x30", svc("rag_jobs_running", pod="rag-2"): "1x30"}, "20m"),
    Case("staging", "RagQueueNoConsumer", "between jobs: none running at the scrapes, one finishing a minute",
         {svc("rag_queue_depth", pod="rag-1"): "3x30", svc("rag_jobs_running", pod="rag-1"): "0x30",
          svc("rag_jobs_total", pod="rag-1", status="failed"): "0+1x30"}, "20m"),
]  # fmt: skip


@pytest.mark.parametrize("case", NO_WORKER, ids=lambda c: c.name)
def test_a_stack_without_a_worker_alerts_on_a_queue_nothing_consumes(case: Case, tmp_path: Path) -> None:
    """`rag:service.worker.enabled: false`: the API pods run the jobs (JOBS_IN_PROCESS) and no process exports a
    poll time, so the worker's rule fired on every backlog that lasted 5 minutes."""
    result = run(case.stack, service={"worker": {"enabled": False}})
    assert not [r for r in result.resources if r.name == "rag-worker"]
    result = run_promtool(tmp_path, declared_groups(result), case)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_stack_with_a_worker_keeps_the_poll_rule() -> None:
    """A stopped worker (the Deployment there, no pod polling) is what the worker's rule catches; the job-table rule
    would stay quiet while the API pods export nothing of the worker's."""
    with_worker = declared_alerts(run("staging"))["RagQueueNoConsumer"]["expr"]
    assert "rag_worker_last_poll_timestamp_seconds" in with_worker
    assert "rag_jobs_running" not in with_worker
    without = declared_alerts(run("staging", service={"worker": {"enabled": False}}))
    assert "rag_worker_last_poll_timestamp_seconds" not in without["RagQueueNoConsumer"]["expr"]
    assert "rag_jobs_running" in without["RagQueueNoConsumer"]["expr"]


def test_no_alert_threshold_docstring_is_detached_from_its_field() -> None:
    """No AlertThresholds docstring stands detached from its field (one did: a field added between a field and its
    docstring took that docstring, and the other field had none)."""
    import ast
    import inspect

    from infra.components import monitoring

    (cls,) = [
        node
        for node in ast.parse(inspect.getsource(monitoring)).body
        if isinstance(node, ast.ClassDef) and node.name == "AlertThresholds"
    ]
    body = cls.body[1:]  # after the class docstring

    def is_doc(node: ast.stmt) -> bool:
        return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)

    documented = []
    for i, node in enumerate(body):
        if is_doc(node):
            assert i > 0, node.value.value
            assert isinstance(body[i - 1], ast.AnnAssign), node.value.value
            documented.append(ast.unparse(body[i - 1].target))
    for name in ("unschedulable_pod_minutes", "volume_free_ratio", "volume_critical_free_ratio"):
        assert name in documented, name


def test_volume_stats_off_leaves_out_the_alert_that_would_fire_for_good(tmp_path: Path) -> None:
    """REVIEW_INFRA20 R4: on kind/k3s local-path (hostPath) volumes the kubelet exports no volume stats
    (kubernetes-sigs/kind#3643), so RagVolumeStatsMissing fired 30 minutes after every `up`, for good.
    `monitoring.alerts.volumeStats: false` leaves that rule out; the volume-full alerts stay."""
    nothing = Case(
        "staging", "RagVolumeStatsMissing", "no stats", {svc("up", pod="rag-1"): "1x40"}, "35m", BY_NS
    )
    result = run_promtool(tmp_path, declared_groups(run("staging")), nothing)
    assert result.returncode == 0, result.stdout + result.stderr  # fires by default

    off = declared_groups(run("staging", monitoring={"alerts": {"volumeStats": False}}))
    alerts = {r["alert"] for g in off for r in g["rules"]}
    assert "RagVolumeStatsMissing" not in alerts
    assert {"RagVolumeFillingUp", "RagVolumeAlmostFull"} <= alerts
    # promtool over the rendered volume group with the same series: nothing fires.
    [group] = [g for g in off if any(r["alert"] == "RagVolumeFillingUp" for r in g["rules"])]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in nothing.series.items()],
                "alert_rule_test": [
                    {"eval_time": "35m", "alertname": name, "exp_alerts": []}
                    for name in ("RagVolumeStatsMissing", "RagVolumeFillingUp", "RagVolumeAlmostFull")
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    quiet = subprocess.run(
        [promtool(), "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
