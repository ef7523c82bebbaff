"""Pure builders for the Kubernetes specs the components apply: labels, security contexts, probes, resources,
topology spread, anti-affinity, PDBs, named ports, volume claims, NetworkPolicy rules and ServiceMonitors.

Every function returns plain dicts with the Kubernetes API's own camelCase field names, so the same values are
what Pulumi sends, what the offline renderer writes, and what `kubernetes-validate` checks. Nothing here touches
the Pulumi engine; the tests call these directly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

PART_OF = "rag"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P|E|Ei)?$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$")
DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


#: How every ComponentArgsError message starts: the args field it is about (`QdrantClusterArgs.replicas`,
#: `RagServiceArgs.autoscaling.min_replicas`).
_ARGS_FIELD = re.compile(r"^[A-Z][A-Za-z]*Args(\.[a-z_0-9]+)+")


class ComponentArgsError(ValueError):
    """A component's arguments are invalid; the message says which field and why, starting with the field."""

    @property
    def field(self) -> str | None:
        """The args field the message starts with (`QdrantClusterArgs.replicas`), None if it names none.

        The program maps it back to the config key it came from (infra/stack.py `config_errors`)."""
        match = _ARGS_FIELD.match(str(self))
        return match.group(0) if match else None


# ---------------------------------------------------------------------------------------------- validation
def require(condition: bool, message: str) -> None:
    """Raise ComponentArgsError(message) unless condition holds (message is a full sentence)."""
    if not condition:
        raise ComponentArgsError(message)


def check_dns_label(value: str, what: str) -> None:
    """Kubernetes object names used here must be DNS-1123 labels (they become DNS names)."""
    require(
        bool(_DNS_LABEL.match(value)),
        f"{what} {value!r} must be a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters.",
    )


def check_quantity(value: str, what: str) -> None:
    """A Kubernetes resource quantity such as 500m, 2, 512Mi or 10Gi."""
    require(
        bool(_QUANTITY.match(value)), f"{what} {value!r} is not a Kubernetes quantity such as 500m or 10Gi."
    )


_QUANTITY_UNITS = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def quantity_value(value: str) -> float:
    """A Kubernetes quantity (500m, 10Gi, 1e3) as a number (bytes for storage and memory)."""
    check_quantity(value, "quantity")
    number, unit = re.fullmatch(r"([0-9.eE+-]+?)([a-zA-Z]*)", value).groups()  # type: ignore[union-attr]
    return float(number) * _QUANTITY_UNITS.get(unit, 1)


def check_image(value: str, what: str) -> None:
    """Images are pinned: a version tag or a digest, never `latest` and never untagged."""
    require(bool(_IMAGE.match(value)), f"{what} {value!r} is not a valid image reference.")
    last = value.rsplit("/", 1)[-1]
    require(
        "@sha256:" in value or ":" in last, f"{what} {value!r} must be pinned by a version tag or a digest."
    )
    tag = last.split("@", 1)[0].partition(":")[2]
    require(tag != "latest", f"{what} {value!r} uses the mutable tag 'latest'; pin a version or a digest.")


def check_env_names(names: Sequence[str], what: str) -> None:
    """Environment variable names: upper-case letters, digits and underscores."""
    for name in names:
        require(
            bool(_ENV_NAME.match(name)),
            f"{what} key {name!r} is not an upper-case environment variable name.",
        )


class InClusterStoreArgs(Protocol):
    """The fields PostgresDatabaseArgs (cloudnative mode) and RedisCacheArgs (incluster mode) share."""

    @property
    def mode(self) -> str: ...
    @property
    def namespace(self) -> str | None: ...
    @property
    def image(self) -> str: ...
    @property
    def storage_size(self) -> str: ...
    @property
    def resources(self) -> Resources: ...
    @property
    def network_policy(self) -> bool: ...
    @property
    def client_selectors(self) -> Sequence[Mapping[str, str]]: ...


def check_in_cluster_store(what: str, args: InClusterStoreArgs) -> None:
    """The fields a data store running in the cluster needs (`what` names the args class in the messages)."""
    require(args.namespace is not None, f"{what}.namespace is required in {args.mode} mode.")
    check_dns_label(args.namespace or "", f"{what}.namespace")
    check_image(args.image, f"{what}.image")
    check_quantity(args.storage_size, f"{what}.storage_size")
    args.resources.validate(f"{what}.resources")
    require(
        not (args.network_policy and not args.client_selectors),
        f"{what}.client_selectors must name at least one client when network_policy is on.",
    )


