"""Typed, frozen stack configuration and the environment rules.

`Pulumi.yaml` declares every `rag:*` key with its default; a stack file overrides some of them. The CLI replaces a
whole object-valued key when a stack sets it, so `load_config` merges each stack object over the declared default
itself: a stack file only has to name what differs. Everything is checked here, before a resource exists, and every
failure is a `ConfigError` naming the key (`rag:qdrant.replicas`) and the stack file (`Pulumi.prod.yaml`).

Environment rules (the platform's promises per environment) live here too: prod needs TLS from a real issuer,
>= 3 Qdrant replicas and a replication factor >= 2, and gets its stateful resources protected.

`parse_config` is pure (plain dicts in, `StackConfig` out) so it is unit-tested without the engine; `load_config`
feeds it from `pulumi.Config("rag")`. Secrets never pass through here as plain values: see `Secrets`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pulumi.errors import RunError

from infra import embedding_models

PROJECT = "rag"
PROJECT_FILE = Path(__file__).resolve().parent.parent / "Pulumi.yaml"
IMAGE_DIGEST_RE = re.compile(r"^[a-z0-9][a-z0-9._:/-]*[a-z0-9]@sha256:[0-9a-f]{64}$")
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
#: The five fields of a standard cron schedule (what a Kubernetes CronJob and, with a seconds field the program
#: adds, a CloudNativePG ScheduledBackup parse, both with robfig/cron): name, lowest, highest, the names it takes.
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    # 0-6 (Sunday is 0 only): robfig/cron's bounds, "end of range (7) above maximum (6)" for a 7.
    ("day of week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def cron_problem(schedule: str) -> str | None:
    """Why `schedule` is not a 5-field cron schedule with every value in range (None: it is)."""
    fields = schedule.split()
    if len(fields) != 5:
        macro = schedule.strip().startswith("@")
        return (
            f"{schedule!r} is not 5 cron fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *')"
            + (
                "; a macro such as @daily is not accepted (the CloudNativePG backup adds a seconds field to it)"
                if macro
                else ""
            )
        )
    for (name, low, high, names), text in zip(_CRON_FIELDS, fields, strict=True):
        for item in text.split(","):
            base, slash, step = item.partition("/")
            if slash and not (step.isdigit() and int(step) > 0):
                return f"{schedule!r}: the step {step!r} in the {name} field is not a positive number"
            if base in ("*", "?"):
                continue
            bounds = []
            for part in base.split("-", 1):
                if part.lower() in names:  # jan = 1, sun = 0
                    value: int | None = names.index(part.lower()) + (1 if name == "month" else 0)
                else:
                    value = int(part) if part.isdigit() else None
                if value is None or not low <= value <= high:
                    return f"{schedule!r}: {part!r} in the {name} field is not {low}-{high}"
                bounds.append(value)
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                return f"{schedule!r}: the range {base!r} in the {name} field runs backwards"
    return None


# The service's RATE_LIMIT_* syntax (the `limits` library's): one or more "N/unit", "N/M units" or "N per unit"
# joined by ";" "," or "|" (docs/operations.md: "10/second;1000/hour"); amounts of at least 1.
_RATE_ITEM = r"\s*[1-9][0-9]*\s*(/|per)\s*([1-9][0-9]*\s*)?(second|minute|hour|day|month|year)s?\s*"
RATE_LIMIT_RE = re.compile(rf"^{_RATE_ITEM}([,;|]{_RATE_ITEM})*$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class ConfigError(RunError):
    """A stack's configuration is missing, mistyped or breaks an environment rule.

    The message names the key and the stack file; `key` and `stack_file` carry them for tools.

    A `pulumi.RunError` and not a ValueError. Pulumi's Python language host (pulumi-language-python-exec) logs a
    RunError as its message alone and any other exception as "Program failed with an unhandled exception" and a
    traceback. A config error raised inside an Output that feeds a resource input (the EKS zone count, read from the
    cloud) travels through the SDK's input serialisation, which re-raises every ValueError as a new "While
    processing input" ValueError (pulumi/runtime/rpc.py serialize_properties, resource.py do_register) and lets
    anything else through as raised: as a ValueError it reached the host wrapped, as a RunError it is one line.
    """

    def __init__(self, key: str, stack_file: str, problem: str) -> None:
        self.key = key
        self.stack_file = stack_file
        self.problem = problem
        super().__init__(f"{key} in {stack_file}: {problem}")


def _f(default: Any = MISSING, **checks: Any) -> Any:
    """A dataclass field carrying its checks (min, max, pattern; integer_ok: a string that may be written as an
    integer, read as its decimal text) in metadata."""
    if isinstance(default, (dict, list)):
        raise TypeError("mutable defaults are not used")
    return field(default=default, metadata=checks)


# --- shapes ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Quantities:
    """CPU and memory as Kubernetes quantity strings."""

    cpu: str = _f(pattern=QUANTITY_RE)
    memory: str = _f(pattern=QUANTITY_RE)


@dataclass(frozen=True, kw_only=True)
class Resources:
    """Container requests and limits."""

    requests: Quantities
    limits: Quantities


@dataclass(frozen=True, kw_only=True)
class Storage:
    """A PersistentVolumeClaim's size and class (empty class: the cluster target's default)."""

    size: str = _f(pattern=QUANTITY_RE)
    storageClass: str = ""


REPLACE_FROM_RE = re.compile(
    r"^([0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?(/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)?)?$"
)


@dataclass(frozen=True, kw_only=True)
class TemplateStorage(Storage):
    """A StatefulSet's volumeClaimTemplates size and class, which Kubernetes does not let change: a new one replaces
    the StatefulSet (infra/guards.py `volume_template_refusal`)."""

    replaceFrom: str = _f(pattern=REPLACE_FROM_RE)
    """The size and class the deployed StatefulSet's template has (`10Gi`, `10Gi/gp3`) while `size` / `storageClass`
    name new ones: the replace declared by docs/runbooks.md#growing-a-statefulsets-volume. "": none."""


@dataclass(frozen=True, kw_only=True)
class ExistingCluster:
    """An existing cluster reached through a kubeconfig (kind, minikube, any)."""

    kubeconfig: str
    context: str
    registry: str = _f(pattern=re.compile(r"^[a-z0-9][a-z0-9._:/-]*[a-z0-9]$"))
    storageClass: str


@dataclass(frozen=True, kw_only=True)
class GkeNodePool:
    """The GKE node pool (ignored on Autopilot)."""

    machineType: str
    minNodes: int = _f(min=0, max=100)
    maxNodes: int = _f(min=1, max=100)
    diskSizeGb: int = _f(min=10, max=65536)
    spot: bool = False


#: An RFC 3339 UTC ("Zulu") time, as GKE's maintenance policy takes and returns them: any other offset is stored
#: in UTC and shows as a permanent diff (pulumi-gcp 10.2.0 ClusterMaintenancePolicyRecurringWindowArgs docstring).
RFC3339_UTC_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
#: The recurrences `rag:cluster.gke.maintenance.window.recurrence` takes: the RFC 5545 RRULEs of GKE's own examples
#: (every day, or some weekdays), the ones whose availability the validator can count without an RRULE library.
GKE_RECURRENCE_RE = re.compile(
    r"^FREQ=DAILY$|^FREQ=WEEKLY;BYDAY=(MO|TU|WE|TH|FR|SA|SU)(,(MO|TU|WE|TH|FR|SA|SU))*$"
)
#: `rag:cluster.gke.minMasterVersion`: a minor (GKE picks that minor's newest patch in the channel) or a full version.
GKE_VERSION_RE = re.compile(r"^$|^1\.[0-9]{2}(\.[0-9]+(-gke\.[0-9]+)?)?$")
GkeExclusionScope = Literal["NO_UPGRADES", "NO_MINOR_UPGRADES", "NO_MINOR_OR_NODE_UPGRADES"]


@dataclass(frozen=True, kw_only=True)
class GkeMaintenanceWindow:
    """The recurring window GKE may run automatic upgrades in (`maintenance_policy.recurring_window`).

    `start`'s date is when the first window opens and its time of day when each opens; `end - start` is how long
    each stays open; `recurrence` (RFC 5545 RRULE, UTC days) says on which days."""

    start: str = _f(pattern=RFC3339_UTC_RE)
    end: str = _f(pattern=RFC3339_UTC_RE)
    recurrence: str = _f(pattern=GKE_RECURRENCE_RE)


@dataclass(frozen=True, kw_only=True)
class GkeMaintenanceExclusion:
    """A one-off span in which GKE runs no automatic upgrades of `scope` (`maintenance_policy.maintenance_exclusions`)."""

    name: str = _f(pattern=re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$"))
    start: str = _f(pattern=RFC3339_UTC_RE)
    end: str = _f("", pattern=re.compile(r"^$|" + RFC3339_UTC_RE.pattern))
    untilEndOfSupport: bool = False
    scope: GkeExclusionScope = "NO_UPGRADES"


@dataclass(frozen=True, kw_only=True)
class GkeMaintenance:
    """When GKE may upgrade the cluster on its own: one recurring window, and exclusions from it."""

    window: GkeMaintenanceWindow
    exclusions: tuple[GkeMaintenanceExclusion, ...] = ()


#: A GCP region (`europe-west1`, `northamerica-northeast2`) and project ID (6-30 characters: lower-case letters, digits
#: and hyphens, starting with a letter). The program names buckets and accounts after them (infra/naming.py), and
#: the components take the region as given: a malformed one failed there, with a traceback, instead of here.
GCP_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]{1,2}$")
GCP_PROJECT_RE = re.compile(r"^([a-z][a-z0-9-]{4,28}[a-z0-9])?$")
#: The Google Cloud regions (Compute Engine's public regions, as of 2026-11: cloud.google.com/compute/docs/regions-zones).
#: No kept source lists them offline (pulumi-gcp 10.2.0 has no region enum; google-cloud-compute asks the API), and
#: the shape alone let a typo of a valid shape (`europe-west99`) through to the first API call of an `up`, after the
#: plan was green. A region Google opens later is refused until it is added here: a one-line change, named in the
#: error, as pulumi-aws's `Region` enum must be bumped for a new AWS region (infra/clusters/eks.py check_region).
GCP_REGIONS = frozenset(
    (
        "africa-south1",
        "asia-east1",
        "asia-east2",
        "asia-northeast1",
        "asia-northeast2",
        "asia-northeast3",
        "asia-south1",
        "asia-south2",
        "asia-southeast1",
        "asia-southeast2",
        "asia-southeast3",
        "australia-southeast1",
        "australia-southeast2",
        "europe-central2",
        "europe-north1",
        "europe-north2",
        "europe-southwest1",
        "europe-west1",
        "europe-west10",
        "europe-west12",
        "europe-west2",
        "europe-west3",
        "europe-west4",
        "europe-west6",
        "europe-west8",
        "europe-west9",
        "me-central1",
        "me-central2",
        "me-west1",
        "northamerica-northeast1",
        "northamerica-northeast2",
        "northamerica-south1",
        "southamerica-east1",
        "southamerica-west1",
        "us-central1",
        "us-east1",
        "us-east4",
        "us-east5",
        "us-south1",
        "us-west1",
        "us-west2",
        "us-west3",
        "us-west4",
    )
)
#: An AWS region (`eu-west-1`, `us-gov-west-1`, `eusc-de-east-1`), at most 20 characters: the S3 bucket name carries
#: it next to the account ID, within S3's 63.
AWS_REGION_RE = re.compile(r"^(?=.{1,20}$)[a-z]{2,4}(-[a-z]+)+-[0-9]{1,2}$")


