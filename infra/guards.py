"""Steps a `pulumi up` must not take undeclared, refused by the program itself before it registers anything.

Two changes of the config look harmless in a diff and are not: a lower `rag:qdrant.replicas` (the StatefulSet
deletes the highest pods with the shards only they hold, their peers left dead in the Raft consensus) and another
`rag:postgres.version` major (CloudNativePG runs `pg_upgrade` in place, offline, as soon as the Cluster's image names
it; RDS refuses it in the middle of the `up`; Cloud SQL's `databaseVersion` is ignored, so the stack file then
names a major the instance does not run). Each is a declared step (`rag:qdrant.scaleDownTo`,
`rag:postgres.<mode>.majorUpgrade.fromVersion`). A third has no declared form: another `rag:namespace` (every object
created again, empty, in the new namespace, the old one deleted with its volumes), refused from the state only, and
so is another cluster (`rag:cluster.provider`, its region, project, VPC range or zone count: a new, empty one). An older
`rag:redis.version` major than the in-cluster Valkey's is refused too when it cannot load the append-only file the
newer one wrote (`rag:redis.incluster.downgradeFrom` accepts an empty cache), and so is another `rag:postgres.database`
or `rag:postgres.user` than the running registry was created with (no declared form: a name is fixed at creation). The
decisions, and their messages, live here once:
`ragops` (infra/workflows/scaling.py, registry_upgrade.py) makes them from the config of the stack's update
history before Pulumi runs; the program makes them from the stack's own state, so a bare `pulumi up` or `pulumi
preview` refuses the same steps.

How the program reads what is deployed: two invokes of Pulumi's builtin provider (package `pulumi`, served by the
engine itself; pkg/resource/deploy/builtins.go):
- `pulumi:pulumi:readStackOutputs` (`{"name"}`): the root stack resource's outputs in the backend's latest
  snapshot. Both backends answer it for a stack with no deployment yet: the DIY backend's `getSnapshotStackOutputs`
  returns an empty map for a checkpoint without `Latest` (what `pulumi stack init` writes), the service's
  `DeserializeStackOutputs` one for a deployment without a root stack. The service requires the fully qualified
  `<org>/<project>/<stack>`; the DIY backend accepts it with the org `organization`, which is what
  `pulumi.get_organization()` returns there (diy/state.go).
- `pulumi:pulumi:readStackResourceOutputs` (`{"stackName"}`): every resource's type and outputs in that snapshot
  ("which may include ongoing updates", deploy.BackendClient). Its backend client ranges over `snap.Resources`
  without checking for a nil snapshot, which is what a stack with no deployment has on the DIY backend (a nil
  pointer in the engine, not an error), so it is read only once the stack outputs say an update completed.
They go to the default provider of package `pulumi` (never denied by `pulumi:disable-default-providers`,
default_providers.go), which the state lists once like a stack reference's; it touches nothing outside the state.
Invokes run in previews too (a PR preview shows the refusal) and answer at once: the program calls them before the
cluster and every other resource are registered, so a refused `up` sends nothing. During an update the snapshot
read is the previous one, plus at most the root stack's "same" step, which keeps its outputs (SameStep.Apply).

Why resource state rather than a stack output of its own, or a live read: the state holds the Qdrant StatefulSet,
the CloudNativePG Cluster and the RDS / Cloud SQL instance as their last step left them, also when a later step
of that update failed (a failed update may already have scaled or upgraded; stack outputs are only written by an
update that completes), and existing stacks have it without a new output first. A live read
(`StatefulSet.get`, `aws.rds.get_instance`, `gcp.sql.get_database_instance`) fails when the object does not exist
(a first `up`), and for Kubernetes needs a reachable cluster in the preview. What the state cannot show is a change
made outside Pulumi (`kubectl scale`): `pulumi refresh` records it.

Another `rag:postgres.mode` is a declared step too (`rag:postgres.modeSwitch.fromMode`): the `up` would roll the
service onto a new, empty registry and delete the old one last. What passes: a stack with no completed update (a
first `up`, also after a failed first attempt), the declared steps (a declared mode switch makes a new registry,
which takes any major), and an upgrade or switch already done whose declaration is still set. `pulumi destroy` does not run the program (unless `--run-program`). If the state cannot be read, the
program says so in a warning and goes on (`ragops` still checks).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from infra.config import PROJECT, ConfigError, StackConfig

QDRANT_NAME = "qdrant"
"""The QdrantCluster's name in the program (its StatefulSet is `<name>-statefulset`)."""
POSTGRES_NAME = "postgres"
"""The PostgresDatabase's name in the program (`<name>-cluster`, `<name>-instance`, `<name>-<restore>-instance`)."""
REDIS_NAME = "redis"
"""The RedisCache's name in the program (its in-cluster Valkey StatefulSet is `<name>-statefulset`)."""
NAMESPACE_NAME = "namespace"
"""The stack's Namespace resource in the program (infra/stack.py)."""

QDRANT_KEY = f"{PROJECT}:qdrant"
SCALE_DOWN_RUNBOOK = "docs/runbooks.md#scale-qdrant-down"
MANAGED_RUNBOOK = "docs/runbooks.md#upgrade-the-managed-registrys-major-version"
CNPG_RUNBOOK = "docs/runbooks.md#upgrade-the-cloudnativepg-registrys-major-version"
DAY_TWO_DOC = "docs/operations.md#day-two-what-the-next-up-does-with-a-changed-key"
BUCKET_DOC = "docs/operations.md#turning-backups-off"

READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"
READ_RESOURCE_OUTPUTS = "pulumi:pulumi:readStackResourceOutputs"

NAMESPACE = "kubernetes:core/v1:Namespace"
NAMESPACE_PATCH = "kubernetes:core/v1:NamespacePatch"
RELEASED_ANNOTATION = "rag.platform/namespace-released"
"""Marks a Namespace the stack created as kept when it leaves the stack (infra/stack.py `stack_namespace`)."""
STATEFULSET = "kubernetes:apps/v1:StatefulSet"
CNPG_CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
RDS_INSTANCE = "aws:rds/instance:Instance"
CLOUDSQL_INSTANCE = "gcp:sql/databaseInstance:DatabaseInstance"
CLOUDSQL_DATABASE = "gcp:sql/database:Database"
CLOUDSQL_USER = "gcp:sql/user:User"
AWS_PROVIDER = "pulumi:providers:aws"
GCP_PROVIDER = "pulumi:providers:gcp"
VPC = "aws:ec2/vpc:Vpc"
GKE_CLUSTER = "gcp:container/cluster:Cluster"
K8S_PROVIDER = "pulumi:providers:kubernetes"
K8S_PROVIDER_NAME = "k8s"
PRIVATE_ENDPOINT_KEY = f"{PROJECT}:cluster.gke.privateEndpoint"
ENDPOINT_DOC = "docs/operations.md#day-two-what-the-next-up-does-with-a-changed-key"
SUBNET = "aws:ec2/subnet:Subnet"
BUCKETS = {"aws:s3/bucket:Bucket": "bucket", "gcp:storage/bucket:Bucket": "name"}
"""The backup bucket's type -> its output holding the bucket's name."""
BACKUPS_NAME = "qdrant-backups"
"""The QdrantBackups component's name in the program (its bucket is `<name>-bucket`)."""
DISCARD_KEY = f"{PROJECT}:backups.discardBucket"


