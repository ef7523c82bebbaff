"""`QdrantBackups` (`rag:ops:QdrantBackups`): scheduled Qdrant snapshots streamed to S3 or GCS.

A CronJob runs a small bash script (kept in a ConfigMap) in a pinned official cloud CLI image
(`amazon/aws-cli` or `google/cloud-sdk` slim). For every Qdrant node (snapshots cover only the shards a node
holds, so a cluster backup visits each node) and every collection it creates a snapshot through the REST API,
streams it straight into `s3://` / `gs://<bucket>/<prefix>/<UTC stamp>/<node>/<collection>/` (no local disk),
then deletes the snapshot from the node. Credentials come from the pod's ServiceAccount: IRSA
(`eks.amazonaws.com/role-arn`) or GKE Workload Identity (`iam.gke.io/gcp-service-account`) annotations; no keys.
The Qdrant API key is read from the QdrantCluster's own Secret.

With `create_bucket`, the bucket is created too: S3 with versioning, default encryption, a public access block
and expiry of old backups under the snapshot prefix only (the CloudNativePG archive shares the bucket and expires by
its own retention policy) (pulumi-aws 7's `s3.Bucket` family; the `*V2` names are deprecated there); or GCS with uniform access, public access prevention, versioning and the same
expiry. Protected from deletion when `protect` is set (prod). Elsewhere the bucket is created with `force_destroy`, so
`pulumi destroy` empties it (every object version and delete marker on S3, every generation on GCS: the providers'
delete lists versions) before deleting it, instead of failing with BucketNotEmpty after the first backup. A
protected bucket never gets `force_destroy`: a destroy of prod must stop at the bucket, not empty it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pulumi
import pulumi_aws as aws
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from infra.components import specs
from infra.components.specs import EgressTarget, Resources, require

APP = "qdrant-backup"
IMAGES = {
    "aws": "amazon/aws-cli:2.27.0",
    "gcp": "google/cloud-sdk:520.0.0-slim",
}
RUN_AS_USER = 1000
# `aws s3 cp -` (a stream of unknown length) buffers up to `max_in_memory_upload_chunks` (10, the AWS CLI default)
# parts in memory; with --expected-size the part size is the object size / 10,000 (S3's part limit), at least
# 8 MiB. The backup container's memory must hold them plus the CLI itself.
S3_IN_MEMORY_PARTS = 10
S3_MAX_PARTS = 10_000
S3_MIN_PART = 8 * 2**20
CLI_MEMORY = 256 * 2**20
# The default sustained rate a backup or restore moves data between a node and object storage
# (`rag:backups.transferMiBps`, docs/infra.md "Backup and restore time"); the jobs' deadlines are sized from it.
ASSUMED_TRANSFER_BYTES_PER_SECOND = 50 * 2**20
MIN_DEADLINE_SECONDS = 6 * 3600
# Largest object S3 (5 TiB via multipart) and GCS (5 TiB) store: one snapshot must fit in one object.
MAX_OBJECT_BYTES = 5 * 2**40
SCRIPT_NAME = "backup.sh"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CRON = re.compile(r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$")

MANIFEST_NAME = "_COMPLETE"
"""The object a backup run writes LAST under `<prefix>/<stamp>/`: a run without it failed half-way or is running.

Lines of text (the backup images have no jq): `format 1`, `stamp <stamp>`, then one line per node
`node <node> <qdrant version> <collection>...` (the collections the node held, each with one snapshot object under
`<stamp>/<node>/<collection>/`). The restore checks every line against the objects and the running nodes."""

BACKUP_SCRIPT = r"""#!/bin/bash
# Snapshot every collection on every Qdrant node and stream each snapshot to object storage; then write the run's
# manifest (_COMPLETE: nodes, their Qdrant version and collections), last, so only a finished run has one.
set -euo pipefail
: "${QDRANT_PEERS:?}" "${QDRANT_API_KEY:?}" "${BUCKET:?}" "${PREFIX:?}" "${CLOUD:?}" "${TRANSFER_MAX_SECONDS:?}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
HDR="api-key: ${QDRANT_API_KEY}"

