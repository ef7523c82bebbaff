"""An `up` that builds the service image needs a Docker daemon on this machine (pulumi-docker-build builds with its
BuildKit through the daemon's API): `ragops up` and `ragops ephemeral up` refuse before anything changes when none
answers, instead of failing at the image after the stack's other resources were created or updated."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.components.image import BuildPrerequisiteError, check_build_daemon
from infra.workflows.deploy import deploy
from infra.workflows.stacks import Context, WorkflowError
from tests.workflows.fake_pulumi import DIGEST, FakeBackend


def _docker(returncode: int, stdout: str = "", stderr: str = "") -> Any:
    def run(args: list[str], **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert args[:2] == ["docker", "version"]
        return subprocess.CompletedProcess(args, returncode, stdout, stderr)

    return run


def test_a_daemon_that_answers_passes() -> None:
    check_build_daemon(which=lambda _: "/usr/bin/docker", run=_docker(0, "28.5.1\n"))


def test_no_daemon_behind_the_docker_cli_names_the_cli_s_reason() -> None:
    reason = (
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
    )
    with pytest.raises(BuildPrerequisiteError, match="no Docker daemon answers") as caught:
        check_build_daemon(which=lambda _: "/usr/bin/docker", run=_docker(1, "\n", reason))
    assert reason in str(caught.value)
    assert "DOCKER_HOST" in str(caught.value)


def test_without_the_cli_a_missing_socket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildPrerequisiteError, match="no Docker daemon socket at unix://"):
        check_build_daemon(which=lambda _: None, environ={"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"})
    (tmp_path / "docker.sock").touch()
    check_build_daemon(which=lambda _: None, environ={"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"})
    check_build_daemon(which=lambda _: None, environ={"DOCKER_HOST": "tcp://10.0.0.1:2376"})  # not checked


def test_an_up_that_builds_without_a_daemon_is_refused_before_pulumi_runs(
    ctx: Context, backend: FakeBackend
) -> None:
    backend.add_stack("dev", outputs={"imageDigest": DIGEST})

    def no_daemon() -> None:
        raise BuildPrerequisiteError("no Docker daemon answers `docker version` (nothing listening)")

    refusing = dataclasses.replace(ctx, check_build_daemon=no_daemon)
    with pytest.raises(WorkflowError, match=r"^Cannot update dev: the update builds the service image"):
        deploy(refusing, "dev", policy_pack=None)
    assert backend.commands("up") == []

    # A stack that deploys a built image (`rag:image`) builds nothing: no daemon needed.
    backend.stacks["dev"].set_config("rag:image", DIGEST)
    deploy(refusing, "dev", policy_pack=None)
    assert len(backend.commands("up")) == 1
