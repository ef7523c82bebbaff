"""REVIEW9 R4: a destroy on EKS/GKE waits for the disks of the claims it deleted before the storage driver, the
nodes and the cluster go (infra/clusters/volumes.py). Checked on the recorded wait-for graph (Pulumi deletes in
reverse dependency order) and by running the delete step against a fake kubectl."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from infra.clusters.volumes import KUBECONFIG_ENV, release_wait_script
from infra.deployability import Graph
from tests.infra.conftest import run

COMMAND = "command:local:Command"
NAMESPACE = "kubernetes:core/v1:Namespace"
RELEASE = "kubernetes:helm.sh/v3:Release"
HOLDS_VOLUMES = {
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:core/v1:PersistentVolumeClaim",
    "kubernetes:core/v1:Namespace",
    "kubernetes:helm.sh/v3:Release",
    "kubernetes:postgresql.cnpg.io/v1:Cluster",
}


@pytest.mark.parametrize(
    ("stack", "target", "driver"),
    [
        ("dev", "eks", ("ebs-csi", "eks-nodes", "gp3")),
        ("staging", "eks", ("ebs-csi", "gp3")),
        ("dev", "gke", ()),
        ("staging", "gke", ()),
    ],
)
def test_every_claim_is_deleted_before_the_wait_and_the_wait_before_the_driver(
    stack: str, target: str, driver: tuple[str, ...]
) -> None:
    result = run(stack, target)
    graph = Graph(result)
    released = result.by_name("volumes-released")
    assert released.type == COMMAND
    assert "kubectl get pv" in released.inputs["delete"]
    assert result.config
    assert released.inputs["environment"][KUBECONFIG_ENV]
    waited_for = graph.closure(released.urn)
    for name in driver:
        assert result.by_name(name).urn in waited_for, name  # deleted after the wait
    cluster_type = "aws:eks/cluster:Cluster" if target == "eks" else "gcp:container/cluster:Cluster"
    assert {r.urn for r in result.of_type(cluster_type)} <= waited_for
    # What makes claims (StatefulSets, CloudNativePG Clusters, charts with storage), and the namespaces they are in.
    makers = [r for r in result.resources if r.type in HOLDS_VOLUMES - {NAMESPACE, RELEASE}]
    spaces = {r.inputs["metadata"].get("namespace") for r in makers}
    holders = [
        *makers,
        *(r for r in result.of_type(NAMESPACE) if r.inputs["metadata"].get("name") in spaces),
        *(r for r in result.of_type(RELEASE) if r.inputs.get("namespace") in spaces),
    ]
    assert makers
    assert len(holders) >= 3
    for resource in holders:
        assert released.urn in graph.closure(resource.urn), resource.name  # deleted before the wait


@pytest.mark.parametrize("target", ["eks", "gke"])
def test_prod_keeps_no_wait(target: str) -> None:
    """Prod's classes retain the volumes (EKS) and its cluster is protected from deletion: nothing to wait for."""
    assert not [r for r in run("prod", target).resources if r.name == "volumes-released"]


def _fake_kubectl(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(
        "#!/bin/sh\n"
        'cat "$KUBECONFIG" > "$FAKE/seen-config"\n'
        'case "$2" in\n'
        '  pvc) cat "$FAKE/pvcs" ;;\n'
        '  pv) n=$(( $(cat "$FAKE/count" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$FAKE/count"\n'
        '      if [ -f "$FAKE/fail.$n" ]; then echo "error: the server is currently unable" >&2; exit 1; fi\n'
        '      if [ -f "$FAKE/pv.$n" ]; then cat "$FAKE/pv.$n"; else cat "$FAKE/pv"; fi ;;\n'
        "  *) exit 9 ;;\n"
        "esac\n"
    )
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE": str(tmp_path),
        KUBECONFIG_ENV: '{"kind": "Config"}',
    }


