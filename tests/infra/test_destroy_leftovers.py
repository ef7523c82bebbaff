"""What a `pulumi destroy` leaves running: nothing the stack started may outlive it in a namespace it keeps.

pulumi-kubernetes deletes an object with the propagation its `pulumi.com/deletionPropagationPolicy` annotation names,
read from the state (provider/pkg/metadata/overrides.go `DeletionPropagation`, foreground by default; await.go
`Deletion`). Qdrant's StatefulSet says `orphan`, so that a replace (its `volumeClaimTemplates` are immutable) keeps
the nodes serving; the orphaned pods then belong to no one. With `rag:namespaceMode: create` the destroy deletes
the namespace after the StatefulSet (everything in it waits for the Namespace), which ends them. With `patch` or
`existing` the namespace stays: a destroy left every Qdrant node running there, with its volumes and the old
stack's data, and the next stack's StatefulSet of the same name adopted them.
"""

from __future__ import annotations

import pytest

from infra.deployability import Graph
from infra.offline import StackRun
from tests.infra.conftest import run

ORPHAN = ("pulumi.com/deletionPropagationPolicy", "orphan")
STATEFULSET = "kubernetes:apps/v1:StatefulSet"
NAMESPACE = "kubernetes:core/v1:Namespace"

RUNS = [
    ("dev", None, {}),
    ("dev", None, {"namespaceMode": "patch"}),
    ("dev", None, {"namespaceMode": "existing"}),
    ("staging", None, {}),
    ("staging", "existing", {"namespaceMode": "patch"}),
    ("prod", None, {}),
    ("prod", "existing", {"namespaceMode": "existing"}),
]


def _run(stack: str, target: str | None, overrides: dict) -> StackRun:
    return run(stack, target, **overrides)


def _orphaning(result: StackRun) -> list:
    return [
        r
        for r in result.of_type(STATEFULSET)
        if ((r.inputs.get("metadata") or {}).get("annotations") or {}).get(ORPHAN[0]) == ORPHAN[1]
    ]


@pytest.mark.parametrize(("stack", "target", "overrides"), RUNS)
def test_pods_a_delete_orphans_end_with_a_namespace_the_destroy_deletes_after(
    stack: str, target: str | None, overrides: dict
) -> None:
    result = _run(stack, target, overrides)
    graph = Graph(result)
    namespaces = {
        r.inputs["metadata"]["name"]: r
        for r in result.of_type(NAMESPACE)
        if not r.retain_on_delete  # a retained Namespace outlives the destroy (a handover)
    }
    for statefulset in _orphaning(result):
        if statefulset.protect:
            # Pulumi deletes it only after a deliberate `pulumi state unprotect` (a volume grow keeps the nodes
            # up; a final destroy's runbook step deletes the pods): test_prod_keeps_the_orphan_in_every_mode.
            continue
        name = statefulset.inputs["metadata"]["namespace"]
        assert name in namespaces, (statefulset.name, "orphaned pods would outlive the destroy")
        # Deleted after the StatefulSet: the StatefulSet waits for it on create.
        assert namespaces[name].urn in graph.closure(statefulset.urn), statefulset.name


@pytest.mark.parametrize("mode", ["patch", "existing"])
def test_a_namespace_the_stack_keeps_gets_a_foreground_delete_of_qdrant(mode: str) -> None:
    """The defect: the orphan annotation was unconditional, so a destroy with `patch`/`existing` left the nodes up."""
    qdrant = run("dev", namespaceMode=mode).by_name("qdrant-statefulset")
    annotations = qdrant.inputs["metadata"].get("annotations") or {}
    assert ORPHAN[0] not in annotations
    # The rest of the metadata is unchanged: the rollout timeout still applies.
    assert "pulumi.com/timeoutSeconds" in annotations


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
@pytest.mark.parametrize("mode", ["create", "patch", "existing"])
def test_the_rendered_propagation_per_stack_and_namespace_mode(stack: str, mode: str) -> None:
    """pulumi-kubernetes applies the annotation to a replace and a destroy alike, so each case gets the safe one:
    orphan where the namespace ends the pods (`create`) or where no Pulumi delete happens without a deliberate
    `pulumi state unprotect` (prod, protected: its volume grow no longer restarts every node at once); foreground
    where a plain destroy would leave the nodes running in a kept namespace (dev/staging with patch/existing)."""
    qdrant = run(stack, "existing", namespaceMode=mode).by_name("qdrant-statefulset")
    assert qdrant.protect is (stack == "prod")
    annotations = qdrant.inputs["metadata"]["annotations"]
    orphans = annotations.get(ORPHAN[0]) == ORPHAN[1]
    assert orphans is (mode == "create" or stack == "prod"), annotations
    assert ORPHAN[0] in annotations or not orphans  # foreground is pulumi-kubernetes' default (no annotation)


def test_prod_keeps_the_orphan_in_every_mode() -> None:
    """The defect: prod with `patch`/`existing` lost the orphan with R1's fix, so a prod volume grow (after the
    runbook's unprotect) deleted the StatefulSet in the foreground and every Qdrant node went down at once."""
    for mode in ("patch", "existing"):
        qdrant = run("prod", "existing", namespaceMode=mode).by_name("qdrant-statefulset")
        assert qdrant.protect
        assert qdrant.inputs["metadata"]["annotations"][ORPHAN[0]] == ORPHAN[1], mode


def test_a_namespace_the_stack_deletes_keeps_the_replace_without_an_outage() -> None:
    """`create`: the replace still orphans the pods (tests/infra/components/test_day_two.py), the namespace ends them."""
    qdrant = run("dev").by_name("qdrant-statefulset")
    assert qdrant.inputs["metadata"]["annotations"][ORPHAN[0]] == ORPHAN[1]