# --- the decisions (shared with ragops) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """A registry database: planned (from config) or running (from history or state)."""

    managed: bool
    major: str
    upgrade_from: str = ""
    """The declared upgrade of the registry's own mode (managed or cloudnative); "" for a running registry."""

    @property
    def upgrade_key(self) -> str:
        """The key that declares a major upgrade of this registry."""
        return f"{PROJECT}:postgres.{'managed' if self.managed else 'cloudnative'}.majorUpgrade.fromVersion"


def scale_down_refusal(stack: str, deployed: int | None, replicas: int, scale_down_to: int) -> str | None:
    """Why lowering Qdrant from `deployed` to `replicas` replicas is refused (None: it is not), `scale_down_to`
    being the config's `rag:qdrant.scaleDownTo` acknowledgement."""
    if deployed is None or replicas >= deployed or scale_down_to == replicas:
        return None
    removed = ", ".join(f"qdrant-{i}" for i in range(replicas, deployed))
    return (
        f"Refusing to scale Qdrant on stack {stack!r} from {deployed} to {replicas} replicas: Kubernetes "
        f"removes the highest pods ({removed}), and the shards only they hold would be lost, their peers left "
        f"dead in the cluster. First move their shards to the remaining nodes and remove their peers "
        f"({SCALE_DOWN_RUNBOOK}), then acknowledge it with `pulumi config set --path {QDRANT_KEY}.scaleDownTo "
        f"{replicas} -s {stack}`."
    )


def namespace_refusal(stack: str, deployed: str | None, namespace: str) -> str | None:
    """Why moving the stack from namespace `deployed` to `namespace` is refused (None: it is not).

    `metadata.namespace` is a field pulumi-kubernetes replaces on (provider/pkg/provider/diff.go): every object is
    created again in the new namespace, empty (a new Qdrant cluster, a new CloudNativePG Cluster), and the old
    Namespace is deleted at the end of the `up` with every PVC in it; in prod the `up` stops at the first protected
    object, the new namespace half-filled. There is no declared form of this step: a new stack is."""
    if deployed is None or deployed == namespace:
        return None
    return (
        f"Refusing to move stack {stack!r} from namespace {deployed!r} to {namespace!r}: every object would be "
        f"created again, empty, in {namespace!r} (a new Qdrant cluster and registry), and {deployed!r} deleted "
        f"with its volumes at the end of the update. Set it back (`pulumi config set {PROJECT}:namespace "
        f"{deployed} -s {stack}`); to move, deploy a new stack and restore its data from backups "
        f"({DAY_TWO_DOC})."
    )


MODE_SWITCH_KEY = f"{PROJECT}:postgres.modeSwitch.fromMode"
MODE_SWITCH_RUNBOOK = "docs/operations.md#moving-the-registry-to-the-other-mode"


@dataclass(frozen=True)
class ClusterIdentity:
    """What places the stack's cluster: a change of any of it replaces the cluster (or its network) with a new, empty
    one. From the state: the explicit `aws`/`gcp` provider (infra/clusters: the stack's only ones), the EKS VPC and
    its private subnets."""

    provider: str
    """eks, gke, or existing (a stack whose state has workloads but no cloud provider of its own)."""
    region: str = ""
    project: str = ""
    vpc_cidr: str = ""
    zones: int = 0
    autopilot: bool | None = None
    """gke: whether the cluster is an Autopilot one (None: not in the state)."""


def cluster_refusal(
    stack: str, deployed: ClusterIdentity | None, config: StackConfig
) -> tuple[str, str] | None:
    """(key, why) when `config` moves the deployed stack to another cluster (None: it does not).

    The provider, `cluster.<eks|gke>.region`, `cluster.gke.project` and `cluster.eks.vpcCidr` are ForceNew on the cluster or its network (terraform-provider-aws
    `aws_eks_cluster` vpc_config / `aws_vpc` cidr_block, terraform-provider-google `google_container_cluster`
    location / project; another provider or region is another cluster altogether): the `up` builds a new, empty
    cluster and every Kubernetes object on it again (a new Qdrant cluster and registry), and deletes the old one with
    its volumes (outside prod: nothing is protected). Like another namespace, it has no declared form.
    `cluster.eks.availabilityZones` is refused for other reasons (`_zones_refusal`)."""
    if deployed is None:
        return None
    cluster = config.cluster
    changes: list[tuple[str, Any, Any]] = []
    if cluster.provider != deployed.provider:
        changes.append(("cluster.provider", deployed.provider, cluster.provider))
    elif cluster.provider == "eks":
        eks = cluster.eks
        changes += [
            ("cluster.eks.region", deployed.region, eks.region),
            ("cluster.eks.vpcCidr", deployed.vpc_cidr, eks.vpcCidr),
            ("cluster.eks.availabilityZones", deployed.zones, eks.availabilityZones),
        ]
    elif cluster.provider == "gke":
        changes += [
            ("cluster.gke.region", deployed.region, cluster.gke.region),
            ("cluster.gke.project", deployed.project, cluster.gke.project),
            ("cluster.gke.autopilot", deployed.autopilot, cluster.gke.autopilot),
        ]
    for key, was, wanted in changes:
        if was is None or (not isinstance(was, bool) and was in ("", 0)) or was == wanted:
            continue  # not in the state (an older one): nothing to compare
        if key == "cluster.gke.autopilot":
            return (
                f"{PROJECT}:{key}",
                f"Refusing to change {key} of stack {stack!r} from {was!r} to {wanted!r}: `enable_autopilot` is "
                "ForceNew (terraform-provider-google google_container_cluster), so the `up` would replace the cluster "
                "by a new, empty one of the same name, which either collides with the running one half-way through "
                "the `up` or takes its place with none of the stack's objects on it (in prod the protected cluster "
                "stops the `up`). Set it back "
                f"(`pulumi config set --path {PROJECT}:{key} {str(was).lower()} -s {stack}`), or deploy a new stack "
                "of the other kind and restore into it (docs/delivery.md#adding-a-permanent-stack, docs/runbooks.md) "
                f"({DAY_TWO_DOC})",
            )
        if key == "cluster.eks.availabilityZones":
            return (f"{PROJECT}:{key}", _zones_refusal(stack, was, wanted))
        return (
            f"{PROJECT}:{key}",
            f"Refusing to change {key} of stack {stack!r} from {was!r} to {wanted!r}: that replaces the cluster "
            f"(or its network) with a new, empty one: every object would be created again there (a new Qdrant "
            f"cluster and registry) and the old cluster deleted with its volumes. Set it back (`pulumi config set "
            f"--path {PROJECT}:{key} {was} -s {stack}`), or deploy a new stack there and restore into it "
            "(docs/delivery.md#adding-a-permanent-stack, docs/runbooks.md), or `pulumi destroy` this stack first "
            f"({DAY_TWO_DOC})",
        )
    return None


