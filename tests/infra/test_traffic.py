"""`make plan`'s `traffic` check (`infra.traffic`): the NetworkPolicies let through every connection the stack needs.

The flows come from the recorded program (URLs in the pods' environment, HTTPRoute backends of each Gateway,
ServiceMonitor/PodMonitor endpoints), and each is evaluated against every policy selecting its source (egress) and
its destination (ingress). The real stacks pass; each test then breaks one policy the way a real edit could and
checks that the flow it starves is reported.
"""

from __future__ import annotations

import copy
import dataclasses

from infra import deployability as d
from infra import traffic
from tests.infra.conftest import run


def traffic_findings(result) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check == "traffic"]


def edit_policy(result, name: str, change):
    policy = result.by_name(name)
    inputs = copy.deepcopy(policy.inputs)
    change(inputs["spec"])
    edited = dataclasses.replace(policy, inputs=inputs)
    return dataclasses.replace(result, resources=[edited if r is policy else r for r in result.resources])


def test_the_flows_of_staging_on_gke_are_derived_and_all_pass() -> None:
    result = run("staging", "gke")
    needed = {(f.source.what or f.source.cidr, f.target.what, f.port) for f in traffic.flows(result)}
    assert needed >= {
        ("Deployment rag", "StatefulSet qdrant", "http"),
        ("Deployment rag", "CloudNativePG postgres instances", 5432),
        ("Deployment rag", "StatefulSet redis", "redis"),
        ("Deployment rag-worker", "StatefulSet redis", "redis"),
        ("Deployment rag", "kube-dns", 53),
        ("CronJob qdrant-backups", "StatefulSet qdrant", "http"),
        ("Google front end / health check 35.191.0.0/16", "Deployment rag", "http"),
        ("Google front end / health check 130.211.0.0/22", "the ACME HTTP-01 solver", 8089),
        ("Prometheus", "StatefulSet qdrant", "http"),
        ("Prometheus", "CloudNativePG postgres instances", "metrics"),
        ("Prometheus", "Deployment rag", "http"),
        ("Prometheus", "Deployment rag-worker", "metrics"),
    }
    assert traffic.blocked(result) == []


def test_prometheus_shut_out_of_a_target_is_a_finding() -> None:
    result = run("staging", "gke")
    broken = edit_policy(result, "qdrant-netpol", lambda spec: spec["ingress"].pop())
    found = traffic_findings(broken)
    assert [f.name for f in found] == ["qdrant-servicemonitor"]
    assert "Prometheus scrapes ServiceMonitor qdrant" in found[0].message
    assert "ingress of StatefulSet qdrant" in found[0].message


def test_a_client_without_dns_or_without_its_data_store_egress_is_a_finding() -> None:
    result = run("dev")
    no_dns = edit_policy(result, "rag-api-netpol", lambda spec: spec["egress"].pop(0))
    assert {f.message.split(",")[0] for f in traffic_findings(no_dns)} == {"cluster DNS"}

    def no_postgres(spec: dict) -> None:
        spec["egress"] = [r for r in spec["egress"] if 5432 not in [p["port"] for p in r.get("ports", [])]]

    found = traffic_findings(edit_policy(result, "rag-api-netpol", no_postgres))
    assert [f.message.split(",")[0] for f in found] == ["DATABASE_URL connects to postgres-rw.rag:5432"]
    assert "egress of Deployment rag" in found[0].message


def test_a_data_store_that_does_not_admit_its_client_is_a_finding() -> None:
    result = run("dev")

    def only_api(spec: dict) -> None:
        spec["ingress"][0]["from"] = [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "api"}}}
        ]

    found = traffic_findings(edit_policy(result, "redis-netpol", only_api))
    assert [f.message.split(",")[0] for f in found] == ["REDIS_URL connects to redis.rag:6379"]
    assert "Deployment rag-worker" in found[0].message