def _run(tmp_path: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess[str]:
    script = release_wait_script("gp3", timeout_seconds=timeout, poll_seconds=0)
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_delete_waits_until_the_released_volumes_are_gone(tmp_path: Path) -> None:
    env = _fake_kubectl(tmp_path)
    (tmp_path / "pvcs").write_text("kube-system/kept\n")
    # Two polls still see the volume of the deleted claim, the third sees it deleted by the driver.
    (tmp_path / "pv.1").write_text(
        "gp3 Delete rag/storage-qdrant-0 pvc-1\ngp3 Delete kube-system/kept pvc-2\n"
    )
    (tmp_path / "pv.2").write_text("gp3 Delete rag/storage-qdrant-0 pvc-1\n")
    (tmp_path / "pv").write_text("gp3 Delete kube-system/kept pvc-2\n")
    done = _run(tmp_path, env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "count").read_text().strip() == "3"
    assert (tmp_path / "seen-config").read_text() == '{"kind": "Config"}'


def test_volumes_of_live_claims_and_other_classes_are_not_waited_for(tmp_path: Path) -> None:
    env = _fake_kubectl(tmp_path)
    (tmp_path / "pvcs").write_text("rag/storage-qdrant-0\n")
    (tmp_path / "pv").write_text("gp3 Delete rag/storage-qdrant-0 pvc-1\ngp2 Delete gone/data pvc-3\n")
    done = _run(tmp_path, env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "count").read_text().strip() == "1"


def test_a_volume_never_deleted_fails_the_destroy_and_names_it(tmp_path: Path) -> None:
    env = _fake_kubectl(tmp_path)
    (tmp_path / "pvcs").write_text("")
    (tmp_path / "pv").write_text("gp3 Delete rag/data-redis-0 pvc-9\n")
    done = _run(tmp_path, env, timeout=0)
    assert done.returncode == 1
    assert "pvc-9" in done.stderr
    assert "run the destroy again" in done.stderr
    assert "pulumi state delete" not in done.stderr  # the cluster answers: the volume is the driver's


def test_no_kubectl_fails_the_delete_with_a_reason(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), KUBECONFIG_ENV: "{}"}
    done = subprocess.run(
        ["/bin/sh", "-c", release_wait_script("gp3", 0, 0)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "kubectl not found" in done.stderr


def test_a_failed_kubectl_call_is_retried_until_the_deadline(tmp_path: Path) -> None:
    """An API server hiccup during the destroy must not fail it: the next poll decides."""
    env = _fake_kubectl(tmp_path)
    (tmp_path / "pvcs").write_text("")
    (tmp_path / "fail.1").write_text("")
    (tmp_path / "pv").write_text("")
    done = _run(tmp_path, env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "count").read_text().strip() == "2"
    assert "unable" in done.stderr
    # Failing at every poll until the deadline fails the destroy, saying why.
    for n in range(1, 4):
        (tmp_path / f"fail.{n}").write_text("")
    (tmp_path / "count").unlink()
    done = _run(tmp_path, env, timeout=0)
    assert done.returncode == 1
    assert "kubectl failed" in done.stderr
    # A cluster that never answers again would fail every destroy here: the way out is named.
    assert "pulumi state delete on this volumes-released resource" in done.stderr


def test_a_retained_volume_of_the_class_is_not_waited_for(tmp_path: Path) -> None:
    """A volume whose reclaim policy is Retain (patched so by hand, or a configured class that retains) stays after
    its claim on purpose: the driver never deletes it, so waiting for it would fail every destroy at the deadline."""
    env = _fake_kubectl(tmp_path)
    (tmp_path / "pvcs").write_text("")
    (tmp_path / "pv").write_text("gp3 Retain rag/storage-qdrant-0 pvc-7\n")
    done = _run(tmp_path, env, timeout=0)
    assert done.returncode == 0, done.stderr
    # The same volume with policy Delete is waited for (and named at the deadline).
    (tmp_path / "pv").write_text("gp3 Delete rag/storage-qdrant-0 pvc-7\n")
    done = _run(tmp_path, env, timeout=0)
    assert done.returncode == 1
    assert "pvc-7" in done.stderr