# ---------------------------------------------------------------------------------------------- labels
def labels(name: str, instance: str, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels for every object of one workload."""
    return {
        **selector_labels(name, instance, component),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }


def selector_labels(name: str, instance: str, component: str) -> dict[str, str]:
    """The immutable subset used in selectors (part-of/managed-by may change without re-creating workloads)."""
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
    }


def metadata(
    name: str,
    namespace: str | None,
    object_labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """ObjectMeta with an explicit name (stable DNS and references; never auto-named)."""
    meta: dict[str, Any] = {"name": name, "labels": dict(object_labels)}
    if namespace is not None:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# ---------------------------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class Resources:
    """CPU/memory requests and limits of one container (Kubernetes quantities)."""

    cpu_request: str = "100m"
    memory_request: str = "256Mi"
    cpu_limit: str | None = "1"
    """None leaves CPU unlimited; the policy pack requires a limit, so every default sets one."""
    memory_limit: str = "512Mi"

    def validate(self, what: str) -> None:
        """Each value must be a Kubernetes quantity."""
        for label, value in (
            ("cpu_request", self.cpu_request),
            ("memory_request", self.memory_request),
            ("cpu_limit", self.cpu_limit),
            ("memory_limit", self.memory_limit),
        ):
            if value is not None:
                check_quantity(value, f"{what}.{label}")


def resources_spec(res: Resources) -> dict[str, Any]:
    """ResourceRequirements: requests always, memory limit always, CPU limit only when given."""
    limits = {"memory": res.memory_limit}
    if res.cpu_limit is not None:
        limits["cpu"] = res.cpu_limit
    return {"requests": {"cpu": res.cpu_request, "memory": res.memory_request}, "limits": limits}


# ---------------------------------------------------------------------------------------------- security
def container_security_context(run_as_user: int, run_as_group: int | None = None) -> dict[str, Any]:
    """Restricted Pod Security Standard for one container: non-root, read-only root fs, no capabilities."""
    ctx: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if run_as_group is not None:
        ctx["runAsGroup"] = run_as_group
    return ctx


def pod_security_context(run_as_user: int, fs_group: int) -> dict[str, Any]:
    """Pod-level defaults; fsGroup makes mounted volumes writable by the non-root user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "runAsGroup": fs_group,
        "fsGroup": fs_group,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# ---------------------------------------------------------------------------------------------- probes
def http_probe(
    path: str,
    port: int | str,
    *,
    period: int = 10,
    timeout: int = 3,
    failures: int = 3,
    initial_delay: int = 0,
) -> dict[str, Any]:
    """An HTTP GET probe."""
    probe: dict[str, Any] = {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }
    if initial_delay:
        probe["initialDelaySeconds"] = initial_delay
    return probe


def exec_probe(
    command: Sequence[str], *, period: int = 10, timeout: int = 3, failures: int = 3
) -> dict[str, Any]:
    """A command probe."""
    return {
        "exec": {"command": list(command)},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


# ---------------------------------------------------------------------------------------------- ports
def container_port(name: str, port: int) -> dict[str, Any]:
    """A named TCP container port (Services and probes refer to it by name)."""
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def service_port(name: str, port: int) -> dict[str, Any]:
    """A Service port forwarding to the container port of the same name."""
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


# ---------------------------------------------------------------------------------------------- placement
ZONE_KEY = "topology.kubernetes.io/zone"
HOST_KEY = "kubernetes.io/hostname"


def topology_spread(match: Mapping[str, str], *, hard_hosts: bool = False) -> list[dict[str, Any]]:
    """Spread replicas over zones (best effort) and hosts (hard when `hard_hosts`)."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": ZONE_KEY,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(match)},
        },
        {
            "maxSkew": 1,
            "topologyKey": HOST_KEY,
            "whenUnsatisfiable": "DoNotSchedule" if hard_hosts else "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(match)},
        },
    ]


def pod_anti_affinity(match: Mapping[str, str], *, required: bool) -> dict[str, Any]:
    """Keep replicas on different nodes: required (one per node) or preferred."""
    term = {"labelSelector": {"matchLabels": dict(match)}, "topologyKey": HOST_KEY}
    if required:
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
        }
    }


def pdb_spec(match: Mapping[str, str], *, max_unavailable: int = 1) -> dict[str, Any]:
    """PodDisruptionBudget spec allowing at most `max_unavailable` voluntary evictions at once."""
    return {"maxUnavailable": max_unavailable, "selector": {"matchLabels": dict(match)}}


# ---------------------------------------------------------------------------------------------- storage
def pvc_spec(size: str, storage_class: str | None = None) -> dict[str, Any]:
    """PersistentVolumeClaim spec: one ReadWriteOnce volume of `size`; None uses the cluster's default class."""
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return spec


VOLUME_REPLACED_ANNOTATION = "rag.platform/volume-replaced-from"
"""On a StatefulSet whose volume template a declared `replaceFrom` changed (infra/guards.py
`volume_template_refusal`): the template it replaced."""


def volume_replaced_note(replaced_from: str) -> str:
    """The VOLUME_REPLACED_ANNOTATION's value."""
    return f"{replaced_from} (docs/runbooks.md#growing-a-statefulsets-volume)"


def claim_retention(delete_with_statefulset: bool) -> dict[str, str]:
    """A StatefulSet's `persistentVolumeClaimRetentionPolicy`: its claims stay when it is deleted or scaled down
    (`Retain`), unless `delete_with_statefulset` (a throwaway stack in a namespace it does not delete, where nothing
    else would delete them): then the StatefulSet controller owns them and the garbage collector deletes them with
    it (`whenDeleted: Delete`, GA in Kubernetes 1.32). Never for a stack whose data matters: a replace (a new
    volume size, delete first) would delete the data with the object."""
    return {"whenDeleted": "Delete" if delete_with_statefulset else "Retain", "whenScaled": "Retain"}


def volume_claim_template(
    name: str, match: Mapping[str, str], size: str, storage_class: str | None = None
) -> dict[str, Any]:
    """A StatefulSet `volumeClaimTemplates` entry: a PVC per pod, labelled like the pods it belongs to."""
    return {"metadata": {"name": name, "labels": dict(match)}, "spec": pvc_spec(size, storage_class)}


# ---------------------------------------------------------------------------------------------- network
@dataclass(frozen=True)
class EgressTarget:
    """Somewhere a workload may connect to: pods by labels (in-cluster) and/or CIDRs (managed services)."""

    name: str
    port: int | None
    """The TCP port; None: any port (a Service outside the stack, whose targetPort is not known)."""
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str | None = None
    """Namespace of the pods; None means the policy's own namespace. With no `pod_labels`: all its pods."""
    cidrs: tuple[str, ...] = ()
    extra_ports: tuple[int, ...] = ()
    except_cidrs: tuple[str, ...] = ()
    """Ranges carved out of `cidrs` (each applied to the CIDRs that contain it), e.g. the cluster's own."""


def pod_peer(pod_labels: Mapping[str, str]) -> dict[str, Any]:
    """A NetworkPolicyPeer matching pods by labels (in the policy's own namespace)."""
    return {"podSelector": {"matchLabels": dict(pod_labels)}}


def pod_peers(selectors: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """One pod peer per label selector (e.g. a component's `client_selectors`)."""
    return [pod_peer(sel) for sel in selectors]


def tcp_ports(ports: Sequence[int]) -> list[dict[str, Any]]:
    """NetworkPolicyPort entries for TCP `ports`."""
    return [{"protocol": "TCP", "port": p} for p in ports]


def peers_for(target: EgressTarget) -> list[dict[str, Any]]:
    """NetworkPolicyPeer list for an egress target."""
    peers: list[dict[str, Any]] = []
    if target.pod_labels or target.namespace is not None:
        peer = pod_peer(target.pod_labels)
        if target.namespace is not None:
            peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": target.namespace}}
        peers.append(peer)
    for cidr in target.cidrs:
        block: dict[str, Any] = {"cidr": cidr}
        network = ipaddress.ip_network(cidr)
        carved = [
            e
            for e in target.except_cidrs
            if (inner := ipaddress.ip_network(e)).version == network.version and inner.subnet_of(network)  # type: ignore[arg-type]
        ]
        if carved:
            block["except"] = carved
        peers.append({"ipBlock": block})
    return peers


def egress_rule(target: EgressTarget) -> dict[str, Any]:
    """One egress rule: the target's peers on its TCP port(s)."""
    rule: dict[str, Any] = (
        {"ports": tcp_ports((target.port, *target.extra_ports))} if target.port is not None else {}
    )
    peers = peers_for(target)
    if peers:
        rule["to"] = peers
    return rule


def dns_egress_rule() -> dict[str, Any]:
    """DNS on port 53 (UDP and TCP) to any destination: cluster DNS, node-local caches and VPC resolvers."""
    return {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def namespace_peer(namespace: str) -> dict[str, Any]:
    """A peer matching every pod of one namespace (by its immutable name label)."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def ingress_rule(ports: Sequence[int], peers: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """One ingress rule on TCP `ports` from `peers` (None: from anywhere)."""
    rule: dict[str, Any] = {"ports": tcp_ports(ports)}
    if peers is not None:
        rule["from"] = [dict(p) for p in peers]
    return rule


def network_policy_spec(
    match: Mapping[str, str],
    *,
    ingress: Sequence[Mapping[str, Any]] | None,
    egress: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """NetworkPolicy spec for pods matching `match`; None for a direction leaves that direction unrestricted."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": dict(match)}, "policyTypes": []}
    if ingress is not None:
        spec["policyTypes"].append("Ingress")
        spec["ingress"] = [dict(r) for r in ingress]
    if egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = [dict(r) for r in egress]
    return spec


def default_deny_spec() -> dict[str, Any]:
    """Deny all ingress and egress for every pod of the namespace; allow policies open what is needed."""
    return {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


# ---------------------------------------------------------------------------------------------- monitoring
def service_monitor_spec(
    match: Mapping[str, str],
    namespace: str,
    *,
    port: str,
    path: str = "/metrics",
    interval: str = "30s",
    bearer_secret: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """ServiceMonitor spec scraping the named Service port; `bearer_secret` = (secret name, key) for auth."""
    endpoint: dict[str, Any] = {"port": port, "path": path, "interval": interval, "scheme": "http"}
    if bearer_secret is not None:
        endpoint["authorization"] = {
            "type": "Bearer",
            "credentials": {"name": bearer_secret[0], "key": bearer_secret[1]},
        }
    return {
        "selector": {"matchLabels": dict(match)},
        "namespaceSelector": {"matchNames": [namespace]},
        "endpoints": [endpoint],
    }
