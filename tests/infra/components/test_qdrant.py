"""Tests of the QdrantCluster component: StatefulSet spec, services, secret handling, protection, validation."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

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


def test_snapshot_scratch_volume_only_when_sized_else_snapshots_live_on_the_data_volume() -> None:
    def parts(args: q.QdrantClusterArgs) -> tuple[list[str], dict[str, str], list[str]]:
        pod = q.statefulset_spec(args, "qdrant", "k")["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        return [v["name"] for v in pod["volumes"]], env, list(mounts)

    volumes, env, mounts = parts(cluster_args())  # no size: backups off
    assert "snapshots" not in volumes
    assert "snapshots" not in mounts
    # Never the read-only root filesystem: a manual snapshot lands on the data volume.
    assert env["QDRANT__STORAGE__SNAPSHOTS_PATH"] == "/qdrant/storage/snapshots"
    assert env["QDRANT__STORAGE__TEMP_PATH"] == "/qdrant/storage/snapshots/tmp"

    volumes, env, mounts = parts(cluster_args(snapshots_size="100Gi", snapshots_storage_class="gp3"))
    assert "snapshots" in volumes
    assert "snapshots" in mounts
    assert env["QDRANT__STORAGE__SNAPSHOTS_PATH"] == "/qdrant/snapshots"
    assert env["QDRANT__STORAGE__TEMP_PATH"] == "/qdrant/snapshots/tmp"
    pod = q.statefulset_spec(cluster_args(snapshots_size="100Gi"), "qdrant", "k")["template"]["spec"]
    claim = next(v for v in pod["volumes"] if v["name"] == "snapshots")["ephemeral"]["volumeClaimTemplate"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"


def test_an_acknowledged_scale_down_is_recorded_on_the_statefulset() -> None:
    labels = {"app": "qdrant"}
    assert (
        q.SCALE_DOWN_ANNOTATION not in q.statefulset_metadata(cluster_args(), "qdrant", labels)["annotations"]
    )
    meta = q.statefulset_metadata(cluster_args(scale_down_acknowledged=3), "qdrant", labels)
    assert meta["annotations"][q.SCALE_DOWN_ANNOTATION].startswith("3 ")
    with pytest.raises(ComponentArgsError, match="scale_down_acknowledged must be None or equal to replicas"):
        q.validate_args(cluster_args(scale_down_acknowledged=2))


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
        "qdrant-bootstrap",
        "qdrant-founded",
        "qdrant-headless",
        "qdrant-service",
        "qdrant-statefulset",
        "qdrant-pdb",
        "qdrant-netpol",
        "qdrant-servicemonitor",
        "qdrant-digest-salt",
    }
    assert program.named("qdrant-statefulset").protect is True
    # A key rotation replaces the Secret (test_day_two.py): protected, it could not be rotated in prod.
    assert program.named("qdrant-api-key").protect is False
    assert program.named("qdrant-service").protect is False
    # The `founded` marker stops a node on an empty volume from founding a second cluster: kept like the data.
    assert program.named("qdrant-founded").protect is True


def test_founded_marker_follows_the_ready_statefulset_and_the_pods_see_both_configmaps() -> None:
    program = run_cluster(cluster_args())
    statefulset = program.named("qdrant-statefulset")
    bootstrap = program.named("qdrant-bootstrap")
    founded = program.named("qdrant-founded")
    # Pulumi creates the marker only after the StatefulSet's create finished its await (all replicas ready), so
    # the first creation's pod 0 never sees it; the node count exists before any pod starts.
    assert statefulset.urn in founded.depends_on
    assert bootstrap.urn in statefulset.depends_on
    assert bootstrap.inputs["data"] == {"peers": "3"}
    assert founded.inputs["metadata"]["name"] == "qdrant-founded"
    pod = statefulset.inputs["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "bootstrap")
    assert volume["projected"]["sources"] == [
        {"configMap": {"name": "qdrant-bootstrap"}},
        {"configMap": {"name": "qdrant-founded", "optional": True}},
    ]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "bootstrap")
    assert mount == {"name": "bootstrap", "mountPath": q.BOOTSTRAP_DIR, "readOnly": True}
    assert run_cluster(cluster_args(replicas=5)).named("qdrant-bootstrap").inputs["data"] == {"peers": "5"}


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


def test_a_second_key_reaches_every_node_from_the_secret_and_any_key_change_restarts_the_nodes() -> None:
    new = cluster_args(image="qdrant/qdrant:v1.19.0-unprivileged")
    one = run_cluster(new)
    two = run_cluster(
        cluster_args(image="qdrant/qdrant:v1.19.0-unprivileged", alt_api_key=pulumi.Output.secret("n3xt-key"))
    )
    assert two.named("qdrant-api-key").inputs["stringData"] == {
        "api-key": "s3cr3t-key",
        "alt-api-key": "n3xt-key",
    }
    assert "stringData" in two.named("qdrant-api-key").secret_paths
    env = {
        e["name"]: e
        for e in two.named("qdrant-statefulset").inputs["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["QDRANT__SERVICE__ALT_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "qdrant-api-key", "key": "alt-api-key"}
    }
    assert "QDRANT__SERVICE__ALT_API_KEY" not in repr(one.named("qdrant-statefulset").inputs)

    def digest(program: Program) -> str:
        statefulset = program.named("qdrant-statefulset")
        assert not statefulset.secret_paths  # a digest, not a key: the StatefulSet's diff stays readable
        return statefulset.inputs["spec"]["template"]["metadata"]["annotations"][q.KEYS_ANNOTATION]

    rotated = run_cluster(cluster_args(image="qdrant/qdrant:v1.19.0-unprivileged", api_key="other-key"))
    # Adding the second key, and changing the first, each change the pod template: the nodes restart one by one.
    assert len({digest(one), digest(two), digest(rotated)}) == 3
    # Keyed with the stack's secret salt (a RandomPassword of the component): not a plain hash of the keys.
    assert digest(one) == q.keys_digest("s3cr3t-key", None, "random-qdrant-digest-salt")
    assert digest(one) != hashlib.sha256(b"s3cr3t-key\0").hexdigest()
    assert "n3xt-key" not in repr(two.named("qdrant-statefulset").inputs)


def test_a_second_key_on_a_qdrant_without_alt_api_key_is_refused() -> None:
    with pytest.raises(ComponentArgsError, match=r"alt_api_key needs Qdrant >= 1\.17"):
        q.validate_args(cluster_args(image="qdrant/qdrant:v1.16.3-unprivileged", alt_api_key="n3xt-key"))
    q.validate_args(cluster_args(image="qdrant/qdrant:v1.17.1-unprivileged", alt_api_key="n3xt-key"))


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
    assert validate_manifests(run_cluster(cluster_args())) == 9


# ---------------------------------------------------------------------------------------------- the bootstrap script
# The real script, run by bash, against stand-in peers: each peer is an HTTP server on its own loopback address
# (node i at 127.0.1.1<i>, one port for all, like the headless DNS names with one port) answering /readyz.
PEER_HOST = "127.0.1.1%s"


class Readyz(BaseHTTPRequestHandler):
    status = 200

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Peers:
    """Stand-in nodes, started on demand: `up(i)` answers /readyz 200, `up(i, 503)` runs but is not ready."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.1.10", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self.servers: list[ThreadingHTTPServer] = []

    def up(self, index: int, status: int = 200) -> None:
        handler = type(f"Readyz{index}", (Readyz,), {"status": status})
        server = ThreadingHTTPServer((f"127.0.1.1{index}", self.port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def peers() -> Iterator[Peers]:
    stand_ins = Peers()
    try:
        yield stand_ins
    finally:
        stand_ins.close()


def p2p(index: int) -> str:
    return f"http://127.0.1.1{index}:6335"


def start_node(
    tmp_path: Path,
    peers: Peers,
    index: int,
    *,
    replicas: int = 3,
    state: str | None = None,
    founded: bool = True,
    override: bool = False,
    image_version: str | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    """Run the real bootstrap script as pod `index`; returns the run and the entrypoint's arguments (None: not run)."""
    node = tmp_path / f"node{index}"
    storage, bootstrap = node / "storage", node / "bootstrap"
    storage.mkdir(parents=True)
    bootstrap.mkdir()
    (bootstrap / "peers").write_text(str(replicas), encoding="utf-8")
    if founded:
        (bootstrap / "founded").write_text("formed", encoding="utf-8")
    if state is not None:
        (storage / "raft_state.json").write_text(state, encoding="utf-8")
    if override:
        (storage / q.FOUND_OVERRIDE).write_text("", encoding="utf-8")
    entrypoint = node / "entrypoint.sh"
    entrypoint.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{node}/args"\n', encoding="utf-8")
    entrypoint.chmod(0o755)
    result = subprocess.run(
        ["/bin/bash", "-c", q.bootstrap_script("qdrant", "rag")],
        cwd=node,
        env={
            "HOSTNAME": f"qdrant-{index}",
            "PATH": os.environ["PATH"],
            "QDRANT__STORAGE__STORAGE_PATH": str(storage),
            "QDRANT_BOOTSTRAP_DIR": str(bootstrap),
            "QDRANT_BOOTSTRAP_PEER_HOST": PEER_HOST,
            "QDRANT_BOOTSTRAP_PROBE_PORT": str(peers.port),
            "QDRANT_BOOTSTRAP_WAIT_SECONDS": "0",
            "QDRANT_BOOTSTRAP_MAX_ROUNDS": "2",
            **({"QDRANT_IMAGE_VERSION": image_version} if image_version else {}),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    args = node / "args"
    return result, args.read_text().splitlines() if args.exists() else None


def events(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [json.loads(line)["action"] for line in result.stdout.splitlines()]


def test_bootstrap_first_creation_pod_zero_founds_and_the_others_join_it(
    tmp_path: Path, peers: Peers
) -> None:
    # All pods start at once (Parallel) with empty volumes and no `founded` marker yet.
    result, args = start_node(tmp_path, peers, 0, founded=False)
    assert result.returncode == 0, result.stderr
    assert args == ["--uri", p2p(0)]
    assert events(result) == ["found"]
    # Pod 2 before pod 0 answers: it waits and never founds a cluster of its own.
    waiting, args = start_node(tmp_path / "early", peers, 2, founded=False)
    assert waiting.returncode == 1
    assert args is None
    assert events(waiting) == ["wait", "wait"]
    peers.up(0)
    joined, args = start_node(tmp_path, peers, 2, founded=False)
    assert args == ["--bootstrap", p2p(0), "--uri", p2p(2)]
    assert events(joined) == ["join"]


# raft_state.json as Qdrant writes it (serde_json, compact): a member past term 0, and a node whose join failed.
JOINED = '{"state":{"hard_state":{"term":7,"vote":1,"commit":42},"conf_state":{"voters":[1,2,3]}},"this_peer_id":2}'
NEVER_JOINED = (
    '{"state":{"hard_state":{"term":0,"vote":0,"commit":0},"conf_state":{"voters":[]}},"this_peer_id":9}'
)


def test_bootstrap_restart_with_state_starts_at_once_without_any_peer(tmp_path: Path, peers: Peers) -> None:
    # A whole-cluster restart: nobody answers yet, every node has Raft state (Qdrant ignores the flags then).
    result, args = start_node(tmp_path, peers, 0, state=JOINED)
    assert result.returncode == 0, result.stderr
    assert args == ["--uri", p2p(0)]
    result, args = start_node(tmp_path, peers, 1, state=JOINED)
    assert args == ["--bootstrap", p2p(0), "--uri", p2p(1)]
    assert events(result) == ["restart"]


def test_bootstrap_pod_zero_on_an_empty_volume_joins_a_running_peer(tmp_path: Path, peers: Peers) -> None:
    # The O2 incident: pod 0's volume is new while the cluster runs on nodes 1 and 2 (node 1 not ready yet).
    peers.up(1, status=503)
    peers.up(2)
    result, args = start_node(tmp_path, peers, 0)
    assert result.returncode == 0, result.stderr
    assert args == ["--bootstrap", p2p(2), "--uri", p2p(0)]
    assert events(result) == ["join"]


def test_bootstrap_a_failed_join_is_no_state_pod_zero_retries_the_join(tmp_path: Path, peers: Peers) -> None:
    # Pod 0's first join was refused (its URI still registered to its dead predecessor): Qdrant left a term-0
    # raft_state.json. Started with --uri alone it would found a cluster; it must join again instead, or wait.
    result, args = start_node(tmp_path / "alone", peers, 0, state=NEVER_JOINED)
    assert (result.returncode, args) == (1, None)
    peers.up(1)
    result, args = start_node(tmp_path, peers, 0, state=NEVER_JOINED)
    assert args == ["--bootstrap", p2p(1), "--uri", p2p(0)]


def test_bootstrap_pod_zero_on_an_empty_volume_waits_while_no_peer_answers(
    tmp_path: Path, peers: Peers
) -> None:
    # Nodes 1 and 2 are still loading their collections (or their zone is down): pod 0 must not found.
    peers.up(1, status=503)
    result, args = start_node(tmp_path, peers, 0)
    assert result.returncode == 1
    assert args is None
    assert events(result) == ["wait", "wait"]
    assert "never founding a second cluster" in result.stdout


def test_bootstrap_all_volumes_empty_needs_an_operator_to_found_a_new_cluster(
    tmp_path: Path, peers: Peers
) -> None:
    for index in range(3):
        result, args = start_node(tmp_path / "lost", peers, index)
        assert (result.returncode, args) == (1, None)
    result, args = start_node(tmp_path, peers, 0, override=True)
    assert result.returncode == 0, result.stderr
    assert args == ["--uri", p2p(0)]
    assert not (tmp_path / "node0" / "storage" / q.FOUND_OVERRIDE).exists()  # one use only
    # The override means nothing on another node: only pod 0 founds.
    result, args = start_node(tmp_path / "other", peers, 1, override=True)
    assert (result.returncode, args) == (1, None)


def test_bootstrap_single_node_on_an_empty_volume_starts_empty(tmp_path: Path, peers: Peers) -> None:
    result, args = start_node(tmp_path, peers, 0, replicas=1)
    assert result.returncode == 0, result.stderr
    assert args == ["--uri", p2p(0)]


def test_bootstrap_script_renders_the_headless_names_and_refuses_a_hostname_without_an_ordinal(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        ["/bin/bash", "-c", q.bootstrap_script("qdrant", "rag")],
        env={"HOSTNAME": "qdrant", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "does not end in a pod ordinal" in result.stderr
    script = q.bootstrap_script("qdrant", "rag")
    assert 'HOST_PATTERN="${QDRANT_BOOTSTRAP_PEER_HOST:-qdrant-%s.qdrant-headless.rag.svc}"' in script


def test_bootstrap_script_uses_the_headless_names_by_default(tmp_path: Path) -> None:
    node = tmp_path / "node"
    (node / "storage").mkdir(parents=True)
    (node / "storage" / "raft_state.json").write_text(JOINED, encoding="utf-8")
    (node / "entrypoint.sh").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n', encoding="utf-8")
    (node / "entrypoint.sh").chmod(0o755)
    result = subprocess.run(
        ["/bin/bash", "-c", q.bootstrap_script("qdrant", "rag")],
        cwd=node,
        env={
            "HOSTNAME": "qdrant-2",
            "PATH": os.environ["PATH"],
            "QDRANT__STORAGE__STORAGE_PATH": str(node / "storage"),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.splitlines()[1:] == [
        "--bootstrap",
        "http://qdrant-0.qdrant-headless.rag.svc:6335",
        "--uri",
        "http://qdrant-2.qdrant-headless.rag.svc:6335",
    ]


def test_bootstrap_refuses_an_image_more_than_one_minor_ahead_of_the_cluster(
    tmp_path: Path, peers: Peers
) -> None:
    # Mid-upgrade from 1.15: one peer already runs 1.16.3. Qdrant keeps storage compatible for one minor only.
    state = JOINED.replace(
        ',"this_peer_id"',
        ',"peer_metadata_by_id":{"1":{"version":"1.15.4"},"3":{"version":"1.16.3"}},"this_peer_id"',
    )
    result, args = start_node(tmp_path / "ok", peers, 1, state=state, image_version="1.16.3")
    assert result.returncode == 0, result.stderr
    assert args == ["--bootstrap", p2p(0), "--uri", p2p(1)]
    jump, args = start_node(tmp_path / "jump", peers, 1, state=state, image_version="1.17.1")
    assert (jump.returncode, args) == (1, None)
    assert events(jump) == ["refuse"]
    assert "more than one minor ahead of Qdrant 1.15.4" in jump.stdout
    # Without version records (or an image of another tag: no QDRANT_IMAGE_VERSION) nothing is refused.
    result, args = start_node(tmp_path / "plain", peers, 1, state=JOINED, image_version="1.19.0")
    assert result.returncode == 0, result.stderr


def test_bootstrap_refuses_an_older_minor_than_the_nodes_own_storage_ran(
    tmp_path: Path, peers: Peers
) -> None:
    # A rollback of 1.16 -> 1.15 after node 2 (peer 3) ran 1.16.3: its storage was migrated forward, and Qdrant
    # supports no downgrade. Node 1 (peer 2) never ran 1.16, so it may go back; a patch step back passes.
    state = JOINED.replace(
        ',"this_peer_id":2',
        ',"peer_metadata_by_id":{"1":{"version":"1.15.4"},"2":{"version":"1.15.4"},"3":{"version":"1.16.3"}},'
        '"this_peer_id":2',
    )
    migrated = state.replace('"this_peer_id":2', '"this_peer_id":3')
    back, args = start_node(tmp_path / "back", peers, 2, state=migrated, image_version="1.15.4")
    assert (back.returncode, args) == (1, None)
    assert events(back) == ["refuse"]
    assert "older than Qdrant 1.16.3, which last ran on this node's storage" in back.stdout
    major, args = start_node(tmp_path / "major", peers, 2, state=migrated, image_version="0.16.3")
    assert (major.returncode, args) == (1, None)
    untouched, args = start_node(tmp_path / "untouched", peers, 1, state=state, image_version="1.15.4")
    assert untouched.returncode == 0, untouched.stdout
    assert args == ["--bootstrap", p2p(0), "--uri", p2p(1)]
    patch, args = start_node(tmp_path / "patch", peers, 2, state=migrated, image_version="1.16.1")
    assert patch.returncode == 0, patch.stdout
    assert events(patch) == ["restart"]


def test_the_image_version_reaches_the_bootstrap_check() -> None:
    env = {e["name"]: e.get("value") for e in q.container_spec(cluster_args(), "qdrant", "k")["env"]}
    assert env["QDRANT_IMAGE_VERSION"] == q.image_version(q.DEFAULT_IMAGE)
    custom = q.container_spec(cluster_args(image="registry.local/qdrant:patched"), "qdrant", "k")
    assert "QDRANT_IMAGE_VERSION" not in {e["name"] for e in custom["env"]}
    assert q.image_version("qdrant/qdrant:v1.16.3-unprivileged") == "1.16.3"


def test_the_default_qdrant_is_within_the_service_clients_window_and_the_deployed_stacks_keep_theirs() -> (
    None
):
    """qdrant-client warns at start when the server's minor is more than one away from its own
    (qdrant_client/common/version_check.py `is_compatible`); the stacks deployed on 1.15 keep it pinned, since
    Qdrant moves one minor at a time (the bootstrap script refuses a jump)."""
    repo = Path(__file__).resolve().parents[3]
    (client,) = [
        line.split("==")[1]
        for line in (repo / "service" / "requirements.txt").read_text().splitlines()
        if line.startswith("qdrant-client==")
    ]
    project = yaml.safe_load((repo / "Pulumi.yaml").read_text())
    default = project["config"]["qdrant"]["default"]["version"]
    assert q.image_version(q.DEFAULT_IMAGE) == default.lstrip("v")

    def minor(version: str) -> tuple[int, int]:
        major, minor_, _ = version.lstrip("v").split(".")
        return int(major), int(minor_)

    assert minor(default)[0] == minor(client)[0]
    assert abs(minor(default)[1] - minor(client)[1]) <= 1
    for stack in ("dev", "staging", "prod"):
        pinned = yaml.safe_load((repo / f"Pulumi.{stack}.yaml").read_text())["config"]["rag:qdrant"][
            "version"
        ]
        assert pinned == "v1.15.4", stack


def _layout(state: str, layout: str) -> str:
    """`state` as another JSON writer would lay it out (the same document)."""
    document = json.loads(state)
    if layout == "compact":
        return state
    if layout == "pretty":  # serde_json::to_writer_pretty: two spaces, "key": value
        return json.dumps(document, indent=2)
    if layout == "spaced":  # one line, a space after every separator
        return json.dumps(document, separators=(", ", ": "))
    return json.dumps(document, indent="\t").replace("\n", "\r\n")  # tabs and CRLF


@pytest.mark.parametrize("layout", ["compact", "pretty", "spaced", "tabs-crlf"])
def test_bootstrap_reads_raft_state_whatever_its_whitespace(
    tmp_path: Path, peers: Peers, layout: str
) -> None:
    """The script greps raft_state.json for the term, this node's peer id and the versions peers ran. Qdrant writes
    it compact (serde_json through a BufWriter); a pretty-printed file made every check skip itself: a term-0 file
    counted as state (the node founded a cluster of its own instead of joining), and neither version check fired."""
    # Past term 0: a restart, no peer needed.
    result, args = start_node(tmp_path / "joined", peers, 1, state=_layout(JOINED, layout))
    assert (result.returncode, events(result)) == (0, ["restart"]), result.stdout + result.stderr
    assert args == ["--bootstrap", p2p(0), "--uri", p2p(1)]
    # Term 0 (a failed join): no state, so it waits for a peer rather than found.
    result, args = start_node(tmp_path / "never", peers, 0, state=_layout(NEVER_JOINED, layout))
    assert (result.returncode, args, events(result)) == (1, None, ["wait", "wait"])
    versions = JOINED.replace(
        ',"this_peer_id":2',
        ',"peer_metadata_by_id":{"1":{"version":"1.15.4"},"3":{"version":"1.16.3"}},"this_peer_id":3',
    )
    # This node (peer 3) ran 1.16.3: 1.15 is a downgrade; peer 1's 1.15.4 makes 1.17 a jump of two minors.
    for image, refusal in (
        ("1.15.4", "older than Qdrant 1.16.3, which last ran on this node's storage"),
        ("1.17.0", "more than one minor ahead of Qdrant 1.15.4"),
    ):
        result, args = start_node(
            tmp_path / image, peers, 2, state=_layout(versions, layout), image_version=image
        )
        assert (result.returncode, args, events(result)) == (1, None, ["refuse"]), result.stdout
        assert refusal in result.stdout
    result, args = start_node(
        tmp_path / "same", peers, 2, state=_layout(versions, layout), image_version="1.16.3"
    )
    assert (result.returncode, events(result)) == (0, ["restart"]), result.stdout