@dataclass(frozen=True, kw_only=True)
class GkeCluster:
    """A GKE cluster with its Artifact Registry repository and workload identity."""

    project: str
    region: str
    autopilot: bool
    releaseChannel: Literal["RAPID", "REGULAR", "STABLE"]
    deletionProtection: bool
    nodePool: GkeNodePool
    storageClass: str
    maintenance: GkeMaintenance
    minMasterVersion: str = _f("", pattern=GKE_VERSION_RE)
    privateEndpoint: bool = True
    masterAuthorizedNetworks: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class EksNodeGroup:
    """The EKS managed node group."""

    instanceType: str
    minSize: int = _f(min=1, max=100)
    maxSize: int = _f(min=1, max=100)
    desiredSize: int = _f(min=1, max=100)
    diskSizeGb: int = _f(min=10, max=16384)


#: Cluster Autoscaler image per EKS Kubernetes minor: the latest CA release of the same minor, as its README's
#: "Releases" section asks ("use the latest Cluster Autoscaler release that corresponds to the minor version of
#: Kubernetes that their cluster is running"; kubernetes/autoscaler tags cluster-autoscaler-1.3x.y, 2026-07-22).
#: One chart (9.59.0) runs them all: its ClusterRole is a superset of the 1.36 branch's and its default flags are
#: klog's. A minor missing here is refused for `rag:cluster.eks.version` while the autoscaler is on.
EKS_CLUSTER_AUTOSCALER_IMAGES: Mapping[str, str] = types.MappingProxyType(
    {"1.33": "v1.33.6", "1.34": "v1.34.5", "1.35": "v1.35.2", "1.36": "v1.36.1"}
)

#: An IAM role or user ARN (roles may carry a path: EKS access entries accept it, unlike aws-auth).
IAM_PRINCIPAL_RE = re.compile(r"arn:aws(-[a-z]+)*:iam::[0-9]{12}:(role|user)/[A-Za-z0-9+=,.@_/-]{1,512}")

#: `rag:cluster.eks.natGateways`: a NAT gateway (and private route table) in each zone, or one shared by all.
NatGateways = Literal["single", "perZone"]

#: The retention periods CloudWatch Logs accepts (PutRetentionPolicy `retentionInDays`; pulumi-aws LogGroup
#: `retention_in_days`), without 0 ("never expire": what EKS leaves on a log group it creates itself).
LogRetentionDays = Literal[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653
]


@dataclass(frozen=True, kw_only=True)
class EksControlPlaneLogs:
    """The CloudWatch log group the EKS control plane writes its api, audit and authenticator logs to."""

    retentionDays: LogRetentionDays


@dataclass(frozen=True, kw_only=True)
class EksCluster:
    """An EKS cluster with its VPC, ECR repository and IRSA."""

    region: str
    version: str = _f(pattern=re.compile(r"^1\.[0-9]{2}$"))
    vpcCidr: str = _f(pattern=re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/(1[6-9]|2[0-4])$"))
    availabilityZones: int = _f(min=2, max=6)
    nodeGroup: EksNodeGroup
    clusterAutoscaler: Toggle
    controlPlaneLogs: EksControlPlaneLogs
    storageClass: str = ""
    endpointPublicAccess: bool = False
    publicAccessCidrs: tuple[str, ...] = ()
    natGateways: NatGateways = "perZone"
    adminPrincipals: tuple[str, ...] = ()
    readerPrincipals: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ImageRetention:
    """How long the stack's own registry (ECR on eks, Artifact Registry on gke) keeps images no stack needs; what a
    stack deploys, the release before it and every promoted image stay (infra/components/image.py)."""

    neverDeployedDays: int = _f(min=1, max=3650)
    supersededBuildDays: int = _f(min=1, max=3650)


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Which cluster the platform runs on; only the selected provider's block is checked strictly."""

    provider: Literal["existing", "gke", "eks"]
    existing: ExistingCluster
    gke: GkeCluster
    eks: EksCluster
    imageRetention: ImageRetention

    @property
    def storage_class(self) -> str:
        """The storage class of the selected target."""
        return getattr(self, self.provider).storageClass


@dataclass(frozen=True, kw_only=True)
class Toggle:
    """An optional feature switch."""

    enabled: bool


@dataclass(frozen=True, kw_only=True)
class NamespaceQuota:
    """A ResourceQuota and a LimitRange on the stack's namespace (PR stacks on a shared cluster)."""

    enabled: bool
    requests: Quantities
    limits: Quantities
    storage: str = _f(pattern=QUANTITY_RE)
    persistentVolumeClaims: int = _f(min=1, max=100)
    pods: int = _f(min=1, max=500)


@dataclass(frozen=True, kw_only=True)
class SnapshotStorage:
    """The per-node snapshot scratch volume (created only when backups run); empty size: twice the data volume."""

    size: str = _f(pattern=re.compile(rf"^({QUANTITY_RE.pattern[1:-1]})?$"))
    storageClass: str = ""


@dataclass(frozen=True, kw_only=True)
class QdrantCollection:
    """How the service creates its collections in this Qdrant (QDRANT_VECTORS_ON_DISK, QDRANT_QUANTIZATION)."""

    vectorsOnDisk: bool
    quantization: Literal["none", "int8"]


@dataclass(frozen=True, kw_only=True)
class QdrantConfig:
    """Qdrant in cluster mode."""

    version: str = _f(pattern=re.compile(r"^v[0-9]+\.[0-9]+\.[0-9]+$"))
    replicas: int = _f(min=1, max=15)
    replicationFactor: int = _f(min=1, max=10)
    shardNumber: int = _f(min=1, max=64)
    storage: TemplateStorage
    resources: Resources
    pdb: Toggle
    scaleDownTo: int = _f(min=0, max=15)
    collection: QdrantCollection
    snapshotsStorage: SnapshotStorage

    @property
    def snapshots_size(self) -> str:
        """The snapshot volume's size: `snapshotsStorage.size`, or twice `storage.size` when it is empty.

        A backup writes one collection snapshot of a node at a time, at most as large as the node's data volume
        (segments, WAL and indexes are archived as they are). A restore needs twice that: Qdrant receives the
        upload into its temp path and unpacks it there before moving it into the storage. So 2 x the data
        volume, which bounds the node's data, is the smallest size that never runs out."""
        return self.snapshotsStorage.size or twice(self.storage.size)


@dataclass(frozen=True, kw_only=True)
class CnpgRecovery:
    """Bootstrap the CloudNativePG Cluster from an archive in the backup bucket instead of an empty database."""

    source: str = _f(pattern=re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$"))
    targetTime: str = _f(
        pattern=re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))?$")
    )


@dataclass(frozen=True, kw_only=True)
class CnpgMajorUpgrade:
    """A declared major-version upgrade of the CloudNativePG Cluster (an offline in-place pg_upgrade)."""

    fromVersion: str = _f(pattern=re.compile(r"^(1[4-8])?$"), integer_ok=True)
    """The major the Cluster runs now, while postgres.version names the target; empty: no upgrade declared."""


