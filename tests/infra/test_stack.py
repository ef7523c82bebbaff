"""The config -> component args mapping of infra/stack.py, unit-tested without the Pulumi engine.

Each function gets a real stack file's checked config (`parse_config`) and a plain `ClusterTarget` standing in
for what `build_cluster` returns; no resource is created. The whole program, wired by `build`, is covered by
test_program.py under mocks.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from infra import stack
from infra.clusters import ClusterTarget, Registry
from infra.components import postgres as pg
from infra.components.backups import backup_selector
from infra.components.gateway import GKE_HEALTH_CHECK_CIDRS
from infra.components.specs import EgressTarget
from infra.config import PROJECT_FILE, PROMOTED_ENVIRONMENTS, StackConfig, deep_merge, parse_config
from infra.offline import PROMOTED_PLACEHOLDER
from tests.infra.conftest import target_overrides

ROOT = PROJECT_FILE.parent
DIGEST = "ghcr.io/example/rag-service@sha256:" + "c" * 64
NETWORKS: dict[str, dict[str, Any]] = {
    "existing": {},
    "eks": {"vpc_id": "vpc-1", "private_subnet_ids": ["subnet-a", "subnet-b"], "vpc_cidr": "10.0.0.0/16"},
    "gke": {
        "network_id": "projects/p/global/networks/rag",
        "private_services_cidr": "10.100.0.0/16",
        "project": "rag-staging",
        "private_services": "peering",
    },
}


def config(stack_name: str, **changes: Any) -> StackConfig:
    """A committed stack file's config, with `changes` merged into its top-level objects."""
    document = yaml.safe_load((ROOT / f"Pulumi.{stack_name}.yaml").read_text())
    values = {
        key.split(":", 1)[1]: value for key, value in document["config"].items() if key.startswith("rag:")
    }
    if values.get("environment") in PROMOTED_ENVIRONMENTS:
        values.setdefault("image", PROMOTED_PLACEHOLDER)  # what a promotion sets (as the offline runner does)
    for key, change in changes.items():
        if ":" in key:
            continue  # another namespace's key (target_overrides unsets prod's aws:*): not rag config
        values[key] = deep_merge(values.get(key), change) if isinstance(change, dict) else change
    return parse_config(values, stack_name)


def target(provider: str = "existing", *, storage_class: str = "standard", **extra: Any) -> ClusterTarget:
    """A cluster target as `build_cluster` would return it, with plain values where it would have Outputs."""
    clouds = {"eks": ("aws", "eu-west-1"), "gke": ("gcp", "europe-west1"), "existing": (None, "")}
    cloud, region = clouds[provider]
    values: dict[str, Any] = {
        "provider_name": provider,
        "k8s_provider": None,
        "kubeconfig": "apiVersion: v1",
        "registry": Registry(
            repository="registry.example.com/rag/rag-service", server="registry.example.com"
        ),
        "storage_class": storage_class,
        "region": region,
        "network": NETWORKS[provider],
        "cloud": cloud,
        "depends_on": ("node-pool",),
    }
    values.update(extra)
    return ClusterTarget(**values)


def stores() -> stack.DataStores:
    return stack.DataStores(
        qdrant_url="http://qdrant:6333",
        qdrant_api_key="qk",
        qdrant_replication_factor=2,
        qdrant_shard_number=3,
        database_url="postgresql+psycopg://rag@pg/rag",
        redis_url="redis://redis:6379/0",
        egress=(EgressTarget(name="qdrant", port=6333), EgressTarget(name="postgres", port=5432)),
    )


def test_resources_and_storage_class_fall_back_to_the_cluster() -> None:
    cfg = config("dev")
    res = stack.resources(cfg.service.resources)
    assert (res.cpu_request, res.memory_request, res.cpu_limit, res.memory_limit) == (
        "100m",
        "512Mi",
        "500m",
        "1536Mi",
    )
    assert stack.storage_class("fast", target()) == "fast"
    assert stack.storage_class("", target(storage_class="gp3")) == "gp3"
    assert stack.storage_class("", target(storage_class="")) is None  # the cluster's default class


def test_qdrant_args_follow_the_stack_and_admit_the_backup_job_only_with_backups() -> None:
    prod = stack.qdrant_args(config("prod"), target("eks", storage_class="gp3"), api_key="k", depends_on=())
    assert (prod.replicas, prod.replication_factor, prod.protect) == (3, 2, True)
    assert prod.image == f"qdrant/qdrant:{config('prod').qdrant.version}-unprivileged"
    assert prod.storage_class == "gp3"
    assert prod.service_monitor is True
    assert backup_selector(stack.BACKUPS_NAME) in prod.client_selectors
    dev = stack.qdrant_args(config("dev"), target(), api_key="k")
    assert (dev.replicas, dev.protect, dev.service_monitor) == (1, False, False)
    assert dev.client_selectors == stack.CLIENTS