def _zones_refusal(stack: str, was: Any, wanted: Any) -> str:
    """Another number of zones does not replace the cluster (its subnets update in place since
    terraform-provider-aws 5.25, #34090), but EKS takes new subnets only in the zones it was created with ("All
    subnets that you add must be in the same set of AZs as originally provided", EKS user guide, network
    requirements; aws/containers-roadmap#2330): more zones fail the `up` half-way, after the new subnets were
    made; fewer strand the EBS volumes (Qdrant's, the registry's) of the dropped zones, whose pods then never
    schedule."""
    more = isinstance(was, int) and isinstance(wanted, int) and wanted > was
    why = (
        "EKS accepts subnets only in the zones the cluster was created with, so the `up` would fail half-way, "
        "after creating the new zones' subnets"
        if more
        else "the volumes of Qdrant and the registry in the dropped zones stay there (EBS volumes are zonal), and "
        "their pods would never be scheduled again"
    )
    return (
        f"Refusing to change cluster.eks.availabilityZones of stack {stack!r} from {was!r} to {wanted!r}: {why}. "
        f"Set it back (`pulumi config set --path {PROJECT}:cluster.eks.availabilityZones {was} -s {stack}`), or "
        "deploy a new stack with the zones you want and restore into it (docs/delivery.md#adding-a-permanent-stack, "
        f"docs/runbooks.md) ({DAY_TWO_DOC})"
    )


def mode_switch_refusal(
    stack: str, planned: Registry, running: Iterable[Registry], declared: str
) -> str | None:
    """Why moving the registry to `planned`'s mode is refused (None: it is not): the state runs registries of the
    other mode only, and `declared` (`rag:postgres.modeSwitch.fromMode`) does not name it. The `up` would create a
    new, empty registry, roll the service onto it, and delete the old one last (CloudNativePG's PVCs go with its
    Cluster; in prod the protected delete fails after the switch)."""
    modes = {registry.managed for registry in running}
    # Nothing deployed, or the planned mode's registry exists (no switch, or one already done).
    if not modes or planned.managed in modes:
        return None
    current, new = ("cloudnative", "managed") if planned.managed else ("managed", "cloudnative")
    if declared == current:
        return None
    return (
        f"rag:postgres.mode goes from {current} to {new} on stack {stack!r}: the service would move to a new, empty "
        f"registry (nothing is copied) and the {current} one be deleted at the end of the `up` (in prod the "
        f"protected delete fails after the switch). Follow {MODE_SWITCH_RUNBOOK}: dump the registry, then `pulumi "
        f"config set --path {MODE_SWITCH_KEY} {current} -s {stack}` and restore the dump into the new one; or set "
        f"rag:postgres.mode back to {current}."
    )


def bucket_refusal(stack: str, deployed: str | None, keeps: bool, discard: str) -> str | None:
    """Why deleting the backup bucket the program created (`deployed`) is refused (None: it is not): the config no
    longer creates it (`keeps` false: backups off, or another `rag:backups.bucket`) and `discard`
    (`rag:backups.discardBucket`) does not name it. Outside prod the bucket has `force_destroy`, so the `up` empties
    it: every Qdrant snapshot and the registry's WAL and base backups; in prod the protected delete stops the `up`
    at its end, after the rest was applied."""
    if deployed is None or keeps or discard == deployed:
        return None
    return (
        f"Refusing to delete the backup bucket {deployed!r} of stack {stack!r} with every Qdrant snapshot and "
        "registry backup in it: the program creates it only while rag:backups.enabled is true and rag:backups.bucket "
        f"empty, and the `up` would empty and delete it (in prod: stop at its protection). To keep the backups, "
        f"copy them out or keep the bucket out of the stack ({BUCKET_DOC}); then `pulumi config set --path "
        f"{DISCARD_KEY} {deployed} -s {stack}`. Or set rag:backups.enabled back to true."
    )


def is_downgrade(planned: Registry, majors: Iterable[str]) -> bool:
    """Whether `planned`'s major is below every one of `majors` (a downgrade, not an undeclared upgrade)."""
    found = [m for m in majors if m]
    return (
        bool(found)
        and planned.major.isdigit()
        and all(m.isdigit() and int(m) > int(planned.major) for m in found)
    )


def major_upgrade_refusal(
    stack: str,
    planned: Registry,
    running: Iterable[Registry],
    *,
    seen: str = "the registry's last updates ran",
) -> str | None:
    """Why moving the registry to `planned` is refused (None: it is not). `running`: the registries the stack may
    run (only those of the planned mode count: a mode change makes a new registry, which takes any major); `seen`
    says where those came from, for the message."""
    majors = {
        registry.major for registry in running if registry.managed == planned.managed and registry.major
    }
    if not majors:
        return None
    key = planned.upgrade_key
    runbook = MANAGED_RUNBOOK if planned.managed else CNPG_RUNBOOK
    current = " or ".join(sorted(majors))
    if planned.upgrade_from:
        if planned.upgrade_from in majors or planned.major in majors:
            return None  # declared from the running major, or already done (the declaration is then cleared)
        return (
            f"{key} declares an upgrade from {planned.upgrade_from}, but {seen} PostgreSQL {current}. "
            f"Set fromVersion to the major it runs ({runbook})."
        )
    if planned.major in majors:
        return None
    if is_downgrade(planned, majors):
        # Not an undeclared upgrade (whose advice, fromVersion, config.py refuses as "not below"): no way down.
        back = (
            f"(`pulumi config set --path rag:postgres.version '\"{current}\"' -s {stack}`)"
            if len(majors) == 1
            else f"to the major the registry runs ({current})"
        )
        return (
            f"rag:postgres.version goes from {current} down to {planned.major}: PostgreSQL has no in-place major "
            f"downgrade (pg_upgrade only goes up; CloudNativePG, RDS and Cloud SQL refuse it). Set it back {back}, "
            f"or restore a backup into a new registry of the older major ({runbook})."
        )
    source = current if len(majors) == 1 else "<the major the instance runs>"
    if not planned.managed:
        return (
            f"rag:postgres.version goes from {current} to {planned.major}, a major upgrade of the CloudNativePG "
            "registry (the operator runs pg_upgrade in place: every instance is down while it runs), and none is "
            f"declared. Follow {runbook}: take a base backup, then `pulumi config set --path {key} {source} -s "
            f"{stack}` and, with backups on, a new rag:postgres.cloudnative.archiveName ending in "
            f"-pg{planned.major}; or set rag:postgres.version back to {current}."
        )
    return (
        f"rag:postgres.version goes from {current} to {planned.major}, a major upgrade of the RDS / Cloud SQL "
        "registry (pg_upgrade: the instance is down while it runs), and none is declared. Follow "
        f"{runbook}: take a snapshot, then `pulumi config set --path {key} {source} -s {stack}` and "
        f"`pulumi config set --path rag:postgres.managed.applyImmediately true -s {stack}`; or set "
        f"rag:postgres.version back to {current}."
    )


