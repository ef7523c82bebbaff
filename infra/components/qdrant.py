"""`QdrantCluster` (`rag:data:QdrantCluster`): a Qdrant cluster as our own StatefulSet.

Why our own StatefulSet rather than the official qdrant Helm chart: a Helm release is opaque to the offline
checks (its manifests only exist once Helm renders them against a cluster), while these typed Kubernetes resources
render to plain manifests that `kubernetes-validate` and the policy pack check without a cluster; and we get full
control of the parts that matter for a stateful service: the PodDisruptionBudget, required anti-affinity plus zone
spread, the restricted security context and read-only root filesystem, and how the API key reaches the pods.
The trade-off: upgrades of the chart's defaults (new config keys, probe changes, the updater hook) do not come for
free; we follow Qdrant's release notes ourselves and pin the image version here.

Creates: ServiceAccount (no token), the API-key Secret, a headless Service (peer DNS, p2p port 6335, publishes
not-ready pods so peers can bootstrap) and a client Service (6333 HTTP, 6334 gRPC), the StatefulSet (cluster mode,
a PVC per pod; see `bootstrap_script` for how a node starts: only the first creation founds the consensus, a node
without state joins any live peer), two ConfigMaps the bootstrap reads (node count; a `founded` marker created once
the StatefulSet first became ready), a PDB when replicas > 1, a NetworkPolicy (clients + peers + Prometheus in,
DNS + peers out) and optionally a ServiceMonitor.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra.components import prometheus_operator, specs
from infra.components.specs import EgressTarget, Resources, require

APP = "qdrant"
DEFAULT_IMAGE = "qdrant/qdrant:v1.19.0-unprivileged"
"""Within qdrant-client 1.20's window (server minor within one of the client's; the service pins the client)."""
HTTP_PORT = 6333
GRPC_PORT = 6334
P2P_PORT = 6335
PORTS = {"http": HTTP_PORT, "grpc": GRPC_PORT, "p2p": P2P_PORT}
"""Named ports of every node, in the order the container and the headless Service list them."""
RUN_AS_USER = 1000
FS_GROUP = 3000
API_KEY_KEY = "api-key"
ALT_API_KEY_KEY = "alt-api-key"
ALT_API_KEY_SINCE = (1, 17)
"""The first Qdrant minor with `service.alt_api_key` (qdrant/qdrant#7835, in v1.17.0)."""
KEYS_ANNOTATION = "rag.platform/api-keys-hmac-sha256"
"""On the pod template: an HMAC of the keys, so a key change restarts the nodes (one at a time). Qdrant reads its
keys from the environment at start, and a Secret change alone restarts nothing: without it a rotated key reached
only the clients, which the unrestarted nodes then refused. Keyed with a random salt kept secret in the stack's state:
pod templates are readable by more people than Secrets, and a plain hash of a user-chosen key can be brute-forced
offline."""
SCRAPE_LABEL = {"rag.platform/scrape": "true"}
"""Only on the client Service, so the ServiceMonitor does not scrape every node twice (headless + client)."""


@dataclass(frozen=True)
class QdrantClusterArgs:
    """Arguments of `QdrantCluster`."""

    namespace: str
    api_key: pulumi.Input[str]
    """API key required on every request (a Pulumi secret)."""
    alt_api_key: pulumi.Input[str] | None = None
    """A second key every node accepts as well (Qdrant's `alt_api_key`, Qdrant >= 1.17): a rotation adds the new key
    here first, so no client is refused while the nodes restart one at a time (docs/runbooks.md)."""
    replicas: int = 1
    """Qdrant nodes (StatefulSet pods); production uses 3."""
    replication_factor: int = 1
    """Replication factor the service uses for new collections (QDRANT_REPLICATION_FACTOR); <= replicas."""
    shard_number: int = 1
    """Shards per collection the service creates (QDRANT_SHARD_NUMBER): spread over the nodes, so more shards
    than nodes lets a later scale-out move shards instead of re-creating collections."""
    image: str = DEFAULT_IMAGE
    """Pinned image; the -unprivileged variant runs as UID 1000."""
    storage_size: str = "10Gi"
    storage_class: str | None = None
    """StorageClass of the data PVCs; None uses the cluster default."""
    snapshots_size: str | None = None
    """Size of each node's snapshot scratch volume (a generic ephemeral volume: a PVC living as long as the pod),
    or None for no such volume: snapshots and Qdrant's temp files then go to a directory of the data volume.
    Only the backup and restore jobs take snapshots, so only a stack with backups needs the volume (the program
    passes None otherwise). A snapshot of a node is about as large as the node's data, and a restore keeps the
    uploaded snapshot and its unpacked copy side by side, so give it twice `storage_size` when backups run; an
    emptyDir would come out of the node's disk and get the pod evicted past its limit."""
    snapshots_storage_class: str | None = None
    """StorageClass of the snapshot volume; None uses the cluster default."""
    resources: Resources = field(
        default_factory=lambda: Resources(
            cpu_request="500m", memory_request="1Gi", cpu_limit="2", memory_limit="2Gi"
        )
    )
    volume_replaced_from: str = ""
    """The `size[/class]` of the deployed StatefulSet's volume template while `storage_size` / `storage_class` name
    new ones (`rag:qdrant.storage.replaceFrom`, docs/runbooks.md#growing-a-statefulsets-volume): recorded on the
    StatefulSet as `rag.platform/volume-replaced-from`. "": none."""
    scale_down_acknowledged: int | None = None
    """The replica count an operator scaled down to by the runbook (shards moved off the removed nodes, their peers
    removed), recorded on the StatefulSet as `rag.platform/scale-down-acknowledged`; None when there was none."""
    anti_affinity: Literal["required", "preferred"] = "required"
    """`required`: never two nodes of the cluster on one Kubernetes node."""
    protect: bool = False
    """Protect the StatefulSet and the `founded` marker from `pulumi destroy` (prod: True). Not the API-key Secret:
    a key rotation replaces it."""
    namespace_deleted_after: bool = True
    """The stack deletes the namespace after the StatefulSet (`rag:namespaceMode: create`), which ends the pods a
    delete of the StatefulSet orphaned: its delete may then keep the pods (`REPLACE_KEEPS_PODS`, a replace without
    an outage). False (a namespace the stack does not delete, `patch`/`existing`): nothing would end orphaned pods,
    and a `pulumi destroy` left every Qdrant node running in the namespace, so the delete is foreground (a replace
    then restarts every node at once, docs/runbooks.md#growing-a-statefulsets-volume), unless `protect`
    (`keeps_pods_on_delete`)."""
    claims_deleted_with_statefulset: bool = False
    """The data claims go with the StatefulSet (`specs.claim_retention`): a throwaway stack (a PR stack) in a
    namespace it does not delete, where the next stack there would otherwise start on this one's data."""
    pdb: bool = True
    """Create a PodDisruptionBudget (at most one node evicted at a time) when there is more than one node."""
    network_policy: bool = True
    client_selectors: tuple[Mapping[str, str], ...] = ()
    """Pod label selectors (same namespace) allowed to call Qdrant (the service, the backup job)."""
    monitoring_namespace: str | None = "monitoring"
    service_monitor: bool = False
    monitoring_crds: tuple[pulumi.Resource, ...] = ()
    monitor_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels the cluster's Prometheus selects monitors by (`Monitoring.monitor_labels`; mode `existing`)."""
    depends_on: tuple[pulumi.Resource, ...] = ()


def validate_args(args: QdrantClusterArgs) -> None:
    """Raise ComponentArgsError with a full sentence when the args cannot form a working cluster."""
    specs.check_dns_label(args.namespace, "QdrantClusterArgs.namespace")
    specs.check_image(args.image, "QdrantClusterArgs.image")
    require(1 <= args.replicas <= 32, "QdrantClusterArgs.replicas must be between 1 and 32.")
    require(
        1 <= args.replication_factor <= args.replicas,
        "QdrantClusterArgs.replication_factor must be at least 1 and at most replicas "
        f"({args.replicas}): each copy of a shard lives on a different node.",
    )
    require(1 <= args.shard_number <= 64, "QdrantClusterArgs.shard_number must be between 1 and 64.")
    require(
        args.scale_down_acknowledged in (None, args.replicas),
        "QdrantClusterArgs.scale_down_acknowledged must be None or equal to replicas: it records a scale-down to "
        "the current count.",
    )
    specs.check_quantity(args.storage_size, "QdrantClusterArgs.storage_size")
    if args.snapshots_size is not None:
        specs.check_quantity(args.snapshots_size, "QdrantClusterArgs.snapshots_size")
    args.resources.validate("QdrantClusterArgs.resources")
    version = image_version(args.image)
    require(
        args.alt_api_key is None
        or (version is not None and tuple(int(v) for v in version.split(".")[:2]) >= ALT_API_KEY_SINCE),
        f"QdrantClusterArgs.alt_api_key needs Qdrant >= 1.17 (service.alt_api_key); {args.image} has none: upgrade "
        "Qdrant first (docs/infra.md#upgrading-qdrant).",
    )
    require(
        args.anti_affinity in ("required", "preferred"),
        "QdrantClusterArgs.anti_affinity must be 'required' or 'preferred'.",
    )
    require(
        not (args.network_policy and not args.client_selectors),
        "QdrantClusterArgs.client_selectors must name at least one client when network_policy is on, "
        "or nothing could reach Qdrant.",
    )


# ---------------------------------------------------------------------------------------------- pure specs
def headless_name(base: str) -> str:
    """Name of the headless Service that gives each pod a stable DNS name."""
    return f"{base}-headless"


def peer_host(base: str, namespace: str, index: int | str) -> str:
    """DNS name of pod `index`: <base>-<i>.<base>-headless.<namespace>.svc (`index` may be a shell variable)."""
    return f"{base}-{index}.{headless_name(base)}.{namespace}.svc"


BOOTSTRAP_DIR = "/qdrant/bootstrap"
"""Where each pod sees the bootstrap ConfigMap (`peers`) and, once the cluster has formed, the `founded` marker."""
FOUND_OVERRIDE = ".found-new-cluster"
"""A file an operator creates in pod 0's storage volume to found a NEW, empty cluster on purpose (every volume
lost, restore from backup next): the only way to found one once the cluster has formed."""


def bootstrap_script(base: str, namespace: str) -> str:
    """How a node starts, so that only the first creation of the cluster founds a Raft consensus.

    A node with Raft state (`raft_state.json` past term 0 in its storage) starts at once: Qdrant recovers the consensus from
    it and ignores `--bootstrap`/`--uri`, so a whole-cluster restart never waits on peers. A node without state
    (first creation, or a new/lost volume) joins the cluster through ANY peer whose `/readyz` answers 200 (Qdrant
    accepts a bootstrap through any live member: qdrant/qdrant#4899). Only when no peer answers may pod 0 found a
    new consensus, and only if the cluster has never formed: the `founded` marker (a ConfigMap the program
    creates after the StatefulSet first became ready) is absent, the cluster has one node, or an operator asked
    for it (`.found-new-cluster` in pod 0's storage). Otherwise the node waits, saying why, until a peer answers:
    without this, pod 0 on an empty volume founded a second, empty cluster behind the same Service.

    The QDRANT_BOOTSTRAP_* variables only exist for tests (stand-in peers on loopback addresses, a bounded wait).
    """
    host = peer_host(base, namespace, "%s")
    return f"""set -eu
INDEX="${{HOSTNAME##*-}}"
STORAGE="${{QDRANT__STORAGE__STORAGE_PATH:-/qdrant/storage}}"
DIR="${{QDRANT_BOOTSTRAP_DIR:-{BOOTSTRAP_DIR}}}"
HOST_PATTERN="${{QDRANT_BOOTSTRAP_PEER_HOST:-{host}}}"
PROBE_PORT="${{QDRANT_BOOTSTRAP_PROBE_PORT:-{HTTP_PORT}}}"
WAIT_SECONDS="${{QDRANT_BOOTSTRAP_WAIT_SECONDS:-5}}"
MAX_ROUNDS="${{QDRANT_BOOTSTRAP_MAX_ROUNDS:-0}}"
# shellcheck disable=SC2059 # the pattern is the format: one %s for the ordinal
host() {{ printf "$HOST_PATTERN" "$1"; }}
p2p() {{ printf 'http://%s:{P2P_PORT}' "$(host "$1")"; }}
log() {{ printf '{{"event":"qdrant_bootstrap","node":%s,"action":"%s","detail":"%s"}}\\n' "$INDEX" "$1" "$2"; }}
# A peer counts when its /readyz says 200: it is a member of a formed cluster that has caught up.
ready() {{
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "GET /readyz HTTP/1.0\\r\\n\\r\\n" >&3 &&
    IFS= read -r status <&3 && case "$status" in "HTTP/1."?" 200"*) exit 0 ;; esac; exit 1' \\
    "$(host "$1")" "$PROBE_PORT" 2>/dev/null
}}
# raft_state.json without its whitespace, so the greps below match however the file is laid out (Qdrant writes it
# compact, but a pretty-printed file would make every check skip itself). No value they read holds a space.
raft_json() {{ tr -d ' \\t\\r\\n' < "$STORAGE/raft_state.json"; }}
# Raft state that counts: a legacy CBOR `raft_state`, or a JSON one past term 0. Qdrant writes the file BEFORE it
# bootstraps, so a node whose join failed (e.g. its URI still registered to a dead peer) has a term-0 file and
# would, started without --bootstrap, found a cluster of its own (Consensus::new: is_new_deployment = term 0).
has_state() {{
  [ -e "$STORAGE/raft_state" ] && return 0
  [ -e "$STORAGE/raft_state.json" ] && ! raft_json | grep -q '"hard_state":{{"term":0,'
}}
case "$INDEX" in ''|*[!0-9]*) echo "HOSTNAME $HOSTNAME does not end in a pod ordinal" >&2; exit 1 ;; esac
if has_state; then
  # Qdrant keeps storage compatible across ONE minor version: a node must not start more than one minor ahead
  # of any peer version its Raft state records (peer_metadata_by_id: {{"<id>": {{"version": "1.15.4"}}}}).
  if [ -n "${{QDRANT_IMAGE_VERSION:-}}" ] && [ -e "$STORAGE/raft_state.json" ]; then
    target="$(printf '%s' "$QDRANT_IMAGE_VERSION" | cut -d. -f1,2)"
    for seen in $(raft_json | grep -o '"version":"[0-9]*[.][0-9]*[.][0-9]*' | cut -d'"' -f4 | sort -u); do
      if [ "${{seen%%.*}}" = "${{target%%.*}}" ] && [ $(( ${{target#*.}} - $(printf '%s' "$seen" | cut -d. -f2) )) -gt 1 ]; then
        log refuse "image $QDRANT_IMAGE_VERSION is more than one minor ahead of Qdrant $seen in this cluster; upgrade one minor at a time (docs/infra.md#upgrading-qdrant)"
        exit 1
      fi
    done
    # Nor an older minor than this node's own storage last ran (its entry under this_peer_id): Qdrant migrates
    # storage forward only and supports no downgrade. Peers that never ran the newer minor may go back.
    own="$(raft_json | grep -o '"this_peer_id":[0-9]*' | cut -d: -f2)"
    last="$(raft_json | grep -o "\\"${{own:-none}}\\":{{\\"version\\":\\"[0-9]*[.][0-9]*[.][0-9]*" | cut -d'"' -f6)"
    if [ -n "$last" ]; then
      # major.minor as one number, e.g. 1.19 -> 1019
      ran=$(( ${{last%%.*}} * 1000 + $(printf '%s' "$last" | cut -d. -f2) ))
      if [ "$ran" -gt $(( ${{target%%.*}} * 1000 + ${{target#*.}} )) ]; then
        log refuse "image $QDRANT_IMAGE_VERSION is older than Qdrant $last, which last ran on this node's storage; Qdrant does not support a downgrade: set the version back, or restore a backup into a cluster of the old version (docs/infra.md#upgrading-qdrant)"
        exit 1
      fi
    fi
  fi
  log restart "local Raft state found"
  if [ "$INDEX" = "0" ]; then exec ./entrypoint.sh --uri "$(p2p 0)"; fi
  exec ./entrypoint.sh --bootstrap "$(p2p 0)" --uri "$(p2p "$INDEX")"
fi
PEERS="$(cat "$DIR/peers" 2>/dev/null || echo 32)"
case "$PEERS" in ''|*[!0-9]*) PEERS=32 ;; esac
round=0
while :; do
  i=0
  while [ "$i" -lt "$PEERS" ]; do
    if [ "$i" != "$INDEX" ] && ready "$i"; then
      log join "no local Raft state: joining the cluster through node $i"
      exec ./entrypoint.sh --bootstrap "$(p2p "$i")" --uri "$(p2p "$INDEX")"
    fi
    i=$((i + 1))
  done
  if [ "$INDEX" = "0" ]; then
    if [ -e "$STORAGE/{FOUND_OVERRIDE}" ]; then
      rm -f "$STORAGE/{FOUND_OVERRIDE}"
      log found "an operator asked for a new, empty cluster ({FOUND_OVERRIDE})"
      exec ./entrypoint.sh --uri "$(p2p 0)"
    elif [ ! -e "$DIR/founded" ]; then
      log found "first creation: no peer answers and the cluster has never formed"
      exec ./entrypoint.sh --uri "$(p2p 0)"
    elif [ "$PEERS" = "1" ]; then
      log found "single-node cluster with an empty volume: its data is gone, starting empty"
      exec ./entrypoint.sh --uri "$(p2p 0)"
    fi
  fi
  round=$((round + 1))
  log wait "no local Raft state and no peer of $PEERS answers /readyz; never founding a second cluster (docs/runbooks.md#replace-a-qdrant-node)"
  if [ "$MAX_ROUNDS" != "0" ] && [ "$round" -ge "$MAX_ROUNDS" ]; then exit 1; fi
  sleep "$WAIT_SECONDS"
done
"""


def image_version(image: str) -> str | None:
    """The Qdrant version of an image tagged like Qdrant's releases (`qdrant/qdrant:v1.19.0-unprivileged`)."""
    match = re.search(r":v?([0-9]+\.[0-9]+\.[0-9]+)(-unprivileged)?$", image)
    return match.group(1) if match else None


def image_version_env(image: str) -> list[dict[str, str]]:
    """QDRANT_IMAGE_VERSION for `bootstrap_script`'s one-minor-at-a-time check; none for an image of another tag."""
    version = image_version(image)
    return [] if version is None else [{"name": "QDRANT_IMAGE_VERSION", "value": version}]


STORAGE_PATH = "/qdrant/storage"
SNAPSHOTS_VOLUME_PATH = "/qdrant/snapshots"
"""Where the snapshot scratch volume is mounted (QdrantClusterArgs.snapshots_size set)."""
SNAPSHOTS_ON_DATA_PATH = f"{STORAGE_PATH}/snapshots"
"""Snapshots without a scratch volume: a directory of the data volume (Qdrant reads only `collections/`,
`aliases/` and its Raft files there), never the read-only root filesystem."""


def snapshots_path(args: QdrantClusterArgs) -> str:
    """Qdrant's snapshots path: the scratch volume when there is one, else a directory of the data volume."""
    return SNAPSHOTS_VOLUME_PATH if args.snapshots_size is not None else SNAPSHOTS_ON_DATA_PATH


def container_spec(args: QdrantClusterArgs, base: str, secret_name: str) -> dict[str, Any]:
    """The Qdrant container: cluster mode env, API key from the Secret, probes, restricted security."""
    snapshots = snapshots_path(args)
    env = [
        {"name": "QDRANT__CLUSTER__ENABLED", "value": "true"},
        {"name": "QDRANT__CLUSTER__P2P__PORT", "value": str(P2P_PORT)},
        {"name": "QDRANT__STORAGE__STORAGE_PATH", "value": STORAGE_PATH},
        {"name": "QDRANT__STORAGE__SNAPSHOTS_PATH", "value": snapshots},
        # Snapshot assembly and snapshot uploads (restore) write temporary files: keep them on the snapshot
        # volume, not on the data volume (default storage/snapshots_temp, which a full data disk cannot take).
        {"name": "QDRANT__STORAGE__TEMP_PATH", "value": f"{snapshots}/tmp"},  # noqa: S108
        {"name": "QDRANT__TELEMETRY_DISABLED", "value": "true"},
        {"name": "QDRANT_INIT_FILE_PATH", "value": "/qdrant/init/.qdrant-initialized"},
        *image_version_env(args.image),
        {
            "name": "QDRANT__SERVICE__API_KEY",
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": API_KEY_KEY}},
        },
    ]
    if args.alt_api_key is not None:
        env.append(
            {
                "name": "QDRANT__SERVICE__ALT_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": secret_name, "key": ALT_API_KEY_KEY}},
            }
        )
    return {
        "name": "qdrant",
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", "-c"],
        "args": [bootstrap_script(base, args.namespace)],
        "env": env,
        "ports": [specs.container_port(port_name, port) for port_name, port in PORTS.items()],
        # Health endpoints need no API key. Loading large collections at start can take minutes.
        "startupProbe": specs.http_probe("/livez", HTTP_PORT, period=10, timeout=3, failures=60),
        "livenessProbe": specs.http_probe("/livez", HTTP_PORT, period=10, timeout=3, failures=6),
        "readinessProbe": specs.http_probe("/readyz", HTTP_PORT, period=5, timeout=3, failures=3),
        "resources": specs.resources_spec(args.resources),
        "securityContext": specs.container_security_context(RUN_AS_USER, FS_GROUP),
        "volumeMounts": [
            {"name": "storage", "mountPath": STORAGE_PATH},
            *(
                [{"name": "snapshots", "mountPath": SNAPSHOTS_VOLUME_PATH}]
                if args.snapshots_size is not None
                else []
            ),
            {"name": "init", "mountPath": "/qdrant/init"},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
            {"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": True},
        ],
    }


