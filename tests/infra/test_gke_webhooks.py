"""GKE with private nodes: the control plane reaches pods on 443 and 10250 only, so a webhook elsewhere needs a rule.

GKE's own `gke-<cluster>-<hash>-master` firewall rule admits the control plane's range on TCP 443 and 10250.
CloudNativePG serves its admission webhooks on 9443 (cloudnative-pg chart 0.26.1, `webhook.port`), and its
ValidatingWebhookConfiguration fails closed: without a rule, the API server's call times out and the `Cluster`
is refused, so a first `pulumi up` of staging (CloudNativePG on GKE) would fail there.
"""

from __future__ import annotations

import dataclasses

from infra import deployability as d
from infra.clusters.gke import CONTROL_PLANE_WEBHOOK_PORTS, MASTER_CIDR
from tests.infra.conftest import run


def capability_findings(result) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check in ("capability", "reads-order")]


def replaced(result, old, new):
    return dataclasses.replace(result, resources=[new if r is old else r for r in result.resources])


def without(result, resource):
    return dataclasses.replace(result, resources=[r for r in result.resources if r is not resource])


def test_the_gke_target_opens_the_webhook_ports_to_the_control_plane_and_the_cluster_waits() -> None:
    result = run("staging", "gke")
    cluster = result.of_type(d.GKE_CLUSTER)[0]
    (firewall,) = result.of_type(d.GKE_FIREWALL)
    assert firewall.inputs["network"] == cluster.inputs["network"]
    assert cluster.inputs["privateClusterConfig"]["masterIpv4CidrBlock"] == MASTER_CIDR
    assert 9443 in CONTROL_PLANE_WEBHOOK_PORTS
    assert d._firewall_allows(firewall, MASTER_CIDR, 9443)
    # The CloudNativePG Cluster (admitted by the webhook) and the operator release wait for the rule.
    graph = d.Graph(result)
    assert firewall.urn in graph.closure(result.by_name("postgres-cluster").urn)
    assert firewall.urn in graph.closure(result.by_name("postgres-operator").urn)
    assert capability_findings(result) == []


def test_without_the_rule_the_operator_release_is_a_finding() -> None:
    result = run("staging", "gke")
    (firewall,) = result.of_type(d.GKE_FIREWALL)
    found = capability_findings(without(result, firewall))
    assert [(f.check, f.name) for f in found] == [("capability", "postgres-operator")]
    assert "port 9443" in found[0].message
    assert f"tcp:9443 from {MASTER_CIDR}" in found[0].fix


def test_a_rule_for_another_port_or_range_does_not_count() -> None:
    result = run("staging", "gke")
    (firewall,) = result.of_type(d.GKE_FIREWALL)
    for change in (
        {"allows": [{"protocol": "tcp", "ports": ["8443"]}]},
        {"allows": [{"protocol": "udp", "ports": ["9443"]}]},
        {"sourceRanges": ["10.0.0.0/28"]},
        {"direction": "EGRESS"},
        {"network": "another-network"},
    ):
        changed = dataclasses.replace(firewall, inputs={**firewall.inputs, **change})
        found = capability_findings(replaced(result, firewall, changed))
        assert [f.name for f in found] == ["postgres-operator"], change
    # A port range and a wider source range do count.
    wide = dataclasses.replace(
        firewall,
        inputs={
            **firewall.inputs,
            "sourceRanges": ["172.16.0.0/12"],
            "allows": [{"protocol": "tcp", "ports": ["9000-9999"]}],
        },
    )
    assert capability_findings(replaced(result, firewall, wide)) == []


def test_a_webhook_moved_to_10250_or_a_cluster_without_private_nodes_needs_no_rule() -> None:
    result = run("staging", "gke")
    (firewall,) = result.of_type(d.GKE_FIREWALL)
    bare = without(result, firewall)
    release = bare.by_name("postgres-operator")
    values = {**release.inputs["values"], "webhook": {"port": 10250}}
    moved = dataclasses.replace(release, inputs={**release.inputs, "values": values})
    assert capability_findings(replaced(bare, release, moved)) == []
    cluster = bare.of_type(d.GKE_CLUSTER)[0]
    public = dataclasses.replace(
        cluster,
        inputs={**cluster.inputs, "privateClusterConfig": {"enablePrivateNodes": False}},
    )
    assert capability_findings(replaced(bare, cluster, public)) == []


def test_the_dependency_on_the_rule_is_checked() -> None:
    result = run("staging", "gke")
    (firewall,) = result.of_type(d.GKE_FIREWALL)
    # The rule exists but nothing waits for it: the namespace (and so the release) no longer depends on it.
    namespace = result.by_name("namespace")
    cut = dataclasses.replace(
        namespace, depends_on=tuple(u for u in namespace.depends_on if u != firewall.urn)
    )
    found = capability_findings(replaced(result, namespace, cut))
    assert ("reads-order", "postgres-operator") in [(f.check, f.name) for f in found]
