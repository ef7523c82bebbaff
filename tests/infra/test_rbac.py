"""The Kubernetes RBAC a deploy needs (`infra.rbac`): generated from the program, evaluated like the API server
would, and the committed docs/rbac/*.yaml kept equal to what the program declares."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from infra import rbac
from infra.components.monitoring import MONITORING_CRDS
from infra.offline import RecordedResource, StackRun
from infra.render import HELM_TYPES, is_kubernetes_object, manifest_of
from tests.infra.conftest import run

VERBS = ("get", "list", "watch", "create", "patch", "delete")


def allows(
    docs: list[dict[str, Any]], verb: str, group: str, resource: str, namespace: str | None, name: str = ""
) -> bool:
    """Kubernetes RBAC's decision for one request, from ClusterRoles (every namespace and cluster-scoped
    objects) and Roles (their own namespace only); the manifests are bound to the same subject."""
    for doc in docs:
        if doc["kind"] == "Role" and doc["metadata"]["namespace"] != namespace:
            continue
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in doc["rules"]:
            if (
                group in rule["apiGroups"]
                and resource in rule["resources"]
                and verb in rule["verbs"]
                and (not rule.get("resourceNames") or name in rule["resourceNames"])
            ):
                return True
    return False


def kubernetes_objects(result: StackRun) -> list[tuple[str, str, str | None, str]]:
    """(group, resource, namespace, name) of every object the run declares."""
    out = []
    for resource in result.resources:
        if not is_kubernetes_object(resource):
            continue
        manifest = manifest_of(resource)
        api_version, kind = str(manifest["apiVersion"]), str(manifest["kind"])
        group = api_version.split("/", 1)[0] if "/" in api_version else ""
        metadata = manifest.get("metadata") or {}
        namespace = None if kind in rbac.CLUSTER_SCOPED else metadata.get("namespace", "default")
        out.append((group, rbac.plural(kind), namespace, str(metadata.get("name", ""))))
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"monitoring": {"enabled": True}},
        {"monitoring": {"enabled": True, "mode": "existing"}},
        {"tls": {"installCertManager": False}, "postgres": {"cloudnative": {"installOperator": False}}},
    ],
    ids=["dev", "monitoring", "existing-prometheus", "no-operators"],
)
def test_the_generated_roles_allow_every_object_the_program_declares(overrides: dict[str, Any]) -> None:
    result = run("dev", **overrides)
    docs = rbac.manifests(result)
    objects = kubernetes_objects(result)
    assert objects
    for group, resource, namespace, _name in objects:
        for verb in VERBS:
            assert allows(docs, verb, group, resource, namespace), (verb, group, resource, namespace)
    for release in (r for r in result.resources if r.type in HELM_TYPES):
        chart = rbac.CHART_OBJECTS[release.inputs["chart"]]
        namespace = release.inputs["namespace"]
        assert allows(docs, "create", "", "secrets", namespace)  # Helm's release records
        for group, kind in chart.namespaced:
            assert allows(docs, "create", group, rbac.plural(kind), namespace), (release.name, kind)
        for group, kind in chart.cluster:
            assert allows(docs, "create", group, rbac.plural(kind), None), (release.name, kind)
    # The await logic's reads where the workloads run.
    assert allows(docs, "watch", "", "pods", "rag")
    assert allows(docs, "list", "apps", "replicasets", "rag")


def test_an_existing_prometheus_needs_only_get_on_its_three_crds() -> None:
    docs = rbac.manifests(
        run(
            "dev",
            monitoring={"enabled": True, "mode": "existing"},
            tls={"installCertManager": False},
            postgres={"cloudnative": {"installOperator": False}},
        )
    )
    crd = "customresourcedefinitions"
    for name in MONITORING_CRDS:
        assert allows(docs, "get", "apiextensions.k8s.io", crd, None, name)
    assert not allows(docs, "get", "apiextensions.k8s.io", crd, None, "clusters.postgresql.cnpg.io")
    assert not allows(docs, "create", "apiextensions.k8s.io", crd, None, MONITORING_CRDS[0])


def test_installing_operators_needs_escalate_and_bind_a_pr_stack_does_not() -> None:
    dev = rbac.manifests(run("dev"))
    assert allows(dev, "escalate", "rbac.authorization.k8s.io", "clusterroles", None)
    assert allows(dev, "bind", "rbac.authorization.k8s.io", "clusterroles", None)
    # cert-manager's leader-election Role lives in kube-system, which the stack does not create: a Role there.
    kube_system = [d for d in dev if d["kind"] == "Role" and d["metadata"]["namespace"] == "kube-system"]
    assert len(kube_system) == 1
    pr = rbac.manifests(run_pr())
    for verb in ("escalate", "bind", "create"):
        assert not allows(pr, verb, "rbac.authorization.k8s.io", "clusterroles", None)
    assert not allows(pr, "create", "apiextensions.k8s.io", "customresourcedefinitions", None)
    assert not allows(pr, "create", "admissionregistration.k8s.io", "validatingwebhookconfigurations", None)
    # The stack creates its namespace, so what it does there is granted by the ClusterRole (no Role can exist in
    # a namespace before it does).
    assert [d["kind"] for d in pr] == ["ClusterRole"]
    assert allows(pr, "create", "", "namespaces", None)


def run_pr() -> StackRun:
    from infra.offline import run_stack

    return run_stack("pr-1", stack_config=rbac.pr_stack_config())


def test_the_committed_files_are_what_the_program_declares() -> None:
    """docs/rbac/*.yaml cannot drift: regenerate with `python -m infra.rbac --write`."""
    for path, text in rbac.documented().items():
        assert path.exists(), path
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run python -m infra.rbac --write"
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert {d["kind"] for d in docs} <= {"ClusterRole", "Role"}


def test_bindings_name_the_subject() -> None:
    docs = rbac.manifests(run("dev"), subject=("ServiceAccount", "ci/deployer"))
    bindings = [d for d in docs if d["kind"].endswith("Binding")]
    assert {d["roleRef"]["kind"] for d in bindings} == {"ClusterRole", "Role"}
    assert all(
        d["subjects"] == [{"kind": "ServiceAccount", "namespace": "ci", "name": "deployer"}] for d in bindings
    )
    user = rbac.manifests(run("dev"), subject=("User", "alice"))
    assert user[-1]["subjects"] == [
        {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
    ]


def test_a_chart_without_a_record_is_refused() -> None:
    release = RecordedResource(
        type="kubernetes:helm.sh/v3:Release",
        name="mystery",
        urn="urn:pulumi:dev::rag::kubernetes:helm.sh/v3:Release::mystery",
        custom=True,
        inputs={"chart": "mystery-operator", "version": "1.0.0", "namespace": "x"},
        secret_keys=frozenset(),
        parent=None,
        protect=False,
        provider=None,
        depends_on=(),
    )
    with pytest.raises(rbac.UnknownChart, match="mystery-operator"):
        rbac.needs(StackRun(stack="dev", resources=[release], outputs={}, secret_outputs=frozenset()))


@pytest.mark.parametrize(
    ("kind", "resource"),
    [
        ("NetworkPolicy", "networkpolicies"),
        ("Ingress", "ingresses"),
        ("EnvoyProxy", "envoyproxies"),
        ("HTTPRoute", "httproutes"),
        ("ClusterIssuer", "clusterissuers"),
        ("PodDisruptionBudget", "poddisruptionbudgets"),
        ("StorageClass", "storageclasses"),
        ("ResourceQuota", "resourcequotas"),
        ("Gateway", "gateways"),
    ],
)
def test_kinds_map_to_their_api_resources(kind: str, resource: str) -> None:
    assert rbac.plural(kind) == resource


def _read(kind: str, group_version: str, read_id: str) -> RecordedResource:
    return RecordedResource(
        type=f"kubernetes:{group_version}:{kind}",
        name=f"read-{kind.lower()}",
        urn=f"urn:pulumi:dev::rag::kubernetes:{group_version}:{kind}::read",
        custom=True,
        inputs={"id": read_id},
        secret_keys=frozenset(),
        parent=None,
        protect=False,
        provider=None,
        depends_on=(),
    )


@pytest.mark.parametrize(
    ("kind", "group_version", "read_id", "namespace", "name"),
    [
        ("ConfigMap", "core/v1", "rag/settings", "rag", "settings"),  # a namespaced read: <namespace>/<name>
        ("ConfigMap", "core/v1", "settings", "default", "settings"),  # a bare name: pulumi-kubernetes reads default
        ("CustomResourceDefinition", "apiextensions.k8s.io/v1", "prometheusrules.monitoring.coreos.com", None,
         "prometheusrules.monitoring.coreos.com"),
    ],
)  # fmt: skip
def test_a_read_is_granted_in_the_namespace_its_id_names(
    kind: str, group_version: str, read_id: str, namespace: str | None, name: str
) -> None:
    """A namespaced read was granted as a `get` of the whole id in `default`: the read of `rag/settings` would be
    denied (no get on configmaps in `rag`)."""
    run_ = StackRun(
        stack="dev",
        resources=[],
        outputs={},
        secret_outputs=frozenset(),
        reads=[_read(kind, group_version, read_id)],
    )
    reads = [n for n in rbac.needs(run_) if n.why == "reads an existing object"]
    assert [(n.namespace, n.names) for n in reads] == [(namespace, (name,))]