def bootstrap_config_name(base: str) -> str:
    """ConfigMap with the cluster's node count (`peers`), read by `bootstrap_script` at each start."""
    return f"{base}-bootstrap"


FOUNDED_DATA = {
    "founded": "The Qdrant cluster has formed: a node without Raft state joins a running peer and never "
    "founds a new cluster (docs/runbooks.md#replace-a-qdrant-node)."
}
"""The `founded` marker's data. Fixed: the marker stays protected in prod (deleting it, e.g. by a `pulumi destroy`
that stops at the protected StatefulSet after deleting its dependents, would let pod 0 on an empty volume found a
second cluster), and pulumi-kubernetes replaces a ConfigMap whose data changes (enableConfigMapMutable off),
which the engine refuses for a protected resource: an edited text would stop every prod `up`. Only its existence
is read (bootstrap_script)."""


def founded_config_name(base: str) -> str:
    """ConfigMap whose existence says the cluster has formed; created after the StatefulSet first became ready."""
    return f"{base}-founded"


def bootstrap_volume(base: str) -> dict[str, Any]:
    """Both bootstrap ConfigMaps in one directory; `founded` is optional (absent until the cluster first formed).

    A ConfigMap volume follows later changes of its ConfigMaps without restarting the pod, so a new node count or
    the marker's creation reaches running pods (the script reads them when the container starts)."""
    return {
        "name": "bootstrap",
        "projected": {
            "sources": [
                {"configMap": {"name": bootstrap_config_name(base)}},
                {"configMap": {"name": founded_config_name(base), "optional": True}},
            ]
        },
    }