upload() {  # stdin -> object key $1, $2 bytes
  case "$CLOUD" in
    # A stream from stdin is cut into parts sized for 50 GB unless told its size: --expected-size lets the CLI
    # pick parts that fit S3's 10,000-part limit for snapshots of any size (up to S3's 5 TB object limit).
    aws) aws s3 cp - "s3://${BUCKET}/$1" --expected-size "$2" --only-show-errors ;;
    # gcloud streams stdin with no size limit below GCS's 5 TiB per object.
    gcp) gcloud storage cp - "gs://${BUCKET}/$1" --quiet ;;
    *) echo "unknown CLOUD=$CLOUD" >&2; return 2 ;;
  esac
}

names() {  # the "name" values of a Qdrant JSON answer
  grep -o '"name": *"[^"]*"' | sed -e 's/^"name": *"//' -e 's/"$//'
}

count=0
manifest="format 1
stamp ${STAMP}"
for peer in $QDRANT_PEERS; do
  node="${peer#*://}"; node="${node%%[.:/]*}"
  # GET / answers {"title": ..., "version": "1.15.4", ...}: snapshots restore only into the same minor version.
  version="$(curl -fsS --max-time 60 -H "$HDR" "${peer}/" | grep -o '"version": *"[^"]*"' | grep -o '[0-9][^"]*')"
  [ -n "$version" ] || { echo "node ${node} did not say its Qdrant version" >&2; exit 1; }
  collections="$(curl -fsS --max-time 60 -H "$HDR" "${peer}/collections" | names)"
  line="node ${node} ${version}"
  for collection in $collections; do
    created="$(curl -fsS --max-time 7200 -X POST -H "$HDR" \
      "${peer}/collections/${collection}/snapshots?wait=true")"
    snapshot="$(printf '%s' "$created" | names | head -n 1)"
    size="$(printf '%s' "$created" | grep -o '"size": *[0-9]*' | grep -o '[0-9]*$' | head -n 1)"
    key="${PREFIX}/${STAMP}/${node}/${collection}/${snapshot}"
    curl -fsS --max-time "${TRANSFER_MAX_SECONDS}" -H "$HDR" "${peer}/collections/${collection}/snapshots/${snapshot}" \
      | upload "$key" "${size:?Qdrant gave no snapshot size}"
    curl -fsS --max-time 600 -X DELETE -H "$HDR" \
      "${peer}/collections/${collection}/snapshots/${snapshot}?wait=true" > /dev/null
    echo "{\"event\":\"snapshot_uploaded\",\"node\":\"${node}\",\"collection\":\"${collection}\",\"key\":\"${key}\"}"
    line="${line} ${collection}"
    count=$((count + 1))
  done
  manifest="${manifest}
${line}"
done
printf '%s\n' "$manifest" | upload "${PREFIX}/${STAMP}/_COMPLETE" "$(( ${#manifest} + 1 ))"
echo "{\"event\":\"backup_finished\",\"snapshots\":${count},\"stamp\":\"${STAMP}\"}"
"""

RESTORE_SCRIPT_NAME = "restore.sh"
RESTORE_SCRIPT = r"""#!/bin/bash
# Restore Qdrant nodes from one COMPLETE backup run: the newest with a _COMPLETE manifest, or RESTORE_STAMP.
# RESTORE_NODES (e.g. "qdrant-1") restores only those nodes; RESTORE_ALLOW_PARTIAL=1 accepts a run without a
# manifest (each chosen node then needs snapshots in it). Everything is checked before the first upload: every
# chosen node is in the run, holds a snapshot of each collection the manifest lists, and runs the same Qdrant
# minor version the snapshots were taken with. Then each snapshot is downloaded to the scratch volume and
# uploaded to the node it came from (priority=snapshot: the snapshot's data wins; writes since the run are lost).
set -euo pipefail
: "${QDRANT_PEERS:?}" "${QDRANT_API_KEY:?}" "${BUCKET:?}" "${PREFIX:?}" "${CLOUD:?}" "${SCRATCH:?}"
: "${TRANSFER_MAX_SECONDS:?}"
HDR="api-key: ${QDRANT_API_KEY}"
MANIFEST=_COMPLETE

fail() { echo "{\"event\":\"restore_refused\",\"reason\":\"$*\"}"; echo "restore refused: $*" >&2; exit 1; }

list() {  # object keys (relative to the bucket) under $1/, or the child "directories" when $2 = dirs
  local out rc=0 err="${SCRATCH}/.list-errors"
  case "$CLOUD" in
    aws) if [ "${2:-}" = dirs ]; then out="$(aws s3 ls "s3://${BUCKET}/$1/" 2>"$err")" || rc=$?
         else out="$(aws s3 ls --recursive "s3://${BUCKET}/$1/" 2>"$err")" || rc=$?; fi
         # `aws s3 ls` exits 1, silently, when nothing is under the prefix: that is an empty answer.
         if [ "$rc" = 1 ] && [ -z "$out" ] && [ ! -s "$err" ]; then rc=0; fi
         if [ "${2:-}" = dirs ]; then out="$(printf '%s\n' "$out" | awk '$1 == "PRE" {print $2}' | tr -d /)"
         else out="$(printf '%s\n' "$out" | awk 'NF >= 4 {print $4}')"; fi ;;
    gcp) if [ "${2:-}" = dirs ]; then out="$(gcloud storage ls "gs://${BUCKET}/$1/" 2>"$err")" || rc=$?
         else out="$(gcloud storage ls --recursive "gs://${BUCKET}/$1/**" 2>"$err")" || rc=$?; fi
         if [ "$rc" != 0 ] && grep -q "matched no objects" "$err"; then rc=0; out=""; fi
         if [ "${2:-}" = dirs ]; then out="$(printf '%s\n' "$out" | grep '/$' | awk -F/ '{print $(NF-1)}')"
         else out="$(printf '%s\n' "$out" | sed "s#^gs://${BUCKET}/##")"; fi ;;
    *) echo "unknown CLOUD=$CLOUD" >&2; return 2 ;;
  esac
  if [ "$rc" != 0 ]; then cat "$err" >&2; rm -f "$err"; return "$rc"; fi
  rm -f "$err"
  printf '%s\n' "$out" | sed '/^$/d'
}