def test_a_gateway_data_plane_the_api_does_not_admit_is_a_finding() -> None:
    # The regional class before the fix: the API admitted Google's front-end ranges, not the proxy-only subnet.
    result = run(
        "staging", "gke", gateway={"className": "gke-l7-regional-external-managed", "loadBalancer": "public"}
    )
    assert traffic_findings(result) == []

    def front_ends_only(spec: dict) -> None:
        for rule in spec["ingress"]:
            rule["from"] = [
                p for p in rule.get("from", []) if p.get("ipBlock", {}).get("cidr") != "10.129.0.0/23"
            ]

    found = traffic_findings(edit_policy(result, "rag-api-netpol", front_ends_only))
    assert [f.name for f in found] == ["gateway-route"]
    assert "proxy-only subnet 10.129.0.0/23 -> Deployment rag" in found[0].message
    # On an in-cluster implementation the proxies come from envoy-gateway-system.
    dev = run("dev")
    found = traffic_findings(
        edit_policy(dev, "rag-api-netpol", lambda spec: spec["ingress"][0].update({"from": []}) or None)
    )
    assert found == []  # an empty `from` admits every source
    found = traffic_findings(
        edit_policy(
            dev,
            "rag-api-netpol",
            lambda spec: spec["ingress"][0].update(
                {"from": [{"namespaceSelector": {"matchLabels": {"x": "y"}}}]}
            ),
        )
    )
    assert [f.name for f in found] == ["gateway-route"]
    assert "Envoy Gateway's proxies" in found[0].message


def test_a_monitor_that_selects_nothing_is_a_finding() -> None:
    result = run("staging", "gke")
    monitor = result.by_name("rag-servicemonitor")
    inputs = copy.deepcopy(monitor.inputs)
    inputs["spec"]["endpoints"][0]["port"] = "metrics"  # the Service's port is named http
    edited = dataclasses.replace(monitor, inputs=inputs)
    broken = dataclasses.replace(result, resources=[edited if r is monitor else r for r in result.resources])
    found = traffic_findings(broken)
    assert [f.name for f in found] == ["rag-servicemonitor"]
    assert "selects no Service or pod port" in found[0].message


def test_the_policy_semantics() -> None:
    pods = traffic.Pods("rag", {"app": "a", "tier": "x"})
    assert traffic._selects(
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]}, pods.labels
    )
    assert not traffic._selects(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}, pods.labels
    )
    assert traffic._selects({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, pods.labels)
    assert not traffic._selects({"matchLabels": {"app": "a"}}, None)  # unknown labels: only an empty selector
    lb = traffic.Pods(None, cidr="10.129.0.0/23")
    assert traffic._peer_matches({"ipBlock": {"cidr": "10.128.0.0/9"}}, "rag", lb)
    assert not traffic._peer_matches(
        {"ipBlock": {"cidr": "10.128.0.0/9", "except": ["10.129.0.0/24"]}}, "rag", lb
    )
    assert not traffic._peer_matches({"namespaceSelector": {}}, "rag", lb)  # an address is no pod
    assert traffic._peer_matches({"ipBlock": {"cidr": "0.0.0.0/0"}}, "rag", pods)
    assert not traffic._peer_matches({"podSelector": {}}, "other", pods)  # a podSelector alone: own namespace
    assert traffic._port_matches([{"port": 9000.0, "endPort": 9999}], 9443, None, "TCP")
    assert not traffic._port_matches([{"port": 53, "protocol": "UDP"}], 53, None, "TCP")
    assert traffic._port_matches([{"port": "metrics"}], 9187, "metrics", "TCP")


def alert_findings(result) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check == "alert-targets"]


def test_alerts_select_jobs_and_objects_the_stack_declares() -> None:
    result = run("staging", "gke")
    assert alert_findings(result) == []
    # Without Qdrant's ServiceMonitor nothing produces job="qdrant": its alerts could never fire.
    monitor = result.by_name("qdrant-servicemonitor")
    unmonitored = dataclasses.replace(result, resources=[r for r in result.resources if r is not monitor])
    found = alert_findings(unmonitored)
    assert found
    assert all('job="qdrant"' in f.message for f in found)
    # A rule naming a StatefulSet the stack does not declare.
    rules = result.by_name("monitoring-rules")
    inputs = copy.deepcopy(rules.inputs)
    for group in inputs["spec"]["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace('statefulset="redis"', 'statefulset="valkey"')
    renamed = dataclasses.replace(rules, inputs=inputs)
    found = alert_findings(
        dataclasses.replace(result, resources=[renamed if r is rules else r for r in result.resources])
    )
    assert found
    assert all('statefulset="valkey"' in f.message for f in found)
