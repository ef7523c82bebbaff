"""Render, validate and policy-check one stack offline: ``python -m infra.render --stack prod --out out/prod``.

Runs the real program under mocks (``infra.offline.run_stack``), then:

* writes every Kubernetes object as YAML, one file per object at ``k8s/<namespace|_cluster>/<kind>--<name>.yaml``,
  and every Helm release as its chart, version, repository and values at ``helm/<namespace>--<name>.yaml``
  (Secret data and password/token-like values redacted);
* validates built-in kinds with kubernetes-validate in strict mode (unknown fields are errors) for
  :data:`KUBERNETES_VERSION`, and custom resources against the vendored CRD schemas in ``infra/schemas/``
  (custom kinds without a vendored schema are listed as *not validated*);
* runs the CrossGuard policy pack (``infra.policy``) on the recorded resources for the stack's environment;
* runs the deployability analysis (``infra.deployability``): dependency closure (CRDs and what workloads read are
  created first), class references, what the cluster target must enforce (NetworkPolicy, metrics API, managed
  control plane), reported with the resource and the fix;
* writes ``plan.md`` and ``plan.json`` (resource counts by type, cloud resources' sizes, protected resources, secrets, outputs with
  secrets masked, validation and policy results) and prints a readable report.

Exit status: 0 clean, 1 validation, policy or deployability failures, 2 configuration error (the ``ConfigError`` message naming
the key and stack file is printed, no traceback). ``--set key.path=JSON`` overrides stack config for a what-if.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml
from referencing import Registry, Resource

from infra.capacity import gke_quota_usage
from infra.components.postgres import pg_image_major
from infra.config import ConfigError
from infra.deployability import Analysis, analyse, describe, namespace_lines
from infra.offline import (
    ACCOUNT_ID,
    PROJECT_DIR,
    PROMOTED_PLACEHOLDER,
    RecordedResource,
    StackRun,
    cli_config,
    overridden,
    run_stack,
)
from infra.policy import Violation, run_policies

#: The Kubernetes minor version manifests are validated against: the oldest version a cluster target may run
#: (CloudNativePG 1.30, the in-cluster registry's operator, supports 1.34-1.36; Envoy Gateway v1.9, the EKS
#: target's gateway, 1.33-1.36; prod declares EKS 1.35), so every API used exists on every cluster.
KUBERNETES_VERSION = "1.34"

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
HELM_TYPES = frozenset({"kubernetes:helm.sh/v3:Release", "kubernetes:helm.sh/v4:Chart"})
#: API groups installed by CRDs (operators, Gateway API, the cloud's own controllers): never in kubernetes-validate's
#: built-in schemas. Any other group without a built-in schema is an error, so a typo'd apiVersion cannot pass.
CRD_GROUPS = frozenset(
    {
        "gateway.networking.k8s.io",
        "cert-manager.io",
        "acme.cert-manager.io",
        "monitoring.coreos.com",
        "postgresql.cnpg.io",
        "barmancloud.cnpg.io",  # the Barman Cloud plugin's ObjectStore
        "networking.gke.io",  # GKE Gateway controller policies (HealthCheckPolicy, GCPBackendPolicy)
        "gateway.envoyproxy.io",  # Envoy Gateway's EnvoyProxy (the EKS target's NLB settings)
    }
)
OBJECT_META_REF = (
    "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
)
REDACTED = "<redacted>"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's C loader when built with it
_SECRETISH = re.compile(
    r"(password|passwd|secret|token|apikey|api_key|privatekey|private_key)", re.IGNORECASE
)


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Problem:
    """A validation failure: the rendered file and what is wrong with it."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class Report:
    """Everything one render produced and found."""

    stack: str
    environment: str
    files: list[str] = field(default_factory=list)
    validated_builtin: int = 0
    validated_custom: dict[str, str] = field(default_factory=dict)  # file -> schema used
    not_validated: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    deployability: Analysis | None = None
    warnings: list[str] = field(default_factory=list)
    """Worth a look, not a failure (e.g. alerts that reach nobody)."""
    ignored: list[str] = field(default_factory=list)
    """Config the stack sets that does nothing for its target (`infra.inert`), not a failure."""
    image: str | None = None
    """The image line (`promotion_line`): the plan shows a placeholder for a promoted stack's image."""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def findings(self) -> list[Any]:
        return self.deployability.findings if self.deployability is not None else []

    @property
    def ok(self) -> bool:
        return not self.problems and not self.violations and not self.findings


# ---------------------------------------------------------------------------------------------- manifests
def is_kubernetes_object(resource: RecordedResource) -> bool:
    """A custom resource of the Kubernetes provider that is one API object (not Helm, YAML groups or providers)."""
    return (
        resource.custom
        and resource.type.startswith("kubernetes:")
        and resource.type not in HELM_TYPES
        and not resource.type.startswith("kubernetes:yaml/")
    )


def integral(value: Any) -> Any:
    """Whole-number floats as ints: the engine carries every number as a float, the provider sends JSON ints."""
    if isinstance(value, Mapping):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def manifest_of(resource: RecordedResource) -> dict[str, Any]:
    """The object as the provider would apply it; apiVersion/kind come from the type token when absent."""
    group_version, kind = resource.type.split(":", 1)[1].rsplit(":", 1)
    api_version = group_version[len("core/") :] if group_version.startswith("core/") else group_version
    manifest = {"apiVersion": api_version, "kind": kind}
    manifest.update(integral(resource.inputs))
    return manifest


