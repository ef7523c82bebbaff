"""What ragops writes is what the real program accepts: the ephemeral template, the promotion keys and records
run through infra/__main__.py offline (infra.offline.run_stack, under Pulumi mocks) and come back as outputs."""

from __future__ import annotations

import yaml

from infra.components.image import copy_script
from infra.offline import run_stack
from infra.workflows import ephemeral, promote
from infra.workflows.stacks import REPO_ROOT
from tests.workflows.fake_pulumi import DIGEST


def _declared_service_default() -> dict:
    project = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    return project["config"]["service"]["default"]


def _stack_service(stack: str) -> dict:
    doc = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())
    return (doc.get("config") or {}).get("rag:service") or {}


def test_every_promotable_key_is_declared_in_pulumi_yaml() -> None:
    default = _declared_service_default()
    for key in promote.PROMOTABLE_KEYS:
        node = default
        for part in key.split(".")[1:]:
            assert isinstance(node, dict), key
            assert part in node, f"{key} is not declared under rag:service in Pulumi.yaml"
            node = node[part]


def test_the_ephemeral_template_runs_in_its_own_namespace_and_exports_its_record() -> None:
    values = ephemeral.template_config(REPO_ROOT, "pr-123", domain="preview.example.com")
    record = {"name": "pr-123", "owner": "octocat", "expiresAt": "2026-03-02T12:00:00Z"}
    values[ephemeral.EPHEMERAL_KEY] = record

    run = run_stack("dev", config_overrides=values)

    assert run.outputs["ephemeral"] == record
    namespaced = [r for r in run.resources if r.custom and r.inputs.get("metadata", {}).get("namespace")]
    assert namespaced
    assert {
        r.inputs["metadata"]["namespace"] for r in namespaced if r.type.startswith("kubernetes:apps/")
    } == {"pr-123"}
    assert run.outputs["serviceUrl"] == "https://pr-123.preview.example.com"


def test_a_promotion_deploys_the_digest_without_building_and_exports_the_record() -> None:
    merged, _ = promote.merge_promotable(_stack_service("dev"), _stack_service("staging"))
    record = {"from": "dev", "digest": DIGEST, "at": "2026-03-01T12:00:00Z", "by": "octocat"}

    run = run_stack("staging", config_overrides={"image": DIGEST, "promotion": record, "service": merged})

    # Deployed from staging's own Artifact Registry repository, under the digest dev built.
    repository = run.of_type("gcp:artifactregistry/repository:Repository")[0]
    gke = yaml.safe_load((REPO_ROOT / "Pulumi.staging.yaml").read_text())["config"]["rag:cluster"]["gke"]
    target_repo = f"{gke['region']}-docker.pkg.dev/{gke['project']}/{repository.inputs['repositoryId']}"
    target = f"{target_repo}/rag-service@{DIGEST.rsplit('@', 1)[1]}"
    assert run.outputs["imageDigest"] == target
    assert run.outputs["promotion"] == record
    assert not [r for r in run.resources if r.type.startswith("docker-build:")]  # nothing is built
    deployments = run.of_type("kubernetes:apps/v1:Deployment")
    images = {
        c["image"]
        for r in deployments
        for c in r.inputs["spec"]["template"]["spec"]["containers"]
        if "rag" in c["image"] or "service" in c["image"]
    }
    assert images == {target}
    # The copy is the script the registry test runs, it waits for the repository, and the workloads wait for it.
    copy = run.by_name("service-image-copy")
    assert copy.inputs["create"] == copy_script(DIGEST, f"{target_repo}/rag-service")
    assert repository.urn in copy.depends_on
    for deployment in deployments:
        assert copy.urn in deployment.depends_on, deployment.name


def test_a_promotion_to_eks_copies_into_the_stacks_ecr_repository_with_an_ecr_login() -> None:
    record = {"from": "staging", "digest": DIGEST, "at": "2026-03-01T12:00:00Z", "by": "octocat"}

    run = run_stack("prod", config_overrides={"image": DIGEST, "promotion": record})

    (ecr,) = [r for r in run.of_type("aws:ecr/repository:Repository") if r.name == "registry"]
    copy = run.by_name("service-image-copy")
    url = copy.inputs["create"].strip().splitlines()[-1].removeprefix("echo ")
    repository, digest = url.split("@")
    assert digest == DIGEST.rsplit("@", 1)[1]
    assert repository.split("/", 1)[1] == ecr.inputs["name"]
    assert copy.inputs["create"] == copy_script(DIGEST, repository)
    assert "aws ecr get-login-password --region eu-west-1" in copy.inputs["create"]
    assert ecr.urn in copy.depends_on
    assert run.outputs["imageDigest"] == url