STORAGE_SHRINK_KEY = f"{PROJECT}:postgres.cloudnative.storage.size"


def storage_shrink_refusal(stack: str, deployed: str | None, size: str) -> str | None:
    """Why giving the CloudNativePG Cluster a smaller volume than `deployed` is refused (None: it is not). The
    operator's webhook refuses it ("can't shrink existing storage", internal/webhook/v1/cluster_webhook.go
    `validateStorageConfigurationChange`, v1.30.0), but only when the Cluster is applied, in the middle of the `up`,
    after the steps before it. A volume never shrinks, so there is nothing to declare: set it back."""
    from infra.components.specs import quantity_value  # the program has it loaded; ragops never calls this

    if deployed is None:
        return None
    try:
        if quantity_value(size) >= quantity_value(deployed):
            return None
    except ValueError:  # not a quantity the state or the config check knows: the operator decides
        return None
    return (
        f"Refusing to shrink the CloudNativePG registry's volumes on stack {stack!r} from {deployed} to {size}: "
        f"a volume never shrinks, and the operator refuses the Cluster in the middle of the `up` (\"can't shrink "
        f'existing storage"). Set it back (`pulumi config set --path {STORAGE_SHRINK_KEY} {deployed} -s {stack}`); '
        f"to move to smaller volumes, restore into a new Cluster ({DAY_TWO_DOC})."
    )


VOLUME_RUNBOOK = "docs/runbooks.md#growing-a-statefulsets-volume"


@dataclass(frozen=True)
class VolumeTemplate:
    """A StatefulSet's data volume template, as the state records it."""

    size: str
    storage_class: str = ""
    """"": no `storageClassName` (the cluster's default class)."""

    @property
    def text(self) -> str:
        """As `replaceFrom` declares it: `size` or `size/class`."""
        return f"{self.size}/{self.storage_class}" if self.storage_class else self.size


def _same_size(one: str, other: str) -> bool:
    from infra.components.specs import quantity_value  # the program has it loaded; ragops never calls this

    try:
        return quantity_value(one) == quantity_value(other)
    except ValueError:
        return one == other


def volume_template_refusal(
    stack: str,
    what: str,
    key: str,
    deployed: VolumeTemplate | None,
    planned: VolumeTemplate,
    declared: str,
    class_key: str = "",
) -> str | None:
    """Why a new volume template (size or class) for the protected StatefulSet of `what` is refused (None: it is
    not: the same template, nothing deployed, or `declared` (`<key>.replaceFrom`) names the deployed one).
    `class_key` is the key the planned class comes from (`<key>.storageClass` unless given: an unset one falls
    back to the cluster's `cluster.<provider>.storageClass`), so the way back names the key that changed.
    `spec.volumeClaimTemplates` is immutable (pulumi-kubernetes' StatefulSet forceNew list, provider/pkg/provider/
    diff.go), so the `up` replaces the StatefulSet, deleting first (a named object); a protected one stops the
    `up` there, after every step before it was applied, and the replacement would keep the PVCs at their old size
    anyway. Called for protected stacks only. The declaration names the deployed template, so once the replace is
    recorded it no longer matches anything and a later change is refused again."""
    if deployed is None:
        return None
    same_class = deployed.storage_class == planned.storage_class
    if same_class and _same_size(deployed.size, planned.size):
        return None
    if declared:
        size, _, storage_class = declared.partition("/")
        if storage_class == deployed.storage_class and _same_size(size, deployed.size):
            return None
    stale = (
        f" ({key}.replaceFrom {declared!r} does not name the deployed template {deployed.text!r})"
        if declared
        else ""
    )
    back = f"`pulumi config set --path {key}.size {deployed.size} -s {stack}`"
    if not same_class:
        back += (
            f" and `pulumi config set --path {class_key or f'{key}.storageClass'} '{deployed.storage_class}'"
            f" -s {stack}`"
        )
    return (
        f"Refusing to change the {what} StatefulSet's volume template on stack {stack!r} from {deployed.text} to "
        f"{planned.text}{stale}: a StatefulSet's volumeClaimTemplates cannot change, so the `up` would replace the "
        f"protected StatefulSet and stop there, after applying every step before it (and a replacement keeps the "
        f"PVCs at their old size). Grow the PVCs in place and unprotect the StatefulSet as in {VOLUME_RUNBOOK}, "
        f"then declare it: `pulumi config set --path {key}.replaceFrom {deployed.text} -s {stack}` (clear it after "
        f"the `up`); or set it back ({back})."
    )


@dataclass(frozen=True)
class RegistryNames:
    """The application database and its owner a registry was created with, as the state records them."""

    kind: str
    """`cloudnative` (the Cluster's bootstrap), `rds` (the instance's dbName / username) or `cloudsql` (the declared
    Database and User)."""
    database: str | None
    owner: str | None

    @property
    def managed(self) -> bool:
        return self.kind != "cloudnative"


RENAME_EFFECT = {
    "cloudnative": "CloudNativePG creates the database and its owner only when the Cluster bootstraps (its webhook "
    "checks no bootstrap change on an update, internal/webhook/v1/cluster_webhook.go v1.30.0, and the operator never "
    "runs initdb again), so the service would be pointed at a database and role that do not exist: its new pods "
    "never become ready and the `up` fails after the Deployments' wait",
    "rds": "RDS takes the database name and the master user only at creation (`db_name` and `username` are ForceNew "
    "in the provider): the `up` would replace the instance with a new, empty registry (in prod the protected "
    "replace stops the `up` there, after the steps before it)",
    "cloudsql": "Cloud SQL's database and user are separate resources whose `name` is ForceNew: the `up` would "
    "create a new, empty database (or a user owning nothing), move the service to it and drop the old one at the "
    "end (in prod the protected database stops the `up` there, after the steps before it)",
}


def registry_names_refusal(
    stack: str, planned_managed: bool, running: Iterable[RegistryNames], database: str, user: str
) -> tuple[str, str] | None:
    """(key, why) when `rag:postgres.database` / `rag:postgres.user` differ from what the running registry of the
    planned mode was created with (None: they do not, or nothing of that mode runs: a first `up`, or a declared
    mode switch's new registry, which takes any names). No declared form: a name is fixed at creation."""
    for names in running:
        if names.managed != planned_managed:
            continue
        for key, was, wanted in (("database", names.database, database), ("user", names.owner, user)):
            if was is None or was == wanted:
                continue
            return (
                f"{PROJECT}:postgres.{key}",
                f"rag:postgres.{key} goes from {was!r} to {wanted!r} on stack {stack!r}, but the registry was "
                f"created with {was!r}: {RENAME_EFFECT[names.kind]}. Set it back (`pulumi config set --path "
                f"rag:postgres.{key} {was} -s {stack}`); another name means another registry: dump and restore "
                f"({MODE_SWITCH_RUNBOOK}, {DAY_TWO_DOC}).",
            )
    return None


