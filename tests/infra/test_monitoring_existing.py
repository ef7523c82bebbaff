"""`rag:monitoring.mode: existing`: the alerts, monitors and dashboard for a cluster that already runs Prometheus
Operator (kube-prometheus-stack or another), with no second operator, Prometheus, node exporter or Grafana.

Each test runs the real dev stack file through the program under mocks (`tests.infra.conftest.run`) and asserts on
what it declares: which objects exist, their labels (what the cluster's Prometheus selects them by), their
namespace, what they wait for (the reads of the existing CRDs, which fail the preview when a CRD is missing) and
which namespace the NetworkPolicies admit scrapes from.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra import deployability, traffic
from infra.components.monitoring import MONITORING_CRDS
from infra.config import ConfigError
from infra.offline import StackRun, run_stack
from tests.infra.conftest import run

MONITORING_PREFIX = "kubernetes:monitoring.coreos.com/v1:"
EXISTING = {"enabled": True, "mode": "existing"}
CRD_READ = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"


def existing(**settings: Any) -> StackRun:
    return run("dev", monitoring={**EXISTING, "existing": settings} if settings else EXISTING)


def monitoring_objects(result: StackRun) -> list[Any]:
    return [r for r in result.resources if r.type.startswith(MONITORING_PREFIX)]


def labels(resource: Any) -> dict[str, str]:
    return resource.inputs["metadata"].get("labels") or {}


def test_existing_mode_installs_no_operator_prometheus_or_grafana() -> None:
    installed, result = run("dev", monitoring={"enabled": True}), existing()
    releases = [r.inputs["chart"] for r in result.of_type("kubernetes:helm.sh/v3:Release")]
    assert "kube-prometheus-stack" in [
        r.inputs["chart"] for r in installed.of_type("kubernetes:helm.sh/v3:Release")
    ]
    assert "kube-prometheus-stack" not in releases
    namespaces = {r.inputs["metadata"]["name"] for r in result.of_type("kubernetes:core/v1:Namespace")}
    assert "monitoring" not in namespaces  # the cluster's monitoring namespace is not the stack's to own
    assert not [r for r in result.resources if "grafana" in r.name or "alertmanager" in r.name]
    assert (result.outputs["grafana"], result.outputs["grafanaAdminPassword"]) == (None, None)
    assert result.outputs["alertReceivers"] is None  # routing is the cluster's Alertmanager's
    # The same alerts as with the stack's own Prometheus.
    rules = {r.name: r for r in monitoring_objects(result)}["monitoring-rules"]
    alerts = {a["alert"] for g in rules.inputs["spec"]["groups"] for a in g["rules"]}
    own = installed.by_name("monitoring-rules").inputs["spec"]["groups"]
    assert alerts == {a["alert"] for g in own for a in g["rules"]}


def test_every_monitor_and_rule_carries_the_selector_labels_in_the_service_namespace() -> None:
    result = existing()
    objects = monitoring_objects(result)
    kinds = {r.type.removeprefix(MONITORING_PREFIX) for r in objects}
    assert kinds == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    names = {r.name for r in objects}
    # Every component's monitors, not only Monitoring's own: API, worker, Qdrant, CloudNativePG, cert-manager.
    assert {
        "rag-servicemonitor",
        "rag-worker-podmonitor",
        "qdrant-servicemonitor",
        "postgres-podmonitor",
        "monitoring-cert-manager-podmonitor",
        "monitoring-rules",
    } <= names
    for resource in objects:
        # kube-prometheus-stack 78.3.0's default selectors: matchLabels {release: <its release name>}.
        assert labels(resource)["release"] == "kube-prometheus-stack", resource.name
        assert resource.inputs["metadata"]["namespace"] == "rag", resource.name
    dashboard = result.by_name("monitoring-dashboard")
    assert labels(dashboard)["grafana_dashboard"] == "1"
    assert dashboard.inputs["metadata"]["namespace"] == "rag"


def test_selector_and_dashboard_labels_are_config() -> None:
    result = existing(
        selectorLabels=["prometheus=platform", "team.example.com/owner=sre"], dashboardLabels=["dash=rag"]
    )
    for resource in monitoring_objects(result):
        assert {"prometheus": "platform", "team.example.com/owner": "sre"}.items() <= labels(resource).items()
        assert "release" not in labels(resource)  # a list replaces the default: no stale selector label
    dashboard = labels(result.by_name("monitoring-dashboard"))
    assert dashboard["dash"] == "rag"
    assert "grafana_dashboard" not in dashboard
    # No dashboard labels: no ConfigMap (a cluster without Grafana's sidecar).
    bare = existing(dashboardLabels=[])
    assert not [r for r in bare.resources if r.name == "monitoring-dashboard"]


def test_monitors_and_rules_wait_for_the_reads_of_every_existing_crd() -> None:
    result = existing()
    reads = {r.inputs["id"]: r for r in result.reads if r.type == CRD_READ}
    assert set(reads) == set(MONITORING_CRDS)
    # Reads hit the cluster through the stack's provider, in the preview as well as the update.
    assert {r.provider for r in reads.values()} == {"urn:pulumi:dev::rag::pulumi:providers:kubernetes::k8s"}
    graph = deployability.Graph(result)
    for resource in monitoring_objects(result):
        assert {r.urn for r in reads.values()} <= graph.closure(resource.urn), resource.name
    # Nothing else reads: the install mode has no reads at all.
    assert [r for r in run("dev", monitoring={"enabled": True}).reads if r.type == CRD_READ] == []


@pytest.mark.parametrize("tls", [True, False])
def test_each_crd_read_gates_a_kind_the_stack_creates(tls: bool) -> None:
    """The reads keep three whole CRDs in the state (note20): each is kept because each kind is created in this mode
    (a read of the API group alone, its `APIService`, could not tell a missing PodMonitor CRD; docs/infra.md "A
    cluster without the CRDs"). A kind the stack stopped creating would make its read dead weight."""
    result = run("dev", monitoring=EXISTING, tls={"enabled": tls})
    created = {r.type.rsplit(":", 1)[1].lower() + "s" for r in monitoring_objects(result)}
    assert {crd.split(".", 1)[0] for crd in MONITORING_CRDS} <= created


def test_network_policies_admit_the_existing_prometheus_namespace() -> None:
    result = existing(namespace="observability")
    peers = set()
    for policy in result.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        for rule in policy.inputs["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                name = (
                    (peer.get("namespaceSelector") or {})
                    .get("matchLabels", {})
                    .get("kubernetes.io/metadata.name")
                )
                if name:
                    peers.add(name)
    assert "observability" in peers
    assert "monitoring" not in peers
    # The traffic analysis sees the scrapes from there and finds them allowed.
    scrapes = [f for f in traffic.flows(result) if f.why.startswith("Prometheus scrapes")]
    assert scrapes
    assert {f.source.namespace for f in scrapes} == {"observability"}
    assert traffic.blocked(result) == []
    assert deployability.analyse(result).findings == []


def test_the_monitoring_crds_are_a_listed_prerequisite_checked_by_the_reads() -> None:
    analysis = deployability.analyse(existing())
    listed = {c.name: c for c in analysis.prerequisites}
    assert "monitoring-crd-servicemonitors" in str(listed["api:monitoring.coreos.com"].provider)


def test_receiver_secrets_are_refused_with_the_existing_alertmanager() -> None:
    with pytest.raises(
        ConfigError, match=r"rag:slackWebhookUrl in Pulumi\.dev\.yaml: .*cluster's own Alertmanager"
    ):
        run_stack(
            "dev",
            config_overrides={
                "monitoring": EXISTING,
                "slackWebhookUrl": "https://hooks.slack.example/T0/B0/x",
            },
        )
