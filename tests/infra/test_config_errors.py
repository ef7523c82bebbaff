"""Every config error, through the path the real CLI takes, names the key and the stack file.

The cases run `infra.offline.run_stack` (stack file -> the CLI's `rag:`-prefixed strings -> `load_config` inside
the program), not `parse_config` alone, so the CLI encoding of each value is part of what is tested. Every
environment rule in `infra.config._check_rules` has a case: a rule added without one fails
`test_every_rule_has_an_error_case`.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from typing import Any

import pytest

from infra import config as config_module
from infra.config import ConfigError, declared_defaults
from infra.offline import run_stack

DIGEST = "ghcr.io/example/rag-service@sha256:" + "d" * 64
#: prod moved onto GKE (with the Gateway class and Memorystore tier GKE's prod needs).
GKE_PROD: dict[str, Any] = {
    "cluster": {"provider": "gke"},
    "gateway": {"className": "gke-l7-global-external-managed"},
    "redis": {"managed": {"tier": "STANDARD_HA"}},
}

# (stack, overrides, key, fragment of the problem): one case per environment rule.
RULES: list[tuple[str, dict[str, Any], str, str]] = [
    ("staging", {"image": "rag-service:1.0"}, "image", "immutable digest"),
    # Staging/prod never build the checkout (an explicit empty value; an absent key gets the offline placeholder).
    ("prod", {"image": ""}, "image", "deploys only a promoted image"),
    ("staging", {"image": ""}, "image", "pulumi config refresh --force -s staging"),
    # kind's local registry (dev's default) exists only on the machine that runs it: a CI runner cannot copy from it.
    ("prod", {"image": "localhost:5001/rag/rag-service@sha256:" + "d" * 64}, "image", "local to the machine"),
    ("staging", {"image": "127.0.0.1:5000/rag@sha256:" + "d" * 64}, "image", "a CI runner's loopback"),
    ("dev", {"namespace": "Rag_Platform"}, "namespace", "not a valid Kubernetes namespace"),
    # The cloud targets create the cluster in the stack: no namespace of another owner exists before it.
    ("staging", {"namespaceMode": "existing"}, "namespaceMode", "needs cluster.provider existing"),
    # A declared registry switch names the mode the registry runs before it, not the one it goes to.
    (
        "dev",
        {"postgres": {"modeSwitch": {"fromMode": "cloudnative"}}},
        "postgres.modeSwitch.fromMode",
        "is postgres.mode itself",
    ),
    # A CloudNativePG recovery reads the archive in the backup bucket and archives under a new name.
    (
        "staging",
        {"postgres": {"cloudnative": {"recovery": {"source": "postgres"}}}},
        "postgres.cloudnative.archiveName",
        "must name a new archive",
    ),
    (
        "staging",
        {"postgres": {"cloudnative": {"recovery": {"targetTime": "2026-11-26T03:00:00Z"}}}},
        "postgres.cloudnative.recovery.targetTime",
        "needs postgres.cloudnative.recovery.source",
    ),
    (
        "dev",
        {"postgres": {"cloudnative": {"archiveName": "r1", "recovery": {"source": "postgres"}}}},
        "postgres.cloudnative.recovery.source",
        "backups.enabled",
    ),
    # The CloudNativePG registry: a declared major upgrade goes forward, to 16+, alone, into a new archive.
    (
        "staging",
        {"postgres": {"cloudnative": {"majorUpgrade": {"fromVersion": "18"}}}},
        "postgres.cloudnative.majorUpgrade.fromVersion",
        "is not below postgres.version (17)",
    ),
    (
        "staging",
        {"postgres": {"version": "18", "cloudnative": {"majorUpgrade": {"fromVersion": "17"}}}},
        "postgres.cloudnative.archiveName",
        "ending in -pg18",
    ),
    (
        "dev",
        {"postgres": {"version": "15", "cloudnative": {"majorUpgrade": {"fromVersion": "14"}}}},
        "postgres.version",
        "only to PostgreSQL 16 or later",
    ),
    (
        "staging",
        {
            "postgres": {
                "version": "18",
                "cloudnative": {
                    "archiveName": "postgres-pg18",
                    "majorUpgrade": {"fromVersion": "17"},
                    "recovery": {"source": "postgres"},
                },
            }
        },
        "postgres.cloudnative.majorUpgrade.fromVersion",
        "restore first",
    ),
    # The managed registry: a major upgrade is declared and goes forward; a restore is named and has one source.
    (
        "prod",
        {"postgres": {"managed": {"majorUpgrade": {"fromVersion": "17"}}}},
        "postgres.managed.majorUpgrade.fromVersion",
        "is not below postgres.version (17)",
    ),
    (
        "prod",
        {**GKE_PROD, "postgres": {"version": "18", "managed": {"majorUpgrade": {"fromVersion": "17"}}}},
        "postgres.managed.applyImmediately",
        "must be true for the declared upgrade from 17",
    ),
    (
        "prod",
        {"postgres": {"version": "18", "managed": {"majorUpgrade": {"fromVersion": "17"}}}},
        "postgres.managed.applyImmediately",
        "RDS would leave the engine and parameter-group change pending",
    ),
    (
        "prod",
        {"postgres": {"managed": {"restore": {"time": "2026-11-26T03:00:00Z"}}}},
        "postgres.managed.restore.name",
        "missing while postgres.managed.restore.time is set",
    ),
    (
        "staging",
        {"postgres": {"managed": {"restore": {"name": "r1"}}}},
        "postgres.managed.restore.name",
        "but postgres.mode is cloudnative",
    ),
    (
        "prod",
        {"postgres": {"managed": {"restore": {"keepOriginal": False}}}},
        "postgres.managed.restore.keepOriginal",
        "only applies after a restore",
    ),
    (
        "prod",
        {
            "postgres": {
                "managed": {"restore": {"name": "r1", "keepOriginal": False, "time": "2026-11-26T03:00:00Z"}}
            }
        },
        "postgres.managed.restore.keepOriginal",
        "drop the original in a later `up`",
    ),
    (
        "prod",
        {
            "postgres": {
                "managed": {"restore": {"name": "r1", "snapshot": "s1", "time": "2026-11-26T03:00:00Z"}}
            }
        },
        "postgres.managed.restore.snapshot",
        "choose one source",
    ),
    (
        "prod",
        {**GKE_PROD, "postgres": {"managed": {"restore": {"name": "r1", "snapshot": "s1"}}}},
        "postgres.managed.restore.snapshot",
        "Cloud SQL restores the registry by cloning",
    ),
    # A CloudNativePG operator step the stack installs must be a recorded chart.
    (
        "prod",
        {"postgres": {"mode": "cloudnative", "cloudnative": {"operatorChartVersion": "0.28.9"}}},
        "postgres.cloudnative.operatorChartVersion",
        "has no values record",
    ),
    # Cloud SQL cannot turn its automated backups or its minor versions off.
    (
        "prod",
        {**GKE_PROD, "postgres": {"managed": {"backupRetentionDays": 0}}},
        "postgres.managed.backupRetentionDays",
        "Cloud SQL (cluster.provider gke) keeps them",
    ),
    (
        "prod",
        {**GKE_PROD, "postgres": {"managed": {"autoMinorVersionUpgrade": False}}},
        "postgres.managed.autoMinorVersionUpgrade",
        "has no switch to turn that off",
    ),
    (
        "prod",
        {
            "postgres": {
                "version": "18",
                "managed": {
                    "applyImmediately": True,
                    "majorUpgrade": {"fromVersion": "17"},
                    "restore": {"name": "r1"},
                },
            }
        },
        "postgres.managed.majorUpgrade.fromVersion",
        "restore first, upgrade in a later `up`",
    ),
    (
        "prod",
        {"cluster": {"eks": {"adminPrincipals": ["platform-oncall"]}}},
        "cluster.eks.adminPrincipals",
        "not an IAM role or user ARN",
    ),
    (
        "prod",
        {
            "cluster": {
                "eks": {
                    "adminPrincipals": ["arn:aws:iam::111122223333:role/ops"],
                    "readerPrincipals": ["arn:aws:iam::111122223333:role/ops"],
                }
            }
        },
        "cluster.eks.readerPrincipals",
        "listed twice",
    ),
    ("dev", {"gateway": {"proxyNamespaces": ["Ingress_Nginx"]}}, "gateway.proxyNamespaces", "not a valid"),
    ("dev", {"cluster": {"provider": "gke"}}, "cluster.gke.project", "GCP project id"),
    # A destroy of prod's managed registry must leave its automated backups (point-in-time recovery).
    (
        "prod",
        {"postgres": {"managed": {"retainBackupsOnDelete": False}}},
        "postgres.managed.retainBackupsOnDelete",
        "point-in-time recovery",
    ),
    # Names of buckets and accounts are built from them (infra/naming.py), where a malformed one failed late.
    (
        "staging",
        {"cluster": {"gke": {"project": "Rag_Staging"}}},
        "cluster.gke.project",
        "not a GCP project ID",
    ),
    ("staging", {"cluster": {"gke": {"region": "europe-west1-b"}}}, "cluster.gke.region", "not a GCP region"),
    ("prod", {"cluster": {"eks": {"region": "eu-west-1a"}}}, "cluster.eks.region", "not an AWS region"),
    (
        "staging",
        {"cluster": {"gke": {"nodePool": {"minNodes": 5, "maxNodes": 3}}}},
        "cluster.gke.nodePool.minNodes",
        "must not exceed",
    ),
    (
        "prod",
        {"cluster": {"eks": {"nodeGroup": {"minSize": 2, "desiredSize": 1}}}},
        "cluster.eks.nodeGroup.desiredSize",
        "within minSize..maxSize",
    ),
    # The Cluster Autoscaler's image is the cluster's minor: a minor without a pinned release is refused.
    (
        "prod",
        {"cluster": {"eks": {"version": "1.32"}}},
        "cluster.eks.version",
        "no Cluster Autoscaler release",
    ),
    (
        "prod",
        {"cluster": {"eks": {"publicAccessCidrs": ["10.0.0.1/8"]}}},
        "cluster.eks.publicAccessCidrs",
        "not an IPv4/IPv6 network",
    ),
    (
        "prod",
        {"cluster": {"eks": {"publicAccessCidrs": ["203.0.113.5"]}}},
        "cluster.eks.publicAccessCidrs",
        "is an address, not a network in CIDR notation: write '203.0.113.5/32'",
    ),
    # The subnets are /20s carved from the VPC range, a public and a private one per zone (prod: 3 zones).
    ("prod", {"cluster": {"eks": {"vpcCidr": "10.0.0.0/18"}}}, "cluster.eks.vpcCidr", "holds 4 /20 subnets"),
    ("prod", {"cluster": {"eks": {"vpcCidr": "10.0.0.0/20"}}}, "cluster.eks.vpcCidr", "use a /17 or larger"),
    (
        "prod",
        {"cluster": {"eks": {"vpcCidr": "10.0.0.1/16"}}},
        "cluster.eks.vpcCidr",
        "host bits must be zero",
    ),
    (
        "prod",
        {"cluster": {"eks": {"endpointPublicAccess": True}}},
        "cluster.eks.publicAccessCidrs",
        "EKS would open it to 0.0.0.0/0",
    ),
    (
        "staging",
        {"cluster": {"gke": {"masterAuthorizedNetworks": ["nowhere"]}}},
        "cluster.gke.masterAuthorizedNetworks",
        "not an IPv4/IPv6 network",
    ),
    (
        "staging",
        {"cluster": {"gke": {"masterAuthorizedNetworks": []}}},
        "cluster.gke.masterAuthorizedNetworks",
        "no authorized network is listed",
    ),
    ("prod", {"cluster": {"provider": "gke"}}, "gateway.className", "not a GKE Gateway class"),
    (
        "dev",
        {"namespaceQuota": {"enabled": True, "requests": {"memory": "11Gi"}}},
        "namespaceQuota.requests.memory",
        "exceeds namespaceQuota.limits.memory (10Gi)",
    ),
    (
        "dev",
        {"namespaceQuota": {"requests": {"cpu": "6500m"}}},
        "namespaceQuota.requests.cpu",
        "exceeds namespaceQuota.limits.cpu (6)",
    ),
    # The Barman Cloud plugin's sidecar: Kubernetes refuses the instance pods it would be put into.
    (
        "staging",
        {"postgres": {"cloudnative": {"backupSidecarResources": {"requests": {"cpu": "1500m"}}}}},
        "postgres.cloudnative.backupSidecarResources.requests.cpu",
        "exceeds postgres.cloudnative.backupSidecarResources.limits.cpu (1)",
    ),
    (
        "staging",
        {"postgres": {"cloudnative": {"backupSidecarResources": {"requests": {"memory": "2Gi"}}}}},
        "postgres.cloudnative.backupSidecarResources.requests.memory",
        "exceeds postgres.cloudnative.backupSidecarResources.limits.memory (1Gi)",
    ),
    ("dev", {"qdrant": {"replicationFactor": 2}}, "qdrant.replicationFactor", "exceeds qdrant.replicas (1)"),
    ("staging", {"qdrant": {"scaleDownTo": 2}}, "qdrant.scaleDownTo", "neither 0 nor qdrant.replicas (3)"),
    (
        "prod",
        {"qdrant": {"snapshotsStorage": {"size": "150Gi"}}},  # >= storage (100Gi), < 2x: a restore runs out
        "qdrant.snapshotsStorage.size",
        "smaller than twice qdrant.storage.size",
    ),
    (
        "staging",
        {"service": {"autoscaling": {"minReplicas": 6}}},
        "service.autoscaling.minReplicas",
        "must not exceed",
    ),
    ("staging", {"service": {"replicas": 9}}, "service.replicas", "must lie within"),
    ("dev", {"service": {"settings": {"chunkOverlap": 2000}}}, "service.settings.chunkOverlap", "smaller"),
    (
        "prod",
        {"service": {"settings": {"extractCpuSeconds": 120}}},
        "service.settings.extractTimeoutSeconds",
        "at least service.settings.extractCpuSeconds",
    ),
    ("staging", {"service": {"pdb": {"minAvailable": 2}}}, "service.pdb.minAvailable", "drains would block"),
    ("dev", {"postgres": {"mode": "managed"}}, "postgres.mode", "managed needs a cloud cluster"),
    ("dev", {"redis": {"mode": "managed"}}, "redis.mode", "managed needs a cloud cluster"),
    (
        "dev",
        {"redis": {"incluster": {"resources": {"limits": {"memory": "48Mi"}}}}},
        "redis.incluster.resources.limits.memory",
        "under 64Mi",
    ),
    ("staging", {"cluster": {"provider": "eks"}}, "gateway.className", "GKE-managed Gateway class"),
    ("staging", {"tls": {"email": ""}}, "tls.email", "ACME e-mail"),
    # Private prod: `auto` makes the load balancer internal, which Let's Encrypt's HTTP-01 cannot reach.
    ("prod", {"gateway": {"loadBalancer": "auto"}}, "gateway.loadBalancer", "HTTP-01"),
    (
        "staging",
        {"gateway": {"loadBalancer": "internal"}, "tls": {"issuer": "selfSigned"}},
        "gateway.className",
        "external GKE Gateway class",
    ),
    (
        "dev",
        {"backups": {"enabled": True}, "qdrant": {"snapshotsStorage": {"size": "20Gi"}}},
        "backups.enabled",
        "backups need a cloud cluster",
    ),
    (
        "staging",
        {"monitoring": {"alerting": {"email": {"to": "oncall"}}}},
        "monitoring.alerting.email.to",
        "not an e-mail address",
    ),
    (
        "staging",
        {
            "monitoring": {
                "alerting": {"email": {"to": "oncall@example.com", "smarthost": "smtp.example.com:587"}}
            }
        },
        "monitoring.alerting.email.sender",
        "sender address is required",
    ),
    (
        "staging",
        {"monitoring": {"alerting": {"email": {"to": "oncall@example.com", "sender": "alerts@example.com"}}}},
        "monitoring.alerting.email.smarthost",
        "SMTP server",
    ),
    # GKE Warden refuses kube-prometheus-stack's node exporter and its kube-system Services (tests/infra/test_autopilot.py).
    (
        "staging",
        {"cluster": {"gke": {"autopilot": True}}},
        "monitoring.enabled",
        "cannot run on GKE Autopilot",
    ),
    (
        "staging",
        {"monitoring": {"mode": "existing"}},
        "monitoring.mode",
        "needs a cluster the stack does not create",
    ),
    (
        "dev",
        {"monitoring": {"enabled": True, "mode": "existing", "existing": {"selectorLabels": ["release"]}}},
        "monitoring.existing.selectorLabels",
        "'release' is not a Kubernetes label as key=value",
    ),
    (
        "dev",
        {
            "monitoring": {
                "enabled": True,
                "mode": "existing",
                "existing": {"dashboardLabels": ["grafana_dashboard=has space"]},
            }
        },
        "monitoring.existing.dashboardLabels",
        "not a Kubernetes label",
    ),
    (
        "dev",
        {"monitoring": {"enabled": True, "mode": "existing", "alerting": {"slack": {"channel": "#rag"}}}},
        "monitoring.alerting.slack.channel",
        "route the alerts (labels severity and service) in the cluster's own Alertmanager",
    ),
    (
        "dev",
        {
            "monitoring": {
                "enabled": True,
                "mode": "existing",
                "alerting": {"email": {"to": "oncall@example.com"}},
            }
        },
        "monitoring.alerting.email.to",
        "cluster's own Alertmanager",
    ),
    ("prod", {"tls": {"enabled": False}}, "tls.enabled", "prod requires TLS"),
    ("staging", {"tls": {"enabled": False}}, "tls.enabled", "staging requires TLS"),
    ("prod", {"tls": {"issuer": "selfSigned"}}, "tls.issuer", "prod requires the letsencrypt issuer"),
    ("prod", {"tls": {"clusterIssuer": "shared"}}, "tls.clusterIssuer", "prod creates its own"),
    ("prod", {"qdrant": {"replicas": 2, "replicationFactor": 2}}, "qdrant.replicas", "at least 3"),
    ("prod", {"qdrant": {"replicationFactor": 1}}, "qdrant.replicationFactor", "replication factor >= 2"),
    (
        "prod",
        {"service": {"replicas": 1, "autoscaling": {"enabled": False}}},
        "service.replicas",
        "at least 2 service replicas",
    ),
    (
        "prod",
        {"cluster": {"eks": {"natGateways": "single"}}},
        "cluster.eks.natGateways",
        "prod requires perZone, got single",
    ),
    ("prod", {"postgres": {"managed": {"multiAz": False}}}, "postgres.managed.multiAz", "prod requires true"),
    (
        "prod",
        {"redis": {"managed": {"replicas": 0}}},
        "redis.managed.replicas",
        "at least 1 ElastiCache replica",
    ),
    (
        "prod",
        {
            "cluster": {"provider": "gke"},
            "gateway": {"className": "gke-l7-global-external-managed"},
            "redis": {"managed": {"tier": "BASIC"}},
        },
        "redis.managed.tier",
        "got BASIC",
    ),
    ("dev", {"llm": {"egressCidrs": ["10.0.0.1/8"]}}, "llm.egressCidrs", "not an IPv4/IPv6 network"),
    # EYES8 L11: a bare address is no CIDR: a NetworkPolicy ipBlock and EKS's publicAccessCidrs refuse it at `up`.
    ("dev", {"llm": {"egressCidrs": ["0.0.0.0"]}}, "llm.egressCidrs", "write '0.0.0.0/32'"),
    # EYES8 L10: cron fields are range-checked (the CronJob and the ScheduledBackup refuse them at `up`).
    (
        "staging",
        {"backups": {"schedule": "61 3 * * *"}},
        "backups.schedule",
        "'61' in the minute field is not 0-59",
    ),
    ("staging", {"backups": {"schedule": "@daily"}}, "backups.schedule", "a macro such as @daily"),
    # Sunday is 0 only: robfig/cron (the CronJob's and CloudNativePG's parser) bounds the day of week at 6.
    (
        "staging",
        {"backups": {"schedule": "0 3 * * 5-7"}},
        "backups.schedule",
        "'7' in the day of week field is not 0-6",
    ),
    ("dev", {"llm": {"egressExcept": ["nowhere"]}}, "llm.egressExcept", "not an IPv4/IPv6 network"),
    ("dev", {"llm": {"enabled": True, "model": "m"}}, "llm.baseUrl", "base URL is required"),
    ("dev", {"llm": {"enabled": True, "baseUrl": "https://x.example/v1"}}, "llm.model", "model name"),
    (
        "dev",
        {"llm": {"enabled": True, "baseUrl": "https://x.example/v1", "model": "m", "egressCidrs": []}},
        "llm.egressCidrs",
        "could not reach the provider",
    ),
    (
        "dev",
        {"llm": {"enabled": True, "baseUrl": "https://x.example/v1", "model": "m", "maxTokens": 8000}},
        "llm.maxTokens",
        "at least 256 tokens",
    ),
    (
        "prod",
        {"llm": {"enabled": True, "baseUrl": "http://x.example/v1", "model": "m"}},
        "llm.baseUrl",
        "only over https://",
    ),
    ("dev", {"embedding": {"extraModels": ["not a model"]}}, "embedding.extraModels", "invalid model name"),
    (
        "staging",
        {
            "image": DIGEST,
            "promotion": {
                "from": "dev",
                "digest": DIGEST,
                "at": "2026-11-22T08:00:00Z",
                "by": "ci",
                "models": ["BAAI/bge-small-en-v1.5"],
            },
            "embedding": {"model": "sentence-transformers/all-MiniLM-L6-v2"},
        },
        "embedding.model",
        "is not in the promoted image",
    ),
]

# (overrides on dev, key, fragment): a value of the wrong shape for each kind of field.
WRONG_TYPES: list[tuple[dict[str, Any], str, str]] = [
    ({"tls": {"enabled": "yes"}}, "tls.enabled", "expected true or false"),
    ({"qdrant": {"replicas": "3"}}, "qdrant.replicas", "expected an integer"),
    (
        {"monitoring": {"alerts": {"latencyP95Seconds": "fast"}}},
        "monitoring.alerts.latencyP95Seconds",
        "a number",
    ),
    ({"gateway": {"hostname": 42}}, "gateway.hostname", "expected a string"),
    (
        {"service": {"settings": {"corsOrigins": "https://a.example"}}},
        "service.settings.corsOrigins",
        "a list",
    ),
    ({"qdrant": 3}, "qdrant", "expected an object"),
    ({"qdrant": {"storage": "10Gi"}}, "qdrant.storage", "expected an object"),
    ({"tls": {"issuer": "zerossl"}}, "tls.issuer", "unknown value 'zerossl'"),
    (
        {"cluster": {"provider": "eks", "eks": {"natGateways": "perzone"}}},
        "cluster.eks.natGateways",
        "unknown value 'perzone'",
    ),
    ({"qdrant": {"replicas": 0}}, "qdrant.replicas", "out of range"),
    ({"backups": {"schedule": "daily"}}, "backups.schedule", "not 5 cron fields"),
    ({"tls": {"installCertManger": False}}, "tls.installCertManger", "unknown key"),
    ({"qdrant": {"replicas": None}}, "qdrant.replicas", "missing key"),
    ({"promotion": {"from": "dev", "digest": DIGEST, "at": "now"}}, "promotion.by", "missing key"),
    (
        {"ephemeral": {"name": "pr-1", "owner": "me", "expiresAt": "2026-03-01"}},
        "ephemeral.expiresAt",
        "RFC 3339",
    ),
    ({"qdrnt": {"replicas": 3}}, "qdrnt", "unknown key"),
    ({"embedding": {"model": "bge-small"}}, "embedding.model", "invalid value 'bge-small'"),
    (
        {"embedding": {"extraModels": ["BAAI/bge-small-en-v1.5"]}},
        "embedding.extraModels",
        "repeats embedding.model",
    ),
    (
        {
            "promotion": {
                "from": "dev",
                "digest": DIGEST,
                "at": "2026-03-01T00:00:00Z",
                "by": "ci",
                "models": [],
            }
        },
        "promotion.models",
        "non-empty list",
    ),
]


def error_of(stack: str, overrides: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        run_stack(stack, config_overrides=overrides)
    return caught.value


def assert_names(error: ConfigError, key: str, stack: str, fragment: str) -> None:
    assert error.key == f"rag:{key}"
    assert error.stack_file == f"Pulumi.{stack}.yaml"
    message = str(error)
    assert message.startswith(f"rag:{key} in Pulumi.{stack}.yaml: "), message
    assert fragment in message, message


@pytest.mark.parametrize(
    ("stack", "overrides", "key", "fragment"), RULES, ids=[f"{c[0]}:{c[2]}" for c in RULES]
)
def test_each_environment_rule_names_key_and_stack_file(
    stack: str, overrides: dict[str, Any], key: str, fragment: str
) -> None:
    assert_names(error_of(stack, overrides), key, stack, fragment)


@pytest.mark.parametrize(("overrides", "key", "fragment"), WRONG_TYPES, ids=[c[1] for c in WRONG_TYPES])
def test_each_kind_of_wrong_value_names_key_and_stack_file(
    overrides: dict[str, Any], key: str, fragment: str
) -> None:
    assert_names(error_of("dev", overrides), key, "dev", fragment)


def _config_paths() -> set[str]:
    paths: set[str] = set()

    def walk(value: Any, prefix: str) -> None:
        paths.add(prefix)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}")

    for key, default in declared_defaults().items():
        walk(default, key)
    return paths


def test_every_rule_has_an_error_case() -> None:
    """Each config path the rules mention (as a string literal) is the key of at least one RULES case."""
    source = "\n".join(
        textwrap.dedent(inspect.getsource(rules))
        for rules in (
            config_module._check_rules,
            config_module._check_cnpg_major_upgrade,
            config_module._check_managed_postgres,
        )
    )
    tree = ast.parse(source)
    literals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    ruled = literals & _config_paths()
    assert len(ruled) >= 15  # the rules are found at all
    assert ruled == {key for _stack, _overrides, key, _fragment in RULES}


def test_the_committed_stacks_and_a_correct_override_still_pass() -> None:
    """The cases fail because of their one change: the same stacks run clean without it."""
    assert (
        run_stack("prod", config_overrides={"qdrant": {"replicas": 4}})
        .outputs["serviceUrl"]
        .startswith("https://")
    )


def _staging_with(extra: dict[str, Any]) -> dict[str, Any]:
    import yaml

    from infra.offline import PROJECT_DIR

    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.staging.yaml").read_text(encoding="utf-8"))
    return {**doc["config"], **extra}


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        # A typo'd namespace: the CLI passes it through, so the block would silently keep its defaults.
        ({"rga:qdrant": {"replicas": 3}}, "rga:qdrant", "did you mean rag:qdrant?"),
        # No namespace: the CLI cannot even load the file (config.ParseKey).
        ({"qdrant": {"replicas": 3}}, "qdrant", "keys are <namespace>:<name>"),
        # A secret key in plain YAML would sit in git; the CLI only encrypts what `config set --secret` wrote.
        (
            {"rag:serviceApiKeys": '{"k": "t"}'},
            "rag:serviceApiKeys",
            "config set --secret rag:serviceApiKeys",
        ),
        ({"rag:slackWebhookUrl": "https://hooks.slack.example/x"}, "rag:slackWebhookUrl", "plain text"),
    ],
    ids=["namespace-typo", "no-namespace", "plain-api-keys", "plain-webhook"],
)
def test_a_stack_file_key_the_program_would_silently_misread_is_refused(
    extra: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        run_stack("staging", stack_config=_staging_with(extra))
    assert caught.value.key == key
    assert caught.value.stack_file == "Pulumi.staging.yaml"
    assert fragment in str(caught.value), str(caught.value)


def test_encrypted_secrets_and_provider_namespaces_pass() -> None:
    """The refusals above are about the key, not the feature: the encrypted form and provider keys are fine."""
    stack_config = _staging_with(
        {
            "rag:slackWebhookUrl": {"secure": "v1:AAAA"},
            "gcp:region": "europe-west1",
            "pulumi:disable-default-providers": ["kubernetes"],
        }
    )
    result = run_stack("staging", stack_config=stack_config)
    assert result.outputs["serviceUrl"].startswith("https://")


INLINE_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443"}}]
contexts: [{name: kind-rag, context: {cluster: c, user: u}}]
current-context: kind-rag
users: [{name: u, user: {token: abc.def}}]
"""


