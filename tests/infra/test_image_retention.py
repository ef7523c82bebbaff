"""Image retention never takes an image a stack runs, can roll back to or promote from (O19), and takes the rest.

ECR's "keep the last 50 images" (`tagStatus: any`, `imageCountMoreThan: 50`) counted every build, untagged since
builds are pushed by digest, and every manifest of every index: 50 pushes later the running release and every
rollback target were expired. Artifact Registry kept everything. Then every deployed image got `sha256-<hex>` and
was kept for good, as was every tag pushed by hand. Now (`rag:cluster.imageRetention`): a promotion's or rollback's
copy tags `sha256-<hex>` (kept); a build's protection step tags `build-<hex>` (expires `supersededBuildDays` after
its push) and `live-<hex>` (kept) and removes the `live-` tags of the release two builds back; anything else
(untagged, tagged by hand) expires after `neverDeployedDays`.

The recorded policies are evaluated here against a repository's images by models of the documented semantics:
ECR (Lifecycle policy properties / evaluation rules): rules apply lowest `rulePriority` first; `tagged` selects
images with a tag matching every entry of `tagPrefixList` (prefixes) or `tagPatternList` (wildcards), `untagged`
those without tags, `any` all; an image that matches the tag requirements of a higher-priority rule cannot be
expired by a lower one; `imageCountMoreThan` keeps the newest N by push time, `sinceImagePushed` expires those older
than N days. Artifact Registry (Cleanup policy overview): a version matching a delete policy is deleted unless it
matches a keep policy; `tagState` TAGGED/UNTAGGED/ANY, `tagPrefixes` any-prefix, `olderThan`/`newerThan` durations
in seconds. Manifests an index lists are modelled as images of their own (the worst case: no rule treats them with
their index).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from infra.components.image import (
    BUILD_TAG_PREFIX,
    LIVE_TAG_PREFIX,
    PROTECTED_TAG_PREFIX,
    SUPERSEDED_BUILD_DAYS,
    UNPROTECTED_EXPIRY_DAYS,
    build_script,
    copy_script,
    protect_existing_script,
    protected_tag,
    release_script,
)
from infra.config import deep_merge
from infra.offline import run_stack
from tests.infra.conftest import run, target_overrides


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
    statuses = [r["selection"]["tagStatus"] for r in rules]
    assert statuses.count("untagged") <= 1, "only one rule may select untagged images"
    prefixes = [
        tuple(r["selection"].get("tagPrefixList", ())) for r in rules if r["selection"].get("tagPrefixList")
    ]
    assert len(set(prefixes)) == len(prefixes), "the rules' tag prefixes must be unique"

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
        if older and image.age_days * 86400 <= int(older.removesuffix("s")):
            return False
        newer = condition.get("newerThan")
        return not (newer and image.age_days * 86400 >= int(newer.removesuffix("s")))

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


def repository(
    days: int = UNPROTECTED_EXPIRY_DAYS, build_days: int = SUPERSEDED_BUILD_DAYS
) -> tuple[list[Image], set[str], set[str]]:
    """A builder stack's repository over a year: 150 builds, each an index with a platform image and an attestation
    (three images), a new one every 3 days. Every fourth build was deployed: the first twenty before this change
    (tagged `sha256-`, kept for good), the rest `build-`; the running one is 107 days old (nothing deployed since)
    and, like the release before it, also `live-`. Abandoned builds since, some this week; images a rollback
    copied in (`sha256-`, 300 days old); tags pushed by hand, old and new. Returns (images, the digests that must
    stay whatever their age, the digests the rules must expire)."""
    images: list[Image] = []
    kept: set[str] = set()
    deployed = [n for n in range(150) if n % 4 == 0 and 455 - 3 * n >= 100]
    live = set(deployed[-2:])  # what runs, and its rollback target
    for n in range(150):
        age = 455 - 3 * n
        for part in ("index", "amd64", "attestation"):
            digest = _digest(n, part)
            hexa = digest.removeprefix("sha256:")
            tags: tuple[str, ...] = ()
            if n in deployed:
                tags = (PROTECTED_TAG_PREFIX + hexa,) if n < 20 else (BUILD_TAG_PREFIX + hexa,)
            if n in live:
                tags += (LIVE_TAG_PREFIX + hexa,)
            images.append(Image(digest, tags, age))
            if n in live or (n in deployed and n < 20):
                kept.add(digest)
    for n in range(3):
        for part in ("index", "amd64"):
            digest = _digest(n, f"rolled-back-{part}")
            images.append(Image(digest, (protected_tag(digest),), 300))
            kept.add(digest)
    images += [Image(_digest(1, "by-hand"), ("test-1",), 200), Image(_digest(2, "by-hand"), ("test-2",), 5)]
    expire = {
        i.digest
        for i in images
        if i.digest not in kept
        and (
            i.age_days > build_days
            if any(t.startswith(BUILD_TAG_PREFIX) for t in i.tags)
            else i.age_days > days
        )
    }
    return images, kept, expire


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
def test_ecr_keeps_what_runs_and_what_was_promoted_and_expires_the_rest(stack: str) -> None:
    policy = json.loads(run(stack, "eks").by_name("registry-lifecycle").inputs["policy"])
    images, kept, expire = repository()
    expired = ecr_expired(policy, images)
    assert not expired & kept
    assert expired == expire
    by_digest = {i.digest: i for i in images}
    # Each kind goes: a superseded build, an untagged push, an old tag pushed by hand; this week's stay.
    assert any(by_digest[d].tags and by_digest[d].tags[0].startswith(BUILD_TAG_PREFIX) for d in expired)
    assert any(not by_digest[d].tags for d in expired)
    assert _digest(1, "by-hand") in expired
    assert _digest(2, "by-hand") not in expired
    assert any(
        i.digest not in expired and i.age_days <= UNPROTECTED_EXPIRY_DAYS for i in images if not i.tags
    )


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_artifact_registry_keeps_what_runs_and_what_was_promoted_and_deletes_the_rest(stack: str) -> None:
    registry = run(stack, "gke").by_name("registry")
    assert registry.inputs["cleanupPolicyDryRun"] is False  # the policies act
    images, kept, expire = repository()
    deleted = artifact_registry_deleted(registry.inputs["cleanupPolicies"], images)
    assert not deleted & kept
    assert deleted == expire


@pytest.mark.parametrize("target", ["eks", "gke"])
def test_the_retention_keys_set_what_expires(target: str) -> None:
    """`rag:cluster.imageRetention` reaches each registry: other ages expire other images, never a kept one."""
    days, build_days = 3, 90
    result = run_stack(
        "dev",
        config_overrides=deep_merge(
            target_overrides("dev", target),
            {"cluster": {"imageRetention": {"neverDeployedDays": days, "supersededBuildDays": build_days}}},
        ),
    )
    images, kept, expire = repository(days, build_days)
    if target == "eks":
        expired = ecr_expired(json.loads(result.by_name("registry-lifecycle").inputs["policy"]), images)
    else:
        expired = artifact_registry_deleted(result.by_name("registry").inputs["cleanupPolicies"], images)
    assert expired == expire
    assert not expired & kept
    assert expire != repository()[2]  # the keys changed what goes


def test_the_keep_policy_holds_under_a_broader_delete_policy() -> None:
    """Keep beats delete: a delete-everything-older policy added beside it still leaves every deployed image."""
    policies = [
        *run("prod", "gke").by_name("registry").inputs["cleanupPolicies"],
        {"id": "delete-all-old", "action": "DELETE", "condition": {"tagState": "ANY", "olderThan": "86400s"}},
    ]
    images, kept, _ = repository()
    deleted = artifact_registry_deleted(policies, images)
    assert not deleted & kept
    assert len(deleted) > len(images) - len(kept) - 10


def _tags_in(script: str, prefix: str = PROTECTED_TAG_PREFIX) -> list[str]:
    import re

    return re.findall(rf":({prefix}[0-9a-f]{{64}})\b", script)


@pytest.mark.parametrize("target", ["gke", "eks"])
def test_a_build_is_tagged_build_and_live_before_it_is_deployed(target: str) -> None:
    result = run("dev", target)
    protect = result.by_name("service-image-protect")
    image = result.by_name("service-image-image")
    repository = image.inputs["tags"][0]
    digest = result.outputs["imageDigest"].rsplit("@", 1)[1]
    built = f"{repository}@{digest}"
    assert protect.inputs["create"] == build_script(built, repository)
    # Its delete (the stack destroyed, or moved to a promoted image) frees what the last run kept.
    assert protect.inputs["delete"] == release_script(repository)
    hexa = digest.removeprefix("sha256:")
    assert set(_tags_in(protect.inputs["create"], BUILD_TAG_PREFIX)) == {BUILD_TAG_PREFIX + hexa}
    assert set(_tags_in(protect.inputs["create"], LIVE_TAG_PREFIX)) == {LIVE_TAG_PREFIX + hexa}
    assert not _tags_in(protect.inputs["create"])  # a build is not kept for good
    assert "triggers" not in protect.inputs  # the next build updates it in place, with the last stdout
    # The workloads run the build only once it carries its tags.
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


def test_the_copy_script_of_a_promoted_stack_is_the_text_it_ran_before() -> None:
    """`copy_script` for `sha256-` is what the deployed stacks' copy Commands hold: a changed text would update each
    promoted stack's `service-image-copy` in place on its next `up` (a copy run, skopeo needed, a diff in preview)."""
    script = copy_script("r.example.com/a@sha256:" + "a" * 64, "r.example.com/b")
    assert 'child_tag=docker://r.example.com/b:"sha256-${child#sha256:}"' in script
