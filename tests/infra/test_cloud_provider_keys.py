"""The cloud providers are explicit, so no `aws:*` / `gcp:*` stack key reaches them by itself (EYES8 M4): each such
key is honoured (passed to the provider) or refused naming the key and the stack file; region names are checked
offline (EYES8 M1: pulumi-aws skips region validation, so a typo used to fail only at the first call of an `up`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import render
from infra.config import ConfigError
from infra.offline import PROJECT_DIR, run_stack


def _prod_with(extra: dict[str, Any]) -> dict[str, Any]:
    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.prod.yaml").read_text(encoding="utf-8"))
    return {**doc["config"], **extra}


def _staging_with(extra: dict[str, Any]) -> dict[str, Any]:
    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.staging.yaml").read_text(encoding="utf-8"))
    return {**doc["config"], **extra}


def _aws_provider(result: Any) -> Any:
    (provider,) = [r for r in result.of_type("pulumi:providers:aws") if r.name == "aws"]
    return provider


def test_the_account_guard_reaches_the_explicit_aws_provider() -> None:
    result = run_stack("prod", stack_config=_prod_with({"aws:allowedAccountIds": ["444455556666"]}))
    provider = _aws_provider(result)
    # A provider's inputs travel as strings: a list as its JSON (pulumi-aws Provider `to_json`).
    assert json.loads(provider.inputs["allowedAccountIds"]) == ["444455556666"]
    forbidden = run_stack(
        "staging",
        stack_config=_staging_with({"aws:forbiddenAccountIds": ["444455556666"]}),
        config_overrides={"cluster": {"provider": "eks"}, "gateway": {"className": "envoy-gateway"}},
    )
    assert json.loads(_aws_provider(forbidden).inputs["forbiddenAccountIds"]) == ["444455556666"]
    assert "allowedAccountIds" not in _aws_provider(forbidden).inputs


def test_the_committed_prod_file_pins_its_account() -> None:
    """The committed prod file is an EKS stack and carries the pin prod requires (an example ID, to be replaced:
    credentials of any other account then fail at the provider's configuration, which is the point)."""
    assert json.loads(_aws_provider(run_stack("prod")).inputs["allowedAccountIds"]) == ["111122223333"]


def test_a_prod_eks_stack_without_an_account_pin_is_refused() -> None:
    config = _prod_with({})
    del config["aws:allowedAccountIds"]
    with pytest.raises(ConfigError) as caught:
        run_stack("prod", stack_config=config)
    assert (caught.value.key, caught.value.stack_file) == ("aws:allowedAccountIds", "Pulumi.prod.yaml")
    assert "missing: a prod EKS stack pins its AWS account" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
    # Outside prod the pin stays a choice: staging on eks deploys without it.
    staging = run_stack(
        "staging",
        config_overrides={"cluster": {"provider": "eks"}, "gateway": {"className": "envoy-gateway"}},
    )
    assert "allowedAccountIds" not in _aws_provider(staging).inputs


@pytest.mark.parametrize(
    ("stack", "provider", "extra", "key"),
    [
        ("prod", "gke", {}, "aws:allowedAccountIds"),  # the committed pin, once prod is moved to gke
        ("staging", "gke", {"aws:allowedAccountIds": ["111122223333"]}, "aws:allowedAccountIds"),
        ("staging", "gke", {"aws:region": "eu-west-1"}, "aws:region"),
        ("dev", "existing", {"aws:profile": "dev"}, "aws:profile"),
        ("dev", "existing", {"gcp:project": "rag-dev"}, "gcp:project"),
        ("prod", "eks", {"gcp:region": "europe-west1"}, "gcp:region"),
    ],
    ids=["prod-on-gke", "staging-account", "staging-region", "dev-aws", "dev-gcp", "prod-gcp"],
)
def test_a_clouds_keys_on_a_target_without_its_provider_are_refused(
    stack: str, provider: str, extra: dict[str, Any], key: str
) -> None:
    """Infra review finding 4: `aws:allowedAccountIds` on a gke or existing stack guards nothing (no AWS provider
    exists there), yet a reader of the stack file would believe it in force. A bare `pulumi up` refuses it, naming
    the key and the stack file, as `make plan` does (the same program)."""
    doc = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text(encoding="utf-8"))
    config = {**doc["config"], **extra}
    config["rag:cluster"] = {**config["rag:cluster"], "provider": provider}
    # Only what the move itself needs (tests/infra/conftest.py target_overrides): GKE's own Gateway classes.
    config["rag:gateway"] = {
        **config["rag:gateway"],
        "className": "gke-l7-global-external-managed" if provider == "gke" else "envoy-gateway",
    }
    with pytest.raises(ConfigError) as caught:
        run_stack(stack, stack_config=config)
    assert (caught.value.key, caught.value.stack_file) == (key, f"Pulumi.{stack}.yaml")
    target = "eks" if key.startswith("aws:") else "gke"
    assert f"rag:cluster.provider is {provider}, and only the {target} target builds" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_make_plan_stops_at_an_aws_key_on_a_gke_stack_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = render.main(
        ["--stack", "staging", "--out", str(tmp_path), "--set", 'aws:allowedAccountIds=["111122223333"]']
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("config error: aws:allowedAccountIds in --set"), err
    assert len(err.strip().splitlines()) == 1


def test_an_aws_region_equal_to_the_eks_region_is_accepted() -> None:
    result = run_stack("prod", stack_config=_prod_with({"aws:region": "eu-west-1"}))
    assert _aws_provider(result).inputs["region"] == "eu-west-1"


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ({"aws:region": "us-east-1"}, "aws:region", "differs from rag:cluster.eks.region (eu-west-1)"),
        ({"aws:profile": "qa"}, "aws:profile", "AWS_PROFILE=qa"),
        ({"aws:assumeRole": {"roleArn": "arn:aws:iam::1:role/x"}}, "aws:assumeRole", "AWS_PROFILE"),
        ({"aws:assumeRoles": [{"roleArn": "arn:aws:iam::1:role/x"}]}, "aws:assumeRoles", "external_id"),
        ({"aws:allowedAccountIds": [111122223333]}, "aws:allowedAccountIds", "quoted 12-digit"),
        ({"aws:allowedAccountIds": "111122223333"}, "aws:allowedAccountIds", "quoted 12-digit"),
        ({"rag:cluster.eks.region": "eu-centrl-1"}, "rag:cluster.eks.region", "did you mean eu-central-1?"),
    ],
    ids=[
        "region-differs",
        "profile",
        "assume-role",
        "assume-roles",
        "unquoted-id",
        "not-a-list",
        "typo-region",
    ],
)
def test_aws_stack_keys_the_provider_would_ignore_are_refused(
    extra: dict[str, Any], key: str, fragment: str
) -> None:
    if "rag:cluster.eks.region" in extra:
        config = _prod_with({})
        config["rag:cluster"]["eks"]["region"] = extra["rag:cluster.eks.region"]
    else:
        config = _prod_with(extra)
    with pytest.raises(ConfigError) as caught:
        run_stack("prod", stack_config=config)
    assert (caught.value.key, caught.value.stack_file) == (key, "Pulumi.prod.yaml")
    assert fragment in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("extra", "region", "key", "fragment"),
    [
        ({"gcp:region": "us-central1"}, None, "gcp:region", "differs from rag:cluster.gke.region"),
        ({"gcp:project": "someone-else"}, None, "gcp:project", "differs from rag:cluster.gke.project"),
        ({"gcp:credentials": "/tmp/key.json"}, None, "gcp:credentials", "not read"),
        ({}, "europe-west1-b", "rag:cluster.gke.region", "not a GCP region"),
        ({}, "europe-west", "rag:cluster.gke.region", "not a GCP region"),
        ({}, "europe-west99", "rag:cluster.gke.region", "not a GCP region (did you mean europe-west9?)"),
        ({}, "us-centrl1", "rag:cluster.gke.region", "GCP_REGIONS in infra/config.py"),
    ],
    ids=["region-differs", "project-differs", "credentials", "zone", "no-digit", "unknown-number", "typo"],
)
def test_gcp_stack_keys_and_regions_the_provider_would_misread_are_refused(
    extra: dict[str, Any], region: str | None, key: str, fragment: str
) -> None:
    config = _staging_with(extra)
    if region:
        config["rag:cluster"]["gke"]["region"] = region
    with pytest.raises(ConfigError) as caught:
        run_stack("staging", stack_config=config)
    assert (caught.value.key, caught.value.stack_file) == (key, "Pulumi.staging.yaml")
    assert fragment in str(caught.value), str(caught.value)