@dataclass(frozen=True, kw_only=True)
class CloudNativePg:
    """CloudNativePG Cluster settings (mode cloudnative)."""

    installOperator: bool
    operatorChartVersion: str = _f(pattern=re.compile(r"^([0-9]+\.[0-9]+\.[0-9]+)?$"))
    """The cloudnative-pg chart to run instead of the pinned one (a step of a one-minor-at-a-time upgrade); empty:
    the pinned chart."""
    instances: int = _f(min=1, max=9)
    storage: Storage
    resources: Resources
    backupSidecarResources: Resources
    """The Barman Cloud plugin's sidecar in every instance pod (with backups on): its ObjectStore's
    `instanceSidecarConfiguration.resources`."""
    archiveName: str = _f(pattern=re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$"))
    recovery: CnpgRecovery
    majorUpgrade: CnpgMajorUpgrade


MAJOR_RE = re.compile(r"^(1[4-8])?$")


@dataclass(frozen=True, kw_only=True)
class MaintenanceWindow:
    """The managed registry's weekly maintenance hour, UTC (RDS `maintenance_window`, Cloud SQL `maintenance_window`)."""

    day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    hour: int = _f(min=0, max=23)


@dataclass(frozen=True, kw_only=True)
class MajorUpgrade:
    """A declared major-version upgrade of the RDS / Cloud SQL instance (docs/runbooks.md)."""

    fromVersion: str = _f(pattern=MAJOR_RE, integer_ok=True)
    """The major the instance runs now, while postgres.version names the target; empty: no upgrade declared."""


@dataclass(frozen=True, kw_only=True)
class ManagedRestore:
    """A registry instance created from a snapshot or a point in time (RDS / Cloud SQL), adopted by the stack."""

    name: str = _f(pattern=re.compile(r"^([a-z]([a-z0-9-]{0,14}[a-z0-9])?)?$"))
    snapshot: str = _f(pattern=re.compile(r"^([A-Za-z0-9][A-Za-z0-9:/_.-]{0,254})?$"))
    sourceInstance: str = _f(pattern=re.compile(r"^([a-z][a-z0-9-]{0,62})?$"))
    time: str = _f(pattern=re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z)?$"))
    keepOriginal: bool = True


@dataclass(frozen=True, kw_only=True)
class ManagedPostgres:
    """RDS (eks) / Cloud SQL (gke) settings (mode managed)."""

    instanceClass: str
    tier: str
    storageGb: int = _f(min=20, max=65536)
    multiAz: bool = True
    backupRetentionDays: int = _f(min=0, max=35)
    maintenanceWindow: MaintenanceWindow
    applyImmediately: bool = False
    autoMinorVersionUpgrade: bool = True
    retainBackupsOnDelete: bool = True
    majorUpgrade: MajorUpgrade
    restore: ManagedRestore


@dataclass(frozen=True, kw_only=True)
class PostgresModeSwitch:
    """A declared move of the registry to the other `postgres.mode` (docs/runbooks.md "Move the registry to the
    other mode"): the `up` creates a new, empty registry, the dump is restored into it."""

    fromMode: str = _f(pattern=re.compile(r"^(cloudnative|managed)?$"))
    """The mode the registry runs now, while postgres.mode names the new one; empty: no switch declared."""


@dataclass(frozen=True, kw_only=True)
class PostgresConfig:
    """The registry database."""

    mode: Literal["cloudnative", "managed"]
    version: str = _f(pattern=re.compile(r"^1[4-8]$"), integer_ok=True)
    database: str = _f(pattern=re.compile(r"^[a-z_][a-z0-9_]{0,62}$"))
    user: str = _f(pattern=re.compile(r"^[a-z_][a-z0-9_]{0,62}$"))
    cloudnative: CloudNativePg
    managed: ManagedPostgres
    modeSwitch: PostgresModeSwitch


@dataclass(frozen=True, kw_only=True)
class InClusterRedis:
    """The in-cluster Valkey StatefulSet (mode incluster)."""

    storage: TemplateStorage
    resources: Resources
    downgradeFrom: str = _f(pattern=re.compile(r"^([0-9]{1,3})?$"), integer_ok=True)
    """The Valkey major the pod runs while redis.version names an older one whose append-only file format differs:
    a declared downgrade to an empty cache (infra/guards.py `valkey_downgrade_refusal`)."""


@dataclass(frozen=True, kw_only=True)
class ManagedRedis:
    """ElastiCache (eks) / Memorystore (gke) settings (mode managed)."""

    nodeType: str
    tier: Literal["BASIC", "STANDARD_HA"]
    memorySizeGb: int = _f(min=1, max=300)
    replicas: int = _f(min=0, max=5)
    applyImmediately: bool = True
    """ElastiCache (eks): apply a node type, version or other change of the replication group at `pulumi up` (true)
    or in its maintenance window, the hour after the registry's (false)."""


@dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """Cache, rate-limit storage and job queue."""

    mode: Literal["incluster", "managed"]
    version: str = _f(pattern=re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$"))
    incluster: InClusterRedis
    managed: ManagedRedis


@dataclass(frozen=True, kw_only=True)
class Autoscaling:
    """HorizontalPodAutoscaler (autoscaling/v2) bounds."""

    enabled: bool
    minReplicas: int = _f(min=1, max=100)
    maxReplicas: int = _f(min=1, max=100)
    targetCpuUtilization: int = _f(min=10, max=100)


@dataclass(frozen=True, kw_only=True)
class Pdb:
    """PodDisruptionBudget of the service."""

    enabled: bool
    minAvailable: int = _f(min=1, max=100)


@dataclass(frozen=True, kw_only=True)
class Worker:
    """The ingestion worker Deployment."""

    enabled: bool
    replicas: int = _f(min=0, max=100)
    resources: Resources


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """Behaviour of the build, passed to the service as environment variables (see `env`)."""

    logLevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    chunkSize: int = _f(min=16, max=8192)
    chunkOverlap: int = _f(min=0, max=8191)
    embeddingBatchSize: int = _f(min=1, max=1024)
    maxDocumentBytes: int = _f(min=1, max=1_000_000_000)
    # Extraction budgets (service/app/ingest/sandbox.py): sized with the pod's memory limit, so per stack.
    extractWorkers: int = _f(min=1, max=64)
    extractCpuSeconds: int = _f(min=1, max=3600)
    extractMemoryMb: int = _f(min=160, max=65536)
    extractTimeoutSeconds: int = _f(min=1, max=7200)
    qdrantCollectionPrefix: str = _f(pattern=re.compile(r"^[a-z0-9_-]+$"))
    cacheEnabled: bool = True
    cacheTtlSeconds: int = _f(min=1, max=86400 * 30)
    rateLimitEnabled: bool = True
    rateLimitIngest: str = _f(pattern=RATE_LIMIT_RE)
    rateLimitSearch: str = _f(pattern=RATE_LIMIT_RE)
    jobsMaxConcurrency: int = _f(min=1, max=64)
    docsEnabled: bool = False
    corsOrigins: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        """The service's environment variables (names from service/app/core/config.py)."""
        values: dict[str, str] = {}
        for item in fields(self):
            name = re.sub(r"(?<!^)(?=[A-Z])", "_", item.name).upper()
            value = getattr(self, item.name)
            if isinstance(value, bool):
                values[name] = "true" if value else "false"
            elif isinstance(value, tuple):
                values[name] = json.dumps(list(value))
            else:
                values[name] = str(value)
        return values


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """The RAG API and its worker."""

    replicas: int = _f(min=1, max=100)
    autoscaling: Autoscaling
    resources: Resources
    pdb: Pdb
    worker: Worker
    settings: ServiceSettings


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """cert-manager and the certificate issuer.

    A stack that installs cert-manager owns it and creates a ClusterIssuer; one that does not is a guest on a
    shared cluster and creates a namespaced Issuer (cluster-scoped names would collide between stacks), or uses
    the existing ClusterIssuer named by `clusterIssuer`.
    """

    enabled: bool
    issuer: Literal["selfSigned", "letsencrypt-staging", "letsencrypt"]
    email: str
    certManagerVersion: str = _f(pattern=re.compile(r"^v[0-9]+\.[0-9]+\.[0-9]+$"))
    installCertManager: bool
    clusterIssuer: str = _f(pattern=re.compile(r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$"))


@dataclass(frozen=True, kw_only=True)
class IngressFallback:
    """An Ingress beside the Gateway, for clusters without a Gateway API implementation."""

    enabled: bool
    className: str


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """The Gateway API entry."""

    hostname: str = _f(pattern=HOSTNAME_RE)
    className: str = _f(pattern=re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"))
    loadBalancer: Literal["auto", "internal", "public"]
    proxyNamespaces: tuple[str, ...]
    ingress: IngressFallback


@dataclass(frozen=True, kw_only=True)
class Alerts:
    """PrometheusRule thresholds."""

    errorRatePercent: float = _f(min=0.1, max=100)
    latencyP95Seconds: float = _f(min=0.01, max=60)
    queueOldestJobAgeSeconds: int = _f(min=30, max=86400)
    certificateExpiryDays: int = _f(min=1, max=60)
    backupMaxAgeHours: int = _f(min=1, max=720)
    volumeStats: bool
    """The kubelets report volume stats for the stack's claims. False (kind/k3s local-path, hostPath volumes: no
    `kubelet_volume_stats_*`): `RagVolumeStatsMissing` is left out instead of firing for good."""


@dataclass(frozen=True, kw_only=True)
class SlackAlerting:
    """Slack receiver; the webhook URL is the secret `rag:slackWebhookUrl`."""

    channel: str


@dataclass(frozen=True, kw_only=True)
class EmailAlerting:
    """E-mail receiver; the SMTP password is the secret `rag:smtpPassword`."""

    to: str
    sender: str
    smarthost: str = _f(pattern=re.compile(r"^([A-Za-z0-9.-]+:[0-9]{1,5})?$"))
    username: str


@dataclass(frozen=True, kw_only=True)
class Alerting:
    """Alertmanager receivers (PagerDuty is enabled by the secret `rag:pagerdutyRoutingKey` alone)."""

    slack: SlackAlerting
    email: EmailAlerting


#: A Kubernetes label as `key=value` (an optional DNS-subdomain prefix and a name of up to 63 characters; a value
#: of up to 63, possibly empty): the form of `monitoring.existing.selectorLabels` / `dashboardLabels`.
LABEL_PAIR_RE = re.compile(
    r"^(?:(?=[a-z0-9.-]{1,253}/)[a-z0-9]([a-z0-9.-]*[a-z0-9])?/)?"
    r"(?=[A-Za-z0-9._-]{1,63}=)[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"=(?=[A-Za-z0-9._-]{0,63}$)([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$"
)
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def label_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """`("release=kube-prometheus-stack",)` -> `{"release": "kube-prometheus-stack"}`."""
    return dict(pair.split("=", 1) for pair in pairs)


@dataclass(frozen=True, kw_only=True)
class ExistingPrometheus:
    """The cluster's own Prometheus Operator stack (`monitoring.mode: existing`)."""

    namespace: str = _f(pattern=DNS_LABEL_RE)
    selectorLabels: tuple[str, ...] = ()
    dashboardLabels: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MonitoringConfig:
    """kube-prometheus-stack (or the cluster's own Prometheus Operator) and the service's alerts and dashboard."""

    enabled: bool
    mode: Literal["install", "existing"] = "install"
    existing: ExistingPrometheus
    chartVersion: str = _f(pattern=re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$"))
    retention: str = _f(pattern=re.compile(r"^[0-9]+[hdwy]$"))
    storage: Storage
    alerts: Alerts
    runbookUrl: str = _f(pattern=re.compile(r"^\S+$"))
    alerting: Alerting


@dataclass(frozen=True, kw_only=True)
class BackupsConfig:
    """Scheduled Qdrant snapshots to object storage."""

    enabled: bool
    schedule: str
    """Checked by `cron_problem` (fields and ranges) in the rules."""
    bucket: str = _f(pattern=re.compile(r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$"))
    retentionDays: int = _f(min=1, max=3650)
    transferMiBps: int = _f(min=1, max=10000)
    discardBucket: str = _f(pattern=re.compile(r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$"))
    """The bucket the program created whose deletion, with every backup in it, the operator accepts (backups turned
    off, or `bucket` named instead); empty: a deployed stack refuses to delete it (infra/guards.py)."""


@dataclass(frozen=True, kw_only=True)
class LlmAlerts:
    """PrometheusRule thresholds of the LLM calls behind POST /v1/answer."""

    errorRatePercent: float = _f(min=0.1, max=100)
    latencyP95Seconds: float = _f(min=0.1, max=600)


def llm_in_cluster_namespace(base_url: str, own_namespace: str) -> str | None:
    """The namespace of the in-cluster Service an LLM baseUrl names, or None for a host outside the cluster.

    In-cluster: `<service>.<namespace>.svc` (any cluster domain after it, e.g. `.cluster.local`), or a bare
    `<service>` in the stack's own namespace. `<service>.<namespace>` also resolves through the pod's DNS
    search path, but cannot be told from an external two-label name, so it is not taken for one.
    """
    from urllib.parse import urlsplit

    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    labels = host.split(".")
    if len(labels) >= 3 and labels[2] == "svc":
        return labels[1]
    if len(labels) == 1 and host and not host.isdigit() and host != "localhost":  # localhost: the pod itself
        return own_namespace
    return None


@dataclass(frozen=True, kw_only=True)
class LlmConfig:
    """Answer generation: an OpenAI-compatible Chat Completions endpoint, or extractive answers when disabled."""

    enabled: bool
    baseUrl: str = _f(pattern=re.compile(r"^(https?://[^\s/]+(/\S*)?)?$"))
    model: str
    keyless: bool = False
    timeoutSeconds: float = _f(min=0.1, max=600)
    maxRetries: int = _f(min=0, max=10)
    maxTokens: int = _f(min=1, max=32768)
    contextTokens: int = _f(min=1024, max=2_000_000)
    tokenBudget: str = _f(
        pattern=re.compile(
            r"^([0-9]+/(second|minute|hour|day|month)(;[0-9]+/(second|minute|hour|day|month))*)?$"
        )
    )
    circuitFailures: int = _f(min=1, max=1000)
    circuitResetSeconds: float = _f(min=1, max=3600)
    minScore: float = _f(min=-1, max=1)
    egressCidrs: tuple[str, ...] = ()
    egressExcept: tuple[str, ...] = ()
    targetPort: int = _f(min=0, max=65535)
    alerts: LlmAlerts

    def env(self) -> dict[str, str]:
        """The service's environment variables for answers (the API key goes in the Secret, not here)."""
        values = {"ANSWER_MIN_SCORE": str(self.minScore)}
        if not self.enabled:
            return values
        values.update(
            {
                "LLM_BASE_URL": self.baseUrl,
                "LLM_MODEL": self.model,
                "LLM_TIMEOUT_SECONDS": str(self.timeoutSeconds),
                "LLM_MAX_RETRIES": str(self.maxRetries),
                "LLM_MAX_TOKENS": str(self.maxTokens),
                "LLM_CONTEXT_TOKENS": str(self.contextTokens),
                "LLM_TOKEN_BUDGET": self.tokenBudget,
                "LLM_CIRCUIT_FAILURES": str(self.circuitFailures),
                "LLM_CIRCUIT_RESET_SECONDS": str(self.circuitResetSeconds),
            }
        )
        return values

    def in_cluster_namespace(self, own_namespace: str) -> str | None:
        """The namespace of the in-cluster Service baseUrl names, or None for a host outside the cluster
        (`llm_in_cluster_namespace`)."""
        return llm_in_cluster_namespace(self.baseUrl, own_namespace)

    @property
    def port(self) -> int:
        """The TCP port of baseUrl (explicit, else 443 for https and 80 for http)."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.baseUrl)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def pod_port(self) -> int:
        """The port an in-cluster server's pods listen on (its Service's targetPort): `targetPort`, else baseUrl's."""
        return self.targetPort or self.port


MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, kw_only=True)
class EmbeddingConfig:
    """The embedding model: the service's EMBEDDING_MODEL and what the image the stack builds bakes in."""

    model: str = _f(pattern=MODEL_RE)
    extraModels: tuple[str, ...] = ()

    @property
    def image_models(self) -> tuple[str, ...]:
        """Every model a build of this stack bakes into the image: `model` first."""
        return (self.model, *self.extraModels)


@dataclass(frozen=True, kw_only=True)
class Promotion:
    """Where the deployed image came from (written by `ragops promote`)."""

    from_: str
    digest: str
    at: str
    by: str
    models: tuple[str, ...] | None = None
    """The embedding models the promoted image holds (None: not recorded, a promotion from before they were)."""


NamespaceMode = Literal["create", "patch", "existing"]
"""`rag:namespaceMode`: who owns the stack's namespace (infra/stack.py `stack_namespace`). create: the stack creates
it and `pulumi destroy` deletes it; patch: it exists (the platform team's) and the stack applies its labels and
annotations server-side, released on destroy; existing: it exists and the stack never writes it."""


@dataclass(frozen=True, kw_only=True)
class Ephemeral:
    """An ephemeral preview stack (written by `ragops ephemeral up`)."""

    name: str
    owner: str
    expiresAt: str


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    """Everything the program reads, checked. `protect` is derived: stateful resources are protected in prod."""

    stack: str
    environment: Literal["dev", "staging", "prod"]
    namespace: str
    namespaceMode: NamespaceMode
    image: str
    cluster: ClusterConfig
    namespaceQuota: NamespaceQuota
    qdrant: QdrantConfig
    postgres: PostgresConfig
    redis: RedisConfig
    service: ServiceConfig
    tls: TlsConfig
    gateway: GatewayConfig
    monitoring: MonitoringConfig
    backups: BackupsConfig
    llm: LlmConfig
    embedding: EmbeddingConfig
    promotion: Promotion | None
    ephemeral: Ephemeral | None
    promotion_raw: Mapping[str, Any] | None
    ephemeral_raw: Mapping[str, Any] | None

    @property
    def stack_file(self) -> str:
        """The stack's config file name."""
        return stack_file(self.stack)

    @property
    def protect(self) -> bool:
        """Whether stateful resources (volumes, databases, caches, buckets) get `protect=True`."""
        return self.environment == "prod"

    @property
    def is_prod(self) -> bool:
        """Whether prod rules apply."""
        return self.environment == "prod"


# --- reading ---------------------------------------------------------------------------------------------------


def stack_file(stack: str) -> str:
    """`Pulumi.<stack>.yaml`."""
    return f"Pulumi.{stack}.yaml"


@cache
def _declared(project_file: Path) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(project_file.read_text(encoding="utf-8"))
    return dict(document.get("config") or {})


def declared_config(project_file: Path = PROJECT_FILE) -> dict[str, dict[str, Any]]:
    """The `config:` declarations of Pulumi.yaml (bare key -> {type?, default?, description})."""
    return {key: dict(value) for key, value in _declared(project_file).items()}


def declared_defaults(project_file: Path = PROJECT_FILE) -> dict[str, Any]:
    """Bare key -> declared default, for every declared key that has one."""
    return {key: decl["default"] for key, decl in declared_config(project_file).items() if "default" in decl}


def deep_merge(base: Any, override: Any) -> Any:
    """`override` over `base`, recursing into mappings only (lists and scalars replace)."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return override


def load_config(project_file: Path = PROJECT_FILE) -> StackConfig:
    """Read `rag:*` from the running program's config and check it (raises ConfigError)."""
    import pulumi

    stack = pulumi.get_stack()
    check_config_keys(stack)
    cfg = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    for key, decl in declared_config(project_file).items():
        if key in SECRET_KEYS:
            continue
        text = cfg.get(key)
        if text is None:
            continue
        raw[key] = _decode(key, text, decl, stack)
    return parse_config(raw, stack, project_file=project_file)


# Config namespaces the program or its providers read. Any other namespace is a typo (`rga:qdrant`): the CLI passes
# it through untouched and the block it meant to set silently keeps its defaults.
KNOWN_NAMESPACES = frozenset({PROJECT, "pulumi", "aws", "gcp", "kubernetes", "docker-build"})
#: Namespaces of Pulumi packages whose config nothing in the program reads: `eks:*` (the EKS cluster is built from
#: aws.* resources, not pulumi-eks), `tls:proxy` (no pulumi-tls resource), `random:*` (pulumi-random has no config).
UNREAD_PACKAGES = {
    "eks": "the EKS cluster is built from aws.* resources (infra/clusters/eks.py), not the pulumi-eks component",
    "tls": "the program creates no pulumi-tls resource",
    "random": "pulumi-random has no provider configuration",
}


def check_config_keys(stack: str) -> None:
    """Refuse a key in an unknown namespace and a secret key stored in plain text (ConfigError naming both).

    Runs inside the program, on what the CLI handed it (`PULUMI_CONFIG` / `PULUMI_CONFIG_SECRET_KEYS`, which the
    Python language host loads with `set_all_config`), so it holds for `pulumi up` as much as for `make plan`.
    """
    from pulumi.runtime.config import CONFIG, get_config, get_config_env, is_config_secret

    file = stack_file(stack)
    for key in sorted({*CONFIG.get(), *get_config_env()}):
        namespace, _, bare = key.partition(":")
        if namespace in UNREAD_PACKAGES:
            raise ConfigError(key, file, f"not read: {UNREAD_PACKAGES[namespace]}. Remove the key")
        if namespace not in KNOWN_NAMESPACES:
            hint = f" (did you mean {PROJECT}:{bare}?)" if bare else ""
            raise ConfigError(
                key,
                file,
                f"unknown namespace {namespace!r}: the program reads {PROJECT}:* and its providers' "
                f"{', '.join(sorted(KNOWN_NAMESPACES - {PROJECT}))} keys{hint}",
            )
    for bare in sorted(SECRET_KEYS):
        key = f"{PROJECT}:{bare}"
        if get_config(key) and not is_config_secret(key):
            raise ConfigError(
                key,
                file,
                f"stored in plain text (it would sit in the stack file and git history); set it with "
                f"`pulumi config set --secret {key} ...`",
            )
    # An inline kubeconfig (rag:cluster.existing.kubeconfig) may carry the cluster's credentials. The engine marks
    # an object secure when any value in it is (`pulumi config set --path --secret`), so rag:cluster as a whole.
    cluster = get_config(f"{PROJECT}:cluster")
    if cluster and not is_config_secret(f"{PROJECT}:cluster"):
        try:
            inline = ((json.loads(cluster) or {}).get("existing") or {}).get("kubeconfig") or ""
        except (ValueError, AttributeError):
            inline = ""  # not an object: parse_config names it
        if isinstance(inline, str) and kubeconfig_credentials(inline):
            key = f"{PROJECT}:cluster.existing.kubeconfig"
            raise ConfigError(
                key,
                file,
                f"an inline kubeconfig with credentials ({', '.join(kubeconfig_credentials(inline))}) stored in "
                "plain text (it would sit in the stack file and git history); give a path to it instead, or set "
                f'it with `pulumi config set --path --secret {key} "$(cat <kubeconfig>)"`',
            )


#: What a kubeconfig user entry may hold that grants access by itself (client-go's AuthInfo fields).
KUBECONFIG_CREDENTIALS = ("token", "client-key-data", "password")


def kubeconfig_credentials(text: str) -> list[str]:
    """The credential fields an inline kubeconfig (not a path) holds in its users; empty for a path, or for a
    kubeconfig that authenticates through an exec plugin or files."""
    if "\n" not in text and not text.lstrip().startswith("{"):
        return []  # a path
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    found: set[str] = set()
    for entry in (doc.get("users") if isinstance(doc, Mapping) else None) or []:
        user = entry.get("user") if isinstance(entry, Mapping) else None
        if isinstance(user, Mapping):
            found |= {name for name in KUBECONFIG_CREDENTIALS if user.get(name)}
    return sorted(found)


def _decode(key: str, text: str, decl: Mapping[str, Any], stack: str) -> Any:
    """Turn the CLI's string form of a value back into its value (objects and arrays come as JSON)."""
    kind = decl.get("type")
    if kind == "string":
        return text
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(
                f"{PROJECT}:{key}", stack_file(stack), f"expected an integer, got {text!r}"
            ) from None
    if kind == "boolean":
        if text not in ("true", "false"):
            raise ConfigError(f"{PROJECT}:{key}", stack_file(stack), f"expected true or false, got {text!r}")
        return text == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if isinstance(decl.get("default"), Mapping):
            raise ConfigError(f"{PROJECT}:{key}", stack_file(stack), "expected an object") from None
        return text


#: GKE Gateway classes whose load balancer has only an internal address.
GKE_INTERNAL_CLASSES = frozenset(
    {"gke-l7-rilb", "gke-l7-rilb-mc", "gke-l7-cross-regional-internal-managed-mc"}
)


def private_cluster_endpoint(config: StackConfig) -> bool:
    """Whether the cloud cluster's API endpoint is private (EKS without public access, GKE private endpoint)."""
    cluster = config.cluster
    if cluster.provider == "eks":
        return not cluster.eks.endpointPublicAccess
    if cluster.provider == "gke":
        return cluster.gke.privateEndpoint
    return False


def internal_load_balancer(config: StackConfig) -> bool:
    """`rag:gateway.loadBalancer` resolved: `auto` is internal in prod when the cluster's endpoint is private.

    Only the cloud targets create the load balancer (an existing cluster's Gateway implementation is its own).
    """
    choice = config.gateway.loadBalancer
    if choice != "auto":
        return choice == "internal"
    return config.environment == "prod" and private_cluster_endpoint(config)


def parse_config(raw: Mapping[str, Any], stack: str, *, project_file: Path = PROJECT_FILE) -> StackConfig:
    """Check `raw` (bare key -> value as set by the stack) merged over the declared defaults."""
    file = stack_file(stack)
    declared = declared_config(project_file)
    for key in raw:
        if key not in declared:
            raise ConfigError(f"{PROJECT}:{key}", file, "unknown key (not declared in Pulumi.yaml)")
    values: dict[str, Any] = {}
    for key, decl in declared.items():
        if key in SECRET_KEYS:
            continue
        if key not in raw and "default" not in decl:
            raise ConfigError(f"{PROJECT}:{key}", file, "missing key (Pulumi.yaml declares no default)")
        default = decl.get("default")
        value = raw.get(key, default)
        if isinstance(default, Mapping) and default and value is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{PROJECT}:{key}", file, f"expected an object, got {type(value).__name__}")
            value = deep_merge(default, value)
        values[key] = value

    built = _build_fields(StackConfig, {**values, "stack": stack}, f"{PROJECT}:", file)
    config = StackConfig(**built)
    _check_rules(config, file)
    return config


_SKIP = {"stack", "promotion", "ephemeral", "promotion_raw", "ephemeral_raw"}


def _build_fields(cls: type, data: Mapping[str, Any], prefix: str, file: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = {item.name for item in fields(cls)}
    out: dict[str, Any] = {}
    if cls is StackConfig:
        out["stack"] = data["stack"]
        for key in ("promotion", "ephemeral"):
            value = data.get(key) or None
            out[f"{key}_raw"] = value
            out[key] = _build_optional_record(key, value, file)
        known -= _SKIP
    else:
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"{prefix}{key}", file, f"unknown key (expected one of {', '.join(sorted(known))})"
                )
    for item in fields(cls):
        if item.name not in known:
            continue
        key = f"{prefix}{item.name}"
        if item.name not in data or data[item.name] is None:
            if item.default is not MISSING:
                out[item.name] = item.default
                continue
            raise ConfigError(key, file, "missing key")
        out[item.name] = _coerce(hints[item.name], data[item.name], key, file, item.metadata)
    return out


def _coerce(hint: Any, value: Any, key: str, file: str, checks: Mapping[str, Any]) -> Any:
    origin = get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(key, file, f"expected an object, got {_kind(value)}")
        return hint(**_build_fields(hint, value, f"{key}.", file))
    if origin is Literal:
        allowed = get_args(hint)
        # `True in (1, 3)` holds in Python: a boolean is only one of the values where the choices are booleans.
        if value not in allowed or isinstance(value, bool) is not isinstance(allowed[0], bool):
            raise ConfigError(
                key, file, f"unknown value {value!r} (expected one of {', '.join(map(str, allowed))})"
            )
        return value
    if origin in (types.UnionType, typing.Union):
        return _coerce(next(arg for arg in get_args(hint) if arg is not type(None)), value, key, file, checks)
    if origin is tuple and is_dataclass(get_args(hint)[0]):
        if not isinstance(value, list):
            raise ConfigError(key, file, f"expected a list of objects, got {_kind(value)}")
        return tuple(
            _coerce(get_args(hint)[0], item, f"{key}[{i}]", file, {}) for i, item in enumerate(value)
        )
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(key, file, f"expected a list of strings, got {_kind(value)}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, file, f"expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, file, f"expected an integer, got {_kind(value)}")
        _check_range(value, key, file, checks)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, file, f"expected a number, got {_kind(value)}")
        _check_range(value, key, file, checks)
        return float(value)
    if hint is str:
        if checks.get("integer_ok") and isinstance(value, int) and not isinstance(value, bool):
            # A major version: `pulumi config set --path rag:postgres.version 18` stores the number 18.
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(key, file, f"expected a string, got {_kind(value)}")
        pattern = checks.get("pattern")
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(key, file, f"invalid value {value!r} (expected to match {pattern.pattern})")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def _check_range(value: float, key: str, file: str, checks: Mapping[str, Any]) -> None:
    low, high = checks.get("min"), checks.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(key, file, f"{value} is out of range ({low}..{high})")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}
    return names.get(type(value), type(value).__name__) + f" ({json.dumps(value)[:60]})"


def _build_optional_record(key: str, value: Any, file: str) -> Any:
    if value is None:
        return None
    name = f"{PROJECT}:{key}"
    if not isinstance(value, Mapping):
        raise ConfigError(name, file, f"expected an object, got {_kind(value)}")
    if key == "promotion":
        record = {"from_": value.get("from"), **{k: value.get(k) for k in ("digest", "at", "by")}}
        for sub, item in record.items():
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{name}.{sub.rstrip('_')}", file, "missing key (a non-empty string)")
        if not IMAGE_DIGEST_RE.fullmatch(record["digest"]):
            raise ConfigError(
                f"{name}.digest", file, "expected an immutable image ref REGISTRY/REPO@sha256:<64 hex>"
            )
        models = value.get("models")
        if models is not None and (
            not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models)
        ):
            raise ConfigError(f"{name}.models", file, "expected a non-empty list of model names")
        return Promotion(**record, models=tuple(models) if models is not None else None)
    record = {k: value.get(k) for k in ("name", "owner", "expiresAt")}
    for sub, item in record.items():
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{name}.{sub}", file, "missing key (a non-empty string)")
    if not _is_rfc3339_utc(record["expiresAt"]):
        raise ConfigError(
            f"{name}.expiresAt", file, "expected an RFC 3339 UTC time like 2026-01-31T12:00:00Z"
        )
    return Ephemeral(**record)


def _is_rfc3339_utc(text: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)", text):
        return False
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# --- environment rules -----------------------------------------------------------------------------------------

#: Environments that never build: they run the image a promotion recorded in `rag:image`.
PROMOTED_ENVIRONMENTS = frozenset({"staging", "prod"})
#: The environment each promoted one receives from (infra.workflows.stacks.PROMOTION_CHAIN, reversed).
_PROMOTED_FROM = {"staging": "dev", "prod": "staging"}


def _is_local_registry(registry: str) -> bool:
    """Whether a registry host (``host[:port]``) names the pushing machine itself (kind's ``localhost:5001``)."""
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\](:\d+)?|(?P<host>[^:]+)(:\d+)?", registry)
    host = ((match.group("v6") or match.group("host")) if match else registry).lower()
    if host == "localhost" or host.endswith(".localhost") or host in ("::1", "0.0.0.0"):  # noqa: S104
        return True
    return re.fullmatch(r"127(\.\d{1,3}){3}", host) is not None


def _check_llm_address(llm: LlmConfig, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    """An IP-literal baseUrl must lie inside the egress ranges: a NetworkPolicy is the only way out of the pod."""
    from urllib.parse import urlsplit

    try:
        address = ipaddress.ip_address(urlsplit(llm.baseUrl).hostname or "")
    except ValueError:
        return  # a name: an in-cluster Service gets its own rule, an external name resolves outside the ranges
    for cidr in llm.egressExcept:
        if address in ipaddress.ip_network(cidr, strict=False):
            fail(
                "llm.egressExcept",
                f"{cidr} excludes {address}, llm.baseUrl's host: the API's NetworkPolicy would drop every call "
                "(name an in-cluster server by its Service, http://<service>.<namespace>.svc:<port>, or carve "
                f"the range out of egressExcept)",
            )
    if not any(address in ipaddress.ip_network(cidr, strict=False) for cidr in llm.egressCidrs):
        fail("llm.egressCidrs", f"no range holds {address}, llm.baseUrl's host: the API could not reach it")


def _check_rules(config: StackConfig, file: str) -> None:
    def fail(key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(f"{PROJECT}:{key}", file, problem)

    if config.image and not IMAGE_DIGEST_RE.fullmatch(config.image):
        fail("image", f"{config.image!r} is not an immutable digest ref REGISTRY/REPO@sha256:<64 hex>")
    if not config.image and config.environment in PROMOTED_ENVIRONMENTS and config.ephemeral is None:
        # An empty rag:image builds from the working tree of whoever runs `pulumi up`: straight into staging or
        # prod, past the dev -> staging -> prod chain (and a CI checkout's committed file never has the key).
        fail(
            "image",
            f"missing: {config.environment} deploys only a promoted image (`ragops promote --from "
            f"{_PROMOTED_FROM[config.environment]} --to {config.stack}`, or from another stack of environment "
            f"{_PROMOTED_FROM[config.environment]}), "
            "never a build of this checkout; to change only this stack's settings, first restore the config it "
            f"was deployed with: `pulumi config refresh --force -s {config.stack}` (or `ragops up -s "
            f"{config.stack}`, which keeps the deployed image)",
        )
    if config.image and config.cluster.provider in ("gke", "eks"):
        registry = config.image.split("/", 1)[0]
        if _is_local_registry(registry):
            fail(
                "image",
                f"{config.image!r} is in the registry {registry!r}, which is local to the machine that pushed it: "
                f"the copy into the {config.cluster.provider} stack's registry reads it from whichever machine runs "
                "`pulumi up`, and a CI runner's loopback has no such registry; give the source stack a registry "
                "CI can read (docs/delivery.md, 'Registries')",
            )
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", config.namespace):
        fail("namespace", f"{config.namespace!r} is not a valid Kubernetes namespace name")
    if config.namespaceMode != "create" and config.cluster.provider != "existing":
        fail(
            "namespaceMode",
            f"{config.namespaceMode!r} needs cluster.provider existing: the {config.cluster.provider} target creates "
            f"the cluster in this stack, so no namespace {config.namespace!r} exists before it (use create)",
        )
    for proxy_namespace in config.gateway.proxyNamespaces:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", proxy_namespace):
            fail("gateway.proxyNamespaces", f"{proxy_namespace!r} is not a valid Kubernetes namespace name")

    cluster = config.cluster
    if cluster.provider == "gke" and not cluster.gke.project:
        fail(
            "cluster.gke.project", "missing key (the GCP project id is required when cluster.provider is gke)"
        )
    if cluster.provider == "gke" and not GCP_PROJECT_RE.match(cluster.gke.project):
        fail(
            "cluster.gke.project",
            f"{cluster.gke.project!r} is not a GCP project ID (6-30 lower-case letters, digits and hyphens, "
            "starting with a letter)",
        )
    if cluster.provider == "gke" and not GCP_REGION_RE.match(cluster.gke.region):
        fail("cluster.gke.region", f"{cluster.gke.region!r} is not a GCP region such as europe-west1")
    if cluster.provider == "gke" and cluster.gke.region not in GCP_REGIONS:
        close = difflib.get_close_matches(cluster.gke.region, sorted(GCP_REGIONS), n=1)
        fail(
            "cluster.gke.region",
            f"{cluster.gke.region!r} is not a GCP region"
            + (f" (did you mean {close[0]}?)" if close else "")
            + ": a region Google opened after 2026-11 must first be added to GCP_REGIONS in infra/config.py",
        )
    if cluster.provider == "eks" and not AWS_REGION_RE.match(cluster.eks.region):
        fail(
            "cluster.eks.region",
            f"{cluster.eks.region!r} is not an AWS region such as eu-west-1 (at most 20 characters)",
        )
    if cluster.provider == "gke" and cluster.gke.nodePool.minNodes > cluster.gke.nodePool.maxNodes:
        fail("cluster.gke.nodePool.minNodes", "must not exceed cluster.gke.nodePool.maxNodes")
    if cluster.provider == "eks":
        group = cluster.eks.nodeGroup
        if not group.minSize <= group.desiredSize <= group.maxSize:
            fail("cluster.eks.nodeGroup.desiredSize", "must lie within minSize..maxSize")
        if cluster.eks.clusterAutoscaler.enabled and cluster.eks.version not in EKS_CLUSTER_AUTOSCALER_IMAGES:
            fail(
                "cluster.eks.version",
                f"{cluster.eks.version} has no Cluster Autoscaler release pinned (its image must be the cluster's "
                f"minor; pinned: {', '.join(EKS_CLUSTER_AUTOSCALER_IMAGES)}); use one of them, or add the latest "
                "cluster-autoscaler-<minor>.<patch> tag to EKS_CLUSTER_AUTOSCALER_IMAGES in infra/config.py",
            )
        _check_cidrs(cluster.eks.publicAccessCidrs, "cluster.eks.publicAccessCidrs", fail)
        _check_vpc_cidr(cluster.eks.vpcCidr, cluster.eks.availabilityZones, "cluster.eks.vpcCidr", fail)
        seen: set[str] = set()
        for key in ("cluster.eks.adminPrincipals", "cluster.eks.readerPrincipals"):
            for arn in getattr(cluster.eks, key.rsplit(".", 1)[1]):
                if not IAM_PRINCIPAL_RE.fullmatch(arn):
                    fail(key, f"{arn!r} is not an IAM role or user ARN (arn:aws:iam::<account>:role/<name>)")
                if arn in seen:
                    # EKS: "An IAM principal can't be included in more than one access entry."
                    fail(key, f"{arn} is listed twice (an IAM principal can have only one access entry)")
                seen.add(arn)
        if cluster.eks.endpointPublicAccess and not cluster.eks.publicAccessCidrs:
            # EKS treats an empty list as 0.0.0.0/0: opening the endpoint must name who may reach it.
            fail(
                "cluster.eks.publicAccessCidrs",
                "the public API endpoint is on (cluster.eks.endpointPublicAccess) but no CIDR is listed; "
                "EKS would open it to 0.0.0.0/0 - list the deployers' ranges (0.0.0.0/0 only if you mean it)",
            )
    if cluster.provider == "gke":
        _check_cidrs(cluster.gke.masterAuthorizedNetworks, "cluster.gke.masterAuthorizedNetworks", fail)
        if not cluster.gke.privateEndpoint and not cluster.gke.masterAuthorizedNetworks:
            fail(
                "cluster.gke.masterAuthorizedNetworks",
                "the control plane's public endpoint is on (cluster.gke.privateEndpoint false) but no "
                "authorized network is listed - list the deployers' ranges (0.0.0.0/0 only if you mean it)",
            )
        _check_gke_maintenance(cluster.gke, fail)
        if (
            config.tls.enabled
            and not config.gateway.ingress.enabled
            and not config.gateway.className.startswith("gke-")
        ):
            fail(
                "gateway.className",
                f"{config.gateway.className} is not a GKE Gateway class: on gke the stack enables GKE's own "
                "Gateway API controller (use gke-l7-global-external-managed, gke-l7-regional-external-managed, ...)",
            )

    if config.qdrant.scaleDownTo not in (0, config.qdrant.replicas):
        fail(
            "qdrant.scaleDownTo",
            f"{config.qdrant.scaleDownTo} is neither 0 nor qdrant.replicas ({config.qdrant.replicas}): it acknowledges "
            "a scale-down TO the configured count, done by the runbook (docs/runbooks.md#scale-qdrant-down)",
        )

    quota = config.namespaceQuota
    sidecar = config.postgres.cloudnative.backupSidecarResources
    for key, requested, limited in (
        ("namespaceQuota.requests.cpu", quota.requests.cpu, quota.limits.cpu),
        ("namespaceQuota.requests.memory", quota.requests.memory, quota.limits.memory),
    ):
        if _quantity(requested) > _quantity(limited):
            fail(
                key,
                f"{requested} exceeds {key.replace('requests', 'limits')} ({limited}): every pod's requests are "
                "at most its limits, so the requests quota could never be used",
            )
    for key, requested, limited in (
        (
            "postgres.cloudnative.backupSidecarResources.requests.cpu",
            sidecar.requests.cpu,
            sidecar.limits.cpu,
        ),
        (
            "postgres.cloudnative.backupSidecarResources.requests.memory",
            sidecar.requests.memory,
            sidecar.limits.memory,
        ),
    ):
        if _quantity(requested) > _quantity(limited):
            fail(
                key,
                f"{requested} exceeds {key.replace('requests', 'limits')} ({limited}): Kubernetes refuses a "
                "container whose requests exceed its limits, and the plugin puts this sidecar into every instance pod",
            )

    if config.redis.mode == "incluster":
        # Valkey's maxmemory is half the memory limit (infra.components.redis.MAXMEMORY_SHARE): the rest is for
        # the AOF rewrite's fork and client buffers. Below 64Mi the cache and job queue get under 32 MiB.
        redis_limit = config.redis.incluster.resources.limits.memory
        if _quantity(redis_limit) < 64 * 1024**2:
            fail(
                "redis.incluster.resources.limits.memory",
                f"{redis_limit} is under 64Mi: Valkey's maxmemory is half the limit (the rest for the AOF "
                "rewrite and client buffers), which leaves the cache and the job queue under 32 MiB",
            )

    qdrant = config.qdrant
    if qdrant.replicationFactor > qdrant.replicas:
        fail(
            "qdrant.replicationFactor",
            f"{qdrant.replicationFactor} exceeds qdrant.replicas ({qdrant.replicas})",
        )

    if config.backups.enabled and _bytes(qdrant.snapshots_size) < 2 * _bytes(qdrant.storage.size):
        fail(
            "qdrant.snapshotsStorage.size",
            f"{qdrant.snapshots_size} is smaller than twice qdrant.storage.size ({qdrant.storage.size}): a "
            "restore holds the uploaded snapshot and its unpacked copy side by side in Qdrant's temp path on this "
            "volume, each about as large as the node's data",
        )

    service = config.service
    scaling = service.autoscaling
    if scaling.enabled:
        if scaling.minReplicas > scaling.maxReplicas:
            fail("service.autoscaling.minReplicas", "must not exceed service.autoscaling.maxReplicas")
        if not scaling.minReplicas <= service.replicas <= scaling.maxReplicas:
            fail("service.replicas", "must lie within service.autoscaling.minReplicas..maxReplicas")
    pods = scaling.minReplicas if scaling.enabled else service.replicas
    if service.pdb.enabled and pods > 1 and service.pdb.minAvailable >= pods:
        fail(
            "service.pdb.minAvailable",
            f"{service.pdb.minAvailable} leaves no pod of the {pods} evictable: node drains would block for ever",
        )
    if service.settings.chunkOverlap >= service.settings.chunkSize:
        fail("service.settings.chunkOverlap", "must be smaller than service.settings.chunkSize")
    if service.settings.extractTimeoutSeconds < service.settings.extractCpuSeconds:
        fail(
            "service.settings.extractTimeoutSeconds",
            "must be at least service.settings.extractCpuSeconds (the service refuses to start otherwise)",
        )

    embedding = config.embedding
    for model in embedding.extraModels:
        if not MODEL_RE.fullmatch(model):
            fail(
                "embedding.extraModels",
                f"invalid model name {model!r} (expected ORG/NAME, a fastembed model)",
            )
    for key, model in (
        ("embedding.model", embedding.model),
        *(("embedding.extraModels", m) for m in embedding.extraModels),
    ):
        if MODEL_RE.fullmatch(model) and embedding_models.find(model) is None:
            fail(
                key,
                f"{model!r} is not a model the service can load (fastembed {embedding_models.FASTEMBED_VERSION}'s "
                f"ONNX text models, infra/embedding_models.py): one of "
                f"{', '.join(m.name for m in embedding_models.MODELS)}",
            )
    if len(set(embedding.image_models)) != len(embedding.image_models):
        fail("embedding.extraModels", "lists a model twice or repeats embedding.model")
    promoted = config.promotion.models if config.promotion is not None else None
    if config.image and promoted is not None and embedding.model not in promoted:
        fail(
            "embedding.model",
            f"{embedding.model} is not in the promoted image {config.image}, which holds {', '.join(promoted)} "
            f"(rag:promotion.models): promote a build whose stack names this model, or set the model the image has",
        )

    for key, mode in (("postgres.mode", config.postgres.mode), ("redis.mode", config.redis.mode)):
        if mode == "managed" and cluster.provider == "existing":
            fail(key, "managed needs a cloud cluster (cluster.provider gke or eks)")

    gateway = config.gateway
    gke_class = gateway.className.startswith("gke-")
    if config.tls.enabled and not gateway.ingress.enabled and gke_class and cluster.provider != "gke":
        fail(
            "gateway.className",
            f"{gateway.className} is a GKE-managed Gateway class; {cluster.provider} has none",
        )
    tls = config.tls
    own_issuer = not tls.clusterIssuer  # an existing ClusterIssuer has its own ACME account
    if tls.enabled and own_issuer and tls.issuer != "selfSigned" and "@" not in tls.email:
        fail("tls.email", "an ACME e-mail address is required for the Let's Encrypt issuers")
    if tls.enabled and own_issuer and tls.issuer != "selfSigned" and internal_load_balancer(config):
        fail(
            "gateway.loadBalancer",
            f"{gateway.loadBalancer} makes the gateway's load balancer internal here, but tls.issuer {tls.issuer} "
            "answers Let's Encrypt's HTTP-01 challenge through it from the internet: set gateway.loadBalancer "
            "public, or name a tls.clusterIssuer that solves DNS-01",
        )
    if (
        cluster.provider == "gke"
        and internal_load_balancer(config)
        and not gateway.ingress.enabled
        and gateway.className not in GKE_INTERNAL_CLASSES
    ):
        fail(
            "gateway.className",
            f"{gateway.className} is an external GKE Gateway class but gateway.loadBalancer resolves to internal: "
            f"use one of {', '.join(sorted(GKE_INTERNAL_CLASSES))}, or set gateway.loadBalancer public",
        )
    cnpg = config.postgres.cloudnative
    if cnpg.recovery.source or cnpg.recovery.targetTime:
        if config.postgres.mode != "cloudnative" or not config.backups.enabled:
            fail(
                "postgres.cloudnative.recovery.source",
                "a recovery reads the CloudNativePG archive in the stack's backup bucket: it needs postgres.mode "
                "cloudnative and backups.enabled",
            )
        if not cnpg.recovery.source:
            fail("postgres.cloudnative.recovery.targetTime", "needs postgres.cloudnative.recovery.source")
        if not cnpg.archiveName or cnpg.archiveName == cnpg.recovery.source:
            fail(
                "postgres.cloudnative.archiveName",
                f"must name a new archive when recovering from {cnpg.recovery.source!r}: barman-cloud refuses to "
                "archive into a non-empty location, and the source must stay intact to restore from again",
            )
    if cnpg.operatorChartVersion:
        from infra import chart_values

        if not cnpg.installOperator:
            fail(
                "postgres.cloudnative.operatorChartVersion",
                "pins the operator chart the stack installs, but postgres.cloudnative.installOperator is false "
                "(the cluster's own operator is upgraded where it is installed)",
            )
        if chart_values.load("cloudnative-pg", cnpg.operatorChartVersion) is None:
            fail(
                "postgres.cloudnative.operatorChartVersion",
                f"{cnpg.operatorChartVersion} has no values record in infra/charts/ (recorded: "
                f"{', '.join(sorted(f.stem.removeprefix('cloudnative-pg-') for f in chart_values.CHARTS_DIR.glob('cloudnative-pg-*.json')))}"
                "); record it first (infra/chart_values.py)",
            )
    _check_cnpg_major_upgrade(config, fail)
    _check_managed_postgres(config, fail)
    if config.postgres.modeSwitch.fromMode == config.postgres.mode:
        fail(
            "postgres.modeSwitch.fromMode",
            f"is postgres.mode itself ({config.postgres.mode}): it names the mode the registry runs before a switch "
            "to postgres.mode (docs/operations.md#moving-the-registry-to-the-other-mode); empty when there is none",
        )
    if config.backups.enabled and cluster.provider == "existing":
        fail(
            "backups.enabled",
            "backups need a cloud cluster (gke or eks): snapshots go to GCS/S3 via workload identity",
        )

    llm = config.llm
    _check_cidrs(llm.egressCidrs, "llm.egressCidrs", fail)
    _check_cidrs(llm.egressExcept, "llm.egressExcept", fail)
    if llm.enabled:
        if not llm.baseUrl:
            fail(
                "llm.baseUrl",
                "missing (the provider's OpenAI-compatible base URL is required when llm.enabled)",
            )
        if not llm.model:
            fail("llm.model", "missing (the model name is required when llm.enabled)")
        in_cluster = llm.in_cluster_namespace(config.namespace)
        if not llm.egressCidrs and in_cluster is None:
            fail(
                "llm.egressCidrs", "empty: the service could not reach the provider through its NetworkPolicy"
            )
        _check_llm_address(llm, fail)
        if llm.maxTokens + 256 > llm.contextTokens:
            fail("llm.maxTokens", "must leave at least 256 tokens of llm.contextTokens for the prompt")
        if config.is_prod and llm.baseUrl.startswith("http://") and not llm.keyless:
            fail(
                "llm.baseUrl", "prod sends the API key only over https:// (or set llm.keyless for in-cluster)"
            )

    monitoring = config.monitoring
    if (
        monitoring.enabled
        and monitoring.mode == "install"
        and cluster.provider == "gke"
        and cluster.gke.autopilot
    ):
        # GKE Warden refuses the chart's node exporter (autogke-disallow-hostnamespaces, autogke-no-host-port,
        # autogke-no-write-mode-hostpath) and its kube-dns scrape Service in kube-system (a managed namespace):
        # the atomic release would fail and roll back in the first `up`.
        fail(
            "monitoring.enabled",
            "kube-prometheus-stack cannot run on GKE Autopilot (cluster.gke.autopilot): Autopilot refuses its node "
            "exporter (hostNetwork, hostPID, host ports, hostPath /proc, /sys, /) and its Services in kube-system. "
            "Set monitoring.enabled false there (Autopilot runs Google Cloud Managed Service for Prometheus), or use "
            "a Standard cluster",
        )
    if monitoring.enabled and monitoring.mode == "existing":
        if config.cluster.provider != "existing":
            # A cluster this stack creates has no Prometheus Operator before the update that creates it.
            fail(
                "monitoring.mode",
                f"existing needs a cluster the stack does not create (cluster.provider existing), not "
                f"{config.cluster.provider}: use mode install there",
            )
        for key, pairs in (
            ("monitoring.existing.selectorLabels", monitoring.existing.selectorLabels),
            ("monitoring.existing.dashboardLabels", monitoring.existing.dashboardLabels),
        ):
            for pair in pairs:
                if not LABEL_PAIR_RE.fullmatch(pair):
                    fail(key, f"{pair!r} is not a Kubernetes label as key=value")
        # Routing belongs to the cluster's Alertmanager: the stack creates no Alertmanager config there.
        alerting = monitoring.alerting
        for key, value in (
            ("monitoring.alerting.slack.channel", alerting.slack.channel),
            ("monitoring.alerting.email.to", alerting.email.to),
        ):
            if value:
                fail(
                    key,
                    "receivers are not configured by the stack with monitoring.mode existing: route the alerts "
                    "(labels severity and service) in the cluster's own Alertmanager",
                )

    email = config.monitoring.alerting.email
    if email.to:
        if "@" not in email.to:
            fail("monitoring.alerting.email.to", f"{email.to!r} is not an e-mail address")
        if not email.sender or "@" not in email.sender:
            fail(
                "monitoring.alerting.email.sender",
                "an e-mail sender address is required when email.to is set",
            )
        if not email.smarthost:
            fail(
                "monitoring.alerting.email.smarthost",
                "the SMTP server (host:port) is required when email.to is set",
            )

    schedule_problem = cron_problem(config.backups.schedule)
    if schedule_problem is not None:
        fail("backups.schedule", schedule_problem)

    if config.environment == "staging" and not config.tls.enabled:
        # The policy pack refuses it too (tls-entry-point-outside-dev), but without naming the key or the file.
        fail(
            "tls.enabled", "staging requires TLS, like prod (an HTTPS entry point): only dev may turn it off"
        )
    if config.is_prod:
        if not config.tls.enabled:
            fail("tls.enabled", "prod requires TLS")
        if config.tls.issuer != "letsencrypt":
            fail("tls.issuer", f"prod requires the letsencrypt issuer, not {config.tls.issuer}")
        if not own_issuer:
            fail(
                "tls.clusterIssuer",
                "prod creates its own letsencrypt issuer (what an existing ClusterIssuer issues cannot be checked)",
            )
        if qdrant.replicas < 3:
            fail("qdrant.replicas", f"prod requires at least 3 Qdrant replicas, got {qdrant.replicas}")
        if qdrant.replicationFactor < 2:
            fail(
                "qdrant.replicationFactor",
                f"prod requires a replication factor >= 2, got {qdrant.replicationFactor}",
            )
        if service.replicas < 2 and not scaling.enabled:
            fail("service.replicas", "prod requires at least 2 service replicas or autoscaling")
        if cluster.provider == "eks" and cluster.eks.natGateways != "perZone":
            fail(
                "cluster.eks.natGateways",
                f"prod requires perZone, got {cluster.eks.natGateways}: with one NAT gateway, losing its zone "
                "cuts the internet egress (ECR pulls, the LLM provider, AWS APIs) of every zone",
            )
        # The managed stores must survive a zone like the rest of prod (docs/infra.md, stack matrix): a single-AZ
        # RDS instance or Cloud SQL ZONAL instance, a one-node ElastiCache group or a BASIC Memorystore instance
        # is down (and its data at risk) for as long as its zone is.
        if config.postgres.mode == "managed" and not config.postgres.managed.multiAz:
            fail(
                "postgres.managed.multiAz",
                "prod requires true: a managed database in one zone (RDS single-AZ, Cloud SQL ZONAL) is down "
                "with its zone, and with it every write",
            )
        if config.postgres.mode == "managed" and not config.postgres.managed.retainBackupsOnDelete:
            fail(
                "postgres.managed.retainBackupsOnDelete",
                "prod requires true: without it a destroy, or a restore with keepOriginal false, deletes the "
                "automated backups with the instance and ends point-in-time recovery (only the final snapshot or "
                "backup is left)",
            )
        if config.redis.mode == "managed" and cluster.provider == "eks" and config.redis.managed.replicas < 1:
            fail(
                "redis.managed.replicas",
                "prod requires at least 1 ElastiCache replica (with it the group fails over to another zone; "
                f"got {config.redis.managed.replicas})",
            )
        if (
            config.redis.mode == "managed"
            and cluster.provider == "gke"
            and config.redis.managed.tier != "STANDARD_HA"
        ):
            fail(
                "redis.managed.tier",
                f"prod requires STANDARD_HA (a replica in another zone with failover), got {config.redis.managed.tier}",
            )


def _check_cnpg_major_upgrade(config: StackConfig, fail: Any) -> None:
    """A declared major upgrade of the CloudNativePG registry: what the operator accepts, and a new archive.

    CloudNativePG 1.30 upgrades in place, offline, when `imageName` names a higher major (pg_upgrade --link in a
    Job; every instance is down meanwhile, replicas are re-cloned after; docs/src/postgres_upgrades.md at v1.30.0).
    Its webhook refuses a lower major ("can't downgrade from major") and an upgrade to 14 or 15 ("major upgrades
    are only supported to version 16 or higher"; internal/webhook/v1/cluster_webhook.go validateImageChange).
    """
    postgres, cnpg = config.postgres, config.postgres.cloudnative
    upgrade = cnpg.majorUpgrade.fromVersion
    if not upgrade:
        return
    key = "postgres.cloudnative.majorUpgrade.fromVersion"
    target = int(postgres.version.split(".")[0])
    if postgres.mode != "cloudnative":
        fail(key, f"declares an upgrade of the CloudNativePG Cluster, but postgres.mode is {postgres.mode}")
    if int(upgrade) >= target:
        fail(
            key,
            f"{upgrade} is not below postgres.version ({postgres.version}): CloudNativePG upgrades a major in place "
            "and refuses a downgrade (restore from a backup of the old major instead); once the Cluster runs "
            "postgres.version this key is cleared",
        )
    if target < 16:
        fail(
            "postgres.version",
            f"{postgres.version} with {key} {upgrade}: CloudNativePG upgrades in place only to PostgreSQL 16 or later",
        )
    if cnpg.recovery.source:
        fail(
            key,
            "is set together with postgres.cloudnative.recovery.source: restore first, upgrade in a later `up`",
        )
    if config.backups.enabled and not cnpg.archiveName.endswith(f"-pg{target}"):
        fail(
            "postgres.cloudnative.archiveName",
            f"must name a new archive for PostgreSQL {target} (ending in -pg{target}, e.g. postgres-pg{target}) with "
            f"{key} {upgrade}: pg_upgrade makes a new system with its timeline back at 1, whose WAL and backups "
            "would mix with, and overwrite timeline-1 files of, the old major's archive (CloudNativePG "
            "postgres_upgrades.md, 'Backup and WAL Archive Considerations'); the old archive stays for restores",
        )


def _check_managed_postgres(config: StackConfig, fail: Any) -> None:
    """A declared major upgrade and a restore of the RDS / Cloud SQL registry (docs/runbooks.md)."""
    postgres = config.postgres
    managed = postgres.managed
    upgrade, restore = managed.majorUpgrade.fromVersion, managed.restore
    target = postgres.version.split(".")[0]
    if upgrade:
        if postgres.mode != "managed":
            fail(
                "postgres.managed.majorUpgrade.fromVersion",
                f"declares an upgrade of the RDS / Cloud SQL instance, but postgres.mode is {postgres.mode}",
            )
        if int(upgrade) >= int(target):
            fail(
                "postgres.managed.majorUpgrade.fromVersion",
                f"{upgrade} is not below postgres.version ({postgres.version}): a major upgrade goes to a newer "
                "major (managed PostgreSQL cannot be downgraded in place; restore a snapshot of the old major "
                "instead), and once the instance runs postgres.version this key is cleared",
            )
        if not managed.applyImmediately:
            fail(
                "postgres.managed.applyImmediately",
                f"must be true for the declared upgrade from {upgrade}: the instance is down for the upgrade "
                "(pg_upgrade), so it runs while `pulumi up` is watched. Cloud SQL runs it at once anyway; RDS would "
                "leave the engine and parameter-group change pending and run it unattended in the maintenance "
                "window",
            )
        if restore.name:
            fail(
                "postgres.managed.majorUpgrade.fromVersion",
                f"is set together with postgres.managed.restore.name ({restore.name}): restore first, upgrade in a "
                "later `up` (one change of the registry at a time)",
            )
    sources = [key for key in ("snapshot", "sourceInstance", "time") if getattr(restore, key)]
    if sources and not restore.name:
        fail(
            "postgres.managed.restore.name",
            f"missing while postgres.managed.restore.{sources[0]} is set: a restore creates a new instance, "
            "named by it, next to the current one",
        )
    if not restore.keepOriginal and not restore.name:
        fail(
            "postgres.managed.restore.keepOriginal",
            "false only applies after a restore (postgres.managed.restore.name): it drops the original instance",
        )
    if not restore.keepOriginal and restore.time and not restore.sourceInstance:
        fail(
            "postgres.managed.restore.keepOriginal",
            "false while restore.time reads a point in time of the original instance: restore first, drop the "
            "original in a later `up` (and clear restore.time, which the restored instance no longer reads)",
        )
    if restore.name and postgres.mode != "managed":
        fail(
            "postgres.managed.restore.name",
            f"restores an RDS / Cloud SQL instance, but postgres.mode is {postgres.mode} (a CloudNativePG "
            "registry restores with postgres.cloudnative.recovery)",
        )
    if restore.snapshot and (restore.sourceInstance or restore.time):
        fail(
            "postgres.managed.restore.snapshot",
            "is set together with a point in time (restore.sourceInstance / restore.time): choose one source",
        )
    if restore.snapshot and config.cluster.provider == "gke":
        fail(
            "postgres.managed.restore.snapshot",
            "is an RDS snapshot; Cloud SQL restores the registry by cloning an instance at a point in time "
            "(restore.time, restore.sourceInstance)",
        )
    if postgres.mode == "managed" and config.cluster.provider == "gke":
        # Cloud SQL honours storageGb and backupRetentionDays (infra/components/postgres.py, `cloudsql`); these two
        # values it cannot.
        if managed.backupRetentionDays == 0:
            fail(
                "postgres.managed.backupRetentionDays",
                "0 turns automated backups off on RDS; Cloud SQL (cluster.provider gke) keeps them and point-in-time "
                "recovery on, which its REGIONAL availability (multiAz) and the restore clone need: set 1-35",
            )
        if not managed.autoMinorVersionUpgrade:
            fail(
                "postgres.managed.autoMinorVersionUpgrade",
                "false cannot be honoured on Cloud SQL (cluster.provider gke): it applies minor versions in the "
                "maintenance window (postgres.managed.maintenanceWindow) and has no switch to turn that off; set "
                "it true",
            )


_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


#: GKE's floor for a maintenance window ("Configure maintenance windows and exclusions", considerations): at least
#: 48 hours of availability in any 32-day rolling window, in windows of at least 4 contiguous hours.
GKE_WINDOW_MIN_HOURS = 4
GKE_WINDOW_HOURS_PER_32_DAYS = 48
#: The longest a NO_UPGRADES exclusion may last (GKE "Maintenance windows and exclusions", scope of upgrades); the
#: NO_MINOR_* scopes may run to the end of the minor's support (`untilEndOfSupport`), on a release channel only.
GKE_NO_UPGRADES_MAX_DAYS = 30
#: At most this many exclusions on a cluster (pulumi-gcp 10.2.0 ClusterMaintenancePolicyArgs.maintenance_exclusions).
GKE_MAX_EXCLUSIONS = 20
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def gke_window_hours(window: GkeMaintenanceWindow) -> float:
    """The fewest hours the window is open in any 32-day span (GKE asks for >= 48): the windows of ten weeks from
    `start`, merged where they overlap, measured against every 32-day span starting within a week (the pattern
    repeats weekly). The minimum of that measure is reached where a span's start meets a window's end or its end
    meets a window's start, so those positions are the ones tried."""
    from datetime import timedelta

    begin, duration = _utc(window.start), _utc(window.end) - _utc(window.start)
    days = set(range(7))
    if window.recurrence.startswith("FREQ=WEEKLY"):
        days = {_WEEKDAYS.index(day) for day in window.recurrence.split("BYDAY=", 1)[1].split(",")}
    opened = [begin + timedelta(days=n) for n in range(70) if (begin + timedelta(days=n)).weekday() in days]
    merged: list[list[datetime]] = []
    for start in opened:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], start + duration)
        else:
            merged.append([start, start + duration])
    span, first, last = timedelta(days=32), begin + timedelta(days=7), begin + timedelta(days=14)
    candidates = {first, *(end for _, end in merged), *(start - span for start, _ in merged)}

    def open_hours(at: datetime) -> float:
        seconds = sum(
            max(0.0, (min(end, at + span) - max(start, at)).total_seconds()) for start, end in merged
        )
        return seconds / 3600

    return min(open_hours(at) for at in candidates if first <= at < last)


def _check_gke_maintenance(gke: GkeCluster, fail: Any) -> None:
    """GKE's own limits on a maintenance policy, so a plan refuses what the Container API would refuse mid-`up`."""
    from datetime import timedelta

    def when(text: str, at: str) -> datetime:
        try:
            return _utc(text)
        except ValueError:
            fail(at, f"{text!r} is not a time (RFC 3339 UTC, e.g. 2026-01-06T08:00:00Z)")

    window, key = gke.maintenance.window, "cluster.gke.maintenance.window"
    duration = when(window.end, f"{key}.end") - when(window.start, f"{key}.start")
    if duration < timedelta(hours=GKE_WINDOW_MIN_HOURS):
        fail(
            f"{key}.end",
            f"the window is open {duration} from {window.start} to {window.end}; GKE needs windows of at least "
            f"{GKE_WINDOW_MIN_HOURS} contiguous hours",
        )
    longest = timedelta(days=1 if window.recurrence == "FREQ=DAILY" else 7)
    if duration > longest:
        fail(f"{key}.end", f"the window is open {duration}, longer than its recurrence ({window.recurrence})")
    hours = gke_window_hours(window)
    if hours < GKE_WINDOW_HOURS_PER_32_DAYS:
        fail(
            f"{key}.recurrence",
            f"{window.recurrence} with {duration} windows leaves {hours:g} hours of maintenance in some 32 days; "
            f"GKE needs at least {GKE_WINDOW_HOURS_PER_32_DAYS} (open the window longer or on more days)",
        )
    exclusions = gke.maintenance.exclusions
    if len(exclusions) > GKE_MAX_EXCLUSIONS:
        fail(
            "cluster.gke.maintenance.exclusions",
            f"{len(exclusions)} exclusions; GKE takes {GKE_MAX_EXCLUSIONS}",
        )
    names: set[str] = set()
    for index, exclusion in enumerate(exclusions):
        at = f"cluster.gke.maintenance.exclusions[{index}]"
        if exclusion.name in names:
            fail(f"{at}.name", f"{exclusion.name!r} is listed twice (GKE keys exclusions by name)")
        names.add(exclusion.name)
        if bool(exclusion.end) == exclusion.untilEndOfSupport:
            fail(
                f"{at}.end",
                "set exactly one of end (an RFC 3339 UTC time) and untilEndOfSupport (NO_MINOR_* scopes only)",
            )
        if exclusion.scope == "NO_UPGRADES" and exclusion.untilEndOfSupport:
            fail(
                f"{at}.untilEndOfSupport",
                f"a NO_UPGRADES exclusion ends at a time at most {GKE_NO_UPGRADES_MAX_DAYS} days after its start; "
                "only NO_MINOR_UPGRADES and NO_MINOR_OR_NODE_UPGRADES may run to the end of support",
            )
        if exclusion.scope == "NO_MINOR_OR_NODE_UPGRADES" and gke.autopilot:
            fail(
                f"{at}.scope",
                "NO_MINOR_OR_NODE_UPGRADES is for Standard clusters: Autopilot manages its nodes",
            )
        start = when(exclusion.start, f"{at}.start")
        if exclusion.end:
            length = when(exclusion.end, f"{at}.end") - start
            if length <= timedelta(0):
                fail(f"{at}.end", f"{exclusion.end} is not after start {exclusion.start}")
            if exclusion.scope == "NO_UPGRADES" and length > timedelta(days=GKE_NO_UPGRADES_MAX_DAYS):
                fail(
                    f"{at}.end",
                    f"a NO_UPGRADES exclusion lasts at most {GKE_NO_UPGRADES_MAX_DAYS} days; this one lasts "
                    f"{length.days} (a longer freeze: NO_MINOR_UPGRADES, which still lets security patches in)",
                )


def twice(quantity: str) -> str:
    """A storage quantity doubled, in its own unit (`100Gi` -> `200Gi`, `1.5Ti` -> `3Ti`)."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(.*)", quantity)
    if match is None:
        raise ValueError(f"not a quantity: {quantity!r}")
    doubled = float(match.group(1)) * 2
    return f"{int(doubled) if doubled.is_integer() else doubled}{match.group(2)}"


def _quantity(quantity: str) -> float:
    """A CPU or memory quantity (already matched by QUANTITY_RE) as a number (cores, bytes)."""
    if quantity.endswith("m"):
        return float(quantity[:-1]) / 1000
    return _bytes(quantity)


def _bytes(quantity: str) -> float:
    """A storage quantity (already matched by QUANTITY_RE) in bytes."""
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS.get(unit, 1)


def _check_vpc_cidr(cidr: str, zones: int, key: str, fail: Any) -> None:
    """The EKS VPC's range holds a public and a private /20 per Availability Zone (infra/clusters/eks.py
    subnet_cidrs carves them from it): refused here, naming the key, rather than as a ValueError and a traceback in
    the middle of the program."""
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError:
        fail(key, f"{cidr!r} is not an IPv4 network in CIDR notation (host bits must be zero)")
    room = 2 ** (20 - network.prefixlen) if network.prefixlen <= 20 else 0
    if room < 2 * zones:
        largest = 20 - (2 * zones - 1).bit_length()
        fail(
            key,
            f"{cidr} holds {room} /20 subnets, and a public and a private one per Availability Zone "
            f"(cluster.eks.availabilityZones: {zones}) need {2 * zones}: use a /{largest} or larger, or fewer zones",
        )


def _check_cidrs(cidrs: tuple[str, ...], key: str, fail: Any) -> None:
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            fail(key, f"{cidr!r} is not an IPv4/IPv6 network in CIDR notation (host bits must be zero)")
        if "/" not in cidr:
            # ip_network takes a bare address as a /32 (/128); EKS refuses it ("The following CIDRs are invalid in
            # publicAccessCidrs") and a NetworkPolicy's ipBlock.cidr must be CIDR notation: only at `up`.
            full = ipaddress.ip_network(cidr)
            fail(key, f"{cidr!r} is an address, not a network in CIDR notation: write {str(full)!r}")


# --- secrets ---------------------------------------------------------------------------------------------------

SECRET_KEYS = frozenset(
    {
        "qdrantApiKey",
        "qdrantApiKeyNext",
        "serviceApiKeys",
        "adminApiKey",
        "slackWebhookUrl",
        "pagerdutyRoutingKey",
        "smtpPassword",
        "llmApiKey",
    }
)
# Optional secrets: None when unset (their feature is then off), a secret Output otherwise.
OPTIONAL_SECRET_KEYS = ("slackWebhookUrl", "pagerdutyRoutingKey", "smtpPassword", "qdrantApiKeyNext")


@dataclass(frozen=True, kw_only=True)
class Secrets:
    """Secret values as Outputs: from `pulumi config set --secret` or generated with pulumi_random, never plain."""

    qdrant_api_key: Any  # pulumi.Output[str]
    service_api_keys: Any  # pulumi.Output[str], JSON {"key": "tenant"}
    admin_api_key: Any = None  # pulumi.Output[str]: the service's ADMIN_API_KEY (re-index routes)
    slack_webhook_url: Any = None  # pulumi.Output[str] | None
    pagerduty_routing_key: Any = None
    smtp_password: Any = None
    llm_api_key: Any = None  # pulumi.Output[str] | None: rag:llmApiKey, when set
    qdrant_api_key_next: Any = None  # pulumi.Output[str] | None: rag:qdrantApiKeyNext (Qdrant's alt_api_key)


def check_service_api_keys(config: StackConfig, raw: str) -> None:
    """Refuse `rag:serviceApiKeys` the service would refuse at start (its own parser and production key length,
    service/app/core/config.py), naming the key and the stack file, never a value: otherwise the API pods
    crash-loop and the `up` ends at the Deployment's await timeout. Offline (`make plan`) an encrypted value is a
    placeholder (infra/offline.py), which is not checked."""
    if raw.startswith("offline-secret-"):
        return
    from service.app.core.config import MIN_PRODUCTION_KEY_LENGTH, SettingsError, parse_api_keys

    def fail(problem: str) -> typing.NoReturn:
        raise ConfigError(f"{PROJECT}:serviceApiKeys", stack_file(config.stack), problem)

    try:
        keys = parse_api_keys(raw)
    except SettingsError as exc:
        fail(
            f"the service would refuse it: {exc} (set it with `pulumi config set --secret {PROJECT}:serviceApiKeys`)"
        )
    if not keys:
        fail("holds no key: unset it to have one generated, or name at least one key")
    short = [key for key in keys if len(key) < MIN_PRODUCTION_KEY_LENGTH]
    if config.is_prod and short:
        fail(
            f"{len(short)} key(s) shorter than {MIN_PRODUCTION_KEY_LENGTH} characters, which the service refuses in "
            "production (generate keys with `openssl rand -hex 32`)"
        )


def load_secrets(config: StackConfig | None = None) -> Secrets:
    """Secret config as Outputs; an empty key gets a RandomPassword (secret in state) created at top level. With
    `config`, `rag:serviceApiKeys` is checked against the service's own rules (`check_service_api_keys`)."""
    import pulumi
    import pulumi_random as random
    from pulumi.runtime.config import get_config

    cfg = pulumi.Config(PROJECT)
    # Only emptiness is read in the clear (to decide whether to generate); the value itself goes out as a secret.
    if get_config(f"{PROJECT}:qdrantApiKey"):
        qdrant_key = cfg.require_secret("qdrantApiKey")
    else:
        qdrant_key = random.RandomPassword("qdrant-api-key-random", length=40, special=False).result
    if get_config(f"{PROJECT}:serviceApiKeys"):
        if config is not None:
            check_service_api_keys(config, get_config(f"{PROJECT}:serviceApiKeys") or "")
        api_keys = cfg.require_secret("serviceApiKeys")
    else:
        generated = random.RandomPassword("service-api-key-random", length=40, special=False).result
        api_keys = generated.apply(lambda key: json.dumps({key: "default"}))
    if get_config(f"{PROJECT}:adminApiKey"):
        admin_key = cfg.require_secret("adminApiKey")
    else:
        admin_key = random.RandomPassword("admin-api-key-random", length=40, special=False).result
    # The LLM key is never generated: it is the provider's. Whether one is required is a config rule (stack.py).
    llm_key = cfg.require_secret("llmApiKey") if get_config(f"{PROJECT}:llmApiKey") else None
    optional = {
        key: cfg.require_secret(key) if get_config(f"{PROJECT}:{key}") else None
        for key in OPTIONAL_SECRET_KEYS
    }
    return Secrets(
        qdrant_api_key=pulumi.Output.secret(qdrant_key),
        service_api_keys=pulumi.Output.secret(api_keys),
        admin_api_key=pulumi.Output.secret(admin_key),
        slack_webhook_url=optional["slackWebhookUrl"],
        pagerduty_routing_key=optional["pagerdutyRoutingKey"],
        smtp_password=optional["smtpPassword"],
        llm_api_key=llm_key,
        qdrant_api_key_next=optional["qdrantApiKeyNext"],
    )
