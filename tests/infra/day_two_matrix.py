"""The whole-stack day-two matrix (REVIEW12's suggestion, after F2): for a real stack file, change each declared key
to another valid value, run the program under the offline mocks before and after, and classify every resource as
the next `up` would treat it: unchanged, updated, replaced (a force-new field changed), created or deleted.

Replace rules, each from its source:
- pulumi-kubernetes: `metadata.name`/`namespace` of every object plus the per-kind `forceNew` list of
  provider/pkg/provider/diff.go (pulumi/pulumi-kubernetes, stored commit 00302beb; the same list REVIEW12 read at
  HEAD after 4.32.0). The list's `Daemonset` key never matches the `DaemonSet` kind, so a DaemonSet is replaced
  only by its metadata; `PodDisruptionBudget` is listed for policy/v1beta1 only.
- cloud providers: `infra.render.CLOUD_FORCE_NEW` (terraform provider schemas, cited there; the Python SDK
  docstrings do not say ForceNew).

Runs are shared: keys whose new value can be traced in what the program declares are changed several at a time,
and only a group that replaces or deletes a stateful resource (or that the program refuses) is split into runs
of one key each; the other keys get a run of their own (as `infra.deployability.unconsumed_keys` does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import deployability as d
from infra import inert
from infra.config import ConfigError, deep_merge
from infra.offline import RecordedResource, StackRun, run_stack
from infra.render import CLOUD_FORCE_NEW

METADATA = ("metadata.name", "metadata.namespace")
_SELECTOR = ("spec.selector",)
#: pulumi-kubernetes provider/pkg/provider/diff.go `forceNew` (dotted paths; a path covers everything below it).
K8S_FORCE_NEW: dict[str, tuple[str, ...]] = {
    "kubernetes:apps/v1:StatefulSet": (
        "spec.podManagementPolicy",
        "spec.revisionHistoryLimit",
        *_SELECTOR,
        "spec.serviceName",
        "spec.volumeClaimTemplates",
    ),
    "kubernetes:apps/v1:Deployment": _SELECTOR,
    "kubernetes:batch/v1:Job": ("spec.completions", "spec.parallelism", *_SELECTOR, "spec.template"),
    "kubernetes:core/v1:ConfigMap": ("binaryData", "data"),  # enableConfigMapMutable is off here
    "kubernetes:core/v1:Secret": ("type", "stringData", "data"),  # enableSecretMutable is off here
    "kubernetes:core/v1:Service": ("spec.clusterIP",),
    "kubernetes:core/v1:PersistentVolumeClaim": ("spec",),
    "kubernetes:core/v1:ResourceQuota": ("spec.scopes",),
    "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding": ("roleRef",),
    "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding": ("roleRef",),
    "kubernetes:storage.k8s.io/v1:StorageClass": ("parameters", "provisioner"),
}

#: Resources holding data or carrying the workloads that do: a replace or delete of one loses data or nodes.
STATEFUL_TYPES = frozenset(
    {
        "kubernetes:apps/v1:StatefulSet",
        "kubernetes:core/v1:PersistentVolumeClaim",
        "kubernetes:postgresql.cnpg.io/v1:Cluster",
        "aws:rds/instance:Instance",
        "gcp:sql/databaseInstance:DatabaseInstance",
        "gcp:sql/database:Database",
        "aws:elasticache/replicationGroup:ReplicationGroup",
        "gcp:redis/instance:Instance",
        "aws:eks/cluster:Cluster",
        "gcp:container/cluster:Cluster",
        "aws:eks/nodeGroup:NodeGroup",
        "gcp:container/nodePool:NodePool",
        "aws:s3/bucket:Bucket",
        "gcp:storage/bucket:Bucket",
    }
)
LOSSY = ("replaced", "deleted")
OPERATIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _at(inputs: Mapping[str, Any], path: str) -> Any:
    value: Any = inputs
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def force_new_paths(resource: RecordedResource) -> tuple[str, ...]:
    if resource.type.startswith("kubernetes:") and resource.custom:
        return (*METADATA, *K8S_FORCE_NEW.get(resource.type, ()))
    return tuple(CLOUD_FORCE_NEW.get(resource.type, {}))


def _state(resource: RecordedResource) -> str:
    return json.dumps(
        [resource.inputs, resource.protect, resource.provider, resource.ignore_changes],
        sort_keys=True,
        default=str,
    )


def classify(before: StackRun, after: StackRun) -> dict[str, str]:
    """URN -> updated / replaced / created / deleted, for every custom resource that is not unchanged."""
    old = {r.urn: r for r in before.resources if r.custom}
    new = {r.urn: r for r in after.resources if r.custom}
    changes: dict[str, str] = {}
    for urn, resource in new.items():
        previous = old.get(urn)
        if previous is None:
            changes[urn] = "created"
        elif any(_at(previous.inputs, p) != _at(resource.inputs, p) for p in force_new_paths(resource)):
            changes[urn] = "replaced"
        elif _state(previous) != _state(resource):
            changes[urn] = "updated"
    changes.update({urn: "deleted" for urn in old if urn not in new})
    return changes


def stateful(run: StackRun, urn: str) -> bool:
    resource = next((r for r in run.resources if r.urn == urn), None)
    return resource is not None and (resource.type in STATEFUL_TYPES or resource.protect)


def lossy(before: StackRun, changes: Mapping[str, str]) -> dict[str, str]:
    """The stateful resources (of `before`, or protected) that `changes` replaces or deletes."""
    return {urn: how for urn, how in changes.items() if how in LOSSY and stateful(before, urn)}


# ------------------------------------------------------------------------------------------ the docs' table
def documented_replacers(text: str | None = None) -> dict[str, str]:
    """operations.md "Day two" table: each key pattern of a row that says the `up` replaces or deletes something,
    with that row's text. A bare name in a cell (`storageClass`) is a sibling of the key before it."""
    text = OPERATIONS_MD.read_text(encoding="utf-8") if text is None else text
    start = text.index("## Day two: what the next `up` does with a changed key")
    rows = [line for line in text[start:].splitlines() if line.startswith("| `")]
    found: dict[str, str] = {}
    for row in rows:
        cells = row.split(" | ", 1)
        if len(cells) < 2:
            continue
        what = cells[1]
        if not re.search(r"replace|ForceNew|delete|new, empty", what, re.IGNORECASE):
            continue
        previous = ""
        for token in re.findall(r"`([^`]+)`", cells[0]):
            key = token.split("(")[0].strip()
            if "." not in key and previous and key not in d.declared_keys():
                key = previous.rsplit(".", 1)[0] + "." + key
            found[key] = what
            previous = key
    return found


