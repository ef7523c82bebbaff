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
        "QdrantNodeDown",
        "RagPodRestarting",
    } <= set(alerts)
    assert 'status=~"5.."' in alerts["RagHighErrorRate"]["expr"]
    assert "histogram_quantile(0.95" in alerts["RagHighLatencyP95"]["expr"]
    assert 'job="qdrant"' in alerts["QdrantNodeDown"]["expr"]
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
    assert exported >= mon.WORKER_METRICS  # the worker's series, scraped from its metrics port


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
        "monitoring-cert-manager-podmonitor",
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


def receivers(**overrides: object) -> mon.AlertReceivers:
    values: dict[str, object] = {
        "slack_webhook_url": "https://hooks.slack.example/T0/B0/xyz",
        "slack_channel": "#rag-alerts",
        "pagerduty_routing_key": "pd-routing-key-123",
        "email_to": "oncall@example.com",
        "email_from": "alerts@example.com",
        "email_smarthost": "smtp.example.com:587",
        "email_username": "alerts",
        "email_password": "smtp-pw-456",
    }
    values.update(overrides)
    return mon.AlertReceivers(**values)  # type: ignore[arg-type]


def test_without_receivers_every_alert_goes_to_the_null_receiver() -> None:
    config = mon.alertmanager_config(mon.AlertReceivers(), "s")
    assert config["receivers"] == [{"name": "null"}]
    assert {r["receiver"] for r in config["route"]["routes"]} == {"null"}
    assert config["route"]["receiver"] == "null"
    assert mon.AlertReceivers().names == ()


def test_receivers_are_routed_by_severity_and_read_credentials_from_files() -> None:
    config = mon.alertmanager_config(receivers(), "monitoring-alertmanager-receivers")
    by_name = {r["name"]: r for r in config["receivers"]}
    critical, warning = by_name["rag-critical"], by_name["rag-warning"]
    mount = "/etc/alertmanager/secrets/monitoring-alertmanager-receivers"
    assert critical["pagerduty_configs"][0]["routing_key_file"] == f"{mount}/pagerduty-routing-key"
    assert "pagerduty_configs" not in warning  # warnings never page
    assert warning["slack_configs"][0]["api_url_file"] == f"{mount}/slack-webhook-url"
    assert warning["slack_configs"][0]["channel"] == "#rag-alerts"
    assert critical["email_configs"][0]["auth_password_file"] == f"{mount}/smtp-password"
    assert critical["email_configs"][0]["smarthost"] == "smtp.example.com:587"
    routes = {r["receiver"]: r["matchers"] for r in config["route"]["routes"]}
    assert routes["rag-critical"] == ['severity = "critical"']
    assert routes["rag-warning"] == ['severity = "warning"']
    assert routes["null"] == ['alertname = "Watchdog"']


def test_only_pagerduty_routes_only_critical_alerts() -> None:
    only = mon.AlertReceivers(pagerduty_routing_key="k")
    config = mon.alertmanager_config(only, "s")
    assert [r["name"] for r in config["receivers"]] == ["null", "rag-critical"]
    assert only.names == ("pagerduty",)


def test_receiver_credentials_live_in_a_secret_mounted_into_alertmanager() -> None:
    program = run_monitoring(monitoring_args(receivers=receivers()))
    secret = program.named("monitoring-alertmanager-receivers")
    assert "stringData" in secret.secret_paths
    assert set(secret.inputs["stringData"]) == {"slack-webhook-url", "pagerduty-routing-key", "smtp-password"}
    release = program.named("monitoring-stack")
    assert secret.urn in release.depends_on
    values = release.inputs["values"]
    assert values["alertmanager"]["alertmanagerSpec"]["secrets"] == ["monitoring-alertmanager-receivers"]
    for credential in ("xyz", "pd-routing-key-123", "smtp-pw-456"):
        assert credential not in json.dumps(values)
    monitoring: mon.Monitoring = program.result
    assert monitoring.receivers == ("slack", "pagerduty", "email")


def test_email_receiver_needs_a_sender_and_smarthost() -> None:
    with pytest.raises(ComponentArgsError, match="email_from and email_smarthost"):
        mon.validate_args(monitoring_args(receivers=mon.AlertReceivers(email_to="a@example.com")))


def test_every_dashboard_query_shows_zero_instead_of_no_data() -> None:
    board = mon.dashboard(monitoring_args())
    titles = " ".join(p["title"] for p in board["panels"])
    for needle in ("Worker", "Queue", "cache hit ratio", "Rate-limit", "Qdrant", "Postgres", "Redis"):
        assert needle in titles, needle
    for panel in board["panels"]:
        assert panel["fieldConfig"]["defaults"]["noValue"] == "0"
        for target in panel["targets"]:
            assert target["expr"].endswith(") or vector(0)"), target["expr"]


def test_the_importable_dashboard_file_is_the_generated_one() -> None:
    path = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "rag-service.json"
    committed = json.loads(path.read_text(encoding="utf-8"))
    assert committed == mon.importable_dashboard(), (
        "docs/grafana/rag-service.json is stale: regenerate with `python -m infra.components.monitoring`"
    )
    assert path.read_text(encoding="utf-8") == mon.importable_dashboard_json()
