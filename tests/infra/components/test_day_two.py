"""Day two: what a SECOND `pulumi up` does to the Qdrant component when an operator changes a key.

pulumi-kubernetes decides update or replace per kind from a fixed list of fields (`forceNew` in
provider/pkg/provider/diff.go); a replace of a named object deletes it first (provider.go Diff,
`deleteBeforeReplace`), and the engine refuses to replace a protected resource ("unable to replace resource ... as it
is currently marked for protection", pkg/resource/deploy/step_generator.go). `FORCE_NEW` models that list for the
kinds the component creates, so these tests compare two mocked runs the way the provider would."""

from __future__ import annotations

from typing import Any

import pulumi

from infra.components import qdrant as q

from .conftest import Program
from .test_qdrant import cluster_args, run_cluster

METADATA = ("metadata.name", "metadata.namespace")
FORCE_NEW: dict[str, tuple[str, ...]] = {
    "kubernetes:apps/v1:StatefulSet": (
        "spec.podManagementPolicy",
        "spec.revisionHistoryLimit",
        "spec.selector",
        "spec.serviceName",
        "spec.volumeClaimTemplates",
    ),
    "kubernetes:apps/v1:Deployment": ("spec.selector",),
    # Secrets and ConfigMaps are immutable to the provider unless enableSecretMutable / enableConfigMapMutable.
    "kubernetes:core/v1:Secret": ("type", "stringData", "data"),
    "kubernetes:core/v1:ConfigMap": ("data", "binaryData"),
    "kubernetes:core/v1:Service": ("spec.clusterIP",),
}
V119 = "qdrant/qdrant:v1.19.0-unprivileged"
PINNED_FOUNDED = "8d5a72ddb41fab0a34d02e73ec0495dffc96434c7623155f730036783a5f7532"


def _at(inputs: dict[str, Any], path: str) -> Any:
    value: Any = inputs
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def replaced(before: Program, after: Program) -> dict[str, list[str]]:
    """Resource name -> the force-new fields whose value differs between the two runs (what pulumi-kubernetes
    would replace)."""
    changes: dict[str, list[str]] = {}
    for new in after.resources:
        old = next((r for r in before.resources if r.name == new.name and r.type == new.type), None)
        if old is None:
            continue
        fields = [
            path
            for path in (*METADATA, *FORCE_NEW.get(new.type, ()))
            if _at(old.inputs, path) != _at(new.inputs, path)
        ]
        if fields:
            changes[new.name] = fields
    return changes


def test_every_step_of_a_key_rotation_replaces_the_secret_and_nothing_protected() -> None:
    """docs/runbooks.md "Rotate the Qdrant API key" in prod (protected): add, swap, drop."""
    start = run_cluster(cluster_args(image=V119, api_key="old-key"))
    add = run_cluster(
        cluster_args(image=V119, api_key="old-key", alt_api_key=pulumi.Output.secret("new-key"))
    )
    swap = run_cluster(
        cluster_args(image=V119, api_key="new-key", alt_api_key=pulumi.Output.secret("old-key"))
    )
    drop = run_cluster(cluster_args(image=V119, api_key="new-key"))
    for before, after in ((start, add), (add, swap), (swap, drop)):
        changes = replaced(before, after)
        assert changes == {"qdrant-api-key": ["stringData"]}
        protected = {name for name in changes if after.named(name).protect}
        assert protected == set(), f"the rotation would fail: {sorted(protected)} is protected"
    assert drop.named("qdrant-statefulset").protect is True


def test_a_new_storage_size_replaces_the_statefulset_without_taking_its_pods_down() -> None:
    """`volumeClaimTemplates` is immutable: a new size replaces the StatefulSet (delete first). Its delete orphans
    the pods, and the replacement has the same selector and pod template, so it adopts them without a restart."""
    before = run_cluster(cluster_args(storage_size="50Gi", protect=False))
    after = run_cluster(cluster_args(storage_size="100Gi", protect=False))
    assert replaced(before, after) == {"qdrant-statefulset": ["spec.volumeClaimTemplates"]}
    old, new = before.named("qdrant-statefulset"), after.named("qdrant-statefulset")
    # The delete reads the annotation from the old state: both runs carry it.
    for statefulset in (old, new):
        annotations = statefulset.inputs["metadata"]["annotations"]
        assert annotations["pulumi.com/deletionPropagationPolicy"] == "orphan"
    assert old.inputs["spec"]["template"] == new.inputs["spec"]["template"]
    assert old.inputs["spec"]["selector"] == new.inputs["spec"]["selector"]
    assert q.REPLACE_KEEPS_PODS == {"pulumi.com/deletionPropagationPolicy": "orphan"}


def test_resources_replicas_and_version_update_the_statefulset_in_place() -> None:
    """The changes an operator makes most (rolled one pod at a time by the StatefulSet) replace nothing but the
    bootstrap ConfigMap (node count: not protected, a new one is written before any new pod reads it)."""
    before = run_cluster(cluster_args(image="qdrant/qdrant:v1.18.2-unprivileged"))
    after = run_cluster(cluster_args(image=V119, replicas=4, replication_factor=2))
    assert replaced(before, after) == {"qdrant-bootstrap": ["data"]}
    assert after.named("qdrant-bootstrap").protect is False


def test_pulumi_waits_for_a_rolling_update_as_long_as_the_nodes_probes_allow() -> None:
    """A rollout restarts the nodes one at a time; pulumi-kubernetes' default wait (10 minutes, await.go) is less
    than one node's startup budget, so a version change on a loaded prod cluster failed the `up` mid-rollout."""
    three = run_cluster(cluster_args(replicas=3)).named("qdrant-statefulset").inputs
    pod = three["spec"]["template"]["spec"]
    startup, ready = pod["containers"][0]["startupProbe"], pod["containers"][0]["readinessProbe"]
    node = (
        pod["terminationGracePeriodSeconds"]
        + startup["periodSeconds"] * startup["failureThreshold"]
        + ready["periodSeconds"] * ready["failureThreshold"]
    )
    assert node > 600
    assert int(three["metadata"]["annotations"]["pulumi.com/timeoutSeconds"]) >= 3 * node
    five = run_cluster(cluster_args(replicas=5)).named("qdrant-statefulset").inputs
    assert int(five["metadata"]["annotations"]["pulumi.com/timeoutSeconds"]) >= 5 * node
    # On the StatefulSet object, not its pod template: a new count restarts no node.
    assert three["spec"]["template"] == five["spec"]["template"]


def test_the_founded_marker_stays_protected_and_no_key_change_replaces_it() -> None:
    """The marker is protected in prod (its loss lets a new cluster be founded on an empty volume), so no change of
    the component's args may touch its data (a replace the engine refuses for a protected resource)."""
    import hashlib
    import json

    base = run_cluster(cluster_args(image=V119, api_key="old-key"))
    for other in (
        cluster_args(image=V119, api_key="new-key"),
        cluster_args(image=V119, api_key="old-key", replicas=5, storage_size="20Gi"),
        cluster_args(api_key="old-key"),
    ):
        assert "qdrant-founded" not in replaced(base, run_cluster(other))
    assert base.named("qdrant-founded").protect is True
    # Pinned: an edit of the text is a replace of a protected object, refused in every prod `up`.
    digest = hashlib.sha256(json.dumps(q.FOUNDED_DATA, sort_keys=True).encode()).hexdigest()
    assert base.named("qdrant-founded").inputs["data"] == q.FOUNDED_DATA
    assert digest == PINNED_FOUNDED, (
        "FOUNDED_DATA changed: every prod `up` would stop at the protected marker"
    )
