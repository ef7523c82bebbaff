"""Image retention never takes an image a stack runs, can roll back to or promote from (O19).

ECR's "keep the last 50 images" (`tagStatus: any`, `imageCountMoreThan: 50`) counted every build, untagged since
builds are pushed by digest, and every manifest of every index: 50 pushes later the running release and every
rollback target were expired. Artifact Registry kept everything. Now every image a stack deploys gets the protected
tag `sha256-<hex>` from the code path that deploys it (the promotion/rollback copy, a build's protection step; each
manifest its index lists too), and the registries expire only untagged images older than 14 days.

The recorded policies are evaluated here against a repository's images by models of the documented semantics:
ECR (Lifecycle policy properties / evaluation rules): rules apply lowest `rulePriority` first; `tagged` selects
images with a tag matching every entry of `tagPrefixList` (prefixes) or `tagPatternList` (wildcards), `untagged`
those without tags, `any` all; an image that matches the tag requirements of a higher-priority rule cannot be
expired by a lower one; `imageCountMoreThan` keeps the newest N by push time, `sinceImagePushed` expires those older
than N days. Artifact Registry (Cleanup policy overview): a version matching a delete policy is deleted unless it
matches a keep policy; `tagState` TAGGED/UNTAGGED/ANY, `tagPrefixes` any-prefix, `olderThan` a duration in seconds.
Manifests an index lists are modelled as images of their own (the worst case: no rule treats them with their index).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from infra.components.image import (
    PROTECTED_TAG_PREFIX,
    UNPROTECTED_EXPIRY_DAYS,
    copy_script,
    protect_existing_script,
    protected_tag,
)
from tests.infra.conftest import run


@dataclass(frozen=True)
class Image:
    digest: str
    tags: tuple[str, ...]
    age_days: float


def ecr_expired(policy: Mapping[str, Any], images: Iterable[Image]) -> set[str]:
    """The digests an ECR lifecycle policy expires (the documented evaluation rules)."""
    images = list(images)
    rules = sorted(policy["rules"], key=lambda r: r["rulePriority"])
    priorities = [r["rulePriority"] for r in rules]
    assert len(set(priorities)) == len(priorities), "rulePriority values must be unique"
    for rule in rules[:-1]:
        assert rule["selection"]["tagStatus"] != "any", "a tagStatus any rule must be evaluated last"

    def selects(selection: Mapping[str, Any], image: Image) -> bool:
        status = selection["tagStatus"]
        if status == "any":
            return True
        if status == "untagged":
            assert "tagPrefixList" not in selection
            assert "tagPatternList" not in selection
            return not image.tags
        prefixes, patterns = selection.get("tagPrefixList"), selection.get("tagPatternList")
        assert bool(prefixes) != bool(patterns), "a tagged rule takes tagPrefixList or tagPatternList"
        if prefixes:
            return all(any(tag.startswith(p) for tag in image.tags) for p in prefixes)
        return all(any(fnmatch.fnmatchcase(tag, p) for tag in image.tags) for p in patterns)

    claimed: set[str] = set()
    expired: set[str] = set()
    for rule in rules:
        selection = rule["selection"]
        assert rule["action"]["type"] == "expire"
        matched = [i for i in images if i.digest not in claimed and selects(selection, i)]
        if selection["countType"] == "imageCountMoreThan":
            newest_first = sorted(matched, key=lambda i: i.age_days)
            expired |= {i.digest for i in newest_first[selection["countNumber"] :]}
        else:
            assert selection["countType"] == "sinceImagePushed"
            assert selection["countUnit"] == "days"
            expired |= {i.digest for i in matched if i.age_days > selection["countNumber"]}
        claimed |= {i.digest for i in matched}
    return expired


def artifact_registry_deleted(policies: list[Mapping[str, Any]], images: Iterable[Image]) -> set[str]:
    """The digests Artifact Registry's cleanup policies delete: matched by a delete policy and by no keep policy."""
    assert len(policies) <= 10, "at most 10 cleanup policies per repository"
    assert len({p["id"] for p in policies}) == len(policies)

    def matches(condition: Mapping[str, Any], image: Image) -> bool:
        state = condition.get("tagState", "ANY")
        if (state == "TAGGED" and not image.tags) or (state == "UNTAGGED" and image.tags):
            return False
        prefixes = condition.get("tagPrefixes")
        if prefixes and not any(tag.startswith(p) for tag in image.tags for p in prefixes):
            return False
        older = condition.get("olderThan")
        return not (older and image.age_days * 86400 <= int(older.removesuffix("s")))

    deleted = set()
    for image in images:
        delete = any(p["action"] == "DELETE" and matches(p["condition"], image) for p in policies)
        keep = any(p["action"] == "KEEP" and matches(p["condition"], image) for p in policies)
        if delete and not keep:
            deleted.add(image.digest)
    return deleted


def _digest(n: int, part: str = "index") -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(f"{part}-{n}".encode()).hexdigest()