VALKEY_DOWNGRADE_KEY = f"{PROJECT}:redis.incluster.downgradeFrom"


UNRECOVERABLE_KEY = f"{PROJECT}:postgres"
CNPG_UNRECOVERABLE = "Cluster is unrecoverable and needs manual intervention"
"""CloudNativePG v1.30.0 `PhaseUnrecoverable` (api/v1/cluster_types.go): an instance Job (initdb, join, recovery)
used up its retries, and the operator waits for a person (internal/controller/cluster_controller.go)."""


def unrecoverable_refusal(stack: str, phase: str | None) -> str | None:
    """Refuse an `up` over a CloudNativePG Cluster the state last saw unrecoverable: pulumi-kubernetes recorded that
    update with its error, so this `up` would update the Cluster and wait for `Ready` for the Cluster's update
    timeout (30 minutes; 60 with a declared major upgrade) and fail the same way."""
    if phase != CNPG_UNRECOVERABLE:
        return None
    return (
        f"the stack's state has its CloudNativePG Cluster in phase {phase!r} (an instance Job failed; the operator "
        "leaves it so): this `up` would wait 30 minutes (60 with a declared major upgrade) for it to become Ready "
        "and fail. Recover it by hand "
        "(docs/runbooks.md#the-registrys-cluster-never-became-ready-a-failed-instance-job), then run `pulumi "
        f"refresh -s {stack}` and `up` again."
    )


def valkey_downgrade_refusal(stack: str, deployed: str | None, version: str, declared: str) -> str | None:
    """Why running the in-cluster Valkey `version` on the append-only file the `deployed` major wrote is refused
    (None: it is not). An older Valkey cannot load a newer base format: 8.x reads RDB 11 only and exits at start on
    9.x's `VALKEY080` base (valkey-io/valkey#2888; `rdb-version-check relaxed` exists from 8.1 only), so the pod
    crash-loops until the file is removed. `declared` (`rag:redis.incluster.downgradeFrom`) naming the deployed
    major accepts an empty cache: the pod's init container then moves the file aside (infra/components/redis.py).
    Within a major the format stays, so a minor downgrade passes."""
    from infra.components.redis import aof_format  # the program has it loaded; ragops never calls this

    planned = version.split(".")[0]
    if deployed is None or not deployed.isdigit() or not planned.isdigit() or declared == deployed:
        return None
    if int(planned) >= int(deployed) or aof_format(int(planned)) == aof_format(int(deployed)):
        return None
    return (
        f"Refusing to run Valkey {version} on stack {stack!r} over the append-only file Valkey {deployed} wrote: "
        f"its format (RDB {aof_format(int(deployed))}) is newer than {planned}.x loads, so the pod would crash-loop "
        f"at start (valkey-io/valkey#2888). Set rag:redis.version back to a {deployed}.x release, or accept an "
        f"empty cache (queued jobs are kept by the database): `pulumi config set --path {VALKEY_DOWNGRADE_KEY} "
        f"{deployed} -s {stack}` (the pod then moves the old file aside; clear the key after the `up`; "
        f"{DAY_TWO_DOC})."
    )


def endpoint_move_refusal(
    stack: str, identified: bool | None, private_was: bool | None, private_planned: bool
) -> str | None:
    """Why moving GKE's endpoint in the first `up` that gives the stack's Kubernetes provider its
    `clusterIdentifier` is refused (None: it is not; `identified` None: no provider in the state, `private_was` None:
    no GKE cluster in it).

    pulumi-kubernetes' `DiffConfig` (provider/pkg/provider/provider.go) decides from the identifier only when it is
    in both the old and the new inputs ("We don't do this when adding or removing the identifier in order to make
    on- and off-boarding less risky"): the `up` that adds it still compares the kubeconfigs' active clusters. If
    that `up` also switches `privateEndpoint`, GKE's `endpoint` (the kubeconfig's server) moves, and the provider
    and every Kubernetes object of the stack are replaced create-before-delete (REVIEW12 F1, REVIEW_INFRA21 M1). The
    preview does not show it (terraform-provider-google never marks `endpoint` unknown). One `up` without the switch
    records the identifier; from then on the switch is an in-place update of the provider."""
    if identified is None or identified or private_was is None or private_was == private_planned:
        return None
    was = "true" if private_was else "false"
    return (
        f"Refusing to switch the GKE cluster's private endpoint on stack {stack!r} in the same `up` that gives its "
        "Kubernetes providers their clusterIdentifier: pulumi-kubernetes ignores an identifier being added and "
        "replaces a provider whose kubeconfig names another server, and with it every Kubernetes object of the "
        f"stack (the preview does not show it). Run one `up` without the endpoint change first (`pulumi config set "
        f"--path {PRIVATE_ENDPOINT_KEY} {was} -s {stack}`), then change it ({ENDPOINT_DOC})."
    )


# --- what the stack runs, from its own state ------------------------------------------------------------------


@dataclass(frozen=True)
class DeployedState:
    """What the stack's last recorded state runs."""

    qdrant_replicas: int | None
    """The Qdrant StatefulSet's replicas (None: no StatefulSet in the state)."""
    registries: tuple[Registry, ...]
    """The CloudNativePG Cluster and RDS / Cloud SQL instances, with the major each runs."""
    namespace: str | None = None
    """The stack's namespace (None: none in the state): its Namespace or NamespacePatch, else (`rag:namespaceMode`
    existing declares neither) the namespace of the Qdrant StatefulSet."""
    backup_bucket: str | None = None
    """The name of the backup bucket the program created (None: none in the state)."""
    namespace_created: bool = False
    """Whether the state holds a Namespace the stack created (`rag:namespaceMode` create)."""
    namespace_released: bool = False
    """Whether that Namespace carries RELEASED_ANNOTATION: an update already marked it to be kept."""
    postgres_storage: str | None = None
    """The CloudNativePG Cluster's `spec.storage.size` (None: no Cluster in the state)."""
    postgres_instances: int | None = None
    """The CloudNativePG Cluster's `spec.instances` (None: no Cluster in the state)."""
    qdrant_volume: VolumeTemplate | None = None
    """The Qdrant StatefulSet's `storage` volume template (None: none in the state)."""
    valkey_volume: VolumeTemplate | None = None
    """The in-cluster Valkey StatefulSet's `data` volume template (None: none in the state)."""
    cluster: ClusterIdentity | None = None
    """Where the stack's cluster is (None: nothing deployed in the state)."""
    valkey_major: str | None = None
    """The major of the in-cluster Valkey's image (None: no Valkey StatefulSet in the state, or a tag without one)."""
    postgres_phase: str | None = None
    """The CloudNativePG Cluster's `status.phase` as the state last recorded it (None: none)."""
    registry_names: tuple[RegistryNames, ...] = ()
    """The database and owner each registry in the state was created with."""
    k8s_identified: bool | None = None
    """Whether the stack's `k8s` Kubernetes provider carries a `clusterIdentifier` (None: no such provider)."""
    gke_private_endpoint: bool | None = None
    """The GKE cluster's `privateClusterConfig.enablePrivateEndpoint` (None: no GKE cluster in the state)."""


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _major(version: Any) -> str:
    """`17` of `17`, `17.5`, `POSTGRES_17`."""
    return str(version or "").removeprefix("POSTGRES_").split(".")[0].split("_")[0]


