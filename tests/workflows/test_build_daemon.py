"""An `up` that builds the service image needs a build daemon on this machine (pulumi-docker-build builds through a
buildx builder: a remote/kubernetes one needs no local dockerd; without buildx, the Docker daemon's BuildKit):
`ragops up` and `ragops ephemeral up` refuse before anything changes when none answers, instead of failing at the
image after the stack's other resources were created or updated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from infra.components.image import BuildPrerequisiteError, check_build_daemon
from infra.workflows.deploy import deploy
from infra.workflows.stacks import Context, WorkflowError
from tests.workflows.fake_pulumi import DIGEST, FakeBackend


def _fake_docker(
    tmp_path: Path, *, buildx: bool, bootstrap: bool, daemon: bool, others: str = "", starts: str = "none"
) -> Path:
    """A `docker` CLI on PATH: the buildx plugin (or none, with the real CLI's error), a current builder that starts
    or not (`buildx inspect --bootstrap`), a daemon that answers `docker version` or not. Logs each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    plugin = (
        "echo 'github.com/docker/buildx v0.29.1 a1b2c3d'; exit 0"
        if buildx
        else "echo \"docker: 'buildx' is not a docker command.\" >&2; exit 1"
    )
    builder = (
        "echo 'Name: k8s'; echo 'Driver: kubernetes'; echo 'Status: running'; exit 0"
        if bootstrap
        else "echo 'ERROR: failed to dial gRPC: cannot connect to the Docker daemon' >&2; exit 1"
    )
    server = (
        "echo 28.5.1; exit 0"
        if daemon
        else "echo; echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2; exit 1"
    )
    (bin_dir / "docker").write_text(
        f"""#!/bin/sh
echo "$*" >> {log}
case "$1 $2" in
  "buildx version") {plugin} ;;
  "buildx ls") [ "$3 $4" = "--format {{{{.Name}}}}" ] || exit 3; printf '{others}'; exit 0 ;;
  "buildx inspect")
    [ "$3" = --bootstrap ] || exit 3
    if [ -n "$4" ]; then
      [ "$4" = "{starts}" ] && {{ echo "Name: $4"; echo 'Driver: remote'; exit 0; }}
      echo "ERROR: builder $4 does not start" >&2; exit 1
    fi
    {builder} ;;
  "version --format") {server} ;;
esac
exit 4
"""
    )
    (bin_dir / "docker").chmod(0o755)
    return bin_dir


def _calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "docker.log").read_text().splitlines()


def test_a_remote_builder_without_a_local_daemon_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pulumi-docker-build builds through a buildx builder (a kubernetes/remote driver needs no local dockerd)."""
    monkeypatch.setenv("PATH", str(_fake_docker(tmp_path, buildx=True, bootstrap=True, daemon=False)))
    check_build_daemon()
    assert _calls(tmp_path) == ["buildx version", "buildx inspect --bootstrap"]


@pytest.mark.parametrize("daemon", [True, False])
def test_a_builder_that_does_not_start_is_refused_with_buildx_s_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon: bool
) -> None:
    monkeypatch.setenv("PATH", str(_fake_docker(tmp_path, buildx=True, bootstrap=False, daemon=daemon)))
    with pytest.raises(BuildPrerequisiteError, match="the current buildx builder does not start") as caught:
        check_build_daemon()
    assert "failed to dial gRPC" in str(caught.value)
    assert "nor does any other (`docker buildx ls`: none)" in str(caught.value)
    assert _calls(tmp_path) == [
        "buildx version",
        "buildx inspect --bootstrap",
        "buildx ls --format {{.Name}}",
    ]


def test_another_builder_that_starts_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker buildx create --driver kubernetes` without `--use`: the current builder stays the default (docker
    driver, no dockerd here), which the provider passes over for the first builder it can reach."""
    listing = "default\\n \\\\_ default\\nbroken\\n \\\\_ broken0\\nk8s\\n \\\\_ k8s0\\n"
    bin_dir = _fake_docker(tmp_path, buildx=True, bootstrap=False, daemon=False, others=listing, starts="k8s")
    monkeypatch.setenv("PATH", str(bin_dir))
    check_build_daemon()
    assert _calls(tmp_path) == [
        "buildx version",
        "buildx inspect --bootstrap",
        "buildx ls --format {{.Name}}",
        "buildx inspect --bootstrap broken",
        "buildx inspect --bootstrap k8s",
    ]


def test_no_builder_that_starts_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listing = "default\\nbroken\\n"
    bin_dir = _fake_docker(tmp_path, buildx=True, bootstrap=False, daemon=False, others=listing)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(BuildPrerequisiteError, match=r"nor does any other \(`docker buildx ls`: broken\)"):
        check_build_daemon()


def test_without_buildx_a_daemon_that_answers_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(_fake_docker(tmp_path, buildx=False, bootstrap=False, daemon=True)))
    check_build_daemon()
    assert _calls(tmp_path) == ["buildx version", "version --format {{.Server.Version}}"]


def test_without_buildx_no_daemon_names_the_cli_s_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(_fake_docker(tmp_path, buildx=False, bootstrap=True, daemon=False)))
    with pytest.raises(BuildPrerequisiteError, match="no Docker daemon answers") as caught:
        check_build_daemon()
    assert "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." in str(caught.value)
    assert "DOCKER_HOST" in str(caught.value)
    assert _calls(tmp_path) == ["buildx version", "version --format {{.Server.Version}}"]


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