def test_gcp_keys_equal_to_the_cluster_block_pass() -> None:
    doc = _staging_with({})
    gke = doc["rag:cluster"]["gke"]
    result = run_stack(
        "staging", stack_config=_staging_with({"gcp:project": gke["project"], "gcp:region": gke["region"]})
    )
    (provider,) = [r for r in result.of_type("pulumi:providers:gcp") if r.name == "gcp"]
    assert (provider.inputs["project"], provider.inputs["region"]) == (gke["project"], gke["region"])


def test_make_plan_names_an_ignored_aws_key_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = render.main(["--stack", "prod", "--out", str(tmp_path), "--set", 'aws:profile="prod-admin"'])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("config error: aws:profile in --set"), err
    assert "AWS_PROFILE=prod-admin" in err
    assert len(err.strip().splitlines()) == 1


def test_a_kubernetes_provider_key_is_refused_naming_where_the_cluster_is_chosen() -> None:
    """`kubernetes:context` in a stack file would be ignored by the explicit Kubernetes provider, and the stack
    deployed to the context rag:cluster.existing names."""
    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.dev.yaml").read_text(encoding="utf-8"))
    with pytest.raises(ConfigError) as caught:
        run_stack("dev", stack_config={**doc["config"], "kubernetes:context": "prod-admin"})
    assert (caught.value.key, caught.value.stack_file) == ("kubernetes:context", "Pulumi.dev.yaml")
    assert "rag:cluster.existing.context" in str(caught.value)