def _image_major(image: str) -> str | None:
    """The PostgreSQL major of a CloudNativePG operand image: a pinned one (`infra.components.postgres.
    pg_image_major`), or the leading number of any other tag (a Cluster deployed before the images were pinned ran
    `postgresql:<major>`; the operator reads the major from the tag's leading number too)."""
    from infra.components.postgres import pg_image_major  # the program has it loaded; ragops never calls this

    pinned = pg_image_major(image)
    if pinned is not None:
        return str(pinned)
    tag = image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    match = re.match(r"\d+", tag)
    return match.group(0) if match else None


def _valkey_major(image: str) -> int | None:
    from infra.components.redis import image_major  # the program has it loaded; ragops never calls this

    return image_major(image)


def deployed_state(
    resources: Mapping[str, Any], *, qdrant: str = QDRANT_NAME, postgres: str = POSTGRES_NAME
) -> DeployedState:
    """The state's facts from `readStackResourceOutputs`' answer: URN -> {"type", "outputs"}."""
    replicas: int | None = None
    namespace: str | None = None
    workload_namespace: str | None = None
    created = released = False
    bucket: str | None = None
    storage: str | None = None
    instances: int | None = None
    phase: str | None = None
    registries: list[Registry] = []
    names: list[RegistryNames] = []
    cloudsql_names: dict[str, str | None] = {}
    valkey_major: str | None = None
    qdrant_volume: VolumeTemplate | None = None
    valkey_volume: VolumeTemplate | None = None
    cloud: dict[str, Any] = {}
    private_subnets = 0
    identified: bool | None = None
    private_endpoint: bool | None = None
    for urn, entry in resources.items():
        if not isinstance(entry, Mapping):
            continue
        kind, outputs, name = entry.get("type"), entry.get("outputs") or {}, _name(urn)
        if kind == AWS_PROVIDER and name == "aws":
            cloud.update(provider="eks", region=str(outputs.get("region") or ""))
        elif kind == GCP_PROVIDER and name == "gcp":
            cloud.update(
                provider="gke",
                region=str(outputs.get("region") or ""),
                project=str(outputs.get("project") or ""),
            )
        elif kind == GKE_CLUSTER and name == "gke":
            cloud["autopilot"] = bool(outputs.get("enableAutopilot"))
            private_endpoint = bool((outputs.get("privateClusterConfig") or {}).get("enablePrivateEndpoint"))
        elif kind == K8S_PROVIDER and name == K8S_PROVIDER_NAME:
            identified = bool(outputs.get("clusterIdentifier"))
        elif kind == VPC and name == "vpc":
            cloud["vpc_cidr"] = str(outputs.get("cidrBlock") or "")
        elif kind == SUBNET and re.fullmatch(r"private-[0-9]+", name):
            private_subnets += 1
        elif kind in BUCKETS and name == f"{BACKUPS_NAME}-bucket":
            bucket = str(outputs.get(BUCKETS[kind]) or "") or None
        elif kind in (NAMESPACE, NAMESPACE_PATCH) and name == NAMESPACE_NAME:
            metadata = outputs.get("metadata") or {}
            namespace = str(metadata.get("name") or "") or None
            if kind == NAMESPACE:
                created = True
                released = RELEASED_ANNOTATION in (metadata.get("annotations") or {})
        elif kind == STATEFULSET and name == f"{qdrant}-statefulset":
            workload_namespace = str((outputs.get("metadata") or {}).get("namespace") or "") or None
            qdrant_volume = _volume_template(outputs, "storage")
            count = (outputs.get("spec") or {}).get("replicas")
            replicas = int(count) if count is not None else 1  # the StatefulSet's default
        elif kind == STATEFULSET and name == f"{REDIS_NAME}-statefulset":
            valkey_volume = _volume_template(outputs, "data")
            pod = ((outputs.get("spec") or {}).get("template") or {}).get("spec") or {}
            images = [
                str(c.get("image") or "") for c in pod.get("containers") or [] if c.get("name") == "valkey"
            ]
            valkey = _valkey_major(images[0]) if images else None
            valkey_major = str(valkey) if valkey is not None else None
        elif kind == CNPG_CLUSTER and name == f"{postgres}-cluster":
            storage = str(((outputs.get("spec") or {}).get("storage") or {}).get("size") or "") or None
            count = (outputs.get("spec") or {}).get("instances")
            instances = int(count) if count is not None else None
            phase = str((outputs.get("status") or {}).get("phase") or "") or None
            major = _image_major(str((outputs.get("spec") or {}).get("imageName") or ""))
            if major is not None:
                registries.append(Registry(managed=False, major=major))
            bootstrap = (outputs.get("spec") or {}).get("bootstrap") or {}
            owner = bootstrap.get("initdb") or bootstrap.get("recovery") or {}
            names.append(
                RegistryNames("cloudnative", _text(owner.get("database")), _text(owner.get("owner")))
            )
        elif kind == RDS_INSTANCE and name.startswith(f"{postgres}-") and name.endswith("-instance"):
            version = outputs.get("engineVersionActual") or outputs.get("engineVersion")
            registries.append(Registry(managed=True, major=_major(version)))
            names.append(RegistryNames("rds", _text(outputs.get("dbName")), _text(outputs.get("username"))))
        elif kind == CLOUDSQL_DATABASE and name == f"{postgres}-database":
            cloudsql_names["database"] = _text(outputs.get("name"))
        elif kind == CLOUDSQL_USER and name == f"{postgres}-user":
            cloudsql_names["owner"] = _text(outputs.get("name"))
        elif kind == CLOUDSQL_INSTANCE and name.startswith(f"{postgres}-") and name.endswith("-instance"):
            registries.append(Registry(managed=True, major=_major(outputs.get("databaseVersion"))))
    if cloudsql_names:
        names.append(RegistryNames("cloudsql", cloudsql_names.get("database"), cloudsql_names.get("owner")))
    identity: ClusterIdentity | None = None
    if "provider" in cloud:
        identity = ClusterIdentity(**cloud, zones=private_subnets if cloud["provider"] == "eks" else 0)
    elif namespace or workload_namespace:
        identity = ClusterIdentity(provider="existing")
    return DeployedState(
        cluster=identity,
        qdrant_replicas=replicas,
        registries=tuple(registries),
        namespace=namespace or workload_namespace,
        backup_bucket=bucket,
        namespace_created=created,
        namespace_released=released,
        postgres_storage=storage,
        postgres_instances=instances,
        valkey_major=valkey_major,
        qdrant_volume=qdrant_volume,
        valkey_volume=valkey_volume,
        postgres_phase=phase,
        registry_names=tuple(names),
        k8s_identified=identified,
        gke_private_endpoint=private_endpoint,
    )


