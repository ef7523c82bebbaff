"""Config a stack sets that does nothing for the target it selects (`make plan`'s "Ignored config" section).

The stack files keep the settings of the targets they can switch to (prod declares its GKE cluster next to its EKS
one, and its in-cluster Postgres next to RDS): switching `cluster.provider` or a `mode` then deploys a reviewed
configuration, so these keys are not refused. But a reader of `redis.managed.memorySizeGb: 5` in an EKS stack would
think ElastiCache has 5 GB (it is sized by `nodeType`), so the plan names every such key, its stack file and what
it would apply to: every such key the stack file names, and any other (from `--set`) that differs from its default.

The rules mirror `infra/stack.py`'s `*_args` builders (which provider block, which mode's settings, and which
managed-service keys each cloud's resource reads); `tests/infra/test_inert.py` checks each reported key by
changing it and finding the program unchanged, and its counterpart on the other target changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.config import llm_in_cluster_namespace

#: Managed-service keys only one cloud's resource reads: (key, provider that reads it, what it is, what the other
#: provider uses instead).
PROVIDER_ONLY = (
    (
        "postgres.managed.instanceClass",
        "eks",
        "RDS's instance class",
        "Cloud SQL is sized by postgres.managed.tier",
    ),
    (
        "postgres.managed.tier",
        "gke",
        "Cloud SQL's machine tier",
        "RDS is sized by postgres.managed.instanceClass",
    ),
    # Cloud SQL maps storageGb and backupRetentionDays onto its own settings and refuses the values of
    # backupRetentionDays and autoMinorVersionUpgrade it cannot honour (infra/components/postgres.py, `cloudsql`);
    # it applies every settings change at `pulumi up`.
    (
        "postgres.managed.applyImmediately",
        "eks",
        "RDS's choice between `pulumi up` and the maintenance window",
        "Cloud SQL applies every change at `pulumi up`",
    ),
    (
        "redis.managed.nodeType",
        "eks",
        "ElastiCache's node type",
        "Memorystore is sized by redis.managed.memorySizeGb",
    ),
    (
        "redis.managed.replicas",
        "eks",
        "ElastiCache's replicas",
        "Memorystore's replica is redis.managed.tier",
    ),
    (
        "redis.managed.applyImmediately",
        "eks",
        "ElastiCache's choice between `pulumi up` and the maintenance window",
        "Memorystore applies every change at `pulumi up`",
    ),
    ("redis.managed.tier", "gke", "Memorystore's tier", "ElastiCache's replicas are redis.managed.replicas"),
    (
        "redis.managed.memorySizeGb",
        "gke",
        "Memorystore's size",
        "ElastiCache is sized by redis.managed.nodeType",
    ),
)


def rules(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key or `prefix.`, why it does nothing) for the effective config's selections."""
    provider = config["cluster"]["provider"]
    found = [
        (f"cluster.{other}.", f"cluster.provider is {provider}")
        for other in ("existing", "gke", "eks")
        if other != provider
    ]
    for store, mode, own, other in (
        ("postgres", config["postgres"]["mode"], "managed", "cloudnative"),
        ("redis", config["redis"]["mode"], "managed", "incluster"),
    ):
        unused = other if mode == own else own
        found.append((f"{store}.{unused}.", f"{store}.mode is {mode}"))
        if mode == "managed":
            found.extend(
                (key, f"{what} (cluster.provider {reader}); on {provider}, {instead}")
                for key, reader, what, instead in PROVIDER_ONLY
                if key.startswith(f"{store}.") and reader != provider
            )
    found.extend(_switched_off(config))
    return found


def _others(config: Mapping[str, Any], block: str, keep: tuple[str, ...]) -> list[str]:
    """The keys of a block but `keep`, an object as a `prefix.`."""
    values = config.get(block) or {}
    return [
        f"{block}.{k}" + ("." if isinstance(v, Mapping) else "") for k, v in values.items() if k not in keep
    ]


