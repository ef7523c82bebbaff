"""`rag:namespaceMode`: a stack on a shared cluster uses the namespace its platform team owns (infra/stack.py
`stack_namespace`), and a stack that created its namespace hands it over without deleting it (infra/guards.py
`namespace_release`).

Runs are the real stack files through the real program under mocks; the handover runs a second time against the
state the first left (tests/infra/test_guards.py `against`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra import deployability, guards, rbac, render
from infra.config import ConfigError
from infra.deployability import Graph
from infra.offline import RecordedResource, StackRun, run_stack
from tests.infra.conftest import run
from tests.infra.test_guards import against, refused
from tests.infra.test_rbac import allows, run_pr

NAMESPACE = "kubernetes:core/v1:Namespace"
PATCH = "kubernetes:core/v1:NamespacePatch"
POD_SECURITY = "pod-security.kubernetes.io/enforce"


def own_namespace(result: StackRun) -> list[RecordedResource]:
    return [r for r in result.resources if r.type in (NAMESPACE, PATCH) and r.name == "namespace"]


def in_namespace(result: StackRun, namespace: str) -> list[RecordedResource]:
    return [
        r
        for r in result.resources
        if r.custom
        and r.type.startswith("kubernetes:")
        and (r.inputs.get("metadata") or {}).get("namespace") == namespace
    ]


def test_create_declares_the_namespace_with_its_pod_security_labels() -> None:
    (namespace,) = own_namespace(run("dev"))
    assert namespace.type == NAMESPACE
    assert not namespace.retain_on_delete
    assert namespace.inputs["metadata"]["labels"][POD_SECURITY] == "baseline"


def test_patch_applies_the_same_labels_and_annotations_and_everything_waits_for_it() -> None:
    created, patched = run("dev"), run("dev", namespaceMode="patch")
    (patch,) = own_namespace(patched)
    assert patch.type == PATCH
    assert patch.inputs["metadata"] == own_namespace(created)[0].inputs["metadata"]
    graph = Graph(patched)
    objects = in_namespace(patched, "rag")
    assert len(objects) > 20
    for resource in objects:
        assert patch.urn in graph.closure(resource.urn), resource.name
    assert [f for f in deployability.analyse(patched).findings if f.check == "reads-order"] == []


def test_existing_declares_nothing_on_the_namespace_and_still_deploys_into_it() -> None:
    result = run("dev", namespaceMode="existing")
    assert own_namespace(result) == []
    assert all(r.inputs["metadata"]["name"] != "rag" for r in result.of_type(NAMESPACE))
    # The same objects go into the namespace as when the stack creates it.
    assert {r.urn for r in in_namespace(result, "rag")} == {r.urn for r in in_namespace(run("dev"), "rag")}
    assert result.by_name("qdrant-statefulset").inputs["metadata"]["namespace"] == "rag"


def test_the_quota_of_an_existing_namespace_is_still_declared() -> None:
    result = run("dev", namespaceMode="existing", namespaceQuota={"enabled": True})
    quota = result.by_name("namespace-quota")
    assert quota.inputs["metadata"]["namespace"] == "rag"
    # Workloads still wait for the quota and its LimitRange (a pod admitted before it would get no defaults).
    graph = Graph(result)
    assert quota.urn in graph.closure(result.by_name("qdrant-statefulset").urn)


@pytest.mark.parametrize("provider", ["gke", "eks"])
def test_a_namespace_of_its_owner_is_refused_where_the_stack_creates_the_cluster(provider: str) -> None:
    stack = {"gke": "staging", "eks": "prod"}[provider]
    with pytest.raises(ConfigError) as caught:
        run_stack(stack, config_overrides={"namespaceMode": "existing"})
    message = str(caught.value)
    assert "rag:namespaceMode" in message
    assert f"Pulumi.{stack}.yaml" in message
    assert provider in message


def test_an_unknown_mode_is_refused_naming_the_key_and_the_stack_file() -> None:
    with pytest.raises(ConfigError) as caught:
        run_stack("dev", config_overrides={"namespaceMode": "adopt"})
    assert "rag:namespaceMode" in str(caught.value)
    assert "Pulumi.dev.yaml" in str(caught.value)


# ---------------------------------------------------------------------------------------------- handing over
@pytest.mark.parametrize("mode", ["existing", "patch"])
def test_a_created_namespace_is_kept_then_dropped_never_deleted(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append(message))
    deployed = run("dev")
    # First update: the Namespace stays, marked, and retained: the engine reads retainOnDelete from the state
    # when the next update drops it.
    first = against("dev", deployed, {"namespaceMode": mode})
    (namespace,) = own_namespace(first)
    assert namespace.type == NAMESPACE
    assert namespace.retain_on_delete
    assert namespace.inputs["metadata"]["annotations"][guards.RELEASED_ANNOTATION] == mode
    assert namespace.inputs["metadata"]["labels"][POD_SECURITY] == "baseline"
    assert [w for w in warnings if "pulumi up` once more" in w and "Pulumi.dev.yaml" in w]
    assert any(
        "kept when it leaves the stack" in c.detail
        for c in deployability.analyse(first).capabilities.values()
    )
    # Second update: the mode's own declaration; the retained Namespace leaves the stack only.
    warnings.clear()
    second = against("dev", first, {"namespaceMode": mode})
    assert [r.type for r in own_namespace(second)] == ([PATCH] if mode == "patch" else [])
    assert warnings == []
    # Back to create: declared as before, no longer retained or marked.
    back = against("dev", first, {"namespaceMode": "create"})
    (namespace,) = own_namespace(back)
    assert not namespace.retain_on_delete
    assert guards.RELEASED_ANNOTATION not in namespace.inputs["metadata"]["annotations"]


def test_a_stack_that_never_created_its_namespace_has_nothing_to_hand_over() -> None:
    deployed = run("dev", namespaceMode="existing")
    state = guards.deployed_state({r.urn: {"type": r.type, "outputs": r.inputs} for r in deployed.resources})
    assert not state.namespace_created
    assert own_namespace(against("dev", deployed, {"namespaceMode": "patch"}))[0].type == PATCH


def test_moving_a_stack_that_uses_an_existing_namespace_is_still_refused(sent: list[str]) -> None:
    # Without a Namespace in the state the guard reads the namespace from the Qdrant StatefulSet.
    deployed = run("dev", namespaceMode="existing")
    message = refused("dev", deployed, {"namespaceMode": "existing", "namespace": "rag-two"}, sent)
    assert "from namespace 'rag' to 'rag-two'" in message
    patched = run("dev", namespaceMode="patch")
    assert "from namespace 'rag'" in refused(
        "dev", patched, {"namespaceMode": "patch", "namespace": "x"}, sent
    )


# ---------------------------------------------------------------------------------------------- plan and RBAC
def test_the_plan_says_which_namespaces_the_stack_creates_and_which_it_uses() -> None:
    created = deployability.analyse(run("dev", monitoring={"enabled": True})).capabilities
    assert created["namespace:rag"].provider is not None
    assert "destroy` deletes it" in created["namespace:rag"].detail
    assert "destroy` deletes it" in created["namespace:monitoring"].detail  # kube-prometheus-stack's
    assert "never deleted" in created["namespace:cert-manager"].detail  # Helm's createNamespace
    for mode in ("existing", "patch"):
        analysis = deployability.analyse(run("dev", namespaceMode=mode))
        (prerequisite,) = [c for c in analysis.prerequisites if c.name == "namespace:rag"]
        assert prerequisite.provider is None
        assert f"rag:namespaceMode {mode}" in prerequisite.detail
        assert "namespace:rag" not in {c.name for c in analysis.capabilities.values() if c.provider}


def pr_with(mode: str) -> list[dict[str, Any]]:
    config = rbac.pr_stack_config()
    config["rag:namespaceMode"] = mode
    return rbac.manifests(run_stack("pr-1", stack_config=config))


def test_a_deployer_who_may_not_create_namespaces_can_deploy_a_pr_stack_into_one() -> None:
    assert allows(rbac.manifests(run_pr()), "create", "", "namespaces", None)
    existing = pr_with("existing")
    assert not allows(existing, "create", "", "namespaces", None)
    assert not allows(existing, "patch", "", "namespaces", None, "pr-1")
    # Its namespace's objects are granted by a Role there, which the platform team can bind.
    assert allows(existing, "create", "apps", "deployments", "pr-1")
    assert {d["kind"] for d in existing} >= {"Role"}
    patched = pr_with("patch")
    assert allows(patched, "patch", "", "namespaces", None, "pr-1")
    assert not allows(patched, "patch", "", "namespaces", None, "kube-system")
    assert not allows(patched, "create", "", "namespaces", None)
    assert not allows(patched, "delete", "", "namespaces", None)


def test_a_state_that_cannot_be_read_stops_a_mode_that_would_drop_a_created_namespace(
    monkeypatch: pytest.MonkeyPatch, sent: list[str]
) -> None:
    # An old CLI deletes the outputs of a failed update: the stack may have created its namespace all the same.
    keeps_outputs = guards.keeps_outputs_of_failed_updates
    monkeypatch.setattr(guards, "keeps_outputs_of_failed_updates", lambda: False)
    with pytest.raises(guards.DeployedStateRefusal) as caught:
        run_stack("dev", config_overrides={"namespaceMode": "existing"})
    assert sent == []
    message = str(caught.value)
    assert "rag:namespaceMode" in message
    assert "Pulumi.dev.yaml" in message
    assert "older than 3.112" in message
    assert own_namespace(run_stack("dev"))[0].type == NAMESPACE  # create drops nothing: it goes on
    monkeypatch.setattr(guards, "keeps_outputs_of_failed_updates", keeps_outputs)

    # A backend that cannot answer.
    def unanswered(token: str, key: str, names: tuple[str, ...]) -> Any:
        raise RuntimeError("backend unavailable")

    monkeypatch.setattr(guards, "_read", unanswered)
    with pytest.raises(guards.DeployedStateRefusal, match="backend unavailable"):
        run_stack("dev", config_overrides={"namespaceMode": "patch"})
    assert own_namespace(run_stack("dev"))[0].type == NAMESPACE


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("create", "NAMESPACE rag: created by the stack; `pulumi destroy` deletes it with everything in it"),
        (
            "existing",
            "NAMESPACE rag: prerequisite: its owner's namespace, with its pod-security labels; the stack never",
        ),
    ],
)
def test_make_plan_prints_whether_it_creates_or_uses_the_namespace(
    mode: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert render.main(["--stack", "dev", "--out", str(tmp_path), "--set", f'namespaceMode="{mode}"']) == 0
    out = capsys.readouterr().out
    assert f"  {said}" in out
    assert "  NAMESPACE cert-manager: created by Helm when missing, never deleted" in out