def repository() -> tuple[list[Image], set[str], set[str]]:
    """A builder stack's repository over a year: 150 builds, each an index with a platform image and an attestation
    (three images), a new one every 3 days; every fourth build deployed (tagged with its protected tag, each of its
    manifests too), the running one 107 days old (nothing deployed since), abandoned builds since, some of them
    this week. Returns (images, protected digests, untagged digests older than the expiry)."""
    images: list[Image] = []
    protected: set[str] = set()
    for n in range(150):
        age = 455 - 3 * n
        deployed = n % 4 == 0 and age >= 100
        for part in ("index", "amd64", "attestation"):
            digest = _digest(n, part)
            tags = (protected_tag(digest),) if deployed else ()
            images.append(Image(digest, tags, age))
            if deployed:
                protected.add(digest)
    old_untagged = {i.digest for i in images if not i.tags and i.age_days > UNPROTECTED_EXPIRY_DAYS}
    return images, protected, old_untagged


def test_the_repository_model_holds_what_the_old_rule_lost() -> None:
    images, protected, _ = repository()
    newest_deployed = min((i for i in images if i.digest in protected), key=lambda i: i.age_days)
    # The running release: the newest deployed, 107 days old, with more than 50 images pushed since.
    assert newest_deployed.age_days == 107
    assert sum(i.age_days < newest_deployed.age_days for i in images) > 50
    old_rule = {
        "rules": [
            {
                "rulePriority": 1,
                "description": "keep the last 50 images",
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 50},
                "action": {"type": "expire"},
            }
        ]
    }
    lost = ecr_expired(old_rule, images)
    # The model sees the defect: the running release and every rollback target went.
    assert newest_deployed.digest in lost
    assert protected <= lost


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_ecr_expires_only_old_untagged_images(stack: str) -> None:
    policy = json.loads(run(stack, "eks").by_name("registry-lifecycle").inputs["policy"])
    images, protected, old_untagged = repository()
    expired = ecr_expired(policy, images)
    assert not expired & protected
    assert expired == old_untagged
    assert any(not i.tags and i.age_days <= UNPROTECTED_EXPIRY_DAYS for i in images)  # this week's stay


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_artifact_registry_deletes_only_old_untagged_images(stack: str) -> None:
    registry = run(stack, "gke").by_name("registry")
    assert registry.inputs["cleanupPolicyDryRun"] is False  # the policies act
    images, protected, old_untagged = repository()
    deleted = artifact_registry_deleted(registry.inputs["cleanupPolicies"], images)
    assert not deleted & protected
    assert deleted == old_untagged


def test_the_keep_policy_holds_under_a_broader_delete_policy() -> None:
    """Keep beats delete: a delete-everything-older policy added beside it still leaves every deployed image."""
    policies = [
        *run("prod", "gke").by_name("registry").inputs["cleanupPolicies"],
        {"id": "delete-all-old", "action": "DELETE", "condition": {"tagState": "ANY", "olderThan": "86400s"}},
    ]
    images, protected, _ = repository()
    deleted = artifact_registry_deleted(policies, images)
    assert not deleted & protected
    assert len(deleted) > len(images) - len(protected) - 10


def _tags_in(script: str) -> list[str]:
    import re

    return re.findall(r":(sha256-[0-9a-f]{64})\b", script)


@pytest.mark.parametrize("target", ["gke", "eks"])
def test_a_build_is_protected_before_it_is_deployed(target: str) -> None:
    result = run("dev", target)
    protect = result.by_name("service-image-protect")
    image = result.by_name("service-image-image")
    built = f"{image.inputs['tags'][0]}@{result.outputs['imageDigest'].rsplit('@', 1)[1]}"
    assert protect.inputs["create"] == copy_script(built, image.inputs["tags"][0])
    assert set(_tags_in(protect.inputs["create"])) == {protected_tag(built.rsplit("@", 1)[1])}
    assert all(tag.startswith(PROTECTED_TAG_PREFIX) for tag in _tags_in(protect.inputs["create"]))
    # The workloads run the build only once it carries its tag.
    for deployment in ("rag-api", "rag-worker"):
        assert protect.urn in result.by_name(deployment).depends_on


def test_a_promoted_image_is_protected_by_its_copy_and_nothing_else_runs() -> None:
    result = run("prod", "eks")
    copy = result.by_name("service-image-copy")
    digest = result.outputs["imageDigest"].rsplit("@", 1)[1]
    assert protected_tag(digest) in _tags_in(copy.inputs["create"])
    assert not [r for r in result.resources if r.name == "service-image-protect"]


def test_an_existing_cluster_registry_has_no_retention_and_no_protection_step() -> None:
    result = run("dev")
    assert not [r for r in result.resources if r.name == "service-image-protect"]


def test_older_releases_are_tagged_before_the_untagged_rule_is_set() -> None:
    eks = run("prod", "eks")
    step = eks.by_name("registry-protect-existing")
    repository = eks.by_name("registry")
    assert step.urn in eks.by_name("registry-lifecycle").depends_on
    assert step.inputs["create"] == protect_existing_script(
        f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/{repository.inputs['name']}"
    )
    gke = run("staging", "gke")
    assert gke.by_name("registry-protect-existing").inputs["create"] == protect_existing_script(
        gke.outputs["imageDigest"].rsplit("@", 1)[0]
    )
