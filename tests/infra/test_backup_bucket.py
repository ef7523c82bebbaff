"""The default backup bucket is named per AWS account / GCP project, not only per stack.

S3 and GCS bucket names are unique across every account/project. A name made of the stack and the region alone
(`rag-prod-qdrant-backups-eu-west-1`) is the same for every organisation that deploys the example prod stack, so
everyone but the first fails deep in the first `pulumi up` with BucketAlreadyExists, and anyone can claim the name
first. On AWS the name now carries the caller's account ID and lives in the account regional namespace (only that
account can create it); on GCP it carries the project ID (project IDs are globally unique).
"""

from __future__ import annotations

import dataclasses

import pytest

from infra import deployability as d
from infra import offline, stack
from infra.offline import run_stack
from tests.infra.conftest import run, target_overrides

LONG_STACK = "pr-123456-a-very-long-branch-name-abcdef"  # the longest ephemeral stack name


def bucket(result) -> d.RecordedResource:
    (created,) = [
        r for r in result.resources if r.type in ("aws:s3/bucket:Bucket", "gcp:storage/bucket:Bucket")
    ]
    return created


def cronjob_bucket(result) -> str:
    spec = result.by_name("qdrant-backups-cronjob").inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (value,) = [e["value"] for e in spec["containers"][0]["env"] if e["name"] == "BUCKET"]
    return value


def test_two_accounts_never_get_the_same_s3_name() -> None:
    names = {
        stack.s3_bucket_name("prod", account, "eu-west-1") for account in ("111111111111", "222222222222")
    }
    assert len(names) == 2
    assert stack.s3_bucket_name("prod", "111111111111", "eu-west-1") == (
        "rag-prod-qdrant-backups-111111111111-eu-west-1-an"
    )
    # Two regions of one account, two stacks of one account: distinct too.
    assert stack.s3_bucket_name("prod", "1" * 12, "eu-west-1") != stack.s3_bucket_name(
        "prod", "1" * 12, "us-east-1"
    )
    assert stack.s3_bucket_name("prod", "1" * 12, "eu-west-1") != stack.s3_bucket_name(
        "dev", "1" * 12, "eu-west-1"
    )


@pytest.mark.parametrize("region", ["eu-west-1", "ap-southeast-3", "me-central-1", "us-gov-west-1"])
def test_the_longest_stack_name_fits_and_the_suffix_survives(region: str) -> None:
    name = stack.s3_bucket_name(LONG_STACK, "123456789012", region)
    assert 3 <= len(name) <= 63
    regional = stack.s3_account_regional(region)
    assert name.endswith(f"-123456789012-{region}" + ("-an" if regional else ""))
    # Regions without the account regional namespace keep the account in a global name, never the -an suffix.
    assert regional == (region in ("eu-west-1", "ap-southeast-3"))


def test_the_eks_stacks_create_the_bucket_in_the_account_regional_namespace() -> None:
    for name in ("prod", "staging"):
        result = run(name, "eks")
        created = bucket(result)
        expected = f"rag-{name}-qdrant-backups-{offline.ACCOUNT_ID}-eu-west-1-an"
        assert created.inputs["bucket"] == expected
        assert created.inputs["bucketNamespace"] == "account-regional"
        # Every consumer gets the same name: the backup job and the IRSA policy of the backup role.
        assert cronjob_bucket(result) == expected
        policy = result.by_name("irsa-backup-bucket").inputs["policy"]
        assert f"arn:aws:s3:::{expected}" in policy
        # They read it from the bucket (its name in the state), so they wait for it.
        graph = d.Graph(result)
        for consumer in ("qdrant-backups-cronjob", "qdrant-backups-restore", "irsa-backup-bucket"):
            assert created.urn in graph.closure(result.by_name(consumer).urn), consumer
        # A bucket made under the earlier default name is kept, not replaced (and emptied) by the new default.
        assert {"bucket", "bucketNamespace"} <= set(created.ignore_changes)
        assert [f for f in d.analyse(result, waivers={}).findings if f.check == "cloud-args"] == []


def test_another_account_gets_another_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    first = bucket(run("prod", "eks")).inputs["bucket"]
    monkeypatch.setattr(offline, "ACCOUNT_ID", "210987654321")
    other = run_stack("prod", config_overrides=target_overrides("prod", "eks"))
    second = bucket(other).inputs["bucket"]
    assert first != second
    assert second == "rag-prod-qdrant-backups-210987654321-eu-west-1-an"
    assert cronjob_bucket(other) == second


def test_gcs_names_carry_the_project() -> None:
    assert stack.gcs_bucket_name("prod", "acme-rag-prod") != stack.gcs_bucket_name("prod", "other-rag-prod")
    result = run("staging", "gke")
    created = bucket(result)
    project = result.by_name("gcp").inputs["project"]
    assert project in created.inputs["name"]
    assert cronjob_bucket(result) == created.inputs["name"]
    assert [f for f in d.analyse(result, waivers={}).findings if f.check == "cloud-args"] == []


def renamed(result, **inputs):
    created = bucket(result)
    changed = dataclasses.replace(created, inputs={**created.inputs, **inputs})
    return dataclasses.replace(result, resources=[changed if r is created else r for r in result.resources])


def cloud_args(result) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check == "cloud-args"]


def test_a_name_without_the_account_or_project_is_a_finding() -> None:
    # The old default: stack and region only, in the global namespace.
    old = renamed(run("prod", "eks"), bucket="rag-prod-qdrant-backups-eu-west-1", bucketNamespace=None)
    (found,) = cloud_args(old)
    assert "account ID" in found.message
    assert "BucketAlreadyExists" in found.message
    # In the account regional namespace the name must end in -<account>-<region>-an.
    wrong = renamed(run("prod", "eks"), bucket="rag-prod-qdrant-backups-eu-west-1-an")
    (found,) = cloud_args(wrong)
    assert f"-{offline.ACCOUNT_ID}-eu-west-1-an" in found.message
    # Carries the stack ("staging") but not the project ("rag-staging").
    gcs = renamed(run("staging", "gke"), name="rag-0staging-qdrant-backups-europe-west1")
    (found,) = cloud_args(gcs)
    assert "project" in found.message


def test_a_configured_bucket_is_used_as_is_and_not_created() -> None:
    result = run("prod", "eks", backups={"bucket": "acme-qdrant-backups"})
    assert result.of_type("aws:s3/bucket:Bucket") == []
    assert cronjob_bucket(result) == "acme-qdrant-backups"