def _volume_template(outputs: Mapping[str, Any], template: str) -> VolumeTemplate | None:
    """The StatefulSet's volume template named `template` (None: none, or no size recorded)."""
    for claim in (outputs.get("spec") or {}).get("volumeClaimTemplates") or []:
        if not isinstance(claim, Mapping) or (claim.get("metadata") or {}).get("name") != template:
            continue
        spec = claim.get("spec") or {}
        size = _text(((spec.get("resources") or {}).get("requests") or {}).get("storage"))
        return VolumeTemplate(size, str(spec.get("storageClassName") or "")) if size else None
    return None


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _plain(value: Any) -> Any:
    """An invoke answer without the SDK's secret wrappers (the state's secrets are not read here)."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return _plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def stack_reference_names() -> tuple[str, ...]:
    """This stack as the backends' stack references name it: `<org>/<project>/<stack>` (the service requires it; a
    project-scoped DIY backend takes it with the org `organization`), then the bare stack name (all a DIY backend
    with the legacy, pre-project layout parses)."""
    stack = pulumi.get_stack()
    return (f"{pulumi.get_organization() or 'organization'}/{pulumi.get_project()}/{stack}", stack)


NO_RESOURCE_REFERENCES = "PULUMI_DISABLE_RESOURCE_REFERENCES"


@contextlib.contextmanager
def _without_resource_references() -> Iterator[None]:
    """The state reads ask the engine for plain IDs instead of resource references (REVIEW6 W2).

    The SDK asks for references by default (the invoke's `acceptResources`, read from this variable per call). For
    each reference in an answer it would build a resource object, which calls `pulumi:pulumi:getResource`; the
    engine answers that only for resources registered in this run, and at program start there are none, so the
    error ("unknown resource <urn>") would fail the whole run from a background task, past the guard's own
    `try`. A state holding a reference (a component that registers a resource as an output) would then stop every
    `up`. The reads run before anything is registered, so no other request reads the variable meanwhile.
    """
    before = os.environ.get(NO_RESOURCE_REFERENCES)
    os.environ[NO_RESOURCE_REFERENCES] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[NO_RESOURCE_REFERENCES]
        else:
            os.environ[NO_RESOURCE_REFERENCES] = before


def _read(token: str, key: str, names: tuple[str, ...]) -> tuple[str, Any]:
    """The first of `names` the builtin invoke `token` answers for, with its answer (else the first name's error: the
    fallback's own refusal, e.g. the service's "should be of the form '<organization>/<project>/<stack>'", says less)."""
    failures: list[Exception] = []
    for name in names:
        try:
            with _without_resource_references():
                return name, _plain(pulumi.runtime.invoke(token, {key: name}).value) or {}
        except Exception as exc:  # the engine answers an unknown or unparsable name with an error
            failures.append(exc)
    raise failures[0]


def keeps_outputs_of_failed_updates() -> bool:
    """Whether the engine keeps the stack's outputs when an update fails (Pulumi 3.112.0, pulumi/pulumi#15754; an
    older one deleted them, and the stack then looks as if no update ever completed). Told by a monitor feature
    that came later (invoke transforms, 3.125), as the SDK has no version call before 3.217."""
    from pulumi.runtime import settings
    from pulumi.runtime.proto import resource_pb2

    return settings.monitor_supports_feature(resource_pb2.RESOURCE_MONITOR_FEATURE_INVOKE_TRANSFORMS)


def read_deployed_state() -> DeployedState | None:
    """The stack's last recorded state (None: no update of it completed yet, or the backend could not say)."""
    return read_state()[0]


def read_state() -> tuple[DeployedState | None, str | None]:
    """The stack's last recorded state, and why it is unknown (None: it is known; a state of None then means no
    update completed). Unknown: the backend could not answer, or this CLI may have deleted the outputs a failed
    update left."""
    names = stack_reference_names()
    try:
        name, outputs = _read(READ_STACK_OUTPUTS, "name", names)
        if not outputs.get("outputs"):
            if not keeps_outputs_of_failed_updates():
                pulumi.log.warn(
                    f"Stack {names[0]} has no outputs, and this Pulumi CLI (older than 3.112) deletes them when an "
                    "update fails: if one did, this run cannot see what the stack runs and does not check for an "
                    "undeclared Qdrant scale-down or PostgreSQL major change. Use Pulumi 3.112 or newer (or ragops)."
                )
                return None, "this Pulumi CLI (older than 3.112) deletes the outputs of a failed update"
            return (
                None,
                None,
            )  # no completed update: nothing to protect (and no snapshot to read resources from)
        _, answer = _read(READ_RESOURCE_OUTPUTS, "stackName", (name,))
    except Exception as exc:  # the backend could not answer: warn, do not stop a deploy
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        pulumi.log.warn(
            f"Could not read stack {names[0]}'s state ({reason}): this run does not check for an undeclared "
            "Qdrant scale-down or PostgreSQL major change (ragops does)."
        )
        return None, f"the backend could not answer ({reason})"
    return deployed_state(answer.get("outputs") or {}), None


class DeployedStateRefusal(ConfigError):
    """The config takes a step the stack's state says is undeclared. A ConfigError, so a `pulumi.RunError`: the CLI
    prints its one line (`error: <key> in <file>: ...`) and no traceback."""


def planned_registry(config: StackConfig) -> Registry:
    """The registry the config asks for."""
    postgres = config.postgres
    managed = postgres.mode == "managed"
    upgrade = (postgres.managed if managed else postgres.cloudnative).majorUpgrade.fromVersion
    return Registry(managed=managed, major=str(postgres.version), upgrade_from=str(upgrade or ""))