def _matches(pattern: str, key: str) -> bool:
    regex = "^" + re.escape(pattern).replace(r"\*", r"[^.]+") + r"(\..+)?$"
    return re.match(regex, key) is not None


def documented(key: str, table: Mapping[str, str]) -> bool:
    return any(_matches(pattern, key) for pattern in table)


# ------------------------------------------------------------------------------------------ the matrix
@dataclass
class KeyResult:
    key: str
    old: Any
    new: Any
    changes: dict[str, str] = field(default_factory=dict)  # URN -> how (only when run on its own)
    lossy: dict[str, str] = field(default_factory=dict)
    consumed: bool = False
    refused: str | None = None


@dataclass
class Matrix:
    stack: str
    base: StackRun
    results: dict[str, KeyResult]
    runs: int


def applicable_keys(base: StackRun) -> list[str]:
    """The declared keys the stack's own selections read (`infra.inert` names the others), but the waived ones."""
    rules = inert.rules(d.effective_config(base))

    def ignored(key: str) -> bool:
        return any(key == rule or (rule.endswith(".") and key.startswith(rule)) for rule, _why in rules)

    return sorted(k for k in d.declared_keys() if k not in d.CONFIG_WAIVERS and not ignored(k))


def _overrides(stack_extra: Mapping[str, Any], pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = dict(stack_extra)
    for key, value in pairs:
        out = deep_merge(out, d.nested(key, value))
    return out


#: Another value for the keys whose `infra.deployability.alternative` may be a stack's own value.
OTHER_VALUES: dict[str, tuple[Any, ...]] = {
    "cluster.provider": ("gke", "eks"),
    "gateway.className": ("eg", "gke-l7-regional-external-managed"),
    "postgres.mode": ("cloudnative", "managed"),
    "redis.mode": ("incluster", "managed"),
    "tls.issuer": ("letsencrypt-staging", "letsencrypt"),
    "environment": ("dev", "staging"),
    "service.autoscaling.minReplicas": (3, 2),
}


def other_value(key: str, value: Any, index: int) -> Any:
    new = d.alternative(key, value, index)
    if new == value:
        new = next((v for v in OTHER_VALUES.get(key, ()) if v != value), value)
    return new


def build(
    stack: str, *, group: int = 8, base: StackRun | None = None, consumed_elsewhere: Iterable[str] = ()
) -> Matrix:
    """The matrix of `stack`. Keys are changed in groups of `group`; a group that replaces or deletes a stateful
    resource, or that the program refuses, is split in halves down to single keys, so each such change is
    attributed to its key. A key not traced in its group's run (a bool, a small number) gets a run of its own to
    tell whether it changes anything, unless it is in `consumed_elsewhere` (found consumed on another stack)."""
    base = base or run_stack(stack)
    config = d.effective_config(base)
    leaves = d._leaves(base)  # the same tracing as unconsumed_keys
    keys = applicable_keys(base)
    results: dict[str, KeyResult] = {}
    for index, key in enumerate(keys):
        value = d.config_value(config, key)
        results[key] = KeyResult(key, value, other_value(key, value, index))
    skip = set(consumed_elsewhere)
    runs = 0

    def run(members: list[str]) -> StackRun | str:
        nonlocal runs
        runs += 1
        try:
            return run_stack(stack, config_overrides=_overrides({}, [(k, results[k].new) for k in members]))
        except ConfigError as exc:
            return str(exc)

    def settle(members: list[str]) -> None:
        after = run(members)
        if len(members) == 1:
            result = results[members[0]]
            if isinstance(after, str):
                result.refused = after
                return
            result.changes = classify(base, after)
            result.lossy = lossy(base, result.changes)
            result.consumed = d.fingerprint(after) != d.fingerprint(base)
            return
        if isinstance(after, str) or lossy(base, classify(base, after)):
            half = len(members) // 2
            settle(members[:half])
            settle(members[half:])
            return
        after_leaves = d._leaves(after)
        for key in members:
            new = results[key].new
            traced = (isinstance(new, str) or (type(new) is int and new >= 10)) and not d._present(
                new, leaves
            )
            if traced and d._present(new, after_leaves):
                results[key].consumed = True
            elif key in skip:
                results[key].consumed = True  # found consumed on the other stack
            else:
                settle([key])

    for start in range(0, len(keys), group):
        settle(keys[start : start + group])
    return Matrix(stack, base, results, runs)


def table(matrix: Matrix) -> str:
    """The matrix as text: one line per key with what its change replaces or deletes (for failure messages)."""
    lines = []
    for key, result in sorted(matrix.results.items()):
        what = (
            f"refused: {result.refused}"
            if result.refused
            else ", ".join(
                f"{how} {urn.rsplit('::', 2)[-2]}::{urn.rsplit('::', 1)[-1]}"
                for urn, how in sorted(result.lossy.items())
            )
            or ("changes something" if result.consumed else "CHANGES NOTHING")
        )
        lines.append(f"{matrix.stack} {key}: {result.old!r} -> {result.new!r}: {what}")
    return "\n".join(lines)
