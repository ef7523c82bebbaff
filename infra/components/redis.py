"""`RedisCache` (`rag:data:RedisCache`): the Redis-protocol store behind the cache, rate limits and job queue.

Modes:
- `incluster`: a single-node Valkey StatefulSet (pinned `valkey/valkey` image, BSD-licensed Redis fork), password
  from a Pulumi secret passed as `--requirepass $(REDIS_PASSWORD)` (expanded by Kubernetes from a secretKeyRef
  env var, so the password is never in the manifest), append-only persistence on a PVC, probes, non-root,
  read-only root filesystem, and a NetworkPolicy admitting only the listed clients.
  One node is deliberate: the data is a cache plus a job queue whose loss only re-queues work; HA belongs to
  the managed modes.
- `elasticache`: an AWS ElastiCache replication group (engine valkey) with TLS in transit, encryption at rest and
  an AUTH token, in its own subnet group and security group (port 6379 from `allowed_cidrs` only);
  multi-AZ with automatic failover when it has two or more nodes.
- `memorystore`: a GCP Memorystore for Redis instance with AUTH on the authorized VPC network.

Every mode outputs `url`, a secret `REDIS_URL` for RagService, and `egress_target` for its NetworkPolicy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import pulumi
import pulumi_aws as aws
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from infra.components import aws_network, specs
from infra.components.specs import EgressTarget, Resources, require

APP = "valkey"
DEFAULT_IMAGE = "valkey/valkey:8.1.3"
PORT = 6379
RUN_AS_USER = 999  # the `valkey` user of the official image
PASSWORD_KEY = "password"  # noqa: S105 - the Secret key name, not a password
MODES = ("incluster", "elasticache", "memorystore")


@dataclass(frozen=True)
class RedisCacheArgs:
    """Arguments of `RedisCache`; the fields of the modes not chosen are ignored."""

    mode: Literal["incluster", "elasticache", "memorystore"]
    password: pulumi.Input[str] | None = None
    """Secret password (incluster) or AUTH token (elasticache, 16-128 printable characters). Memorystore
    generates its own AUTH string."""
    protect: bool = False
    """Protect the stateful resource (StatefulSet / replication group / instance) from deletion (prod: True). Not
    the password Secret: its content is rebuilt from `password` (the stack's RandomPassword in the state), and a
    Secret whose data changes is replaced (pulumi-kubernetes, enableSecretMutable off), which the engine refuses
    for a protected resource: a new password would stop prod's `up` there."""
    depends_on: tuple[pulumi.Resource, ...] = ()
    # --- incluster
    namespace: str | None = None
    image: str = DEFAULT_IMAGE
    storage_size: str = "2Gi"
    storage_class: str | None = None
    maxmemory: str | None = None
    """Valkey `maxmemory` (Valkey units: `200mb`, `1gb`, or bytes), below the memory limit; None: half the
    container's memory limit. Keys with a TTL are evicted first (volatile-lru)."""
    resources: Resources = field(
        default_factory=lambda: Resources(
            cpu_request="100m", memory_request="256Mi", cpu_limit="500m", memory_limit="384Mi"
        )
    )
    claims_deleted_with_statefulset: bool = False
    """incluster: the data claim goes with the StatefulSet (`specs.claim_retention`): a throwaway stack in a
    namespace it does not delete."""
    volume_replaced_from: str = ""
    """incluster: the `size[/class]` of the deployed StatefulSet's volume template while `storage_size` /
    `storage_class` name new ones (`rag:redis.incluster.storage.replaceFrom`): recorded on the StatefulSet as
    `rag.platform/volume-replaced-from`. "": none."""
    aof_set_aside_from: str = ""
    """A Valkey major ("9") whose append-only file this image cannot load (a declared downgrade): an init container
    moves `/data/appendonlydir` aside when its format is newer than this image loads, so Valkey starts with an
    empty cache instead of crash-looping (valkey-io/valkey#2888). "": none."""
    network_policy: bool = True
    client_selectors: tuple[Mapping[str, str], ...] = ()
    """Pod label selectors (same namespace) allowed to connect."""
    # --- elasticache
    vpc_id: pulumi.Input[str] | None = None
    subnet_ids: tuple[pulumi.Input[str], ...] = ()
    allowed_cidrs: tuple[str, ...] = ()
    """elasticache: source ranges admitted by the security group (the cluster's node/pod CIDRs).
    memorystore: optional destination range for the service's egress policy (the reserved IP range)."""
    node_type: str = "cache.t4g.small"
    num_cache_clusters: int = 2
    engine_version: str = "8.0"
    apply_immediately: bool = True
    """elasticache: send a change of the group (node type, engine version, ...) with ApplyImmediately, so it is
    made at `pulumi up`; False: AWS makes it in `maintenance_window` (the provider's default is False, and the
    state then shows the old node type until it lands: every preview repeats the change)."""
    maintenance_window: str | None = None
    """elasticache: the weekly `ddd:hh24:mi-ddd:hh24:mi` (UTC) window for AWS's patches and pending changes;
    None: one AWS picks."""
    # --- memorystore
    region: str | None = None
    authorized_network: pulumi.Input[str] | None = None
    """VPC network id the instance is reachable from (the GKE cluster's network)."""
    memory_size_gb: int = 1
    tier: Literal["BASIC", "STANDARD_HA"] = "STANDARD_HA"


def elasticache_maintenance_window(registry_day: str, registry_hour: int) -> str:
    """ElastiCache `maintenance_window` (ddd:hh24:mi-ddd:hh24:mi, UTC, at least 60 minutes): the hour after the
    registry's maintenance hour on `registry_day` (the next day after 23:00)."""
    from infra.components.postgres import DAYS, rds_maintenance_window

    day = DAYS[(DAYS.index(registry_day) + 1) % 7] if registry_hour == 23 else registry_day
    return rds_maintenance_window(day, (registry_hour + 1) % 24)


MAXMEMORY_SHARE = 0.5
"""The default `maxmemory` as a share of the container's memory limit. The rest is for what Valkey uses beyond its
dataset: the AOF rewrite's fork (copy-on-write pages of every key written while it runs), client output buffers
and allocator fragmentation. A fixed 200mb (the earlier default) OOM-killed a container limited to 128Mi and left
most of a 4Gi limit unused."""
_VALKEY_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}