def test_the_killed_update_runbook_names_every_helm_release_the_program_installs() -> None:
    """A release left `pending-install`/`pending-upgrade` by a killed `up` blocks every later `up` until Helm's own
    record is fixed by hand (docs/runbooks.md): the runbook must name each release and its namespace as deployed."""
    from infra.offline import PROJECT_DIR

    text = (PROJECT_DIR / "docs" / "runbooks.md").read_text(encoding="utf-8")
    start = text.index("## A deploy killed mid-update")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    releases = {
        (r.inputs["name"], r.inputs["namespace"])
        for stack, target in (("staging", "eks"), ("staging", "gke"), ("prod", None), ("dev", None))
        for r in run(stack, target).of_type("kubernetes:helm.sh/v3:Release")
    }
    assert len(releases) >= 7
    for name, namespace in sorted(releases):
        assert f"`{name}`" in section, name
        assert f"`{namespace}`" in section, (name, namespace)


@pytest.mark.parametrize(("target", "retained"), [("gke", True), ("eks", True), ("existing", False)])
def test_a_build_leaves_the_registry_only_by_its_retention_rules(target: str, retained: bool) -> None:
    """pulumi-docker-build's delete removes `<repository>@<digest>` from the registry (v0.0.22 `client.go` Delete):
    on ECR/Artifact Registry, whose rules keep what a rollback or a promotion needs, the build's delete (the stack
    moving to a promoted or rolled-back image, a `--replace`) must only drop it from the state. On `existing` (a PR
    stack's registry, no rules) the delete is what removes a destroyed stack's image."""
    result = run("dev", target)
    build = result.by_name("service-image-image")
    assert build.type == "docker-build:index:Image"
    assert build.retain_on_delete is retained
    # Retained exactly where the protection step tags it for the rules.
    assert any(r.name == "service-image-protect" for r in result.resources) is retained


PR_RECORD = {"name": "pr-7", "owner": "alice", "expiresAt": "2030-01-01T00:00:00Z"}
CLAIMS = ("qdrant-statefulset", "redis-statefulset")


def _claim_policy(result: StackRun, name: str) -> dict:
    return result.by_name(name).inputs["spec"]["persistentVolumeClaimRetentionPolicy"]


@pytest.mark.parametrize("mode", ["existing", "patch"])
def test_a_pr_stack_in_a_namespace_it_keeps_deletes_its_claims_with_the_statefulsets(mode: str) -> None:
    """`ragops ephemeral up --namespace-mode existing|patch` (one namespace for every PR stack in turn, or one per PR
    the platform team made): the destroy leaves the namespace, so the StatefulSets' claims must go with them, or the
    next PR stack there starts on this one's Qdrant data and Valkey cache (same claim names). Foreground delete
    (R1) + `whenDeleted: Delete`: the garbage collector deletes the claims before the StatefulSet is gone."""
    result = run("dev", ephemeral=PR_RECORD, namespaceMode=mode, namespace="preview")
    for name in CLAIMS:
        assert _claim_policy(result, name) == {"whenDeleted": "Delete", "whenScaled": "Retain"}, name
    annotations = result.by_name("qdrant-statefulset").inputs["metadata"]["annotations"]
    assert ORPHAN[0] not in annotations  # an orphaning delete would keep the claims' owner away from the GC


@pytest.mark.parametrize(
    "overrides",
    [
        {"ephemeral": PR_RECORD},  # a PR stack's own namespace: its deletion takes the claims
        {"namespaceMode": "existing"},  # a kept stack: a replace (new volume size) must not delete the data
        {"namespaceMode": "patch"},
        {},
    ],
)
def test_every_other_stack_keeps_its_claims_when_a_statefulset_goes(overrides: dict) -> None:
    result = run("dev", **overrides)
    for name in CLAIMS:
        assert _claim_policy(result, name) == {"whenDeleted": "Retain", "whenScaled": "Retain"}, name


def _state_with_cluster_phase(phase: str | None) -> dict:
    """dev's completed update as the backend keeps it (tests/infra/test_guards.py `state_of`), its CloudNativePG
    Cluster's outputs carrying `status.phase` as pulumi-kubernetes records the live object after a failed await."""
    from tests.infra.test_guards import state_of

    state = state_of(run("dev"))
    for entry in state["resources"].values():
        if entry["type"] == "kubernetes:postgresql.cnpg.io/v1:Cluster" and phase is not None:
            entry["outputs"] = {**entry["outputs"], "status": {"phase": phase}}
    return state


def test_an_up_over_an_unrecoverable_registry_cluster_is_refused_before_anything_is_sent() -> None:
    """A failed instance Job leaves the Cluster unrecoverable for good (CloudNativePG v1.30.0); the next `up` would
    wait its update timeout (30 minutes) and fail. Refused in one line naming the runbook."""
    from infra import guards
    from infra.offline import run_stack

    with pytest.raises(guards.DeployedStateRefusal) as caught:
        run_stack("dev", live={"state": _state_with_cluster_phase(guards.CNPG_UNRECOVERABLE)})
    message = str(caught.value)
    assert message.startswith("rag:postgres in Pulumi.dev.yaml: ")
    assert "\n" not in message
    assert "the-registrys-cluster-never-became-ready-a-failed-instance-job" in message
    assert "pulumi refresh -s dev" in message


@pytest.mark.parametrize("phase", [None, "Cluster in healthy state", "Setting up primary"])
def test_any_other_recorded_phase_goes_on(phase: str | None) -> None:
    from infra.offline import run_stack

    again = run_stack("dev", live={"state": _state_with_cluster_phase(phase)})
    assert again.by_name("postgres-cluster")
