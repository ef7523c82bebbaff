"""Tests of the shared pure spec builders and validators in infra/components/specs.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from infra.components import specs
from infra.components.specs import ComponentArgsError, EgressTarget, Resources


@pytest.mark.parametrize(
    "image",
    [
        "qdrant/qdrant:v1.15.4-unprivileged",
        "registry.example.com:5000/rag/service:0.1.0",
        "123.dkr.ecr.eu-west-1.amazonaws.com/rag/service@sha256:" + "a" * 64,
        "ghcr.io/cloudnative-pg/postgresql:17",
    ],
)
def test_pinned_images_pass(image: str) -> None:
    specs.check_image(image, "image")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("qdrant/qdrant", "pinned"),
        ("registry.example.com:5000/rag/service", "pinned"),
        ("qdrant/qdrant:latest", "latest"),
        ("Qdrant/Qdrant:v1", "valid image"),
    ],
)
def test_unpinned_images_fail(image: str, message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message):
        specs.check_image(image, "image")


def test_dns_labels_and_quantities() -> None:
    specs.check_dns_label("rag-prod", "ns")
    specs.check_quantity("500m", "q")
    specs.check_quantity("10Gi", "q")
    for bad in ("Rag", "rag_prod", "-rag", "a" * 64):
        with pytest.raises(ComponentArgsError):
            specs.check_dns_label(bad, "ns")
    with pytest.raises(ComponentArgsError):
        specs.check_quantity("ten gigs", "q")


def test_resources_spec_always_limits_memory_and_cpu_by_default() -> None:
    assert specs.resources_spec(Resources()) == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert "cpu" not in specs.resources_spec(Resources(cpu_limit=None))["limits"]


def test_security_contexts_are_restricted() -> None:
    container = specs.container_security_context(1000, 2000)
    assert container["allowPrivilegeEscalation"] is False
    assert container["runAsUser"] == 1000
    assert container["runAsGroup"] == 2000
    pod = specs.pod_security_context(1000, 3000)
    assert pod["fsGroup"] == 3000
    assert pod["runAsNonRoot"] is True


def test_placement_builders() -> None:
    spread = specs.topology_spread({"a": "b"}, hard_hosts=True)
    assert [c["whenUnsatisfiable"] for c in spread] == ["ScheduleAnyway", "DoNotSchedule"]
    required = specs.pod_anti_affinity({"a": "b"}, required=True)["podAntiAffinity"]
    assert (
        required["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"]
        == "kubernetes.io/hostname"
    )
    preferred = specs.pod_anti_affinity({"a": "b"}, required=False)["podAntiAffinity"]
    assert preferred["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100
    assert specs.pdb_spec({"a": "b"}) == {"maxUnavailable": 1, "selector": {"matchLabels": {"a": "b"}}}


def test_egress_rules_for_pods_other_namespaces_and_cidrs() -> None:
    pods = specs.egress_rule(EgressTarget("qdrant", 6333, {"app": "q"}, extra_ports=(6334,)))
    assert pods["to"] == [{"podSelector": {"matchLabels": {"app": "q"}}}]
    assert [p["port"] for p in pods["ports"]] == [6333, 6334]
    other_ns = specs.egress_rule(EgressTarget("x", 1, {"app": "x"}, namespace="data"))
    assert other_ns["to"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "data"}}
    cidr = specs.egress_rule(EgressTarget("rds", 5432, cidrs=("10.0.0.0/16",)))
    assert cidr["to"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    anywhere = specs.egress_rule(EgressTarget("redis", 6379))
    assert "to" not in anywhere


def test_network_policy_spec_directions() -> None:
    both = specs.network_policy_spec({"a": "b"}, ingress=[], egress=[])
    assert both["policyTypes"] == ["Ingress", "Egress"]
    ingress_only = specs.network_policy_spec({"a": "b"}, ingress=[], egress=None)
    assert ingress_only["policyTypes"] == ["Ingress"]
    assert "egress" not in ingress_only
    assert specs.default_deny_spec() == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_labels_keep_selectors_to_the_immutable_subset() -> None:
    full = specs.labels("rag", "rag", "api")
    selector = specs.selector_labels("rag", "rag", "api")
    assert selector.items() <= full.items()
    assert "app.kubernetes.io/managed-by" not in selector


def test_volume_claims_use_the_default_class_unless_one_is_named() -> None:
    default = specs.pvc_spec("10Gi")
    assert default == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}
    assert specs.pvc_spec("1Gi", "gp3")["storageClassName"] == "gp3"
    template = specs.volume_claim_template("data", {"app": "v"}, "2Gi", "standard")
    assert template["metadata"] == {"name": "data", "labels": {"app": "v"}}
    assert template["spec"]["storageClassName"] == "standard"


def test_pod_peers_and_tcp_ports() -> None:
    assert specs.pod_peers([{"a": "1"}, {"b": "2"}]) == [
        {"podSelector": {"matchLabels": {"a": "1"}}},
        {"podSelector": {"matchLabels": {"b": "2"}}},
    ]
    assert specs.tcp_ports([80, 443]) == [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]


def test_service_ports_target_the_container_port_by_name() -> None:
    assert specs.container_port("http", 8000) == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    assert specs.service_port("http", 80) == {
        "name": "http",
        "port": 80,
        "targetPort": "http",
        "protocol": "TCP",
    }


def test_in_cluster_store_checks_name_the_args_class_and_mode() -> None:
    good = SimpleNamespace(
        mode="incluster",
        namespace="rag",
        image="valkey/valkey:8.1.3",
        storage_size="2Gi",
        resources=Resources(),
        network_policy=True,
        client_selectors=({"app": "rag"},),
    )
    specs.check_in_cluster_store("RedisCacheArgs", good)
    with pytest.raises(ComponentArgsError) as missing:
        specs.check_in_cluster_store("RedisCacheArgs", SimpleNamespace(**{**vars(good), "namespace": None}))
    assert str(missing.value) == "RedisCacheArgs.namespace is required in incluster mode."
    no_clients = SimpleNamespace(**{**vars(good), "mode": "cloudnative", "client_selectors": ()})
    with pytest.raises(ComponentArgsError) as clients:
        specs.check_in_cluster_store("PostgresDatabaseArgs", no_clients)
    assert str(clients.value) == (
        "PostgresDatabaseArgs.client_selectors must name at least one client when network_policy is on."
    )
