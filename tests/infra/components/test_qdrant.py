"""Tests of the QdrantCluster component: StatefulSet spec, services, secret handling, protection, validation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pulumi
import pytest

from infra.components import qdrant as q
from infra.components.rag_service import client_selector
from infra.components.specs import ComponentArgsError

from .conftest import Program, assert_all_parented, is_secret, resolve, run_components, validate_manifests


def cluster_args(**overrides: object) -> q.QdrantClusterArgs:
    values: dict[str, object] = {
        "namespace": "rag",
        "api_key": pulumi.Output.secret("s3cr3t-key"),
        "replicas": 3,
        "replication_factor": 2,
        "storage_size": "50Gi",
        "storage_class": "gp3",
        "protect": True,
        "client_selectors": (client_selector("rag"),),
        "service_monitor": True,
    }
    values.update(overrides)
    return q.QdrantClusterArgs(**values)  # type: ignore[arg-type]


def run_cluster(args: q.QdrantClusterArgs) -> Program:
    return run_components(lambda: q.QdrantCluster("qdrant", args))


# ---------------------------------------------------------------------------------------------- pure specs
def test_bootstrap_script_starts_consensus_on_pod_zero() -> None:
    script = q.bootstrap_script("qdrant", "rag")
    assert 'exec ./entrypoint.sh --uri "http://qdrant-0.qdrant-headless.rag.svc:6335"' in script
    assert '--bootstrap "http://qdrant-0.qdrant-headless.rag.svc:6335"' in script
    assert '--uri "http://qdrant-${INDEX}.qdrant-headless.rag.svc:6335"' in script


def test_container_runs_cluster_mode_with_key_from_secret() -> None:
    container = q.container_spec(cluster_args(), "qdrant", "qdrant-api-key")
    env = {e["name"]: e for e in container["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"]["value"] == "true"
    assert env["QDRANT__CLUSTER__P2P__PORT"]["value"] == "6335"
    assert env["QDRANT__SERVICE__API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "qdrant-api-key", "key": "api-key"}
    }
    assert "value" not in env["QDRANT__SERVICE__API_KEY"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 6333}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 6333}
    assert {p["containerPort"] for p in container["ports"]} == {6333, 6334, 6335}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_statefulset_spec_persistence_and_placement() -> None:
    spec = q.statefulset_spec(cluster_args(), "qdrant", "qdrant-api-key")
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "qdrant-headless"
    pvc = spec["volumeClaimTemplates"][0]["spec"]
    assert pvc["resources"]["requests"]["storage"] == "50Gi"
    assert pvc["storageClassName"] == "gp3"
    affinity = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in affinity
    preferred = q.statefulset_spec(cluster_args(anti_affinity="preferred"), "qdrant", "k")
    assert (
        "preferredDuringSchedulingIgnoredDuringExecution"
        in preferred["template"]["spec"]["affinity"]["podAntiAffinity"]
    )
    no_class = q.statefulset_spec(cluster_args(storage_class=None), "qdrant", "k")
    assert "storageClassName" not in no_class["volumeClaimTemplates"][0]["spec"]


def test_headless_service_publishes_not_ready_peers() -> None:
    spec = q.headless_service_spec({"a": "b"})
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert 6335 in {p["port"] for p in spec["ports"]}
    assert 6335 not in {p["port"] for p in q.client_service_spec({"a": "b"})["ports"]}


def test_network_policy_admits_clients_peers_and_prometheus() -> None:
    match = {"app.kubernetes.io/name": "qdrant"}
    spec = q.network_policy_spec(cluster_args(), match)
    client_rule, peer_rule, monitoring_rule = spec["ingress"]
    assert client_rule["from"] == [{"podSelector": {"matchLabels": client_selector("rag")}}]
    assert {p["port"] for p in client_rule["ports"]} == {6333, 6334}
    assert {p["port"] for p in peer_rule["ports"]} == {6333, 6334, 6335}
    assert monitoring_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"replication_factor": 4}, "replication_factor"),
        ({"replicas": 0}, "replicas"),
        ({"image": "qdrant/qdrant:latest"}, "latest"),
        ({"storage_size": "big"}, "quantity"),
        ({"client_selectors": ()}, "client_selectors"),
        ({"namespace": "RAG"}, "namespace"),
    ],
)
def test_invalid_args_fail_with_a_sentence(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        q.validate_args(cluster_args(**overrides))
    assert str(info.value).endswith(".")


# ---------------------------------------------------------------------------------------------- component
def test_children_names_parents_and_protection() -> None:
    program = run_cluster(cluster_args())
    component = assert_all_parented(program, "rag:data:QdrantCluster")
    assert {r.name for r in program.resources if r is not component} == {
        "qdrant-sa",
        "qdrant-api-key",
        "qdrant-headless",
        "qdrant-service",
        "qdrant-statefulset",
        "qdrant-pdb",
        "qdrant-netpol",
        "qdrant-servicemonitor",
    }
    assert program.named("qdrant-statefulset").protect is True
    assert program.named("qdrant-api-key").protect is True
    assert program.named("qdrant-service").protect is False


def test_unprotected_single_node_has_no_pdb() -> None:
    program = run_cluster(
        cluster_args(replicas=1, replication_factor=1, protect=False, service_monitor=False)
    )
    assert "kubernetes:policy/v1:PodDisruptionBudget" not in program.types()
    assert program.named("qdrant-statefulset").protect is False
    assert program.named("qdrant-statefulset").inputs["spec"]["replicas"] == 1


def test_api_key_stays_secret() -> None:
    program = run_cluster(cluster_args())
    secret = program.named("qdrant-api-key")
    assert "stringData" in secret.secret_paths
    assert secret.inputs["stringData"] == {"api-key": "s3cr3t-key"}
    statefulset = program.named("qdrant-statefulset")
    assert not statefulset.secret_paths
    assert "s3cr3t-key" not in repr(statefulset.inputs)
    cluster: q.QdrantCluster = program.result
    assert is_secret(cluster.api_key)
    assert resolve(cluster.api_key) == "s3cr3t-key"


def test_outputs() -> None:
    program = run_cluster(cluster_args())
    cluster: q.QdrantCluster = program.result
    assert resolve(cluster.endpoint) == "http://qdrant.rag.svc:6333"
    assert cluster.replication_factor == 2
    assert cluster.peer_urls == [f"http://qdrant-{i}.qdrant-headless.rag.svc:6333" for i in range(3)]
    assert cluster.egress_target.port == 6333
    assert cluster.egress_target.pod_labels == cluster.selector_labels


def test_service_monitor_authenticates_with_the_api_key_secret() -> None:
    program = run_cluster(cluster_args())
    spec = program.named("qdrant-servicemonitor").inputs["spec"]
    assert spec["endpoints"][0]["authorization"]["credentials"] == {
        "name": "qdrant-api-key",
        "key": "api-key",
    }
    # Only the client Service matches, so each node is scraped once.
    selector = spec["selector"]["matchLabels"]
    client = program.named("qdrant-service").inputs["metadata"]["labels"]
    headless = program.named("qdrant-headless").inputs["metadata"]["labels"]
    assert selector.items() <= client.items()
    assert not selector.items() <= headless.items()


def test_manifests_pass_strict_kubernetes_validation() -> None:
    assert validate_manifests(run_cluster(cluster_args())) == 7


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("qdrant-0", ["--uri", "http://qdrant-0.qdrant-headless.rag.svc:6335"]),
        (
            "qdrant-2",
            [
                "--bootstrap",
                "http://qdrant-0.qdrant-headless.rag.svc:6335",
                "--uri",
                "http://qdrant-2.qdrant-headless.rag.svc:6335",
            ],
        ),
    ],
)
def test_bootstrap_script_runs_the_entrypoint_with_peer_arguments(
    tmp_path: Path, hostname: str, expected: list[str]
) -> None:
    entrypoint = tmp_path / "entrypoint.sh"
    entrypoint.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n', encoding="utf-8")
    entrypoint.chmod(0o755)
    result = subprocess.run(
        ["/bin/bash", "-c", q.bootstrap_script("qdrant", "rag")],
        cwd=tmp_path,
        env={"HOSTNAME": hostname, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.splitlines() == expected