def _switched_off(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Keys a switch of their own block turns off (EYES6 G8): set, they change nothing until the switch is on."""
    found: list[tuple[str, str]] = []
    if not config["namespaceQuota"]["enabled"]:
        found.extend(
            (key, "namespaceQuota.enabled is false")
            for key in _others(config, "namespaceQuota", ("enabled",))
        )
    if not config["llm"]["enabled"]:
        # minScore is not the LLM's: extractive answers use it too.
        found.extend((key, "llm.enabled is false") for key in _others(config, "llm", ("enabled", "minScore")))
    monitoring = config["monitoring"]
    if monitoring["enabled"] and monitoring["mode"] == "existing":
        found.extend(
            (
                key,
                "monitoring.mode is existing: the cluster's own Prometheus keeps its chart, retention and storage",
            )
            for key in ("monitoring.chartVersion", "monitoring.retention", "monitoring.storage.")
        )
    if not config.get("slackWebhookUrl"):
        # The Slack receiver exists only with its webhook (infra/components/monitoring.py alertmanager_config).
        found.append(
            (
                "monitoring.alerting.slack.channel",
                "the secret rag:slackWebhookUrl is not set, so there is no Slack receiver "
                "(`pulumi config set --secret rag:slackWebhookUrl URL`)",
            )
        )
    llm = config["llm"]
    if llm["enabled"] and llm_in_cluster_namespace(str(llm["baseUrl"]), str(config["namespace"])) is None:
        found.append(
            (
                "llm.targetPort",
                "llm.baseUrl names no in-cluster Service (http://<service>.<namespace>.svc:<port>)",
            )
        )
    tls = config["tls"]
    if tls["clusterIssuer"]:
        # The stack creates no issuer: the existing ClusterIssuer issues the certificate, with its own ACME
        # account (infra/components/gateway.py TlsGateway; the `tlsIssuer` output says clusterIssuer:<name>).
        found.extend(
            (
                key,
                f"tls.clusterIssuer is set: the existing ClusterIssuer {tls['clusterIssuer']} issues the certificate",
            )
            for key in ("tls.issuer", "tls.email")
        )
    elif tls["issuer"] == "selfSigned":
        found.append(
            ("tls.email", "tls.issuer is selfSigned: only the letsencrypt issuers have an ACME account")
        )
    if config["service"]["autoscaling"]["enabled"]:
        # The Deployment is sent with minReplicas and ignores its replicas after that (infra/components/
        # rag_service.py): the HPA owns the count.
        found.append(
            (
                "service.replicas",
                "service.autoscaling.enabled is true: the HPA sets the API's replica count "
                "(service.autoscaling.minReplicas / maxReplicas)",
            )
        )
    gateway = config["gateway"]
    if not gateway["ingress"]["enabled"]:
        found.append(("gateway.ingress.className", "gateway.ingress.enabled is false"))
    provider = config["cluster"]["provider"]
    if provider == "existing":
        found.append(
            ("gateway.loadBalancer", "cluster.provider is existing: the cluster's own Gateway class decides")
        )
        found.append(
            (
                "cluster.imageRetention.",
                "cluster.provider is existing: its registry (cluster.existing.registry) keeps its own rules",
            )
        )
    if provider == "eks" and not config["cluster"]["eks"]["endpointPublicAccess"]:
        found.append(("cluster.eks.publicAccessCidrs", "cluster.eks.endpointPublicAccess is false"))
    return found


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _in(values: Mapping[str, Any], key: str) -> bool:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def ignored(
    config: Mapping[str, Any],
    defaults: Mapping[str, Any],
    stack_values: Mapping[str, Any],
    stack_file: str,
) -> list[str]:
    """One line per key (a provider block: per block) the stack file names, or that differs from its default,
    and that does nothing here.

    `config` is the effective `rag:` config (objects merged over their defaults, bare keys), `defaults` the
    declared defaults (bare keys), `stack_values` the stack file's `config:` (keys `rag:`-prefixed): a key found
    there is attributed to `stack_file`, any other to the command line (`--set`)."""
    stack = {key.removeprefix("rag:"): value for key, value in stack_values.items()}
    lines = []
    for rule, why in rules(config):
        top = rule.split(".", 1)[0]
        set_keys = sorted(
            key
            for key, value in _leaves(config.get(top), top).items()
            if (key == rule or (rule.endswith(".") and key.startswith(rule)))
            and (_in(stack, key) or _leaves(defaults.get(top), top).get(key, object()) != value)
        )
        if not set_keys:
            continue
        groups = [rule.rstrip(".")] if rule.startswith("cluster.") else set_keys
        for group in groups:
            members = [k for k in set_keys if k == group or k.startswith(f"{group}.")]
            where = stack_file if any(_in(stack, k) for k in members) else "--set"
            what = f"rag:{group}" + (f" ({len(members)} keys)" if len(members) > 1 else "")
            lines.append(f"{what} in {where} has no effect: {why}")
    lines.extend(_partly_applied(config, defaults, stack, stack_file))
    # A cloud's provider keys (`aws:*` off eks, `gcp:*` off gke) are not listed here: the program refuses them
    # (infra/clusters/__init__.py check_no_cloud_keys), so the plan stops with that one line first.
    return lines


def _partly_applied(
    config: Mapping[str, Any], defaults: Mapping[str, Any], stack: Mapping[str, Any], stack_file: str
) -> list[str]:
    """Keys only part of whose value reaches the target: a `redis.version` patch on ElastiCache (s21-daytwo). Its
    engineVersion takes major.minor for 7 and above (pulumi-aws ReplicationGroup `engine_version`: "If the version
    is 7 or higher, the major and minor version should be set, e.g., `7.2`"), and AWS applies the patches itself,
    so `8.1.3` -> `8.1.4` deploys nothing there (infra/stack.py `redis_args` sends `8.1`)."""
    version = str(config["redis"]["version"])
    parts = version.split(".")
    if not (
        config["cluster"]["provider"] == "eks"
        and config["redis"]["mode"] == "managed"
        and len(parts) > 2
        and (_in(stack, "redis.version") or str(defaults.get("redis", {}).get("version")) != version)
    ):
        return []
    where = stack_file if _in(stack, "redis.version") else "--set"
    minor = ".".join(parts[:2])
    return [
        f"rag:redis.version {version} in {where} is applied only as {minor}: ElastiCache takes major.minor "
        f"(engineVersion {minor!r}) and applies the patches itself, so its patch part "
        f".{'.'.join(parts[2:])} is not applied on eks (redis.mode managed)"
    ]
