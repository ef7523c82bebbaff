"""The deploy and drift identities' permissions (infra/deploy_identity.py, docs/delivery.md "Deploy identity")
cover every resource type the program creates, on both clouds, and the docs list the same roles."""

from __future__ import annotations

import json
import re

import pytest

from infra import deploy_identity as ident
from infra.offline import PROJECT_DIR
from tests.infra.conftest import STACKS, run

EKS_ACCESS = {"eks": {"adminPrincipals": ["arn:aws:iam::123456789012:role/admin"]}}
DOC = (PROJECT_DIR / "docs" / "delivery.md").read_text(encoding="utf-8")


def section(doc: str) -> str:
    start = doc.index("### Deploy identity")
    end = doc.find("\n## ", start)
    return doc[start : end if end != -1 else None]


def runs(target: str):
    # Each stack as committed (prod runs the managed databases), plus the opt-in shapes that add resource types.
    for stack in STACKS:
        yield run(stack, target)
    if target == "gke":
        yield run("staging", "gke", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False})
    else:
        yield run("prod", "eks", cluster={"eks": EKS_ACCESS["eks"]})


@pytest.mark.parametrize(("target", "cloud"), [("gke", "gcp"), ("eks", "aws")])
def test_every_resource_type_of_the_rendered_programs_is_covered(target: str, cloud: str) -> None:
    types: set[str] = set()
    for result in runs(target):
        types |= {r.type for r in result.resources if r.custom}
    assert ident.uncovered(types, cloud) == []
    # The walk saw the cloud's resources (not an empty program), and a new type would be reported.
    prefix = "gcp:" if cloud == "gcp" else "aws:"
    managed = (
        ("gcp:sql/user:User", "gcp:redis/instance:Instance")
        if cloud == "gcp"
        else (
            "aws:rds/instance:Instance",
            "aws:elasticache/replicationGroup:ReplicationGroup",
        )
    )
    assert set(managed) <= types
    assert sum(t.startswith(prefix) for t in types) >= 15
    assert ident.uncovered({*types, f"{prefix}newthing/thing:Thing"}, cloud) == [
        f"{prefix}newthing/thing:Thing"
    ]


def test_the_docs_list_every_role_and_the_traps() -> None:
    text = section(DOC)
    for role in ident.gcp_deploy_roles():
        assert f"`{role}`" in text, role
    for role in ident.GCP_DRIFT_ROLES:
        assert f"`{role}`" in text, role
    for policy in ident.AWS_DRIFT:
        assert policy in text, policy
    for trap in ("iam:PassRole", "iam:CreateServiceLinkedRole", "cloudresourcemanager.googleapis.com"):
        assert trap in text, trap
    assert "python -m infra.deploy_identity aws" in text
    assert "python -m infra.deploy_identity gcp" in text


def test_the_aws_policy_is_a_valid_document_with_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert ident.main(["aws"]) == 0
    policy = json.loads(capsys.readouterr().out)
    allowed = {a for statement in policy["Statement"] for a in _list(statement["Action"])}
    for actions in ident.AWS_DEPLOY_ACTIONS.values():
        assert set(actions) <= allowed
    assert all(re.fullmatch(r"[a-z0-9-]+:[A-Za-z*]+", a) for a in allowed)
    (linked,) = [s for s in policy["Statement"] if s["Action"] == "iam:CreateServiceLinkedRole"]
    assert set(linked["Condition"]["StringEquals"]["iam:AWSServiceName"]) == set(ident.AWS_SERVICE_LINKED)
    assert ident.main(["gcp", "acme-prod", "serviceAccount:ci@acme.iam.gserviceaccount.com"]) == 0
    commands = capsys.readouterr().out
    assert "--role=roles/container.admin" in commands
    assert "acme-prod" in commands
    assert ident.main([]) == 2


def _list(value):
    return value if isinstance(value, list) else [value]


def test_the_aws_deploy_role_may_list_the_image_repository_the_protection_step_reads() -> None:
    """registry-protect-existing runs `skopeo list-tags` with the deploy role: ECR serves the registry API's tags/list
    only with ecr:ListImages (403 otherwise, containers/skopeo#738)."""
    (statement, _) = ident.aws_deploy_policy()["Statement"]
    assert "ecr:ListImages" in ident.AWS_DEPLOY_ACTIONS["command:local:Command"]
    assert "ecr:ListImages" in statement["Action"]


def test_each_deploy_identity_names_the_registry_access_of_its_committed_promotion_source() -> None:
    """A promotion's target job copies the image from its source's registry (docs/delivery.md, "What a promotion job
    needs"), so a deploy identity bullet must name the access the COMMITTED source needs: the GKE bullet assumed a
    GKE dev (`artifactregistry.reader` on dev's project) while the committed dev is on `existing` (note20)."""
    import yaml

    def provider(stack: str) -> str:
        config = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text(encoding="utf-8"))["config"]
        return str(config["rag:cluster"]["provider"])

    bullets = {
        match["cloud"]: " ".join(match["text"].split())
        for match in re.finditer(
            r"^- \*\*(?P<cloud>GKE|EKS) deploy identity\*\*(?P<text>.*?)(?=^- \*\*|^\S)",
            section(DOC),
            re.M | re.S,
        )
    }
    assert set(bullets) == {"GKE", "EKS"}
    for source, target in (("dev", "staging"), ("staging", "prod")):
        cloud, source_cloud = provider(target), provider(source)
        if cloud not in ("gke", "eks"):
            continue
        text = bullets[cloud.upper()]
        if source_cloud == "gke":
            assert f"`roles/artifactregistry.reader` on {source}'s repository" in text, (source, text)
        elif source_cloud == "existing":
            assert "`REGISTRY` login" in text, (source, text)
            assert f"{source}'s project" not in text, (source, text)