def snapshots_volume(args: QdrantClusterArgs, match: Mapping[str, str]) -> list[dict[str, Any]]:
    """The snapshot scratch volume (a PVC that lives and dies with the pod), when the stack takes snapshots."""
    if args.snapshots_size is None:
        return []
    return [
        {
            "name": "snapshots",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": dict(match)},
                    "spec": specs.pvc_spec(args.snapshots_size, args.snapshots_storage_class),
                }
            },
        }
    ]


def keys_digest(api_key: str, alt_api_key: str | None, salt: str) -> str:
    """The pod template's KEYS_ANNOTATION: HMAC-SHA256 over both keys, keyed with the stack's secret salt. Without
    the salt (in the state only, as a secret) it says nothing about the keys, whether random or chosen by hand."""
    return hmac.new(salt.encode(), f"{api_key}\0{alt_api_key or ''}".encode(), hashlib.sha256).hexdigest()


def statefulset_spec(
    args: QdrantClusterArgs, base: str, secret_name: str, keys_sha256: pulumi.Input[str] | None = None
) -> dict[str, Any]:
    """StatefulSet spec: parallel start (peers wait for pod 0 themselves), a PVC template, spread and anti-affinity."""
    match = specs.selector_labels(APP, base, "vector-store")
    pod_labels = specs.labels(APP, base, "vector-store")
    return {
        "replicas": args.replicas,
        "serviceName": headless_name(base),
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "selector": {"matchLabels": dict(match)},
        "persistentVolumeClaimRetentionPolicy": specs.claim_retention(args.claims_deleted_with_statefulset),
        "template": {
            "metadata": {
                "labels": pod_labels,
                **({"annotations": {KEYS_ANNOTATION: keys_sha256}} if keys_sha256 is not None else {}),
            },
            "spec": {
                "serviceAccountName": base,
                "automountServiceAccountToken": False,
                "securityContext": specs.pod_security_context(RUN_AS_USER, FS_GROUP),
                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                "affinity": specs.pod_anti_affinity(match, required=args.anti_affinity == "required"),
                "topologySpreadConstraints": specs.topology_spread(match)[:1],
                "containers": [container_spec(args, base, secret_name)],
                "volumes": [
                    *snapshots_volume(args, match),
                    {"name": "init", "emptyDir": {"sizeLimit": "1Mi"}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    bootstrap_volume(base),
                ],
            },
        },
        "volumeClaimTemplates": [
            specs.volume_claim_template("storage", match, args.storage_size, args.storage_class)
        ],
    }


SCALE_DOWN_ANNOTATION = "rag.platform/scale-down-acknowledged"
REPLACE_KEEPS_PODS = {"pulumi.com/deletionPropagationPolicy": "orphan"}
"""On the StatefulSet: when Pulumi deletes the object, its pods (and their PVCs) are left running instead of being
deleted with it (pulumi-kubernetes reads the annotation from the OLD state's inputs when it deletes, so it acts from
the `up` after the one that first records it; the default is a foreground delete, which waits for every pod to go).
Pulumi deletes it for a replace: `spec.volumeClaimTemplates` (a new `rag:qdrant.storage.size` or `storageClass`) is
immutable, so pulumi-kubernetes replaces the StatefulSet, delete first (a named object). With a foreground delete
every node went down at once for the replace; orphaned, they keep serving and the new StatefulSet, with the same
selector and pod template, adopts them without a restart. It never deletes a pod otherwise: the program only deletes
the StatefulSet in a `pulumi destroy`, which then deletes (and waits for) the namespace and with it the pods. Only
when the stack deletes that namespace, or the StatefulSet is protected (`keeps_pods_on_delete`): in a namespace it
keeps, an unprotected one's pods outlived the destroy (the StatefulSet controller had handed them over to no one)."""


TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"
"""How long pulumi-kubernetes waits for the StatefulSet to be ready after a create or update (`await.Update`: a
resource's customTimeouts, else this annotation, else 10 minutes)."""
TERMINATION_GRACE_SECONDS = 60


def rollout_timeout_seconds(args: QdrantClusterArgs, base: str = APP) -> int:
    """The StatefulSet's await timeout: a rolling update restarts the nodes one at a time, and each may take its
    grace period to stop, then the startup probe's whole budget (a node loading large collections) and its first
    ready answers. Pulumi's default (10 minutes) is less than one node's budget: a version or resources change on a
    big prod cluster failed the `up` ("timed out waiting" on the StatefulSet) while the rollout went on, and every
    client waiting on the StatefulSet (the service) was left out of that `up`."""
    container = container_spec(args, base, f"{base}-api-key")
    startup, ready = container["startupProbe"], container["readinessProbe"]
    node = (
        TERMINATION_GRACE_SECONDS
        + startup["periodSeconds"] * startup["failureThreshold"]
        + ready["periodSeconds"] * ready["failureThreshold"]
    )
    return max(600, args.replicas * node)


def keeps_pods_on_delete(args: QdrantClusterArgs) -> bool:
    """Whether Pulumi's delete of the StatefulSet orphans its pods (`REPLACE_KEEPS_PODS`). pulumi-kubernetes reads
    the annotation from the old state for every delete, a replace's and a destroy's alike (provider.go `Delete` ->
    await.go `Deletion`), so the choice is per stack, not per operation:
    - the stack deletes the namespace after the StatefulSet (`create`): orphan. A replace keeps the nodes serving,
      a destroy ends the pods with the namespace.
    - a kept namespace (`patch`/`existing`), protected (prod): orphan. The engine deletes a protected resource in
      no operation (a replace is refused like a destroy), so a delete only follows a deliberate
      `pulumi state unprotect`: for a volume grow (docs/runbooks.md#growing-a-statefulsets-volume), where a
      foreground delete took every prod node down at once, or for a final destroy, whose runbook step deletes the
      pods with the claims (docs/operations.md#deploying-into-a-namespace-the-platform-team-owns).
    - a kept namespace, unprotected: foreground. A plain `pulumi destroy` (a PR stack's reaper) must not leave
      the nodes running there; a replace restarts every node at once (dev/staging, or let it go by hand first)."""
    return args.namespace_deleted_after or args.protect


def statefulset_metadata(args: QdrantClusterArgs, base: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The StatefulSet's metadata: a replace keeps its pods (`REPLACE_KEEPS_PODS`, `keeps_pods_on_delete`), Pulumi
    waits for a rollout as long as the nodes' probes allow (`rollout_timeout_seconds`), and it records an
    acknowledged scale-down (who reads the object sees it was planned)."""
    keep_pods = REPLACE_KEEPS_PODS if keeps_pods_on_delete(args) else {}
    annotations = {**keep_pods, TIMEOUT_ANNOTATION: str(rollout_timeout_seconds(args, base))}
    if args.volume_replaced_from:
        annotations[specs.VOLUME_REPLACED_ANNOTATION] = specs.volume_replaced_note(args.volume_replaced_from)
    if args.scale_down_acknowledged is not None:
        annotations[SCALE_DOWN_ANNOTATION] = (
            f"{args.scale_down_acknowledged} (docs/runbooks.md#scale-qdrant-down)"
        )
    return specs.metadata(base, args.namespace, labels, annotations)


def headless_service_spec(match: Mapping[str, str]) -> dict[str, Any]:
    """Headless Service: per-pod DNS for p2p; not-ready pods are published so peers can bootstrap."""
    return {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": dict(match),
        "ports": [specs.service_port(port_name, port) for port_name, port in PORTS.items()],
    }


def client_service_spec(match: Mapping[str, str]) -> dict[str, Any]:
    """ClusterIP Service the clients use (HTTP and gRPC)."""
    return {
        "type": "ClusterIP",
        "selector": dict(match),
        "ports": [specs.service_port("http", HTTP_PORT), specs.service_port("grpc", GRPC_PORT)],
    }


def network_policy_spec(args: QdrantClusterArgs, match: Mapping[str, str]) -> dict[str, Any]:
    """Clients on 6333/6334, peers on all three ports, Prometheus on 6333; out only to DNS and peers."""
    peers = [specs.pod_peer(match)]
    clients = specs.pod_peers(args.client_selectors)
    ingress = [
        specs.ingress_rule([HTTP_PORT, GRPC_PORT], clients),
        specs.ingress_rule([HTTP_PORT, GRPC_PORT, P2P_PORT], peers),
    ]
    if args.monitoring_namespace is not None:
        ingress.append(specs.ingress_rule([HTTP_PORT], [specs.namespace_peer(args.monitoring_namespace)]))
    egress = [
        specs.dns_egress_rule(),
        {"to": peers, "ports": specs.tcp_ports((HTTP_PORT, GRPC_PORT, P2P_PORT))},
    ]
    return specs.network_policy_spec(match, ingress=ingress, egress=egress)


# ---------------------------------------------------------------------------------------------- component
class QdrantCluster(pulumi.ComponentResource):
    """A Qdrant cluster (StatefulSet in cluster mode) with its Services, Secret, PDB and policies."""

    endpoint: pulumi.Output[str]
    """Client URL, http://<service>.<namespace>.svc:6333."""
    api_key: pulumi.Output[str]
    """The API key (secret)."""
    replication_factor: int
    shard_number: int
    """Shards per collection (the service creates collections with it)."""
    service_name: str
    headless_service_name: str
    api_key_secret_name: str
    selector_labels: dict[str, str]
    peer_urls: list[str]
    """HTTP URL of every node (snapshots are per node in a cluster, so backups visit each)."""
    egress_target: EgressTarget
    """What clients' NetworkPolicies must allow to reach this cluster."""
    ready: tuple[pulumi.Resource, ...]
    """What a client reads before it can start (the API-key Secret, the StatefulSet): clients depend on these."""

    def __init__(
        self, name: str, args: QdrantClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        validate_args(args)
        super().__init__("rag:data:QdrantCluster", name, None, opts)
        base = name
        ns = args.namespace
        specs.check_dns_label(headless_name(base), "QdrantCluster name")
        match = specs.selector_labels(APP, base, "vector-store")
        object_labels = specs.labels(APP, base, "vector-store")
        secret_name = f"{base}-api-key"

        def child(
            *, protect: bool = False, extra: tuple[pulumi.Resource, ...] = ()
        ) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, protect=protect, depends_on=[*args.depends_on, *extra])

        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=specs.metadata(base, ns, object_labels),
            automount_service_account_token=False,
            opts=child(),
        )
        api_key = pulumi.Output.secret(args.api_key)
        keys = {API_KEY_KEY: api_key}
        if args.alt_api_key is not None:
            keys[ALT_API_KEY_KEY] = pulumi.Output.secret(args.alt_api_key)
        salt = random.RandomPassword(f"{name}-digest-salt", length=32, special=False, opts=child()).result
        keys_sha256 = pulumi.Output.unsecret(
            pulumi.Output.all(args.api_key, args.alt_api_key, salt).apply(
                lambda k: keys_digest(k[0], k[1], k[2])
            )
        )
        # Not protected, unlike the data: pulumi-kubernetes replaces a Secret whose data changes (its provider's
        # enableSecretMutable is off: provider/pkg/provider/diff.go forceNewProperties), and Pulumi refuses to
        # replace a protected resource, so every step of a key rotation (docs/runbooks.md) failed in prod. What it
        # holds is rebuilt from the stack (config or the random key in the state) by any `up`.
        secret = k8s.core.v1.Secret(
            f"{name}-api-key",
            metadata=specs.metadata(secret_name, ns, object_labels),
            type="Opaque",
            string_data=keys,
            opts=child(),
        )
        k8s.core.v1.Service(
            f"{name}-headless",
            metadata=specs.metadata(headless_name(base), ns, object_labels),
            spec=headless_service_spec(match),
            opts=child(),
        )
        k8s.core.v1.Service(
            f"{name}-service",
            metadata=specs.metadata(base, ns, {**object_labels, **SCRAPE_LABEL}),
            spec=client_service_spec(match),
            opts=child(),
        )
        bootstrap_config = k8s.core.v1.ConfigMap(
            f"{name}-bootstrap",
            metadata=specs.metadata(bootstrap_config_name(base), ns, object_labels),
            data={"peers": str(args.replicas)},
            opts=child(),
        )
        statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=statefulset_metadata(args, base, object_labels),
            spec=statefulset_spec(args, base, secret_name, keys_sha256),
            # Its pods read the API-key Secret, the bootstrap ConfigMap and run as the ServiceAccount, by name.
            opts=child(protect=args.protect, extra=(secret, service_account, bootstrap_config)),
        )
        # Created only once the StatefulSet is ready (Pulumi awaits readyReplicas == replicas on create), i.e.
        # once pod 0 founded the cluster and every node joined it. From then on no node founds a new cluster
        # on its own (bootstrap_script). Deleting it would let pod 0 on an empty volume found one: protected in
        # prod like the data.
        k8s.core.v1.ConfigMap(
            f"{name}-founded",
            metadata=specs.metadata(founded_config_name(base), ns, object_labels),
            data=dict(FOUNDED_DATA),
            opts=child(protect=args.protect, extra=(statefulset,)),
        )
        if args.pdb and args.replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb",
                metadata=specs.metadata(base, ns, object_labels),
                spec=specs.pdb_spec(match),
                opts=child(),
            )
        if args.network_policy:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-netpol",
                metadata=specs.metadata(base, ns, object_labels),
                spec=network_policy_spec(args, match),
                opts=child(),
            )
        if args.service_monitor:
            prometheus_operator.monitoring_object(
                f"{name}-servicemonitor",
                "ServiceMonitor",
                metadata=specs.metadata(base, ns, {**object_labels, **args.monitor_labels}),
                spec=specs.service_monitor_spec(
                    {**match, **SCRAPE_LABEL}, ns, port="http", bearer_secret=(secret_name, API_KEY_KEY)
                ),
                opts=child(extra=args.monitoring_crds),
            )

        self.ready = (secret, statefulset)
        self.endpoint = pulumi.Output.from_input(f"http://{base}.{ns}.svc:{HTTP_PORT}")
        self.api_key = api_key
        self.replication_factor = args.replication_factor
        self.shard_number = args.shard_number
        self.service_name = base
        self.headless_service_name = headless_name(base)
        self.api_key_secret_name = secret_name
        self.selector_labels = match
        self.peer_urls = [f"http://{peer_host(base, ns, i)}:{HTTP_PORT}" for i in range(args.replicas)]
        self.egress_target = EgressTarget(APP, HTTP_PORT, dict(match), extra_ports=(GRPC_PORT,))
        self.register_outputs(
            {
                "endpoint": self.endpoint,
                "apiKey": self.api_key,
                "replicationFactor": self.replication_factor,
                "shardNumber": self.shard_number,
                "peerUrls": self.peer_urls,
            }
        )