def file_for(manifest: Mapping[str, Any], resource: RecordedResource) -> str:
    """Stable relative path by kind, namespace and name."""
    meta = manifest.get("metadata") or {}
    namespace = meta.get("namespace") or "_cluster"
    name = meta.get("name") or resource.name
    return f"k8s/{namespace}/{str(manifest['kind']).lower()}--{name}.yaml"


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str) and _SECRETISH.search(key) and value:
        return REDACTED
    return value


def _redact_strings(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _redact_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v) for v in value]
    return REDACTED if isinstance(value, str) else value


def redacted(manifest: Mapping[str, Any], secret_keys: Iterable[str] = ()) -> dict[str, Any]:
    """A copy safe to write to disk: Secret data, inputs the program marked secret (every string under them) and
    password/token-like string values replaced."""
    out = _redact(manifest)
    for key in secret_keys:
        if key in out and key not in ("apiVersion", "kind", "metadata"):
            out[key] = _redact_strings(out[key])
    if manifest.get("kind") == "Secret":
        if isinstance(out.get("data"), Mapping):
            out["data"] = {k: base64.b64encode(REDACTED.encode()).decode() for k in out["data"]}
        if isinstance(out.get("stringData"), Mapping):
            out["stringData"] = dict.fromkeys(out["stringData"], REDACTED)
    return out


def helm_document(resource: RecordedResource) -> dict[str, Any]:
    """A Helm release as its chart coordinates and values (the chart itself is not rendered offline)."""
    inputs = resource.inputs
    repo = (inputs.get("repositoryOpts") or {}).get("repo") or inputs.get("repository")
    return {
        "type": resource.type,
        "release": inputs.get("name") or resource.name,
        "namespace": inputs.get("namespace"),
        "chart": inputs.get("chart"),
        "version": inputs.get("version"),
        "repository": repo,
        "values": (_redact_strings if "values" in resource.secret_keys else _redact)(
            integral(inputs.get("values") or {})
        ),
    }


# ---------------------------------------------------------------------------------------------- validation
def api_group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def strict_schema(node: Any) -> Any:
    """A CRD's structural openAPIV3Schema as strict JSON Schema.

    ``nullable`` becomes an explicit null alternative, and every ``type: object`` with declared properties rejects
    unknown fields (what the API server's strict field validation does) unless it preserves unknown fields.
    CEL rules (``x-kubernetes-validations``) are not evaluated; RE2 inline case-insensitivity flags are moved
    to the front of the pattern, where Python's ``re`` requires them.
    """
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) if k not in ("enum", "default", "required") else v for k, v in node.items()}
    if isinstance(node.get("properties"), dict):
        # Property names are not keywords: a field called `default` or `required` (HealthCheckPolicy's
        # spec.default) is a schema like any other.
        out["properties"] = {name: strict_schema(sub) for name, sub in node["properties"].items()}
    if isinstance(out.get("pattern"), str) and "(?i)" in out["pattern"][1:]:
        # RE2 (Go) accepts a flag group after "^"; Python only at the very start.
        out["pattern"] = "(?i)" + out["pattern"].replace("(?i)", "")
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False):
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _object_meta_registry() -> Registry:
    """kubernetes-validate's strict definitions, so custom resources get the built-in ObjectMeta check."""
    path = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/_definitions.json"
    definitions = kubernetes_validate.utils.schema_contents(path, KUBERNETES_VERSION)
    return Resource.from_contents(definitions) @ Registry()


@cache
def crd_schema(api_version: str, kind: str) -> tuple[jsonschema.protocols.Validator, str] | None:
    """A validator for a custom kind from its vendored schema, and where the schema came from."""
    group, _, version = api_version.rpartition("/")
    path = SCHEMA_DIR / group / f"{kind.lower()}_{version}.yaml"
    if not path.is_file():
        return None
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    schema = strict_schema(doc["schema"])
    schema["properties"]["metadata"] = {"$ref": OBJECT_META_REF}
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    validator = jsonschema.Draft202012Validator(schema, registry=_object_meta_registry())
    return validator, f"{group}/{path.name} ({doc['version']})"