download() {  # object key $1 -> file $2
  case "$CLOUD" in
    aws) aws s3 cp "s3://${BUCKET}/$1" "$2" --only-show-errors ;;
    gcp) gcloud storage cp "gs://${BUCKET}/$1" "$2" --quiet ;;
  esac
}

node_of() { local n="${1#*://}"; printf '%s' "${n%%[.:/]*}"; }
minor() { printf '%s' "$1" | cut -d. -f1,2; }

# 1. The run: the newest one with a manifest (newer ones without are partial or still running: skipped, said so).
stamps="$(list "$PREFIX" dirs | sort -r)"
[ -n "$stamps" ] || fail "no backup under ${PREFIX}/"
stamp="" keys=""
for candidate in ${RESTORE_STAMP:-$stamps}; do
  run_keys="$(list "${PREFIX}/${candidate}")"
  if printf '%s\n' "$run_keys" | grep -qx "${PREFIX}/${candidate}/${MANIFEST}"; then
    stamp="$candidate" keys="$run_keys"; break
  fi
  if [ -n "${RESTORE_STAMP:-}" ]; then
    [ -n "$run_keys" ] || fail "backup ${candidate} does not exist under ${PREFIX}/"
    [ "${RESTORE_ALLOW_PARTIAL:-0}" = 1 ] \
      || fail "backup ${candidate} has no ${MANIFEST} manifest: it failed half-way or is still running (RESTORE_ALLOW_PARTIAL=1 restores it anyway)"
    stamp="$candidate" keys="$run_keys"; break
  fi
  echo "{\"event\":\"backup_skipped\",\"stamp\":\"${candidate}\",\"reason\":\"no ${MANIFEST}: partial or running\"}"
done
[ -n "$stamp" ] || fail "no complete backup run (with ${MANIFEST}) under ${PREFIX}/"
manifest=""
if printf '%s\n' "$keys" | grep -qx "${PREFIX}/${stamp}/${MANIFEST}"; then
  download "${PREFIX}/${stamp}/${MANIFEST}" "${SCRATCH}/${MANIFEST}"
  manifest="$(cat "${SCRATCH}/${MANIFEST}")"; rm -f "${SCRATCH}/${MANIFEST}"
  printf '%s\n' "$manifest" | grep -qx 'format 1' || fail "backup ${stamp}: unknown manifest format"
fi

# 2. The nodes: all peers, or RESTORE_NODES (each must be a peer).
all_nodes=""
for peer in $QDRANT_PEERS; do all_nodes="${all_nodes} $(node_of "$peer")"; done
chosen="${RESTORE_NODES:-$all_nodes}"
for node in $chosen; do
  case " ${all_nodes} " in *" ${node} "*) ;; *) fail "RESTORE_NODES names ${node}, not a node of this cluster (${all_nodes# })" ;; esac
done