def refusal(config: StackConfig, state: DeployedState | None) -> DeployedStateRefusal | None:
    """The first undeclared step `config` takes from `state` (None: none)."""
    if state is None:
        return None
    stack = config.stack
    elsewhere = cluster_refusal(stack, state.cluster, config)
    if elsewhere is not None:
        return DeployedStateRefusal(elsewhere[0], config.stack_file, elsewhere[1])
    if config.cluster.provider == "gke":
        endpoint = endpoint_move_refusal(
            stack, state.k8s_identified, state.gke_private_endpoint, config.cluster.gke.privateEndpoint
        )
        if endpoint is not None:
            return DeployedStateRefusal(PRIVATE_ENDPOINT_KEY, config.stack_file, endpoint)
    moved = namespace_refusal(stack, state.namespace, config.namespace)
    if moved is not None:
        return DeployedStateRefusal(f"{PROJECT}:namespace", config.stack_file, moved)
    scale = scale_down_refusal(
        stack, state.qdrant_replicas, config.qdrant.replicas, config.qdrant.scaleDownTo
    )
    if scale is not None:
        return DeployedStateRefusal(f"{QDRANT_KEY}.scaleDownTo", config.stack_file, scale)
    backups = config.backups
    bucket = bucket_refusal(
        stack, state.backup_bucket, backups.enabled and not backups.bucket, backups.discardBucket
    )
    if bucket is not None:
        return DeployedStateRefusal(DISCARD_KEY, config.stack_file, bucket)
    planned = planned_registry(config)
    switch = mode_switch_refusal(stack, planned, state.registries, config.postgres.modeSwitch.fromMode)
    if switch is not None:
        return DeployedStateRefusal(MODE_SWITCH_KEY, config.stack_file, switch)
    major = major_upgrade_refusal(
        stack, planned, state.registries, seen="the stack's state has the registry on"
    )
    if major is not None:
        same_mode = (r.major for r in state.registries if r.managed == planned.managed)
        key = f"{PROJECT}:postgres.version" if is_downgrade(planned, same_mode) else planned.upgrade_key
        return DeployedStateRefusal(key, config.stack_file, major)
    renamed = registry_names_refusal(
        stack, planned.managed, state.registry_names, config.postgres.database, config.postgres.user
    )
    if renamed is not None:
        return DeployedStateRefusal(renamed[0], config.stack_file, renamed[1])
    if config.protect:
        volumes = [("Qdrant", f"{QDRANT_KEY}.storage", state.qdrant_volume, config.qdrant.storage)]
        if config.redis.mode == "incluster":
            volumes.append(
                (
                    "Valkey",
                    f"{PROJECT}:redis.incluster.storage",
                    state.valkey_volume,
                    config.redis.incluster.storage,
                )
            )
        for what, key, deployed, storage in volumes:
            planned = VolumeTemplate(storage.size, storage.storageClass or config.cluster.storage_class)
            class_key = (
                f"{key}.storageClass"
                if storage.storageClass
                else f"{PROJECT}:cluster.{config.cluster.provider}.storageClass"
            )
            volume = volume_template_refusal(
                stack, what, key, deployed, planned, storage.replaceFrom, class_key
            )
            if volume is not None:
                return DeployedStateRefusal(f"{key}.replaceFrom", config.stack_file, volume)
    if config.redis.mode == "incluster":
        valkey = valkey_downgrade_refusal(
            stack, state.valkey_major, config.redis.version, config.redis.incluster.downgradeFrom
        )
        if valkey is not None:
            return DeployedStateRefusal(VALKEY_DOWNGRADE_KEY, config.stack_file, valkey)
    if config.postgres.mode == "cloudnative":
        stuck = unrecoverable_refusal(stack, state.postgres_phase)
        if stuck is not None:
            return DeployedStateRefusal(UNRECOVERABLE_KEY, config.stack_file, stuck)
        shrink = storage_shrink_refusal(
            stack, state.postgres_storage, config.postgres.cloudnative.storage.size
        )
        if shrink is not None:
            return DeployedStateRefusal(STORAGE_SHRINK_KEY, config.stack_file, shrink)
    return None


def registry_grows(config: StackConfig, state: DeployedState | None) -> bool:
    """Whether this `up` adds instances to the CloudNativePG Cluster the state records, or grows its volumes: its
    update then waits for new replicas' clones, which grow with the data (infra/components/postgres.py
    `cluster_timeouts`). False without a Cluster in the state: a first `up` creates it (the create's bound), and a
    bare `up` after a failed first one keeps the short update bound that ends its wait on an unrecoverable Cluster."""
    from infra.components.specs import quantity_value  # the program has it loaded; ragops never calls this

    if state is None or config.postgres.mode != "cloudnative":
        return False
    cnpg = config.postgres.cloudnative
    if state.postgres_instances is not None and cnpg.instances > state.postgres_instances:
        return True
    if state.postgres_storage is None:
        return False
    try:
        return quantity_value(cnpg.storage.size) > quantity_value(state.postgres_storage)
    except ValueError:  # not a quantity the state or the config check knows: the long bound is the safe one
        return True


def check_deployed(config: StackConfig) -> DeployedState | None:
    """Refuse, before any resource is registered, a step the stack's state says is undeclared (see the module doc);
    returns the state read (None: none)."""
    state, unknown = read_state()
    if unknown is not None and config.namespaceMode != "create":
        # Without the state this run cannot tell whether the stack created its namespace: dropped from the program
        # unmarked, the engine would delete it (`namespace_release`).
        raise DeployedStateRefusal(
            f"{PROJECT}:namespaceMode",
            config.stack_file,
            f"cannot read stack {config.stack!r}'s state ({unknown}), so this run cannot tell whether the stack "
            f"created namespace {config.namespace!r}; with namespaceMode {config.namespaceMode} an `up` would delete "
            "a namespace it created. Run it again once the state can be read (Pulumi 3.112 or newer)",
        )
    error = refusal(config, state)
    if error is not None:
        raise error
    return state


def namespace_release(config: StackConfig, state: DeployedState | None) -> bool:
    """Whether this update must first mark the Namespace the stack created as kept (`rag:namespaceMode` is no longer
    create): dropped from the program unmarked, the engine would delete it with everything in it. Once an update
    marked it, the next one drops it from the stack and the cluster keeps it (infra/stack.py `stack_namespace`)."""
    return (
        config.namespaceMode != "create"
        and state is not None
        and state.namespace_created
        and not state.namespace_released
    )


# --- reads through the stack's own cloud provider ---------------------------------------------------------------


def provider_unconfigured(answer: Any, provider: str, key: str, file: str, what: str) -> bool:
    """Whether `answer`, a blocking invoke's result read through the stack's own `provider` (aws, gcp) for the check
    of `key` (the EKS/GKE version reads, infra/clusters), is the engine's answer of a provider it could not
    configure, rather than the cloud's.

    The engine configures a provider only once every input of it is known; it answers each invoke through one it
    could not configure with no properties and no error (pulumi sdk/go/common/resource/plugin/provider_plugin.go
    `Invoke`: "If the provider is not fully configured, return an empty property map"). In `pulumi preview` that is
    every provider an input of which is an Output of a resource still to be created (a preview gives a new or
    changed provider the unknown ID and configures it with what it has, pkg/resource/deploy/providers/registry.go
    `Create`). A data source's real answer always carries its `id` (the bridged aws and gcp data sources set one),
    so an answer without one is that empty answer, not "no cluster": read as one, the version check would pass.

    In a preview: warns that `key` is not checked in this preview and returns True (the caller skips its check; the
    update checks it). In an update every input of a provider is known before the engine configures it, so an empty
    answer is not expected; it is refused (ConfigError naming `key` and `file`), never taken for "no cluster"."""
    if getattr(answer, "id", None) is not None:
        return False
    if pulumi.runtime.is_dry_run():
        pulumi.log.warn(
            f"{key} in {file}: not checked in this preview: the {provider} provider's configuration is not known "
            f"yet (an input of it comes from a resource still to be created), and such a provider answers every "
            f"read with nothing, so {what} cannot be read. `pulumi up` reads it once the provider is configured "
            "and refuses a step the cluster cannot take."
        )
        return True
    raise ConfigError(
        key,
        file,
        f"the {provider} provider answered the read of {what} with nothing (the engine's answer when it could not "
        "configure the provider), so the step cannot be checked: refusing rather than taking it for no cluster",
    )
