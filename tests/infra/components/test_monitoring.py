"""Tests of the Monitoring component: chart values, alert rules on the service's real metric names, the
dashboard, and CRD ordering through `crds_ready`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
import pytest

from infra.components import monitoring as mon
from infra.components.specs import ComponentArgsError

from .conftest import Program, assert_all_parented, run_components, validate_manifests

METRICS_MODULE = Path(__file__).resolve().parents[3] / "service" / "app" / "core" / "metrics.py"


def monitoring_args(**overrides: object) -> mon.MonitoringArgs:
    values: dict[str, object] = {
        "service_namespace": "rag",
        "grafana_admin_password": pulumi.Output.secret("grafana-pw"),
        "storage_class": "gp3",
    }
    values.update(overrides)
    return mon.MonitoringArgs(**values)  # type: ignore[arg-type]


def run_monitoring(args: mon.MonitoringArgs) -> Program:
    return run_components(lambda: mon.Monitoring("monitoring", args))


def exported_metric_names() -> set[str]:
    source = METRICS_MODULE.read_text(encoding="utf-8")
    return set(re.findall(r'\(\s*"(rag_[a-z_]+)"', source))


def referenced_metric_names(text: str) -> set[str]:
    names = set(re.findall(r"\brag_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names} - {"rag_service"}


def test_alerts_cover_the_required_signals() -> None:
    alerts = {r["alert"]: r for r in mon.alert_rules(monitoring_args())}
    assert {
        "RagHighErrorRate",
        "RagHighLatencyP95",
        "RagEmbeddingFailures",
        "QdrantDown",
        "RagPodRestarting",
    } <= set(alerts)
    assert 'status=~"5.."' in alerts["RagHighErrorRate"]["expr"]
    assert "histogram_quantile(0.95" in alerts["RagHighLatencyP95"]["expr"]
    assert 'job="qdrant"' in alerts["QdrantDown"]["expr"]
    assert "kube_pod_container_status_restarts_total" in alerts["RagPodRestarting"]["expr"]
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"].endswith(".")


def test_thresholds_reach_the_expressions() -> None:
    args = monitoring_args(thresholds=mon.AlertThresholds(error_ratio=0.02, p95_latency_seconds=0.5))
    alerts = {r["alert"]: r["expr"] for r in mon.alert_rules(args)}
    assert alerts["RagHighErrorRate"].endswith("> 0.02")
    assert alerts["RagHighLatencyP95"].endswith("> 0.5")


def test_every_service_metric_used_is_exported_by_the_service() -> None:
    exported = exported_metric_names()
    assert "rag_http_requests_total" in exported
    used = referenced_metric_names(json.dumps(mon.alert_rules(monitoring_args())))
    used |= referenced_metric_names(json.dumps(mon.dashboard(monitoring_args())))
    assert used
    assert used <= exported, used - exported


def test_dashboard_has_real_panels_with_queries() -> None:
    board = mon.dashboard(monitoring_args())
    assert len(board["panels"]) >= 10
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"]
        assert all(t["expr"] for t in panel["targets"])
    positions = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]}
    assert len(positions) == len(board["panels"])


def test_chart_values_discover_all_monitors_and_use_the_admin_secret() -> None:
    values = mon.chart_values(monitoring_args(), "grafana-admin")
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    assert spec["ruleSelectorNilUsesHelmValues"] is False
    assert spec["storageSpec"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "gp3"
    assert values["grafana"]["admin"]["existingSecret"] == "grafana-admin"
    assert values["grafana"]["sidecar"]["dashboards"]["label"] == "grafana_dashboard"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"retention": "forever"}, "retention"),
        ({"thresholds": mon.AlertThresholds(error_ratio=2)}, "error_ratio"),
        ({"service_namespace": "Rag"}, "service_namespace"),
        ({"storage_size": "lots"}, "quantity"),
    ],
)
def test_invalid_args_fail_with_a_sentence(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        mon.validate_args(monitoring_args(**overrides))
    assert str(info.value).endswith(".")


def test_component_orders_crds_and_keeps_the_password_secret() -> None:
    program = run_monitoring(monitoring_args())
    component = assert_all_parented(program, "rag:ops:Monitoring")
    assert {r.name for r in program.resources if r is not component} == {
        "monitoring-namespace",
        "monitoring-grafana-admin",
        "monitoring-stack",
        "monitoring-rules",
        "monitoring-dashboard",
    }
    release = program.named("monitoring-stack")
    assert release.inputs["chart"] == "kube-prometheus-stack"
    assert release.inputs["version"] == mon.CHART_VERSION
    rules = program.named("monitoring-rules")
    assert rules.type == "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
    assert release.urn in rules.depends_on
    assert program.named("monitoring-grafana-admin").urn in release.depends_on
    secret = program.named("monitoring-grafana-admin")
    assert "stringData" in secret.secret_paths
    assert "grafana-pw" not in repr(release.inputs)
    dashboard = program.named("monitoring-dashboard").inputs
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["rag-service.json"])["uid"] == "rag-service"
    monitoring: mon.Monitoring = program.result
    assert isinstance(monitoring.crds_ready, k8s.helm.v3.Release)
    assert validate_manifests(program) == 3