@pytest.mark.parametrize(
    ("provider", "mode", "expected"),
    [("existing", "cloudnative", "cloudnative"), ("eks", "managed", "rds"), ("gke", "managed", "cloudsql")],
)
def test_postgres_mode_per_target(provider: str, mode: str, expected: str) -> None:
    cfg = config("prod", **{**target_overrides("prod", provider), "postgres": {"mode": mode}})
    args = stack.postgres_args(cfg, target(provider), password="pw", ready=("namespace",))
    assert args.mode == expected
    # In-cluster stores wait for the namespace; managed ones only for the cluster's nodes/network.
    assert args.depends_on == (("namespace",) if expected == "cloudnative" else ("node-pool",))


def test_postgres_managed_sizes_and_network() -> None:
    args = stack.postgres_args(config("prod"), target("eks"), password="pw")
    assert args.mode == "rds"
    assert args.allowed_cidrs == ("10.0.0.0/16",)
    assert args.subnet_ids == ("subnet-a", "subnet-b")
    assert args.max_allocated_storage_gb >= 200
    assert args.max_allocated_storage_gb >= 4 * args.allocated_storage_gb
    assert args.availability_type == "REGIONAL"
    assert args.protect is True
    gke = stack.postgres_args(
        config(
            "prod",
            cluster={"provider": "gke", "gke": {"project": "proj-1"}},
            gateway={"className": "gke-l7-global-external-managed"},
        ),
        target("gke"),
        password="pw",
    )
    assert (gke.mode, gke.private_network, gke.region) == (
        "cloudsql",
        NETWORKS["gke"]["network_id"],
        "europe-west1",
    )
    assert gke.database_version.startswith("POSTGRES_")
    # Cloud SQL's private IP comes from the private services range: the service's egress goes there, not anywhere.
    assert gke.allowed_cidrs == ("10.100.0.0/16",)


def test_redis_args_per_target() -> None:
    managed = stack.redis_args(config("prod"), target("eks"), password="pw")
    assert managed.mode == "elasticache"
    assert managed.num_cache_clusters == 1 + config("prod").redis.managed.replicas
    assert managed.allowed_cidrs == ("10.0.0.0/16",)
    memorystore = stack.redis_args(
        config(
            "prod",
            cluster={"provider": "gke", "gke": {"project": "proj-1"}},
            gateway={"className": "gke-l7-global-external-managed"},
        ),
        target("gke"),
        password="pw",
    )
    assert memorystore.mode == "memorystore"
    assert memorystore.allowed_cidrs == ("10.100.0.0/16",)
    incluster = stack.redis_args(config("dev"), target(), password="pw", ready=("namespace",))
    assert (incluster.mode, incluster.depends_on) == ("incluster", ("namespace",))
    assert incluster.image.startswith("valkey/valkey:")


def test_image_args_deploy_a_promoted_digest_without_building() -> None:
    promoted = stack.image_args(config("staging", image=DIGEST), target(), git_sha="abc", context_dir=".")
    assert (promoted.existing_ref, promoted.git_sha) == (DIGEST, None)
    built = stack.image_args(config("dev"), target(), git_sha="abc", context_dir=".")
    assert (built.existing_ref, built.git_sha, built.registry) == (None, "abc", None)
    with_creds = target(
        registry=Registry(repository="r.example.com/x/y", server="r.example.com", username="u", password="p")
    )
    auth = stack.image_args(config("dev"), with_creds, git_sha="abc", context_dir=".").registry
    assert auth is not None
    assert (auth.address, auth.username, auth.password) == ("r.example.com", "u", "p")


def test_service_args_map_settings_scaling_and_network() -> None:
    args = stack.service_args(
        config("staging"),
        image=DIGEST,
        stores=stores(),
        api_keys="{}",
        service_account_annotations={"iam.gke.io/gcp-service-account": "sa@p"},
    )
    assert args.environment == "staging"
    assert args.autoscaling is not None
    assert (args.autoscaling.min_replicas, args.autoscaling.max_replicas) == (2, 5)
    assert "JOBS_MAX_CONCURRENCY" not in args.settings  # the worker's concurrency sets it
    assert args.worker.concurrency == config("staging").service.settings.jobsMaxConcurrency
    # A GKE-managed Gateway class reaches the pods from Google's ranges, not from proxy pods.
    assert args.network.gateway_cidrs == GKE_HEALTH_CHECK_CIDRS
    assert args.network.gateway_namespaces == ()
    assert args.network.egress == stores().egress
    assert (args.qdrant_replication_factor, args.service_monitor) == (2, True)

    dev = stack.service_args(
        config("dev"), image=DIGEST, stores=stores(), api_keys="{}", service_account_annotations={}
    )
    assert dev.environment == "development"
    assert dev.autoscaling is None
    assert dev.network.gateway_namespaces == ("envoy-gateway-system",)  # rag:gateway.proxyNamespaces' default
    assert dev.settings["LOG_LEVEL"] == "DEBUG"