def test_every_listed_gcp_region_deploys() -> None:
    """The pinned list is what the check accepts: each entry reaches the provider and the cluster as given."""
    from infra.config import GCP_REGIONS

    assert {
        "europe-west1",
        "us-central1",
        "asia-southeast3",
        "europe-north2",
        "northamerica-south1",
    } <= GCP_REGIONS
    for region in ("me-central2", "africa-south1"):
        config = _staging_with({})
        config["rag:cluster"]["gke"]["region"] = region
        (provider,) = [
            r
            for r in run_stack("staging", stack_config=config).of_type("pulumi:providers:gcp")
            if r.name == "gcp"
        ]
        assert provider.inputs["region"] == region


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("eks:nodeAmiId", "not the pulumi-eks component"),
        ("tls:proxy", "no pulumi-tls resource"),
        ("random:seed", "no provider configuration"),
    ],
)
def test_keys_of_a_pulumi_package_the_program_does_not_use_are_refused(key: str, fragment: str) -> None:
    """pulumi-eks and pulumi-tls are pinned but create nothing here, and pulumi-random reads no config: their
    namespaces were accepted as known, so `eks:*` in a stack file was silently read by nothing."""
    with pytest.raises(ConfigError) as caught:
        run_stack("prod", stack_config=_prod_with({key: "x"}))
    assert (caught.value.key, caught.value.stack_file) == (key, "Pulumi.prod.yaml")
    assert fragment in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