# 3. The plan, checked whole before anything is uploaded: "peer collection key" lines.
plan=""
for peer in $QDRANT_PEERS; do
  node="$(node_of "$peer")"
  case " ${chosen} " in *" ${node} "*) ;; *) continue ;; esac
  node_keys="$(printf '%s\n' "$keys" | grep "^${PREFIX}/${stamp}/${node}/" || true)"
  if [ -n "$manifest" ]; then
    entry="$(printf '%s\n' "$manifest" | awk -v n="$node" '$1 == "node" && $2 == n' | head -n 1)"
    [ -n "$entry" ] || fail "backup ${stamp} has no entry for node ${node} (taken with other nodes)"
    version="$(printf '%s' "$entry" | awk '{print $3}')"
    collections="$(printf '%s' "$entry" | cut -d' ' -f4-)"
    [ "$(printf '%s' "$entry" | wc -w)" -gt 3 ] || collections=""
  else
    version=""
    collections="$(printf '%s\n' "$node_keys" | sed "s#^${PREFIX}/${stamp}/${node}/##" | cut -d/ -f1 | sort -u)"
    [ -n "$collections" ] || fail "partial backup ${stamp} holds no snapshot of node ${node}"
  fi
  running="$(curl -fsS --max-time 60 -H "$HDR" "${peer}/" | grep -o '"version": *"[^"]*"' | grep -o '[0-9][^"]*')" \
    || fail "node ${node} does not answer"
  if [ -n "$version" ] && [ "$(minor "$version")" != "$(minor "$running")" ]; then
    fail "backup ${stamp} of node ${node} was taken with Qdrant ${version}; the node runs ${running}: snapshots restore only into the same minor version"
  fi
  for collection in $collections; do
    key="$(printf '%s\n' "$node_keys" | grep "^${PREFIX}/${stamp}/${node}/${collection}/" | head -n 1 || true)"
    [ -n "$key" ] || fail "backup ${stamp} lists collection ${collection} on node ${node} but holds no snapshot of it"
    plan="${plan}${peer} ${collection} ${key}
"
  done
  echo "{\"event\":\"node_checked\",\"node\":\"${node}\",\"stamp\":\"${stamp}\",\"collections\":$(printf '%s\n' $collections | grep -c . || true)}"
done

# 4. Restore.
count=0
while read -r peer collection key; do
  [ -n "$peer" ] || continue
  node="$(node_of "$peer")"
  file="${SCRATCH}/${key##*/}"
  download "$key" "$file"
  curl -fsS --max-time "${TRANSFER_MAX_SECONDS}" -X POST -H "$HDR" -F "snapshot=@${file}" \
    "${peer}/collections/${collection}/snapshots/upload?priority=snapshot&wait=true" > /dev/null
  rm -f "$file"
  echo "{\"event\":\"snapshot_restored\",\"node\":\"${node}\",\"collection\":\"${collection}\",\"key\":\"${key}\"}"
  count=$((count + 1))
done <<< "$plan"
echo "{\"event\":\"restore_finished\",\"snapshots\":${count},\"stamp\":\"${stamp}\",\"nodes\":\"${chosen# }\",\"complete_run\":$([ -n "$manifest" ] && echo true || echo false)}"
"""


@dataclass(frozen=True)
class QdrantBackupsArgs:
    """Arguments of `QdrantBackups`."""

    namespace: str
    cloud: Literal["aws", "gcp"]
    bucket_name: pulumi.Input[str]
    """Bucket receiving the snapshots (created here when `create_bucket`). An Output when it is derived from
    something only the cloud knows (the AWS account ID); a plain name is checked against the naming rules here."""
    qdrant_peer_urls: tuple[str, ...]
    """HTTP URL of every Qdrant node (QdrantCluster.peer_urls)."""
    qdrant_api_key_secret: str
    """Name of the Secret holding the Qdrant API key under `api-key` (QdrantCluster.api_key_secret_name)."""
    qdrant_target: EgressTarget | None = None
    """QdrantCluster.egress_target, for this job's NetworkPolicy."""
    schedule: str = "0 3 * * *"
    """Cron schedule, in UTC."""
    prefix: str = "qdrant"
    service_account_annotations: Mapping[str, str] = field(default_factory=dict)
    """IRSA role or GKE service account granting write access to the bucket."""
    create_bucket: bool = False
    bucket_namespace: Literal["account-regional"] | None = None
    """S3 only: create the bucket in the account's regional namespace (pulumi-aws `bucket_namespace`; the name
    must end in `-<account>-<region>-an`, and no other account can ever create it). None: the global namespace."""
    bucket_location: str | None = None
    """GCS location (required to create a GCS bucket)."""
    retention_days: int = 30
    """Delete backups (and old object versions) after this many days; 0 keeps them forever."""
    image: str | None = None
    """Override the default pinned cloud CLI image."""
    aws_region: str | None = None
    """AWS_REGION of the bucket (the IRSA webhook usually injects the cluster's region already)."""
    resources: Resources = field(
        default_factory=lambda: Resources(
            cpu_request="100m", memory_request="128Mi", cpu_limit="1", memory_limit="512Mi"
        )
    )
    restore_scratch_size: str = "10Gi"
    """Scratch volume of the on-demand restore job: one downloaded snapshot at a time, as large as a node's
    data (give it the Qdrant storage size)."""
    restore_scratch_storage_class: str | None = None
    node_data_bytes: float = 10 * 2**30
    """The most one Qdrant node holds (its storage size): sizes the per-snapshot transfer timeout and, with the
    number of nodes, the jobs' deadlines (a backup moves every node's data once, a restore twice)."""
    transfer_bytes_per_second: float = ASSUMED_TRANSFER_BYTES_PER_SECOND
    """The sustained rate the deadlines and the transfer timeout assume (`rag:backups.transferMiBps`)."""
    protect: bool = False
    force_destroy: bool = False
    """Let `pulumi destroy` delete a created bucket with everything in it (all versions). Non-prod only: it
    cannot be combined with `protect`. The providers read it from the state at delete time, so it takes effect
    after a `pulumi up` has recorded it."""
    network_policy: bool = True
    suspend: bool = False
    depends_on: tuple[pulumi.Resource, ...] = ()


def transfer_seconds(
    total_bytes: float, passes: int = 1, rate: float = ASSUMED_TRANSFER_BYTES_PER_SECOND
) -> int:
    """Seconds to move `total_bytes` `passes` times at `rate` bytes per second, with 50 % headroom."""
    return int(1.5 * passes * total_bytes / rate) + 1


def upload_memory_bytes(snapshot_bytes: float) -> int:
    """Memory the backup container needs to stream a snapshot of `snapshot_bytes` to S3 (see S3_IN_MEMORY_PARTS)."""
    part = max(S3_MIN_PART, -(-int(snapshot_bytes) // S3_MAX_PARTS))
    return S3_IN_MEMORY_PARTS * part + CLI_MEMORY


def backup_selector(name: str) -> dict[str, str]:
    """Labels of the backup job's pods (give them to QdrantClusterArgs.client_selectors)."""
    return specs.selector_labels(APP, name, "backup")


def validate_args(args: QdrantBackupsArgs) -> None:
    """Raise ComponentArgsError with a full sentence when the args cannot produce working backups."""
    specs.check_dns_label(args.namespace, "QdrantBackupsArgs.namespace")
    require(args.cloud in IMAGES, "QdrantBackupsArgs.cloud must be 'aws' or 'gcp'.")
    if isinstance(args.bucket_name, str):
        require(
            bool(_BUCKET.match(args.bucket_name)),
            f"QdrantBackupsArgs.bucket_name {args.bucket_name!r} is not a valid bucket name.",
        )
    if args.bucket_namespace is not None:
        require(
            args.cloud == "aws" and args.create_bucket,
            "QdrantBackupsArgs.bucket_namespace applies to an S3 bucket this component creates.",
        )
        if isinstance(args.bucket_name, str):
            require(
                args.bucket_name.endswith("-an"),
                f"QdrantBackupsArgs.bucket_name {args.bucket_name!r} must end in -<account>-<region>-an in the "
                "account regional namespace.",
            )
    require(
        len(args.qdrant_peer_urls) >= 1, "QdrantBackupsArgs.qdrant_peer_urls must list at least one node."
    )
    for url in args.qdrant_peer_urls:
        require(
            url.startswith(("http://", "https://")) and " " not in url,
            f"QdrantBackupsArgs.qdrant_peer_urls entry {url!r} must be an http(s) URL.",
        )
    require(
        bool(_CRON.match(args.schedule.strip())),
        f"QdrantBackupsArgs.schedule {args.schedule!r} is not a cron schedule.",
    )
    require(
        bool(re.match(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", args.prefix)),
        f"QdrantBackupsArgs.prefix {args.prefix!r} must be a relative object path without spaces.",
    )
    require(args.retention_days >= 0, "QdrantBackupsArgs.retention_days must not be negative.")
    require(
        not (args.protect and args.force_destroy),
        "QdrantBackupsArgs.force_destroy cannot be combined with protect: a protected bucket keeps its backups.",
    )
    if args.create_bucket and args.cloud == "gcp":
        require(
            args.bucket_location is not None,
            "QdrantBackupsArgs.bucket_location is required to create a GCS bucket.",
        )
    specs.check_quantity(args.restore_scratch_size, "QdrantBackupsArgs.restore_scratch_size")
    if args.image is not None:
        specs.check_image(args.image, "QdrantBackupsArgs.image")
    args.resources.validate("QdrantBackupsArgs.resources")


# ---------------------------------------------------------------------------------------------- pure specs
def destination(cloud: str, bucket: str, prefix: str) -> str:
    """Where backups land, e.g. s3://bucket/qdrant."""
    return f"{'s3' if cloud == 'aws' else 'gs'}://{bucket}/{prefix}"


def cronjob_spec(args: QdrantBackupsArgs, base: str, script_config: str) -> dict[str, Any]:
    """CronJob spec: one run at a time, bounded retries and runtime, restricted pod, script from the ConfigMap."""
    image = args.image or IMAGES[args.cloud]
    env = [
        {"name": "CLOUD", "value": args.cloud},
        {"name": "BUCKET", "value": args.bucket_name},
        {"name": "PREFIX", "value": args.prefix},
        {"name": "QDRANT_PEERS", "value": " ".join(args.qdrant_peer_urls)},
        {
            "name": "QDRANT_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": args.qdrant_api_key_secret, "key": "api-key"}},
        },
        # The CLIs keep caches/config under HOME; the root filesystem is read-only.
        {"name": "HOME", "value": "/tmp"},  # noqa: S108
        {"name": "CLOUDSDK_CONFIG", "value": "/tmp/gcloud"},  # noqa: S108
    ]
    # One snapshot (up to a node's data) per curl transfer; a value, so the script's timeout follows the sizes.
    env.append(
        {
            "name": "TRANSFER_MAX_SECONDS",
            "value": str(
                max(18000, transfer_seconds(args.node_data_bytes, rate=args.transfer_bytes_per_second))
            ),
        }
    )
    if args.aws_region is not None:
        env.append({"name": "AWS_REGION", "value": args.aws_region})
    container = {
        "name": "backup",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", f"/scripts/{SCRIPT_NAME}"],
        "env": env,
        "resources": specs.resources_spec(args.resources),
        "securityContext": specs.container_security_context(RUN_AS_USER, RUN_AS_USER),
        "volumeMounts": [
            {"name": "scripts", "mountPath": "/scripts", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
        ],
    }
    return {
        "schedule": args.schedule,
        "timeZone": "Etc/UTC",
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "suspend": args.suspend,
        "jobTemplate": {
            "metadata": {"labels": specs.labels(APP, base, "backup")},
            "spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": deadline_seconds(args, passes=1),
                "ttlSecondsAfterFinished": 7 * 24 * 3600,
                "template": {
                    "metadata": {"labels": specs.labels(APP, base, "backup")},
                    "spec": {
                        "serviceAccountName": base,
                        # IRSA projects its own token and GKE uses the metadata server: no API token needed.
                        "automountServiceAccountToken": False,
                        "restartPolicy": "Never",
                        "securityContext": specs.pod_security_context(RUN_AS_USER, RUN_AS_USER),
                        "containers": [container],
                        "volumes": [
                            {"name": "scripts", "configMap": {"name": script_config, "defaultMode": 0o555}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                        ],
                    },
                },
            },
        },
    }


def deadline_seconds(args: QdrantBackupsArgs, *, passes: int) -> int:
    """activeDeadlineSeconds of a job moving every node's data `passes` times (at least MIN_DEADLINE_SECONDS)."""
    total = args.node_data_bytes * len(args.qdrant_peer_urls)
    return max(MIN_DEADLINE_SECONDS, transfer_seconds(total, passes, args.transfer_bytes_per_second))


NONCURRENT_DAYS = 7
"""Days an overwritten or deleted object version is kept (the buckets are versioned) before it is removed."""


def s3_lifecycle_rules(args: QdrantBackupsArgs) -> list[dict[str, Any]]:
    """Expire snapshots under `prefix/` after the retention, and every noncurrent version bucket-wide.

    Only the snapshot prefix expires by age: the bucket also holds the CloudNativePG archive (`postgres/`), whose
    base backups and WAL barman-cloud deletes itself by its retention policy; an age rule there would delete the
    oldest base backup the recovery window still needs. Its deletes leave noncurrent versions, hence rule two.
    """
    rules: list[dict[str, Any]] = []
    if args.retention_days > 0:
        rules.append(
            {
                "id": "expire-old-backups",
                "status": "Enabled",
                "filter": {"prefix": f"{args.prefix}/"},
                "expiration": {"days": args.retention_days},
            }
        )
    rules.append(
        {
            "id": "expire-noncurrent-versions",
            "status": "Enabled",
            "filter": {"prefix": ""},
            "noncurrent_version_expiration": {"noncurrent_days": NONCURRENT_DAYS},
        }
    )
    return rules


def gcs_lifecycle_rules(args: QdrantBackupsArgs) -> list[dict[str, Any]]:
    """The GCS form of `s3_lifecycle_rules`: age expiry limited to `prefix/` (`matches_prefixes`)."""
    rules: list[dict[str, Any]] = []
    if args.retention_days > 0:
        rules.append(
            {
                "action": {"type": "Delete"},
                "condition": {"age": args.retention_days, "matches_prefixes": [f"{args.prefix}/"]},
            }
        )
    rules.append({"action": {"type": "Delete"}, "condition": {"days_since_noncurrent_time": NONCURRENT_DAYS}})
    return rules


NEVER = "0 0 31 2 *"
"""February 31st: the restore CronJob never fires; it is a template for `kubectl create job --from`."""


def restore_cronjob_spec(args: QdrantBackupsArgs, base: str, script_config: str) -> dict[str, Any]:
    """The restore job, suspended: run it with `kubectl create job --from=cronjob/<base>-restore <name>`.

    Same image, ServiceAccount, pod labels (so the same NetworkPolicies let it reach Qdrant and object storage)
    and Qdrant key as the backup job; `RESTORE_STAMP` (empty: the newest COMPLETE run) picks the run to restore,
    `RESTORE_NODES` (empty: all) the nodes, `RESTORE_ALLOW_PARTIAL=1` accepts a run without a manifest. Each
    snapshot is downloaded to a scratch ephemeral volume sized from the Qdrant storage, then uploaded to its node.
    """
    spec = cronjob_spec(args, base, script_config)
    spec["schedule"] = NEVER
    spec["suspend"] = True
    # Download to scratch, then upload to the node: every byte moves twice.
    spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] = deadline_seconds(args, passes=2)
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["name"] = "restore"
    container["command"] = ["/bin/bash", f"/scripts/{RESTORE_SCRIPT_NAME}"]
    container["env"] = [
        *container["env"],
        {"name": "SCRATCH", "value": "/scratch"},
        {"name": "RESTORE_STAMP", "value": ""},
        {"name": "RESTORE_NODES", "value": ""},
        {"name": "RESTORE_ALLOW_PARTIAL", "value": "0"},
    ]
    container["volumeMounts"] = [*container["volumeMounts"], {"name": "scratch", "mountPath": "/scratch"}]
    pod["volumes"] = [
        *pod["volumes"],
        {
            "name": "scratch",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": specs.labels(APP, base, "restore")},
                    "spec": specs.pvc_spec(args.restore_scratch_size, args.restore_scratch_storage_class),
                }
            },
        },
    ]
    return spec


def network_policy_spec(args: QdrantBackupsArgs, match: Mapping[str, str]) -> dict[str, Any]:
    """No ingress; out to DNS, Qdrant, and HTTPS/metadata endpoints (object storage, STS, workload identity)."""
    egress = [specs.dns_egress_rule()]
    if args.qdrant_target is not None:
        egress.append(specs.egress_rule(args.qdrant_target))
    # Object storage and the cloud token endpoints have no fixed addresses: ports only.
    egress.append({"ports": specs.tcp_ports((443, 80, 988))})
    return specs.network_policy_spec(match, ingress=[], egress=egress)


# ---------------------------------------------------------------------------------------------- component
class QdrantBackups(pulumi.ComponentResource):
    """A CronJob snapshotting every Qdrant collection to S3/GCS, and optionally the bucket."""

    bucket_name: pulumi.Output[str]
    destination: pulumi.Input[str]
    """s3://<bucket>/<prefix> or gs://<bucket>/<prefix> (an Output when the bucket name is one)."""
    cronjob_name: str
    selector_labels: dict[str, str]

    def __init__(
        self, name: str, args: QdrantBackupsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        validate_args(args)
        super().__init__("rag:ops:QdrantBackups", name, None, opts)
        ns = args.namespace
        base = name
        specs.check_dns_label(base, "QdrantBackups name")
        object_labels = specs.labels(APP, base, "backup")
        match = backup_selector(base)

        def child(
            *, protect: bool = False, extra: tuple[pulumi.Resource, ...] = ()
        ) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, protect=protect, depends_on=[*args.depends_on, *extra])

        bucket: pulumi.Output[str] = pulumi.Output.from_input(args.bucket_name)
        if args.create_bucket:
            bucket = (
                self._aws_bucket(name, args, child)
                if args.cloud == "aws"
                else self._gcs_bucket(name, args, child)
            )

        # The jobs write to the bucket as it is (its name from the state, see _aws_bucket), and wait for it.
        jobs_args = replace(args, bucket_name=bucket) if args.create_bucket else args
        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=specs.metadata(base, ns, object_labels, args.service_account_annotations),
            opts=child(),
        )
        script_config = f"{base}-script"
        script = k8s.core.v1.ConfigMap(
            f"{name}-script",
            metadata=specs.metadata(script_config, ns, object_labels),
            data={SCRIPT_NAME: BACKUP_SCRIPT, RESTORE_SCRIPT_NAME: RESTORE_SCRIPT},
            opts=child(),
        )
        k8s.batch.v1.CronJob(
            f"{name}-cronjob",
            metadata=specs.metadata(base, ns, object_labels),
            spec=cronjob_spec(jobs_args, base, script_config),
            # Its pods mount the script ConfigMap and run as the ServiceAccount, both by name.
            opts=child(extra=(service_account, script)),
        )
        k8s.batch.v1.CronJob(
            f"{name}-restore",
            metadata=specs.metadata(f"{base}-restore", ns, object_labels),
            spec=restore_cronjob_spec(jobs_args, base, script_config),
            opts=child(extra=(service_account, script)),
        )
        if args.network_policy:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-netpol",
                metadata=specs.metadata(base, ns, object_labels),
                spec=network_policy_spec(args, match),
                opts=child(),
            )

        self.bucket_name = bucket
        self.destination = (
            destination(args.cloud, args.bucket_name, args.prefix)
            if isinstance(args.bucket_name, str)
            else pulumi.Output.from_input(args.bucket_name).apply(
                lambda bucket_name: destination(args.cloud, bucket_name, args.prefix)
            )
        )
        self.cronjob_name = base
        self.selector_labels = match
        self.register_outputs({"bucketName": bucket, "destination": self.destination})

    def _aws_bucket(self, name: str, args: QdrantBackupsArgs, child: Any) -> pulumi.Output[str]:
        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket=args.bucket_name,
            bucket_namespace=args.bucket_namespace,
            force_destroy=args.force_destroy,
            # A bucket created under an earlier default name (the stack and region only) is kept, never replaced:
            # a replacement would delete it with its backups outside prod (force_destroy) and stop prod's `up`.
            # New stacks get the name the stack derives; every consumer reads the name from the bucket.
            opts=pulumi.ResourceOptions.merge(
                child(protect=args.protect),
                pulumi.ResourceOptions(ignore_changes=["bucket", "bucket_namespace"]),
            ),
        )
        aws.s3.BucketVersioning(
            f"{name}-bucket-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child(),
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-bucket-encryption",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms"},
                    "bucket_key_enabled": True,
                }
            ],
            opts=child(),
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-bucket-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child(),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-bucket-lifecycle",
            bucket=bucket.id,
            rules=s3_lifecycle_rules(args),
            opts=child(),
        )
        return bucket.bucket

    def _gcs_bucket(self, name: str, args: QdrantBackupsArgs, child: Any) -> pulumi.Output[str]:
        bucket = gcp.storage.Bucket(
            f"{name}-bucket",
            name=args.bucket_name,
            location=args.bucket_location,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning={"enabled": True},
            lifecycle_rules=gcs_lifecycle_rules(args),
            force_destroy=args.force_destroy,
            opts=child(protect=args.protect),
        )
        return bucket.name
