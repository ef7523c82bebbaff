"""Stack config: Pulumi.yaml declares every key, stack files only override, and errors name key + stack file."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import pytest
import yaml

from infra.config import (
    PROJECT_FILE,
    PROMOTED_ENVIRONMENTS,
    ConfigError,
    StackConfig,
    declared_config,
    declared_defaults,
    deep_merge,
    parse_config,
)
from infra.offline import PROMOTED_PLACEHOLDER, cli_config, run_stack

ROOT = PROJECT_FILE.parent
DIGEST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rag-service@sha256:" + "a" * 64


def stack_values(stack: str) -> dict[str, Any]:
    """The bare-keyed values a stack file sets."""
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    values = {
        key.split(":", 1)[1]: value for key, value in document["config"].items() if key.startswith("rag:")
    }
    if values.get("environment") in PROMOTED_ENVIRONMENTS:
        # What a promotion sets and the committed file never holds (as the offline runner does).
        values.setdefault("image", PROMOTED_PLACEHOLDER)
    return values


def prod(**changes: Any) -> StackConfig:
    """Parse prod's stack values with `changes` merged into the named top-level objects."""
    values = stack_values("prod")
    for key, change in changes.items():
        values[key] = deep_merge(values.get(key), change) if key in values else change
    return parse_config(values, "prod")


def leaf_paths(cls: type, prefix: str = "") -> set[str]:
    """Dotted paths of every leaf field of a config dataclass."""
    paths: set[str] = set()
    hints = get_type_hints(cls)
    for item in fields(cls):
        hint = hints[item.name]
        if is_dataclass(hint):
            paths |= leaf_paths(hint, f"{prefix}{item.name}.")
        else:
            paths.add(f"{prefix}{item.name}")
    return paths