def valkey_bytes(value: str) -> int:
    """A Valkey memory size (`200mb`, `1gb`, `100m`, `1048576`; units as valkey.conf defines them) in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else ""
    require(
        match is not None and unit in _VALKEY_UNITS,
        f"RedisCacheArgs.maxmemory {value!r} is not a Valkey memory size (e.g. 200mb, 1gb, or bytes).",
    )
    return int(match.group(1)) * _VALKEY_UNITS[unit]  # type: ignore[union-attr]


def maxmemory_bytes(args: RedisCacheArgs) -> int:
    """The `--maxmemory` Valkey runs with: the explicit value, else MAXMEMORY_SHARE of the memory limit."""
    limit = specs.quantity_value(args.resources.memory_limit)
    if args.maxmemory is None:
        return int(limit * MAXMEMORY_SHARE)
    return valkey_bytes(args.maxmemory)


def validate_args(args: RedisCacheArgs) -> None:
    """Raise ComponentArgsError with a full sentence when the args cannot produce a reachable Redis."""
    require(args.mode in MODES, f"RedisCacheArgs.mode {args.mode!r} must be one of {', '.join(MODES)}.")
    if args.mode in ("incluster", "elasticache"):
        require(args.password is not None, f"RedisCacheArgs.password is required in {args.mode} mode.")
    if isinstance(args.password, str) and args.mode == "elasticache":
        require(
            16 <= len(args.password) <= 128,
            "RedisCacheArgs.password must be 16 to 128 characters long for an ElastiCache AUTH token.",
        )
    if args.mode == "incluster":
        specs.check_in_cluster_store("RedisCacheArgs", args)
        limit = specs.quantity_value(args.resources.memory_limit)
        maxmemory = maxmemory_bytes(args)
        require(
            maxmemory < limit,
            f"RedisCacheArgs.maxmemory ({maxmemory} bytes) must be below the memory limit "
            f"{args.resources.memory_limit}: Valkey needs room beyond its dataset (the AOF rewrite's fork, client "
            "buffers), or the container is OOM-killed.",
        )
        require(
            maxmemory >= 32 * 1024**2,
            f"RedisCacheArgs.maxmemory {maxmemory} bytes (from the memory limit {args.resources.memory_limit}) is "
            "under 32 MiB: too small for the cache and the job queue; raise the memory limit.",
        )
    if args.mode == "elasticache":
        require(args.vpc_id is not None, "RedisCacheArgs.vpc_id is required in elasticache mode.")
        require(
            len(args.subnet_ids) >= 1,
            "RedisCacheArgs.subnet_ids must list the private subnets in elasticache mode.",
        )
        require(
            len(args.allowed_cidrs) >= 1,
            "RedisCacheArgs.allowed_cidrs must list who may connect in elasticache mode.",
        )
        require(
            1 <= args.num_cache_clusters <= 6, "RedisCacheArgs.num_cache_clusters must be between 1 and 6."
        )
    if args.mode == "memorystore":
        require(args.region is not None, "RedisCacheArgs.region is required in memorystore mode.")
        require(
            args.authorized_network is not None,
            "RedisCacheArgs.authorized_network is required in memorystore mode.",
        )
        require(args.memory_size_gb >= 1, "RedisCacheArgs.memory_size_gb must be at least 1.")


# ---------------------------------------------------------------------------------------------- pure specs
def redis_url(password: str | None, host: str, port: int = PORT, *, tls: bool = False, db: int = 0) -> str:
    """REDIS_URL with the password percent-encoded (`rediss://` when TLS is on)."""
    scheme = "rediss" if tls else "redis"
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"{scheme}://{auth}{host}:{port}/{db}"


def valkey_container(args: RedisCacheArgs, secret_name: str) -> dict[str, Any]:
    """Valkey with the password from the Secret, AOF persistence on /data and TTL-first eviction."""
    ping = 'valkey-cli -a "$REDIS_PASSWORD" --no-auth-warning ping | grep -q PONG'
    return {
        "name": "valkey",
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["valkey-server"],
        # $(REDIS_PASSWORD) is expanded by the kubelet from the env below; the manifest holds no secret.
        "args": [
            "--requirepass",
            "$(REDIS_PASSWORD)",
            "--appendonly",
            "yes",
            "--dir",
            "/data",
            "--maxmemory",
            str(maxmemory_bytes(args)),
            "--maxmemory-policy",
            "volatile-lru",
        ],
        "env": [
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": secret_name, "key": PASSWORD_KEY}},
            }
        ],
        "ports": [specs.container_port("redis", PORT)],
        "startupProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5, "failureThreshold": 30},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": specs.exec_probe(["sh", "-c", ping], period=5, timeout=3, failures=3),
        "resources": specs.resources_spec(args.resources),
        "securityContext": specs.container_security_context(RUN_AS_USER, RUN_AS_USER),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }


AOF_DIR = "/data/appendonlydir"
"""Where Valkey (7.0 and later: a multi-part AOF, `appenddirname`) keeps its append-only file under `--dir /data`."""


def aof_format(major: int) -> int:
    """The RDB format of the append-only file's base that Valkey `major` writes (and the newest it loads): 11 up to
    8.x (valkey-io/valkey#665 moved 8.0 back to Redis 7.2's 11), 80 (`VALKEY080`) from 9.0 (#2422); a later major
    is taken to bring its own until known otherwise."""
    return 11 if major <= 8 else 80 if major == 9 else major


def image_major(image: str) -> int | None:
    """The Valkey major of an image (`valkey/valkey:8.1.3` -> 8; None: a tag without one)."""
    tag = image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    match = re.match(r"[0-9]+", tag)
    return int(match.group(0)) if match else None


def aof_set_aside_container(args: RedisCacheArgs) -> dict[str, Any]:
    """An init container that moves the append-only file aside when its base is in a newer format than this image
    loads (the RDB version in the base file's header: `REDIS0011`, `VALKEY080`), to `<dir>.unreadable-<time>`.
    Decided by the file, not by a marker: after the move Valkey writes its own format, which the next start keeps.
    Valkey then starts with an empty cache; the old file stays on the volume (delete it to free the space)."""
    major = image_major(args.image)
    require(
        major is not None,
        f"RedisCacheArgs.aof_set_aside_from needs an image tag that starts with its major, got {args.image!r}.",
    )
    loadable = aof_format(major)  # type: ignore[arg-type]
    script = (
        f'set -eu; for f in {AOF_DIR}/*.base.rdb; do [ -f "$f" ] || continue; '
        'v=$(head -c 9 "$f" | tr -dc 0-9); v=${v#0}; v=${v#0}; '
        f'if [ "${{v:-0}}" -gt {loadable} ]; then aside={AOF_DIR}.unreadable-$(date +%Y%m%d%H%M%S); '
        f'mv {AOF_DIR} "$aside"; echo "RDB format $v is newer than {loadable}: moved {AOF_DIR} to $aside"; '
        "break; fi; done"
    )
    return {
        "name": "aof-set-aside",
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "resources": specs.resources_spec(args.resources),
        "securityContext": specs.container_security_context(RUN_AS_USER, RUN_AS_USER),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }


def statefulset_spec(args: RedisCacheArgs, base: str, secret_name: str) -> dict[str, Any]:
    """One-replica StatefulSet with a PVC for the append-only file."""
    match = specs.selector_labels(APP, base, "cache")
    return {
        "replicas": 1,
        "serviceName": f"{base}-headless",
        "selector": {"matchLabels": dict(match)},
        "updateStrategy": {"type": "RollingUpdate"},
        "persistentVolumeClaimRetentionPolicy": specs.claim_retention(args.claims_deleted_with_statefulset),
        "template": {
            "metadata": {"labels": specs.labels(APP, base, "cache")},
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": specs.pod_security_context(RUN_AS_USER, RUN_AS_USER),
                "terminationGracePeriodSeconds": 30,
                **({"initContainers": [aof_set_aside_container(args)]} if args.aof_set_aside_from else {}),
                "containers": [valkey_container(args, secret_name)],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
            },
        },
        "volumeClaimTemplates": [
            specs.volume_claim_template("data", match, args.storage_size, args.storage_class)
        ],
    }


def network_policy_spec(args: RedisCacheArgs, match: Mapping[str, str]) -> dict[str, Any]:
    """Only the clients reach port 6379; Valkey itself needs no outbound traffic."""
    clients = specs.pod_peers(args.client_selectors)
    return specs.network_policy_spec(match, ingress=[specs.ingress_rule([PORT], clients)], egress=[])


# ---------------------------------------------------------------------------------------------- component
class RedisCache(pulumi.ComponentResource):
    """Valkey in the cluster, ElastiCache, or Memorystore; outputs a secret REDIS_URL."""

    url: pulumi.Output[str]
    """REDIS_URL for the service (secret)."""
    egress_target: EgressTarget
    """What the service's NetworkPolicy must allow to reach this store."""
    ready: tuple[pulumi.Resource, ...]
    """What must exist before a client starts (the StatefulSet and its Secret, or the managed instance)."""

    def __init__(self, name: str, args: RedisCacheArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        validate_args(args)
        super().__init__("rag:data:RedisCache", name, None, opts)
        if args.mode == "incluster":
            self.url, self.egress_target = self._incluster(name, args)
        elif args.mode == "elasticache":
            self.url, self.egress_target = self._elasticache(name, args)
        else:
            self.url, self.egress_target = self._memorystore(name, args)
        self.register_outputs({"url": self.url})

    def _opts(
        self, args: RedisCacheArgs, *, protect: bool = False, extra: tuple[pulumi.Resource, ...] = ()
    ) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, protect=protect, depends_on=[*args.depends_on, *extra])

    def _incluster(self, name: str, args: RedisCacheArgs) -> tuple[pulumi.Output[str], EgressTarget]:
        ns = args.namespace or ""
        base = name
        specs.check_dns_label(f"{base}-headless", "RedisCache name")
        match = specs.selector_labels(APP, base, "cache")
        object_labels = specs.labels(APP, base, "cache")
        secret_name = f"{base}-password"
        password = pulumi.Output.secret(args.password)
        secret = k8s.core.v1.Secret(
            f"{name}-password",
            metadata=specs.metadata(secret_name, ns, object_labels),
            type="Opaque",
            string_data={PASSWORD_KEY: password},
            opts=self._opts(args),
        )
        ports = [specs.service_port("redis", PORT)]
        k8s.core.v1.Service(
            f"{name}-headless",
            metadata=specs.metadata(f"{base}-headless", ns, object_labels),
            spec={"clusterIP": "None", "selector": dict(match), "ports": ports},
            opts=self._opts(args),
        )
        k8s.core.v1.Service(
            f"{name}-service",
            metadata=specs.metadata(base, ns, object_labels),
            spec={"type": "ClusterIP", "selector": dict(match), "ports": ports},
            opts=self._opts(args),
        )
        # The pods read the password Secret by name (secretKeyRef): the StatefulSet waits for it.
        replaced = (
            {specs.VOLUME_REPLACED_ANNOTATION: specs.volume_replaced_note(args.volume_replaced_from)}
            if args.volume_replaced_from
            else None
        )
        statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=specs.metadata(base, ns, object_labels, replaced),
            spec=statefulset_spec(args, base, secret_name),
            opts=self._opts(args, protect=args.protect, extra=(secret,)),
        )
        self.ready = (secret, statefulset)
        if args.network_policy:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-netpol",
                metadata=specs.metadata(base, ns, object_labels),
                spec=network_policy_spec(args, match),
                opts=self._opts(args),
            )
        host = f"{base}.{ns}.svc"
        url = pulumi.Output.secret(password.apply(lambda pw: redis_url(pw, host)))
        return url, EgressTarget("redis", PORT, dict(match))

    def _elasticache(self, name: str, args: RedisCacheArgs) -> tuple[pulumi.Output[str], EgressTarget]:
        network = aws_network.private_access(
            name,
            aws.elasticache.SubnetGroup,
            args,
            port=PORT,
            subnets_description="Private subnets of the RAG cache",
            sg_description="RAG cache: TLS Redis protocol from the cluster only",
            rule_description="Redis protocol (TLS) from the Kubernetes cluster",
            opts=self._opts(args),
        )
        multi_node = args.num_cache_clusters >= 2
        token = pulumi.Output.secret(args.password)
        group = aws.elasticache.ReplicationGroup(
            f"{name}-replication-group",
            description="RAG cache, rate limits and job queue",
            engine="valkey",
            engine_version=args.engine_version,
            node_type=args.node_type,
            num_cache_clusters=args.num_cache_clusters,
            automatic_failover_enabled=multi_node,
            multi_az_enabled=multi_node,
            port=PORT,
            transit_encryption_enabled=True,
            at_rest_encryption_enabled=True,
            auth_token=token,
            subnet_group_name=network.subnet_group_name,
            security_group_ids=[network.security_group_id],
            snapshot_retention_limit=3,
            auto_minor_version_upgrade=True,
            apply_immediately=args.apply_immediately,
            maintenance_window=args.maintenance_window,
            opts=self._opts(args, protect=args.protect),
        )
        self.ready = (group,)
        url = pulumi.Output.secret(
            pulumi.Output.all(token, group.primary_endpoint_address).apply(
                lambda values: redis_url(values[0], values[1], tls=True)
            )
        )
        return url, EgressTarget("redis", PORT, cidrs=tuple(args.allowed_cidrs))

    def _memorystore(self, name: str, args: RedisCacheArgs) -> tuple[pulumi.Output[str], EgressTarget]:
        instance = gcp.redis.Instance(
            f"{name}-instance",
            region=args.region,
            tier=args.tier,
            memory_size_gb=args.memory_size_gb,
            redis_version="REDIS_7_2",
            authorized_network=args.authorized_network,
            connect_mode="PRIVATE_SERVICE_ACCESS",
            auth_enabled=True,
            # In-transit TLS on Memorystore needs its CA mounted in the service pods; traffic stays on the
            # private VPC network and is authenticated with AUTH. See docs/components.md.
            transit_encryption_mode="DISABLED",
            redis_configs={"maxmemory-policy": "volatile-lru"},
            opts=self._opts(args, protect=args.protect),
        )
        self.ready = (instance,)
        url = pulumi.Output.secret(
            pulumi.Output.all(instance.auth_string, instance.host, instance.port).apply(
                lambda values: redis_url(values[0], values[1], int(values[2] or PORT))
            )
        )
        # The instance's reserved range is chosen by Google; allowed_cidrs narrows egress when given.
        return url, EgressTarget("redis", PORT, cidrs=tuple(args.allowed_cidrs))
