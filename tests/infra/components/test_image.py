"""Tests of the ServiceImage component: build-and-push by digest, or deploy an existing digest untouched."""

from __future__ import annotations

import asyncio

import pulumi
import pytest

from infra.components import image as im
from infra.components.specs import ComponentArgsError

from .conftest import Program, is_secret, resolve, run_components

REPO = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rag/service"
SHA = "0123456789abcdef0123456789abcdef01234567"
DIGEST_REF = f"{REPO}@sha256:{'c' * 64}"


@pytest.fixture(autouse=True)
def event_loop() -> None:
    """A current event loop for the Outputs the args hold (pulumi.Output.secret): a program run earlier in the same
    process (tests/infra's `run`) leaves the thread with none, and the args are built before `run_components` sets
    one (the same check as there)."""
    try:
        if asyncio.get_event_loop_policy().get_event_loop().is_closed():
            raise RuntimeError("closed")
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def build_args(**overrides: object) -> im.ServiceImageArgs:
    values: dict[str, object] = {
        "repository": REPO,
        "git_sha": SHA,
        "registry": im.RegistryAuth(
            address="123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            username="AWS",
            password=pulumi.Output.secret("ecr-token"),
        ),
    }
    values.update(overrides)
    return im.ServiceImageArgs(**values)  # type: ignore[arg-type]


def run_image(args: im.ServiceImageArgs) -> Program:
    return run_components(lambda: im.ServiceImage("service-image", args))


def test_names_and_digest_ref() -> None:
    # Name only: BuildKit pushes a name by digest only when it carries no tag.
    assert im.image_names(REPO) == [REPO]
    assert im.digest_ref(REPO, "sha256:" + "a" * 64) == f"{REPO}@sha256:{'a' * 64}"
    with pytest.raises(ComponentArgsError):
        im.digest_ref(REPO, "latest")


def test_current_git_sha_is_a_commit_id() -> None:
    sha = im.current_git_sha()
    assert len(sha) == 40
    assert int(sha, 16) >= 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda: im.ServiceImageArgs(existing_ref=f"{REPO}:v1"), "immutable"),
        (lambda: im.ServiceImageArgs(existing_ref=f"{REPO}@sha256:abc"), "immutable"),
        (lambda: im.ServiceImageArgs(), "repository is required"),
        (lambda: build_args(repository=f"{REPO}:latest"), "without tag"),
        (lambda: build_args(git_sha="main"), "git_sha"),
        (lambda: build_args(platforms=("windows/z80",)), "platform"),
        (lambda: build_args(dockerfile="nope/Dockerfile"), "does not exist"),
    ],
)
def test_invalid_args_fail_with_a_sentence(args: object, message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        im.validate_args(args())  # type: ignore[operator]
    assert str(info.value).endswith(".")


def test_builds_the_service_dockerfile_and_outputs_a_digest_ref() -> None:
    program = run_image(build_args())
    component = program.one("rag:build:ServiceImage")
    image = program.one("docker-build:index:Image")
    assert image.name == "service-image-image"
    assert image.parent == component.urn
    inputs = image.inputs
    # Pushed by digest, under no tag: a rebuild of the same commit (a retried up, a build argument, --replace)
    # overwrites nothing, so an IMMUTABLE ECR repository takes it (it refused the second push of `:<commit>`).
    assert inputs.get("push") is False
    (export,) = inputs["exports"]
    assert export["registry"]["push"] is True
    assert export["registry"]["pushByDigest"] is True
    assert "names" not in export["registry"]  # the export's names are the tags: the bare repository
    assert inputs["tags"] == [REPO]
    assert inputs["labels"]["org.opencontainers.image.revision"] == SHA
    assert inputs["platforms"] == ["linux/amd64"]
    assert inputs["context"]["location"] == str(im.REPO_ROOT)
    assert inputs["dockerfile"]["location"] == str(im.REPO_ROOT / "service" / "Dockerfile")
    assert inputs["cacheTo"][0]["registry"]["ref"] == f"{REPO}:buildcache"
    assert inputs["registries"][0]["username"] == "AWS"
    assert image.secret_paths == {"registries[0].password"}
    assert "ecr-token" not in repr({k: v for k, v in inputs.items() if k != "registries"})
    built: im.ServiceImage = program.result
    assert built.built is True
    assert resolve(built.ref) == f"{REPO}@sha256:{'ab' * 32}"
    assert not is_secret(built.ref)


def test_existing_digest_builds_nothing() -> None:
    program = run_image(im.ServiceImageArgs(existing_ref=DIGEST_REF))
    assert [r.type for r in program.resources] == ["rag:build:ServiceImage"]
    image: im.ServiceImage = program.result
    assert image.built is False
    assert resolve(image.ref) == DIGEST_REF


def test_the_build_labels_the_image_with_its_registry_schema() -> None:
    # `ragops rollback` reads these back from the registry: the schema head the build's migrations end at, and
    # the oldest release schema that may run on it (service/app/store/migrations/versions/0011_schema_compat.py).
    from service.app.store.registry import SCHEMA_COMPATIBLE_FROM, SCHEMA_HEAD

    labels = run_image(build_args()).one("docker-build:index:Image").inputs["labels"]
    assert labels["io.rag.schema-head"] == SCHEMA_HEAD
    assert labels["io.rag.schema-compatible-from"] == SCHEMA_COMPATIBLE_FROM
    assert labels["org.opencontainers.image.revision"] == SHA
