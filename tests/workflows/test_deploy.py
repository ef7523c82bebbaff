"""`ragops up` on staging/prod from a fresh checkout: the deployed promotion is kept, the committed settings apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.components.image import CopyPrerequisiteError, check_copy_source, check_registry_tools
from infra.workflows.deploy import deploy, keep_promoted
from infra.workflows.stacks import REPO_ROOT, Context, WorkflowError
from tests.workflows.fake_pulumi import DIGEST, FakeBackend

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PROMOTION = {
    "from": "staging",
    "digest": DIGEST,
    "at": "2026-03-01T12:00:00Z",
    "by": "octocat",
    "models": [MODEL],
}
COMMITTED_PROD = "config:\n  rag:environment: prod\n  rag:service:\n    replicas: 5\n"


def _prod_promoted_elsewhere(tmp_path: Path) -> tuple[FakeBackend, Path]:
    """prod as the promote job left it (its checkout is gone), and a fresh checkout of the committed files."""
    promote_job = tmp_path / "promote-job"
    promote_job.mkdir()
    backend = FakeBackend(promote_job)
    backend.add_stack(
        "prod",
        config={
            "rag:environment": "prod",
            "rag:image": DIGEST,
            "rag:promotion": PROMOTION,
            "rag:embedding": {"model": MODEL, "extraModels": []},
            "rag:service": {"replicas": 5, "settings": {"chunkSize": 300}},
        },
        outputs={"imageDigest": DIGEST},
    )
    checkout = tmp_path / "laptop"
    checkout.mkdir()
    (checkout / "Pulumi.yaml").write_text("name: rag\nruntime: python\nmain: infra/\n")
    # An emergency settings change, committed: more replicas.
    (checkout / "Pulumi.prod.yaml").write_text(COMMITTED_PROD.replace("replicas: 5", "replicas: 7"))
    return backend, checkout


def test_up_of_prod_from_a_fresh_checkout_keeps_the_promoted_image_and_settings(tmp_path: Path) -> None:
    backend, checkout = _prod_promoted_elsewhere(tmp_path)
    ctx = Context(work_dir=checkout, pulumi_command=backend.command())

    deploy(ctx, "prod", policy_pack=None)

    ran = backend.stacks["prod"].deployed_config()
    assert ran["rag:image"]["value"] == DIGEST  # not a build of the laptop's tree
    assert ran["rag:promotion"]["objectValue"] == PROMOTION
    assert ran["rag:embedding"]["objectValue"] == {"model": MODEL, "extraModels": []}
    # The committed change applies; the promoted setting is not reverted to the default (no re-index).
    assert ran["rag:service"]["objectValue"] == {"replicas": 7, "settings": {"chunkSize": 300}}


def test_a_checkout_that_names_an_image_or_a_building_stack_is_left_alone(tmp_path: Path) -> None:
    backend, checkout = _prod_promoted_elsewhere(tmp_path)
    ws = Context(work_dir=checkout, pulumi_command=backend.command()).workspace()
    other = "registry.example.com/rag/service@sha256:" + "cd" * 32
    (checkout / "Pulumi.prod.yaml").write_text(COMMITTED_PROD + f"  rag:image: {other}\n")
    assert keep_promoted(ws, "prod") is None
    (checkout / "Pulumi.dev.yaml").write_text("config:\n  rag:environment: dev\n")
    backend.add_stack("dev", outputs={"imageDigest": DIGEST})
    assert keep_promoted(ws, "dev") is None
    assert [c for c in backend.commands("config") if c[1] in ("refresh", "set-all")] == []


def test_ragops_up_of_prod_checks_the_promoted_image_not_a_build_of_the_checkout(tmp_path: Path) -> None:
    """The image-keeps-the-index check runs after the promotion is carried over: without it, the committed file
    (no rag:image, the default model) would look like a build that lacks the deployed index's model."""
    from typer.testing import CliRunner

    from infra.workflows.cli import app

    backend, checkout = _prod_promoted_elsewhere(tmp_path)
    backend.stacks["prod"].outputs["embedding"] = {"model": MODEL, "imageModels": [MODEL]}
    # The real project file: its declared rag:embedding default is what a build of this checkout would bake in.
    (checkout / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
    ctx = Context(work_dir=checkout, pulumi_command=backend.command())
    result = CliRunner().invoke(app, ["up", "--stack", "prod", "--no-policy", "-q"], obj=ctx)
    assert result.exit_code == 0, result.output
    assert backend.stacks["prod"].deployed_config()["rag:image"]["value"] == DIGEST


def test_ragops_preview_of_prod_shows_only_the_committed_change(tmp_path: Path) -> None:
    """From a fresh checkout the preview is of what `ragops up` would deploy: the committed replicas change on the
    promoted build, not a build of the checkout (which the program would refuse) and not reverted settings."""
    from typer.testing import CliRunner

    from infra.workflows.cli import app

    backend, checkout = _prod_promoted_elsewhere(tmp_path)
    ctx = Context(work_dir=checkout, pulumi_command=backend.command())
    comment = tmp_path / "preview.md"
    args = ["preview", "--stack", "prod", "--no-policy", "-q", "--comment-file", str(comment)]
    result = CliRunner().invoke(app, args, obj=ctx)
    assert result.exit_code == 0, result.output
    assert "1 update" in result.output
    # The fake's preview diffs the checkout's file against the deployed config: only rag:service differs.
    text = comment.read_text()
    assert "rag:service" in text
    assert "rag:image" not in text


# --- the promotion copy's prerequisites, checked before `up` changes anything -----------------------------------

OTHER = "registry.example.com/rag/service@sha256:" + "cd" * 32


#: The one-time tagging step in a stack's state (`deploy.PROTECT_EXISTING`).
PROTECT_EXISTING_URN = "urn:pulumi:prod::rag::command:local:Command::registry-protect-existing"


def _eks_prod(
    tmp_path: Path, image: str, deployed: str | None = DIGEST, *, tagged_before: bool = True
) -> tuple[FakeBackend, Context, list[str]]:
    """prod on EKS: deployed with `deployed` (None: never deployed), its checkout now naming `image`; its state
    holds the one-time `registry-protect-existing` unless not `tagged_before` (deployed by an older version)."""
    backend = FakeBackend(tmp_path)
    (tmp_path / "Pulumi.yaml").write_text("name: rag\nruntime: python\nmain: infra/\n")
    config = {"rag:environment": "prod", "rag:cluster": {"provider": "eks"}}
    if deployed is None:
        backend.add_stack("prod", config={**config, "rag:image": image}, resources=0)
    else:
        backend.add_stack("prod", config={**config, "rag:image": deployed})
        backend.stacks["prod"].set_config("rag:image", image)
        if tagged_before:
            backend.stacks["prod"].urns.append(PROTECT_EXISTING_URN)
    checked: list[str] = []
    ctx = Context(
        work_dir=tmp_path,
        pulumi_command=backend.command(),
        check_image_source=checked.append,
        check_registry_tools=lambda provider: None,
    )
    return backend, ctx, checked


def test_an_update_that_copies_a_new_image_checks_this_machine_first(tmp_path: Path) -> None:
    backend, ctx, checked = _eks_prod(tmp_path, OTHER)

    def refuse(ref: str) -> None:
        checked.append(ref)
        raise CopyPrerequisiteError("skopeo is not on PATH: the promotion copies the image with it.")

    ctx.check_image_source = refuse
    with pytest.raises(
        WorkflowError, match=r"Cannot update prod: the update copies .* skopeo is not on PATH"
    ):
        deploy(ctx, "prod", policy_pack=None)
    assert checked == [OTHER]
    assert backend.commands("up") == []  # refused before any change


def test_the_real_check_names_skopeo(tmp_path: Path) -> None:
    _, ctx, _ = _eks_prod(tmp_path, OTHER)
    ctx.check_image_source = lambda ref: check_copy_source(ref, which=lambda _name: None)
    with pytest.raises(WorkflowError, match=r"skopeo is not on PATH.*apt-get install skopeo"):
        deploy(ctx, "prod", policy_pack=None)


def test_a_first_update_with_a_promoted_image_checks_too(tmp_path: Path) -> None:
    backend, ctx, checked = _eks_prod(tmp_path, OTHER, deployed=None)
    deploy(ctx, "prod", policy_pack=None)
    assert checked == [OTHER]
    assert len(backend.commands("up")) == 1


def test_an_update_that_keeps_the_deployed_image_copies_nothing_and_checks_nothing(tmp_path: Path) -> None:
    """An emergency settings change on a runner without skopeo: the copy's script is unchanged, so it does not run."""
    backend, ctx, checked = _eks_prod(tmp_path, DIGEST)
    deploy(ctx, "prod", policy_pack=None)
    assert checked == []
    assert len(backend.commands("up")) == 1


def test_an_existing_cluster_deploys_the_promoted_ref_as_is(tmp_path: Path) -> None:
    backend, ctx, checked = _eks_prod(tmp_path, OTHER)
    backend.stacks["prod"].set_config("rag:cluster", {"provider": "existing"})
    deploy(ctx, "prod", policy_pack=None)
    assert checked == []


# --- the tools a gke/eks `up` runs to tag images in its own registry, checked before it changes anything ------------


def _building(tmp_path: Path, provider: str, missing: set[str]) -> tuple[FakeBackend, Context, list[str]]:
    """dev on `provider`, deployed before and building again (no rag:image); `missing` are not on this PATH."""
    backend = FakeBackend(tmp_path)
    (tmp_path / "Pulumi.yaml").write_text("name: rag\nruntime: python\nmain: infra/\n")
    backend.add_stack("dev", config={"rag:environment": "dev", "rag:cluster": {"provider": provider}})
    looked_up: list[str] = []

    def which(name: str) -> str | None:
        looked_up.append(name)
        return None if name in missing else f"/usr/bin/{name}"

    ctx = Context(
        work_dir=tmp_path,
        pulumi_command=backend.command(),
        check_registry_tools=lambda p: check_registry_tools(p, which=which),
    )
    return backend, ctx, looked_up


@pytest.mark.parametrize(
    ("provider", "tool", "install"),
    [
        ("gke", "gcloud", "https://cloud.google.com/sdk/docs/install"),
        ("eks", "aws", "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"),
    ],
)
def test_a_gke_or_eks_build_without_the_registry_cli_is_refused_before_up(
    tmp_path: Path, provider: str, tool: str, install: str
) -> None:
    backend, ctx, _ = _building(tmp_path, provider, {tool})
    with pytest.raises(WorkflowError) as caught:
        deploy(ctx, "dev", policy_pack=None)
    message = str(caught.value)
    assert message.startswith(
        "Cannot update dev: the update tags the image it builds in the stack's own registry"
    )
    assert f"{tool} is not on PATH" in message
    assert install in message
    assert "\n" not in message  # one line
    assert backend.commands("up") == []  # refused before any change


def test_a_gke_or_eks_build_without_skopeo_is_refused_before_up(tmp_path: Path) -> None:
    backend, ctx, _ = _building(tmp_path, "eks", {"skopeo"})
    with pytest.raises(WorkflowError, match=r"skopeo is not on PATH.*apt-get install skopeo"):
        deploy(ctx, "dev", policy_pack=None)
    assert backend.commands("up") == []


@pytest.mark.parametrize("provider", ["gke", "eks"])
def test_a_gke_or_eks_build_with_the_tools_goes_ahead(tmp_path: Path, provider: str) -> None:
    backend, ctx, looked_up = _building(tmp_path, provider, set())
    deploy(ctx, "dev", policy_pack=None)
    assert looked_up == ["skopeo", {"gke": "gcloud", "eks": "aws"}[provider]]
    assert len(backend.commands("up")) == 1


def test_an_existing_cluster_build_needs_no_registry_tools(tmp_path: Path) -> None:
    backend, ctx, looked_up = _building(tmp_path, "existing", {"skopeo", "gcloud", "aws"})
    deploy(ctx, "dev", policy_pack=None)
    assert looked_up == []
    assert len(backend.commands("up")) == 1


def test_a_promoted_copy_needs_the_targets_registry_cli_too(tmp_path: Path) -> None:
    """The copy logs in to the target (ECR here) as well as the source: `check_copy_source` checks only the source."""
    backend, ctx, checked = _eks_prod(tmp_path, OTHER)
    ctx.check_registry_tools = lambda p: check_registry_tools(p, which=lambda n: None if n == "aws" else n)
    with pytest.raises(
        WorkflowError, match=rf"Cannot update prod: the update copies {OTHER} .* aws is not on PATH"
    ):
        deploy(ctx, "prod", policy_pack=None)
    assert checked == [OTHER]
    assert backend.commands("up") == []


def test_an_update_keeping_the_promoted_image_needs_no_registry_tools(tmp_path: Path) -> None:
    backend, ctx, _ = _eks_prod(tmp_path, DIGEST)
    ctx.check_registry_tools = lambda p: check_registry_tools(p, which=lambda n: None)
    deploy(ctx, "prod", policy_pack=None)
    assert len(backend.commands("up")) == 1


def test_the_first_update_of_a_promoted_stack_deployed_before_the_one_time_tagging_needs_the_tools(
    tmp_path: Path,
) -> None:
    """Its next `up`, even one keeping the image, creates `registry-protect-existing` (skopeo + the registry CLI on
    this machine): refused before anything changes without them, checked once they are there."""
    backend, ctx, _ = _eks_prod(tmp_path, DIGEST, tagged_before=False)
    ctx.check_registry_tools = lambda p: check_registry_tools(p, which=lambda n: None if n == "skopeo" else n)
    with pytest.raises(
        WorkflowError,
        match=r"Cannot update prod: the update tags the images deployed before once \(registry-protect-existing\) "
        r".* skopeo is not on PATH",
    ):
        deploy(ctx, "prod", policy_pack=None)
    assert backend.commands("up") == []
    looked_up: list[str] = []
    ctx.check_registry_tools = lambda p: check_registry_tools(p, which=lambda n: looked_up.append(n) or n)
    deploy(ctx, "prod", policy_pack=None)
    assert looked_up == ["skopeo", "aws"]
    assert len(backend.commands("up")) == 1