def test_an_inline_kubeconfig_with_credentials_in_plain_text_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        run_stack("dev", config_overrides={"cluster": {"existing": {"kubeconfig": INLINE_KUBECONFIG}}})
    assert caught.value.key == "rag:cluster.existing.kubeconfig"
    assert caught.value.stack_file == "Pulumi.dev.yaml"
    assert "credentials (token)" in str(caught.value)
    assert "pulumi config set --path --secret rag:cluster.existing.kubeconfig" in str(caught.value)


def test_a_kubeconfig_path_or_one_without_credentials_is_not_a_secret() -> None:
    from infra.config import kubeconfig_credentials

    assert kubeconfig_credentials("~/.kube/config") == []
    assert kubeconfig_credentials("/etc/rancher/k3s/k3s.yaml") == []
    # EKS/GKE style: an exec plugin fetches a short-lived token; the file itself grants nothing.
    exec_plugin = INLINE_KUBECONFIG.replace(
        "{token: abc.def}", "{exec: {command: aws, args: [eks, get-token]}}"
    )
    assert kubeconfig_credentials(exec_plugin) == []
    both = INLINE_KUBECONFIG.replace("{token: abc.def}", '{client-key-data: "LS0t", password: "p"}')
    assert kubeconfig_credentials(both) == ["client-key-data", "password"]
    assert kubeconfig_credentials("{not yaml: [") == []
    result = run_stack("dev", config_overrides={"cluster": {"existing": {"kubeconfig": exec_plugin}}})
    assert result.outputs["serviceUrl"].startswith("https://")