@pytest.mark.parametrize(
    ("tls", "kind", "name"),
    [
        ({}, "ClusterIssuer", None),
        ({"installCertManager": False}, "Issuer", None),
        ({"installCertManager": False, "clusterIssuer": "shared"}, "Issuer", "shared"),
    ],
)
def test_gateway_args_choose_the_issuer(tls: dict, kind: str, name: str | None) -> None:
    args = stack.gateway_args(config("dev", tls=tls), service_name="rag", service_port=8000)
    assert (args.issuer, args.issuer_kind, args.existing_cluster_issuer) == ("selfsigned", kind, name)
    assert args.entry == "gateway"
    prod = stack.gateway_args(config("prod"), service_name="rag", service_port=8000)
    assert (prod.issuer, prod.acme_email) == ("letsencrypt-prod", config("prod").tls.email)


class _Known:
    """Stands in for the account ID Output (no engine here): apply runs at once."""

    def __init__(self, value: str) -> None:
        self.value = value

    def apply(self, func: Any) -> Any:
        return func(self.value)


def test_backup_bucket_name_is_derived_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    staging = config("staging")
    assert stack.backup_bucket(staging, target("gke")) == "rag-staging-qdrant-backups-rag-staging"
    # On AWS the name carries the account ID, known only to the provider: an Output (tests/infra/
    # test_backup_bucket.py checks the resolved names); its form is s3_bucket_name's.
    monkeypatch.setattr(stack, "aws_account_id", lambda cluster: _Known("123456789012"))
    assert (
        stack.backup_bucket(config("prod"), target("eks"))
        == "rag-prod-qdrant-backups-123456789012-eu-west-1-an"
    )
    assert stack.s3_bucket_name("prod", "123456789012", "eu-west-1") == (
        "rag-prod-qdrant-backups-123456789012-eu-west-1-an"
    )
    long = target("gke", network={"project": "p" * 30 + "-x" * 20})
    assert len(stack.backup_bucket(config("staging"), long)) <= 63
    named = config("prod", backups={"bucket": "my-bucket"})
    assert stack.backup_bucket(named, target("eks")) == "my-bucket"


class _Qdrant:
    peer_urls = ["http://qdrant-0:6333"]
    api_key_secret_name = "qdrant-api-key"
    egress_target = EgressTarget(name="qdrant", port=6333)


def test_backups_args_per_cloud() -> None:
    gcp = stack.backups_args(
        config("staging"),
        target("gke"),
        qdrant=_Qdrant(),
        service_account_annotations={},  # type: ignore[arg-type]
    )
    assert (gcp.cloud, gcp.bucket_location, gcp.aws_region, gcp.create_bucket) == (
        "gcp",
        "EUROPE-WEST1",
        None,
        True,
    )
    assert gcp.qdrant_peer_urls == ("http://qdrant-0:6333",)
    aws = stack.backups_args(
        config("prod", backups={"bucket": "b-1"}),
        target("eks"),
        qdrant=_Qdrant(),  # type: ignore[arg-type]
        service_account_annotations={},
    )
    assert (aws.cloud, aws.aws_region, aws.create_bucket, aws.protect) == ("aws", "eu-west-1", False, True)
    with pytest.raises(ValueError, match="cloud"):
        stack.backups_args(config("dev"), target(), qdrant=_Qdrant(), service_account_annotations={})  # type: ignore[arg-type]


def test_namespace_and_outputs_carry_the_ephemeral_and_promotion_records() -> None:
    record = {"name": "pr-1", "owner": "octocat", "expiresAt": "2026-03-02T12:00:00Z"}
    cfg = config("dev", namespace="pr-1", ephemeral=record)
    meta = stack.namespace_metadata(cfg)
    assert meta["name"] == "pr-1"
    assert meta["annotations"] == {
        "rag.dev/ephemeral-owner": "octocat",
        "rag.dev/expires-at": record["expiresAt"],
    }
    assert meta["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert stack.namespace_metadata(config("dev"))["annotations"] == {}

    out = stack.outputs(cfg, target(), service_url="https://x", image_ref=DIGEST, qdrant_endpoint="http://q")
    assert list(out) == [
        "serviceUrl",
        "ingressAddress",
        "imageDigest",
        "qdrantEndpoint",
        "kubeconfig",
        "promotion",
        "ephemeral",
        "apiKeys",
        "adminApiKey",
        "embedding",
        "tlsIssuer",
        "grafana",
        "grafanaAdminPassword",
        "alertReceivers",
    ]
    assert (out["ephemeral"], out["promotion"]) == (record, None)
    assert out["adminApiKey"] is None
    assert out["embedding"] == {
        "model": "BAAI/bge-small-en-v1.5",
        "chunkSize": 200,
        "chunkOverlap": 32,
        "imageModels": ["BAAI/bge-small-en-v1.5"],
    }
    assert out["tlsIssuer"] == "selfSigned"
    assert (out["apiKeys"], out["grafana"], out["alertReceivers"]) == (None, None, None)


@pytest.mark.parametrize("version", ["16", "17", "18"])
def test_postgres_version_picks_the_pinned_cloudnative_image_of_that_major(version: str) -> None:
    """`postgres.version` chooses the operand image: pinned by minor and digest, never the floating major tag."""
    cfg = config("dev", postgres={"version": version})
    image = stack.postgres_args(cfg, target(), password="pw").image
    assert image == pg.PG_IMAGES[version]
    assert pg.pg_image_major(image) == int(version)
    assert "@sha256:" in image