def validate_manifest(manifest: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``(validated-by, errors)``; validated-by is ``""`` when no schema exists for a custom kind."""
    api_version, kind = str(manifest.get("apiVersion", "")), str(manifest.get("kind", ""))
    if api_group(api_version) in CRD_GROUPS:
        found = crd_schema(api_version, kind)
        if found is None:
            return "", []
        validator, source = found
        errors = sorted(validator.iter_errors(dict(manifest)), key=lambda e: list(e.absolute_path))
        return source, [_describe(e) for e in errors]
    try:
        kubernetes_validate.validate(dict(manifest), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"kubernetes {KUBERNETES_VERSION} strict", [_describe(error)]
    except kubernetes_validate.SchemaNotFoundError as error:
        return f"kubernetes {KUBERNETES_VERSION} strict", [
            f"{error.message} (not a built-in API; a custom kind needs a schema in infra/schemas/)"
        ]
    return f"kubernetes {KUBERNETES_VERSION} strict", []


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return f"{error.message} (at {path or '<root>'})"


# ---------------------------------------------------------------------------------------------- render
def _write_yaml(path: Path, document: Any, header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)
    path.write_text(f"# {header}\n{body}", encoding="utf-8")


def _masked_outputs(run: StackRun) -> dict[str, Any]:
    return {k: ("[secret]" if k in run.secret_outputs else v) for k, v in sorted(run.outputs.items())}


#: Per-account, per-Region AWS quotas the program draws on, with their defaults (Amazon VPC User Guide, "Amazon VPC
#: quotas": Elastic IP addresses per Region 5, VPCs per Region 5, internet gateways per Region 5; all adjustable).
#: Nothing offline can see what else the account already holds in the Region, so the plan states the stack's own
#: count and how to check the rest; `pulumi up` otherwise stops at the first allocation over the quota
#: (AddressLimitExceeded) after creating what came before it.
AWS_QUOTAS = {
    "aws:ec2/eip:Eip": ("Elastic IP addresses per Region", 5, "aws ec2 describe-addresses --region {region}"),
    "aws:ec2/vpc:Vpc": ("VPCs per Region", 5, "aws ec2 describe-vpcs --region {region}"),
    "aws:ec2/internetGateway:InternetGateway": (
        "Internet gateways per Region",
        5,
        "aws ec2 describe-internet-gateways --region {region}",
    ),
}


def quota_usage(run: StackRun) -> list[str]:
    """One line per cloud quota the stack draws on: how many it takes, the default quota, how to count the rest
    (AWS: `AWS_QUOTAS`; GKE: Compute Engine's regional quotas, `infra.capacity.gke_quota_usage`)."""
    providers = [r for r in run.of_type("pulumi:providers:aws") if r.inputs.get("region")]
    region = str(providers[0].inputs["region"]) if providers else "<region>"
    lines = []
    for type_, (quota, default, command) in AWS_QUOTAS.items():
        count = len(run.of_type(type_))
        if count:
            lines.append(
                f"{quota} in {region}: this stack takes {count} (default quota {default}, shared with everything else "
                f"the account holds there: count them with `{command.format(region=region)}`, "
                "raise it in Service Quotas before `pulumi up` if they do not fit)"
            )
    return lines + gke_quota_usage(run)


def _refused_while_protected(db: Any, flag: bool) -> str:
    """What stops a delete first: Pulumi's protect (a destroy fails on it) and the cloud's deletion protection."""
    guards = [
        name for name, on in (("protected in the state", db.protect), ("deletion protection", flag)) if on
    ]
    return f"refused while {' and '.join(guards)}; once lifted, " if guards else ""


def rds_on_delete(db: Any) -> str:
    """What is left of an RDS instance deleted by `pulumi destroy` (or dropped after a restore): its final snapshot,
    named `<final_snapshot_prefix>-<8 hex drawn once per instance>`, which RDS keeps until it is deleted by hand,
    and the automated backups, kept for their retention days with `delete_automated_backups` false
    (`rag:postgres.managed.retainBackupsOnDelete`; the provider's default, true, deletes them with the instance:
    pulumi-aws 7.51.1 `rds.Instance` docstring, "Default is `true`"). The provider reads the flag from the state
    when it deletes, so it holds once an `up` has recorded it."""
    i = db.inputs
    if i.get("skipFinalSnapshot"):
        snapshot = "no final snapshot (skipFinalSnapshot)"
    else:
        prefix = str(i.get("finalSnapshotIdentifier") or "").rsplit("-", 1)[0] or "<final snapshot>"
        snapshot = f"the final snapshot {prefix}-<8 hex> is kept until deleted by hand"
    automated = (
        "its automated backups are kept by their retention (once an `up` has recorded it)"
        if i.get("deleteAutomatedBackups") is False
        else "its automated backups go"
    )
    return (
        f"on delete: {_refused_while_protected(db, bool(i.get('deletionProtection')))}{snapshot}; {automated}"
    )


def cloudsql_on_delete(db: Any) -> str:
    """What is left of a Cloud SQL instance deleted by `pulumi destroy` (or dropped after a restore): the final
    backup (`settings.final_backup_config`, kept `retention_days`) and the automated backups
    (`retain_backups_on_delete`: kept "based on the backups retention setting"; pulumi-gcp 10.2.0 docstrings).
    Cloud SQL reads both from the instance's settings when it deletes it: an instance created before the stack set
    them has them only after one `up` (postgres.cloudsql_backups_on_delete)."""
    settings = db.inputs.get("settings") or {}
    final = settings.get("finalBackupConfig") or {}
    kept = int(
        ((settings.get("backupConfiguration") or {}).get("backupRetentionSettings") or {}).get(
            "retainedBackups"
        )
        or 0
    )
    parts = [
        f"a final backup kept {int(final.get('retentionDays') or 0)} days"
        if final.get("enabled")
        else "no final backup"
    ]
    parts.append(
        f"the {kept} automated backups kept by their retention"
        if settings.get("retainBackupsOnDelete")
        else "the automated backups go with it"
    )
    guard = _refused_while_protected(
        db, bool(db.inputs.get("deletionProtection") or settings.get("deletionProtectionEnabled"))
    )
    return f"on delete: {guard}{' and '.join(parts)} (once an `up` has set them on the instance)"


def cloudnative_databases(run: StackRun) -> list[str]:
    """What survives a `pulumi destroy` of each in-cluster CloudNativePG Cluster: not its volumes (the operator makes
    the Cluster own its PVCs, CloudNativePG v1.30.0 `SetInheritedDataAndOwnership`, so Kubernetes deletes them with
    it), and the archive (base backups and WAL, through the Barman Cloud plugin) only where the bucket survives: a
    protected bucket stays, the stack's bucket outside prod is deleted with its contents (`forceDestroy`), a bucket
    the stack does not create (`backups.bucket`) stays."""
    lines = []
    buckets = [*run.of_type("aws:s3/bucket:Bucket"), *run.of_type("gcp:storage/bucket:Bucket")]
    stores = run.of_type("kubernetes:barmancloud.cnpg.io/v1:ObjectStore")
    for cluster in run.of_type("kubernetes:postgresql.cnpg.io/v1:Cluster"):
        spec = cluster.inputs.get("spec") or {}
        major = pg_image_major(str(spec.get("imageName") or "")) or "?"
        head = (
            f"{cluster.name}: CloudNativePG PostgreSQL {major} in the cluster, {int(spec.get('instances') or 1)} "
            f"instance(s) of {(spec.get('storage') or {}).get('size')}"
        )
        guard = "refused while protected in the state; once lifted, " if cluster.protect else ""
        volumes = "its volumes (PVCs the Cluster owns) are deleted with it"
        if not stores:
            archive = "no archive (backups.enabled false): nothing survives"
        else:
            destination = ((stores[0].inputs.get("spec") or {}).get("configuration") or {}).get(
                "destinationPath"
            )
            server = ((spec.get("plugins") or [{}])[0].get("parameters") or {}).get("serverName")
            # Offline, an S3 bucket's name carries the placeholder account ID: say so rather than print a fake one.
            destination = str(destination or "<backup bucket>").replace(ACCOUNT_ID, "<account>")
            where = f"the archive (base backups and WAL) in {destination}/{server}/"
            if not buckets:
                archive = f"{where} stays (backups.bucket: a bucket the stack does not create)"
            elif any(b.protect for b in buckets):
                archive = f"{where} survives (the bucket is protected)"
            elif any(b.inputs.get("forceDestroy") for b in buckets):
                archive = f"{where} is deleted with the stack's bucket (forceDestroy outside prod)"
            else:
                archive = f"{where} stops the destroy at the bucket (not empty), and stays"
        lines.append(f"{head}; on destroy: {guard}{volumes}; {archive}")
    return lines


def managed_databases(run: StackRun) -> list[str]:
    """How each RDS / Cloud SQL instance takes a change: at `pulumi up` or in its maintenance window, and whether
    a major upgrade is declared (infra/components/postgres.py; docs/runbooks.md); and what each database, the
    CloudNativePG ones too, leaves behind when it is deleted."""
    lines = []
    for db in run.of_type("aws:rds/instance:Instance"):
        i = db.inputs
        when = (
            "changes apply at `pulumi up` (applyImmediately)"
            if i.get("applyImmediately")
            else f"changes wait for the maintenance window {i.get('maintenanceWindow')} UTC (applyImmediately false)"
        )
        major = (
            f"major upgrade to {i.get('engineVersion')} declared"
            if i.get("allowMajorVersionUpgrade")
            else "a major change is refused"
        )
        minor = "minor versions automatic" if i.get("autoMinorVersionUpgrade") else "minor versions manual"
        source = ""
        if i.get("snapshotIdentifier"):
            source = f"; created from snapshot {i['snapshotIdentifier']}"
        elif i.get("restoreToPointInTime"):
            point = i["restoreToPointInTime"]
            source = f"; created from a point in time ({point.get('restoreTime') or 'the latest restorable'})"
        backups = (
            f"backups and point in time over {int(i['backupRetentionPeriod'])} days"
            if i.get("backupRetentionPeriod")
            else "no automated backups (backupRetentionDays 0)"
        )
        lines.append(
            f"{db.name}: RDS PostgreSQL {i.get('engineVersion')}, {when}; {major}; {minor}; {backups}{source}; "
            f"{rds_on_delete(db)}"
        )
    for db in run.of_type("gcp:sql/databaseInstance:DatabaseInstance"):
        i = db.inputs
        window = i.get("settings", {}).get("maintenanceWindow") or {}
        version = i.get("databaseVersion")
        major = (
            "a changed databaseVersion is ignored (no major upgrade declared)"
            if "databaseVersion" in db.ignore_changes
            else f"major upgrade to {version} runs at `pulumi up` (in place, the instance down during pg_upgrade)"
        )
        day = ["", "mon", "tue", "wed", "thu", "fri", "sat", "sun"][int(window.get("day", 0) or 0)]
        source = ""
        if i.get("clone"):
            source = f"; cloned from {i['clone'].get('sourceInstanceName')} at {i['clone'].get('pointInTime') or 'its creation'}"
        settings = i.get("settings", {})
        backup = settings.get("backupConfiguration") or {}
        kept = int((backup.get("backupRetentionSettings") or {}).get("retainedBackups") or 0)
        logs = int(backup.get("transactionLogRetentionDays") or 0)
        # N days of retention keep N+1 backups; fewer days of logs is the edition's limit, said where it bites.
        short = (
            f" (the most {settings.get('edition')} keeps; backups span {kept - 1} days)"
            if logs < kept - 1
            else ""
        )
        disk = (
            f"disk {int(settings['diskSize'])} GB at creation"
            if settings.get("diskSize")
            else "disk of its source"
        )
        lines.append(
            f"{db.name}: Cloud SQL {version} ({settings.get('edition')}), settings changes apply at `pulumi up`, "
            f"maintenance {day} {int(window.get('hour', 0) or 0):02d}:00 UTC; {major}; {kept} daily backups kept, "
            f"point in time over {logs} days{short}; {disk}, autoresize up to "
            f"{int(settings.get('diskAutoresizeLimit') or 0)} GB{source}; {cloudsql_on_delete(db)}"
        )
    return lines + cloudnative_databases(run)


#: The inputs that size (or version) each cloud resource, as `dotted.path` in the resource's inputs: `make plan`
#: lists them per resource (plan.md "Cloud resource sizes", plan.json `cloudSizes`), so that a diff of two plans shows
#: a node, database or cache size change (EYES11 M5). A path in `CLOUD_FORCE_NEW` is marked `(replace)`.
CLOUD_SIZES: dict[str, tuple[str, ...]] = {
    "aws:eks/cluster:Cluster": ("version",),
    "aws:eks/nodeGroup:NodeGroup": (
        "instanceTypes",
        "diskSize",
        "capacityType",
        "scalingConfig.minSize",
        "scalingConfig.desiredSize",
        "scalingConfig.maxSize",
        "version",
    ),
    "gcp:container/cluster:Cluster": ("minMasterVersion", "enableAutopilot", "releaseChannel.channel"),
    "gcp:container/nodePool:NodePool": (
        "nodeConfig.machineType",
        "nodeConfig.diskSizeGb",
        "nodeConfig.spot",
        "nodeCount",
        "autoscaling.minNodeCount",
        "autoscaling.maxNodeCount",
        "autoscaling.totalMinNodeCount",
        "autoscaling.totalMaxNodeCount",
    ),
    "aws:rds/instance:Instance": (
        "instanceClass",
        "allocatedStorage",
        "maxAllocatedStorage",
        "storageType",
        "engineVersion",
        "multiAz",
    ),
    "gcp:sql/databaseInstance:DatabaseInstance": (
        "databaseVersion",
        "settings.tier",
        "settings.edition",
        "settings.availabilityType",
        "settings.diskSize",
        "settings.diskAutoresizeLimit",
        "settings.diskType",
    ),
    "aws:elasticache/replicationGroup:ReplicationGroup": ("nodeType", "numCacheClusters", "engineVersion"),
    "gcp:redis/instance:Instance": ("tier", "memorySizeGb", "redisVersion"),
}

#: Inputs whose change makes the cloud provider replace the resource (ForceNew in the Terraform provider the Pulumi
#: provider bridges; the Python SDK docstrings do not say it), with where that is read. Only paths checked at the
#: source are listed; a path missing here is not proof of an in-place update.
CLOUD_FORCE_NEW: dict[str, dict[str, str]] = {
    # terraform-provider-aws internal/service/eks/node_group.go (stored commit 012e0a32), resource schema.
    "aws:eks/nodeGroup:NodeGroup": dict.fromkeys(
        ("instanceTypes", "diskSize", "capacityType", "amiType", "subnetIds", "nodeRoleArn"),
        "terraform-provider-aws internal/service/eks/node_group.go (commit 012e0a32): ForceNew",
    ),
    "gcp:container/nodePool:NodePool": {
        # machine_type / disk_size_gb are updated in place (node_config.go :536/:291, REVIEW12).
        "nodeConfig.spot": "terraform-provider-google v7.45.0 node_config.go:616-619: ForceNew",
    },
    "gcp:container/cluster:Cluster": {
        "enableAutopilot": "terraform-provider-google v7.45.0 resource_container_cluster.go:1114-1117: ForceNew",
    },
    "gcp:redis/instance:Instance": {
        "tier": "terraform-provider-google v7.45.0 resource_redis_instance.go:487-490: ForceNew",
    },
    "aws:rds/instance:Instance": dict.fromkeys(
        ("dbName", "username"),
        "terraform-provider-aws internal/service/rds/instance.go (commit 00e4b238): ForceNew",
    ),
    "gcp:sql/database:Database": {
        "name": "terraform-provider-google v7.45.0 resource_sql_database.go:151: ForceNew",
    },
    "gcp:sql/user:User": {
        "name": "terraform-provider-google v7.45.0 resource_sql_user.go:141: ForceNew",
    },
}


def _input_at(inputs: Mapping[str, Any], path: str) -> Any:
    value: Any = inputs
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def cloud_sizes(run: StackRun) -> list[str]:
    """One line per sized cloud resource (`CLOUD_SIZES`): `type::name: path=value, ...` in declaration order, each
    ForceNew path marked `(replace)`."""
    lines = []
    for resource in run.resources:
        paths = CLOUD_SIZES.get(resource.type)
        if not paths:
            continue
        force_new = CLOUD_FORCE_NEW.get(resource.type, {})
        fields = []
        for path in paths:
            value = _input_at(resource.inputs, path)
            if value is None:
                continue
            shown = json.dumps(integral(value), sort_keys=True)
            fields.append(f"{path}={shown}" + (" (replace)" if path in force_new else ""))
        lines.append(f"`{resource.type}::{resource.name}`: {', '.join(fields) or 'no size inputs'}")
    return sorted(lines)


def summarize(run: StackRun, environment: str) -> dict[str, Any]:
    """Resource counts by type, protected resources, secrets and masked outputs."""
    resources = [r for r in run.resources if r.type != "pulumi:pulumi:Stack"]
    return {
        "stack": run.stack,
        "environment": environment,
        "resources": len(resources),
        "byType": dict(sorted(Counter(r.type for r in resources).items())),
        "protected": sorted(f"{r.type}::{r.name}" for r in resources if r.protect),
        "quotas": quota_usage(run),
        "managedDatabases": managed_databases(run),
        "cloudSizes": cloud_sizes(run),
        "secrets": {
            "resourcesWithSecretInputs": sum(1 for r in resources if r.secret_keys),
            "kubernetesSecrets": sum(1 for r in resources if r.type == "kubernetes:core/v1:Secret"),
            "secretOutputs": sorted(run.secret_outputs),
        },
        "outputs": _masked_outputs(run),
    }


def ignored_config(run: StackRun) -> list[str]:
    """The keys the run's stack file (or --set) sets that do nothing for its cluster target (`infra.inert`)."""
    from infra import inert
    from infra.config import stack_file
    from infra.deployability import _declared_config, effective_config

    path = PROJECT_DIR / stack_file(run.stack)
    stack_values = (
        (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("config") or {} if path.is_file() else {}
    )
    defaults = {
        key: declaration.get("default") if isinstance(declaration, Mapping) else declaration
        for key, declaration in _declared_config().items()
    }
    return inert.ignored(effective_config(run), defaults, stack_values, stack_file(run.stack))


#: The environment each promoted one receives from (infra.workflows.stacks.PROMOTION_CHAIN, reversed).
RECEIVES_FROM = {"staging": "dev", "prod": "staging"}


def promotion_line(run: StackRun) -> str | None:
    """The one line saying the plan shows a placeholder image: a staging/prod-environment stack deploys only the
    image a promotion records in the backend, which offline is not read; a stack never promoted (a new `qa`) has
    none, and its `pulumi up` is refused until its first promotion."""
    if run.config.get("rag:image") != PROMOTED_PLACEHOLDER:
        return None
    environment = run.config.get("rag:environment", "")
    source = RECEIVES_FROM.get(environment, "dev")
    return (
        f"a placeholder: {run.stack} (environment {environment}) deploys only a promoted image, which the backend "
        f"holds once it was promoted; a stack never promoted needs its first promotion before any `up`: "
        f"`ragops promote --from {source} --to {run.stack}` (or from another stack of environment {source})"
    )


#: The example account ID of AWS's documentation, which the committed prod stack file pins until replaced.
EXAMPLE_AWS_ACCOUNT = "111122223333"


def plan_warnings(run: StackRun, today: date | None = None) -> list[str]:
    """What deploys fine but will disappoint: an EKS minor near or past its end of standard support, monitoring whose
    alerts reach nobody, or whose runbook links are relative paths (the default) that no pager can open."""
    # The program's own (pulumi.log.warn), once each; the EKS support warning is derived below, for `today`.
    warnings = [w for w in dict.fromkeys(run.warnings) if not w.startswith("rag:cluster.eks.version in ")]
    for cluster in run.of_type("aws:eks/cluster:Cluster"):
        # The EKS minor near or past its end of standard support (infra/clusters/eks.py EKS_STANDARD_SUPPORT_ENDS).
        from infra.clusters.eks import support_warning

        support = support_warning(
            str(cluster.inputs.get("version")), today or date.today(), f"Pulumi.{run.stack}.yaml"
        )
        if support and support not in warnings:
            warnings.append(support)
    pinned = str(run.config.get("aws:allowedAccountIds") or "")
    if EXAMPLE_AWS_ACCOUNT in pinned:
        warnings.append(
            f"aws:allowedAccountIds in Pulumi.{run.stack}.yaml holds {EXAMPLE_AWS_ACCOUNT}, AWS's documentation "
            "example account: a real `up` stops at the AWS provider before any change until it names the stack's "
            'own account (docs/infra.md, "AWS credentials and account")'
        )
    # Across the checkout's stack files and workflows (a copied file, a shared cluster, a private endpoint that
    # promote.yml's hosted runners cannot reach): infra/workflows/wiring.py.
    from infra.workflows.wiring import stack_file_findings

    warnings.extend(w for w in stack_file_findings(PROJECT_DIR, run.stack)[1] if w not in warnings)
    if run.outputs.get("alertReceivers") == []:
        warnings.append(
            "alerts reach nobody: monitoring is on but no Alertmanager receiver is configured "
            "(set rag:slackWebhookUrl or rag:pagerdutyRoutingKey with --secret, or rag:monitoring.alerting.email.to; "
            "see docs/runbooks.md)"
        )
    relative = sorted(
        {
            rule["annotations"]["runbook_url"].split("#", 1)[0]
            for resource in run.resources
            if resource.type == "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
            for group in resource.inputs.get("spec", {}).get("groups", [])
            for rule in group.get("rules", [])
            if "runbook_url" in rule.get("annotations", {})
            and not rule["annotations"]["runbook_url"].startswith(("https://", "http://"))
        }
    )
    if relative:
        warnings.append(
            f"alert runbook links are not URLs: every alert's runbook_url starts with {relative[0]!r}, which "
            "nobody paged can open from Slack, PagerDuty or e-mail (set rag:monitoring.runbookUrl to where "
            "docs/runbooks.md is published, e.g. https://github.com/<org>/<repo>/blob/main/docs/runbooks.md)"
        )
    return warnings


def render_run(run: StackRun, out: Path, *, environment: str, deployability: bool = True) -> Report:
    """Write, validate, policy-check and (unless ``deployability`` is false, for a partial program) analyse an
    already recorded run into ``out``."""
    report = Report(stack=run.stack, environment=environment)
    for stale in ("k8s", "helm"):
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    seen: dict[str, str] = {}
    for resource in run.resources:
        if resource.type in HELM_TYPES:
            doc = helm_document(resource)
            rel = f"helm/{doc['namespace'] or '_default'}--{doc['release']}.yaml"
            _write_yaml(out / rel, doc, f"Helm release from {resource.urn} (chart not rendered offline)")
            report.files.append(rel)
            report.not_validated.append(
                f"{rel} (Helm values: the chart's own schema is not available offline)"
            )
            continue
        if not is_kubernetes_object(resource):
            continue
        manifest = manifest_of(resource)
        rel = file_for(manifest, resource)
        if rel in seen:
            report.problems.append(Problem(rel, f"declared twice: {seen[rel]} and {resource.urn}"))
            continue
        seen[rel] = resource.urn
        _write_yaml(out / rel, redacted(manifest, resource.secret_keys), f"From {resource.urn}")
        report.files.append(rel)
        validated_by, errors = validate_manifest(manifest)
        report.problems.extend(Problem(rel, e) for e in errors)
        if not validated_by:
            report.not_validated.append(
                f"{rel} (no vendored schema for {manifest['apiVersion']} {manifest['kind']})"
            )
        elif validated_by.startswith("kubernetes "):
            report.validated_builtin += 1
        else:
            report.validated_custom[rel] = validated_by

    report.violations = run_policies(run.resources, environment=environment)
    report.warnings = plan_warnings(run)
    report.image = promotion_line(run)
    report.ignored = ignored_config(run)
    if deployability:
        report.deployability = analyse(run)
    report.summary = summarize(run, environment)
    # Sorted keys: two plans of one config are byte-identical, so a diff of two plans shows only the change.
    (out / "plan.json").write_text(
        json.dumps(plan_json(report), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / "plan.md").write_text(plan_markdown(report), encoding="utf-8")
    return report


def plan_json(report: Report) -> dict[str, Any]:
    return {
        **report.summary,
        "files": sorted(report.files),
        "validation": {
            "kubernetesVersion": KUBERNETES_VERSION,
            "strict": True,
            "builtinValidated": report.validated_builtin,
            "customValidated": dict(sorted(report.validated_custom.items())),
            "notValidated": sorted(report.not_validated),
            "problems": [str(p) for p in report.problems],
        },
        "policies": [
            {"policy": v.policy, "message": v.message, "urn": v.urn, "enforcement": v.enforcement}
            for v in report.violations
        ],
        "deployability": _deployability_json(report.deployability),
        "warnings": list(report.warnings),
        "image": report.image,
        "ignoredConfig": list(report.ignored),
        "ok": report.ok,
    }


def _finding_json(finding: Any) -> dict[str, str]:
    return {
        "check": finding.check,
        "resource": finding.resource,
        "message": finding.message,
        "fix": finding.fix,
    }


def _deployability_json(analysis: Analysis | None) -> dict[str, Any] | None:
    if analysis is None:
        return None
    return {
        "target": analysis.target,
        "capabilities": {
            c.name: {"provider": c.provider, "detail": c.detail} for c in analysis.capabilities.values()
        },
        "prerequisites": sorted(c.name for c in analysis.prerequisites),
        "findings": [_finding_json(f) for f in analysis.findings],
        "waived": [{**_finding_json(f), "reason": reason} for f, reason in analysis.waived],
    }


def _deployability_markdown(analysis: Analysis | None) -> list[str]:
    if analysis is None:
        return ["## Deployability", "", "- not analysed (partial program)", ""]
    return [
        "## Deployability",
        "",
        f'Cluster target `{analysis.target}`. The analysis and its limits: docs/policy.md, "Deployability".',
        "",
        "### Cluster capabilities",
        "",
        *_lines(describe(c for c in analysis.capabilities.values() if c.provider is not None), "none"),
        "",
        "### Cluster prerequisites (installed before `pulumi up`, see docs/infra.md)",
        "",
        *_lines(describe(analysis.prerequisites), "none"),
        "",
        "### Findings",
        "",
        *_lines(
            (f"**{f.check}** `{f.resource}`: {f.message} **Fix**: {f.fix}" for f in analysis.findings), "none"
        ),
        "",
        "### Waived (known open, not failing the plan)",
        "",
        *_lines(
            (f"**{f.check}** `{f.resource}`: {f.message} ({reason})" for f, reason in analysis.waived), "none"
        ),
        "",
    ]


def _lines(items: Iterable[str], empty: str) -> list[str]:
    rows = [f"- {item}" for item in items]
    return rows or [f"- {empty}"]


def plan_markdown(report: Report) -> str:
    s = report.summary
    rows = [f"| `{t}` | {n} |" for t, n in s["byType"].items()]
    secrets = s["secrets"]
    parts = [
        f"# Plan: stack `{report.stack}` ({report.environment})",
        "",
        f"**{'PASS' if report.ok else 'FAIL'}**: {s['resources']} resources, {len(report.files)} files rendered, "
        f"{len(report.problems)} validation problems, {len(report.violations)} policy violations, "
        f"{len(report.findings)} deployability findings.",
        "",
        *([f"**Image**: {report.image}", ""] if report.image else []),
        "## Resources by type",
        "",
        "| type | count |",
        "| --- | ---: |",
        *rows,
        "",
        "## Protected resources",
        "",
        *_lines((f"`{p}`" for p in s["protected"]), "none"),
        "",
        "## Cloud quotas",
        "",
        *_lines(s.get("quotas", []), "none"),
        "",
        "## Cloud resource sizes",
        "",
        "Sizes and versions the cloud provider is sent (`(replace)`: a change replaces the resource):",
        "",
        *_lines(s.get("cloudSizes", []), "none"),
        "",
        "## Databases (and what a delete leaves)",
        "",
        *_lines(s.get("managedDatabases", []), "none"),
        "",
        "## Secrets",
        "",
        f"- resources with secret inputs: {secrets['resourcesWithSecretInputs']}",
        f"- Kubernetes Secrets: {secrets['kubernetesSecrets']}",
        f"- secret outputs: {', '.join(secrets['secretOutputs']) or 'none'}",
        "",
        "## Outputs",
        "",
        *_lines((f"`{k}`: `{json.dumps(v)}`" for k, v in s["outputs"].items()), "none"),
        "",
        "## Validation",
        "",
        f"- {report.validated_builtin} built-in objects validated with kubernetes-validate "
        f"(Kubernetes {KUBERNETES_VERSION}, strict)",
        f"- {len(report.validated_custom)} custom resources validated against vendored CRD schemas",
        f"- {len(report.not_validated)} not schema-validated:",
        *[f"  - {n}" for n in sorted(report.not_validated)],
        "",
        "### Problems",
        "",
        *_lines((str(p) for p in report.problems), "none"),
        "",
        "## Policy violations",
        "",
        *_lines((str(v) for v in report.violations), "none"),
        "",
        *_deployability_markdown(report.deployability),
        "## Warnings",
        "",
        *_lines(report.warnings, "none"),
        "",
        "## Ignored config",
        "",
        "Keys the stack sets that do nothing for its target (kept for a switch of cluster.provider or a mode):",
        "",
        *_lines(report.ignored, "none"),
        "",
    ]
    return "\n".join(parts)


def print_report(report: Report, out: Path) -> None:
    s = report.summary
    print(
        f"stack {report.stack} ({report.environment}): {s['resources']} resources, {len(report.files)} files in {out}"
    )
    print(
        f"  validated: {report.validated_builtin} built-in (Kubernetes {KUBERNETES_VERSION}, strict), "
        f"{len(report.validated_custom)} custom; {len(report.not_validated)} not schema-validated"
    )
    print(
        f"  protected: {len(s['protected'])}; secret outputs: {', '.join(s['secrets']['secretOutputs']) or '-'}"
    )
    for problem in report.problems:
        print(f"  INVALID {problem}")
    for violation in report.violations:
        print(f"  POLICY  {violation}")
    for finding in report.findings:
        print(f"  DEPLOY  {finding}")
    if report.deployability is not None and report.deployability.waived:
        print(f"  ({len(report.deployability.waived)} known deployability findings waived: see plan.md)")
    if report.image:
        print(f"  IMAGE   {report.image}")
    for warning in report.warnings:
        print(f"  WARNING {warning}")
    for key in report.ignored:
        print(f"  IGNORED {key}")
    for quota in report.summary.get("quotas", []):
        print(f"  QUOTA   {quota}")
    for database in report.summary.get("managedDatabases", []):
        print(f"  DATABASE {database}")
    if report.deployability is not None:
        for namespace in namespace_lines(report.deployability):
            print(f"  NAMESPACE {namespace}")
    print(f"{'PASS' if report.ok else 'FAIL'}: see {out / 'plan.md'}")


# ---------------------------------------------------------------------------------------------- CLI
def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["qdrant.replicas=1", "image=\"r@sha256:..\""]`` -> ``{"qdrant": {"replicas": 1}, ...}`` (JSON values)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        path = key.removeprefix("rag:").split(".")
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return overrides


def environment_for(
    stack: str, overrides: Mapping[str, Any], stack_config: Mapping[str, Any] | None = None
) -> str:
    """The ``rag:environment`` the program ran with (the stack name when unset)."""
    values, _ = cli_config(stack, config_overrides=overrides, stack_config=stack_config)
    return values.get("rag:environment") or stack


def pr_stack_config(stack: str) -> dict[str, Any] | None:
    """A PR stack's config (`ragops ephemeral up`'s, from infra/workflows/ephemeral.template.yaml over dev's file)
    when `stack` is a PR stack name without a stack file, so `make plan STACK=pr-1` renders what CI would deploy;
    None otherwise (the stack file is read)."""
    from infra.workflows.ephemeral import EPHEMERAL_PREFIX, template_config

    if not stack.startswith(EPHEMERAL_PREFIX) or (PROJECT_DIR / f"Pulumi.{stack}.yaml").is_file():
        return None
    try:
        return template_config(PROJECT_DIR, stack)
    except Exception as exc:  # a bad $RAGOPS_PREVIEW_DOMAIN / namespace: the workflows' UsageError sentence
        raise ValueError(str(exc)) from exc


def _collect_abandoned_loops() -> None:
    """Collect what a failed program left behind while the interpreter is whole.

    A program that fails inside an Output leaves the SDK's event loop objects unreferenced but not yet collected;
    collected at interpreter shutdown, after their selector's file descriptor is gone, one printed a 25-line
    "Exception ignored in BaseEventLoop.__del__ ... Invalid file descriptor: -1" under the one-line config error
    (2 runs in 12; tests/infra/test_plan_errors.py failed in a clean-clone CI run).
    """
    gc.collect()


def load_run(stack: str, set_pairs: Sequence[str]) -> tuple[StackRun, str] | None:
    """Run the stack's program offline with `--set` overrides, for a command line (`make plan`, `make rbac`).

    Gives the run and the `rag:environment` it ran with. A config error, a malformed `--set` or a missing stack
    file is printed as one line on stderr (a `--set` value is named as `--set`, not as the stack file) and gives
    None; the caller exits with 2.
    """
    overrides: dict[str, Any] = {}
    try:
        overrides = parse_overrides(set_pairs)
        from infra.workflows.wiring import stack_file_findings

        errors = stack_file_findings(PROJECT_DIR, stack)[0]
        if errors:
            print(f"config error: {errors[0]}", file=sys.stderr)
            return None
        stack_config = pr_stack_config(stack)
        run = run_stack(stack, config_overrides=overrides, stack_config=stack_config)
        environment = environment_for(stack, overrides, stack_config)
    except ConfigError as error:
        if overridden(error.key, overrides):  # the value came from the command line, not the stack file
            error = ConfigError(error.key, "--set", error.problem)
        elif (
            set_pairs
        ):  # the file's value may be wrong only next to a --set one (replicationFactor > replicas)
            error = ConfigError(
                error.key, f"{error.stack_file} with --set {' '.join(set_pairs)}", error.problem
            )
        print(f"config error: {error}", file=sys.stderr)
        _collect_abandoned_loops()
        return None
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        _collect_abandoned_loops()
        return None
    return run, environment


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name (reads Pulumi.<stack>.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON", help="override a config key"
    )
    args = parser.parse_args(argv)
    loaded = load_run(args.stack, args.set)
    if loaded is None:
        return 2
    run, environment = loaded
    report = render_run(run, args.out, environment=environment)
    print_report(report, args.out)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