def test_a_kubeconfig_set_with_path_secret_runs_offline_as_a_secret() -> None:
    """`pulumi config set --path --secret rag:cluster.existing.kubeconfig` writes `{secure: ...}` inside the object:
    `make plan` (the offline runner) takes it as the engine does, rag:cluster then being a secret key."""
    import yaml

    from infra.offline import PROJECT_DIR, cli_config

    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.dev.yaml").read_text(encoding="utf-8"))["config"]
    doc["rag:cluster"]["existing"]["kubeconfig"] = {"secure": "v1:AAAA"}
    values, secret_keys = cli_config("dev", stack_config=doc)
    assert "rag:cluster" in secret_keys
    assert json.loads(values["rag:cluster"])["existing"]["kubeconfig"] == "offline-secret-kubeconfig"
    assert run_stack("dev", stack_config=doc).outputs["serviceUrl"].startswith("https://")


# --------------------------------------------------------------------------------- secrets the service would refuse
@pytest.mark.parametrize(
    ("stack", "keys", "fragment"),
    [
        # EYES8 L12: the service refuses keys under 32 characters in production; found at start, not at `up`.
        ("prod", '{"acme": "tenant-a"}', "1 key(s) shorter than 32 characters"),
        ("staging", "not-a-pair", "the service would refuse it: API_KEYS entries must look like key:tenant"),
        ("dev", '{"k": "bad tenant!"}', "is not 1-64 characters"),
    ],
)
def test_service_api_keys_the_service_would_refuse_are_a_config_error(
    stack: str, keys: str, fragment: str
) -> None:
    error = error_of(stack, {"serviceApiKeys": keys})
    assert_names(error, "serviceApiKeys", stack, fragment)
    assert keys not in str(error)  # a secret is never echoed


def test_service_api_keys_the_service_accepts_pass() -> None:
    long_key = "k" * 32
    run_stack("prod", config_overrides={"serviceApiKeys": f'{{"{long_key}": "acme"}}'})
    run_stack("dev", config_overrides={"serviceApiKeys": "short:acme"})  # only production asks for length


def test_an_email_receiver_with_a_login_but_no_smtp_password_is_refused() -> None:
    """EYES8 L3: Alertmanager would log in with an empty password at the first alert and fail every e-mail."""
    email = {"to": "ops@example.com", "sender": "rag@example.com", "smarthost": "smtp.example.com:587"}
    error = error_of("staging", {"monitoring": {"alerting": {"email": {**email, "username": "u"}}}})
    assert_names(error, "smtpPassword", "staging", "monitoring.alerting.email.username is set")
    run_stack("staging", config_overrides={"monitoring": {"alerting": {"email": email}}})
    run_stack(
        "staging",
        config_overrides={
            "monitoring": {"alerting": {"email": {**email, "username": "u"}}},
            "smtpPassword": "pw",
        },
    )