def default_paths(value: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every leaf of a declared default."""
    if isinstance(value, dict) and value:
        paths: set[str] = set()
        for key, item in value.items():
            paths |= default_paths(item, f"{prefix}.{key}" if prefix else key)
        return paths
    return {prefix}


def test_project_declares_the_runtime_and_main() -> None:
    project = yaml.safe_load(PROJECT_FILE.read_text())
    assert project["name"] == "rag"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}
    assert project["main"] == "infra/"
    assert (ROOT / project["main"] / "__main__.py").is_file()


def test_every_key_has_a_description_default_and_valid_type() -> None:
    for key, declaration in declared_config().items():
        assert declaration.get("description"), key
        assert "default" in declaration, key
        if isinstance(declaration["default"], dict):
            # The project schema knows no object type: grouped keys are declared by their default alone.
            assert "type" not in declaration, key
        else:
            assert declaration["type"] in {"string", "integer", "boolean", "array"}, key


def test_declarations_use_only_the_project_schema_attributes() -> None:
    # Pulumi's project schema: a declaration may carry type, items, description, secret, default and value.
    for key, declaration in declared_config().items():
        assert set(declaration) <= {"type", "items", "description", "secret", "default", "value"}, key
        assert ":" not in key, key  # bare keys are the project's namespace (rag:)


def test_every_config_field_is_declared_in_pulumi_yaml() -> None:
    defaults = declared_defaults()
    for item in fields(StackConfig):
        hint = get_type_hints(StackConfig)[item.name]
        if item.name in {"stack", "promotion_raw", "ephemeral_raw"}:
            continue
        assert item.name in defaults, item.name
        if is_dataclass(hint):
            assert leaf_paths(hint) == default_paths(defaults[item.name]), item.name


def test_defaults_alone_are_a_valid_dev_config() -> None:
    config = parse_config({}, "dev")
    assert config.environment == "dev"
    assert config.cluster.provider == "existing"
    assert config.protect is False
    assert config.promotion is None
    assert config.ephemeral is None


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_stack_files_only_set_declared_keys(stack: str) -> None:
    declared = declared_config()
    for key, value in stack_values(stack).items():
        assert key in declared, key
        if isinstance(value, dict):
            assert default_paths(value) <= default_paths(declared[key]["default"]), key


def test_environment_matrix() -> None:
    dev, staging, production = (parse_config(stack_values(s), s) for s in ("dev", "staging", "prod"))
    assert (dev.cluster.provider, staging.cluster.provider, production.cluster.provider) == (
        "existing",
        "gke",
        "eks",
    )
    assert (dev.qdrant.replicas, staging.qdrant.replicas, production.qdrant.replicas) == (1, 3, 3)
    assert production.qdrant.replicationFactor >= 2
    assert (dev.tls.issuer, staging.tls.issuer, production.tls.issuer) == (
        "selfSigned",
        "letsencrypt-staging",
        "letsencrypt",
    )
    assert (dev.postgres.mode, staging.postgres.mode, production.postgres.mode) == (
        "cloudnative",
        "cloudnative",
        "managed",
    )
    assert (dev.redis.mode, staging.redis.mode, production.redis.mode) == (
        "incluster",
        "incluster",
        "managed",
    )
    assert dev.service.replicas == 1
    assert not dev.service.autoscaling.enabled
    scaling = staging.service.autoscaling
    assert (scaling.enabled, scaling.minReplicas, scaling.maxReplicas) == (True, 2, 5)
    scaling = production.service.autoscaling
    assert (scaling.enabled, scaling.minReplicas, scaling.maxReplicas) == (True, 3, 10)
    assert [c.protect for c in (dev, staging, production)] == [False, False, True]


def test_partial_stack_objects_merge_over_the_declared_default() -> None:
    config = prod(qdrant={"replicas": 5})
    assert config.qdrant.replicas == 5
    # Keys the stack does not name keep their declared default.
    assert config.qdrant.pdb.enabled is True
    assert config.qdrant.version == "v1.15.4"  # the version prod's stack file pins (deployed on 1.15)


def test_service_settings_become_service_environment_variables() -> None:
    env = prod(
        service={"settings": {"chunkSize": 256, "corsOrigins": ["https://a.example"]}}
    ).service.settings.env()
    assert env["CHUNK_SIZE"] == "256"
    assert env["CORS_ORIGINS"] == '["https://a.example"]'
    assert env["RATE_LIMIT_ENABLED"] == "true"
    assert env["QDRANT_COLLECTION_PREFIX"] == "documents"


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_stack_s_service_settings_are_variables_the_service_accepts(stack: str) -> None:
    """The ConfigMap's settings are real service settings with values its validation accepts (a name typo or an
    out-of-range budget would otherwise surface only as a crash-looping pod)."""
    from service.app.core.config import Settings

    env = parse_config(stack_values(stack), stack).service.settings.env()
    assert {name.lower() for name in env} <= set(Settings.model_fields)
    settings = Settings(_env_file=None, **{name.lower(): value for name, value in env.items()})
    assert settings.extract_memory_mb == int(env["EXTRACT_MEMORY_MB"])
    assert settings.extract_timeout_seconds >= settings.extract_cpu_seconds


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"qdrant": {"replicas": 2}}, "rag:qdrant.replicas", "at least 3"),
        ({"qdrant": {"replicationFactor": 1}}, "rag:qdrant.replicationFactor", ">= 2"),
        ({"tls": {"enabled": False}}, "rag:tls.enabled", "prod requires TLS"),
        ({"tls": {"issuer": "letsencrypt-staging"}}, "rag:tls.issuer", "letsencrypt"),
        ({"qdrant": {"replicas": "three"}}, "rag:qdrant.replicas", "expected an integer"),
        ({"qdrant": {"replicas": 99}}, "rag:qdrant.replicas", "out of range"),
        ({"qdrant": {"replica": 3}}, "rag:qdrant.replica", "unknown key"),
        ({"postgres": {"mode": "bitnami"}}, "rag:postgres.mode", "unknown value"),
        ({"cluster": {"provider": "aks"}}, "rag:cluster.provider", "unknown value"),
        ({"image": "rag-service:latest"}, "rag:image", "immutable digest"),
        ({"image": "repo@sha256:abc"}, "rag:image", "immutable digest"),
        (
            {"service": {"autoscaling": {"minReplicas": 11}}},
            "rag:service.autoscaling.minReplicas",
            "must not exceed",
        ),
        ({"qdrant": {"storage": {"size": "lots"}}}, "rag:qdrant.storage.size", "invalid value"),
        ({"qdrant": {"replicationFactor": 4}}, "rag:qdrant.replicationFactor", "exceeds"),
        ({"tls": {"email": ""}}, "rag:tls.email", "ACME"),
        ({"tls": {"clusterIssuer": "letsencrypt-prod"}}, "rag:tls.clusterIssuer", "prod creates its own"),
        ({"tls": {"clusterIssuer": "Shared_Issuer"}}, "rag:tls.clusterIssuer", "invalid value"),
        ({"cluster": {"provider": "gke", "gke": {"project": ""}}}, "rag:cluster.gke.project", "missing key"),
        (
            {"qdrant": {"resources": {"limits": {"memory": None}}}},
            "rag:qdrant.resources.limits.memory",
            "missing key",
        ),
        ({"promotion": {"from": "staging"}}, "rag:promotion.digest", "missing key"),
        (
            {"ephemeral": {"name": "pr-1", "owner": "me", "expiresAt": "tomorrow"}},
            "rag:ephemeral.expiresAt",
            "RFC 3339",
        ),
        ({"service": {"settings": {"chunkOverlap": 500}}}, "rag:service.settings.chunkOverlap", "smaller"),
        ({"qdrant": 3}, "rag:qdrant", "expected an object"),
        ({"nonsense": 1}, "rag:nonsense", "unknown key"),
    ],
)
def test_errors_name_the_key_and_the_stack_file(changes: dict, key: str, fragment: str) -> None:
    values = stack_values("prod")
    for name, change in changes.items():
        values[name] = deep_merge(values.get(name), change) if name in values else change
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "prod")
    assert caught.value.key == key
    assert caught.value.stack_file == "Pulumi.prod.yaml"
    message = str(caught.value)
    assert message.startswith(f"{key} in Pulumi.prod.yaml: ")
    assert fragment in message


def test_gke_gateway_classes_need_gke() -> None:
    with pytest.raises(ConfigError, match=r"^rag:gateway\.className in Pulumi\.staging\.yaml: gke-l7-"):
        parse_config({**stack_values("staging"), "cluster": {"provider": "eks"}}, "staging")
    moved = parse_config(
        {**stack_values("staging"), "cluster": {"provider": "eks"}, "gateway": {"className": "eg"}}, "staging"
    )
    assert moved.gateway.className == "eg"


def test_managed_databases_need_a_cloud_cluster() -> None:
    with pytest.raises(ConfigError, match=r"^rag:postgres\.mode in Pulumi\.dev\.yaml: managed needs a cloud"):
        parse_config({"postgres": {"mode": "managed"}}, "dev")


def test_valid_promotion_and_ephemeral_records_are_kept() -> None:
    config = prod(
        promotion={"from": "staging", "digest": DIGEST, "at": "2026-11-22T08:00:00Z", "by": "ci"},
        ephemeral={"name": "pr-7", "owner": "alice", "expiresAt": "2026-11-23T08:00:00Z"},
    )
    assert config.promotion is not None
    assert config.promotion.from_ == "staging"
    assert config.promotion_raw is not None
    assert config.promotion_raw["from"] == "staging"
    assert config.ephemeral is not None
    assert config.ephemeral.expiresAt == "2026-11-23T08:00:00Z"


def test_cli_config_is_what_the_cli_passes() -> None:
    values, secret_keys = cli_config("prod")
    # Every declared key is present, `rag:`-prefixed, as a string; objects are JSON; a stack object replaces
    # the declared default whole (the program merges it back over the default itself).
    # (and prod's one provider key, its AWS account pin, as the CLI passes it: infra/clusters/eks.py reads it).
    assert set(values) == {f"rag:{key}" for key in declared_config()} | {"aws:allowedAccountIds"}
    assert yaml.safe_load(values["aws:allowedAccountIds"]) == ["111122223333"]
    assert all(isinstance(value, str) for value in values.values())
    assert values["rag:environment"] == "prod"
    # A committed prod file names no image (promotions set it; the backend keeps it): offline, a placeholder.
    assert values["rag:image"] == PROMOTED_PLACEHOLDER
    assert cli_config("dev")[0]["rag:image"] == ""  # dev builds
    assert yaml.safe_load(values["rag:qdrant"]) == stack_values("prod")["qdrant"]
    assert values["rag:promotion"] == "{}"
    assert secret_keys == []


def test_cli_config_overrides_merge_and_mark_secrets() -> None:
    values, secret_keys = cli_config(
        "dev", config_overrides={"rag:qdrant": {"replicas": 3}, "qdrantApiKey": "k"}
    )
    qdrant = yaml.safe_load(values["rag:qdrant"])
    assert qdrant["replicas"] == 3
    assert qdrant["replicationFactor"] == 1  # from the stack file
    assert values["rag:qdrantApiKey"] == "k"
    assert secret_keys == ["rag:qdrantApiKey"]


def test_encrypted_stack_values_become_offline_secrets(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text(PROJECT_FILE.read_text())
    (tmp_path / "Pulumi.dev.yaml").write_text("config:\n  rag:qdrantApiKey:\n    secure: v1:AAAA\n")
    values, secret_keys = cli_config("dev", project_dir=tmp_path)
    assert values["rag:qdrantApiKey"] == "offline-secret-qdrantApiKey"
    assert secret_keys == ["rag:qdrantApiKey"]


def test_run_stack_raises_config_errors_naming_key_and_file() -> None:
    with pytest.raises(ConfigError) as caught:
        run_stack("prod", config_overrides={"qdrant": {"replicas": 1, "replicationFactor": 1}})
    assert str(caught.value).startswith("rag:qdrant.replicas in Pulumi.prod.yaml:")
    with pytest.raises(ConfigError, match=r"^rag:tls\.enabled in Pulumi\.prod\.yaml: prod requires TLS"):
        run_stack("prod", config_overrides={"tls": {"enabled": False}})
    with pytest.raises(ConfigError, match=r"^rag:qdrant\.replicas in Pulumi\.dev\.yaml: missing key"):
        run_stack("dev", config_overrides={"qdrant": {"replicas": None}})


def test_backups_need_a_cloud_cluster() -> None:
    with pytest.raises(
        ConfigError, match=r"^rag:backups\.enabled in Pulumi\.dev\.yaml: backups need a cloud"
    ):
        parse_config({"backups": {"enabled": True}}, "dev")
    assert parse_config({"backups": {"enabled": True}, "cluster": {"provider": "eks"}}, "dev").backups.enabled


def test_an_existing_cluster_issuer_needs_no_acme_email() -> None:
    staging = stack_values("staging")
    tls = {**staging["tls"], "email": ""}
    with pytest.raises(ConfigError, match=r"^rag:tls\.email in Pulumi\.staging\.yaml: "):
        parse_config({**staging, "tls": tls}, "staging")
    shared = parse_config({**staging, "tls": {**tls, "clusterIssuer": "letsencrypt-staging"}}, "staging")
    assert shared.tls.clusterIssuer == "letsencrypt-staging"
