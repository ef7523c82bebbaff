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
    or not (`buildx inspect --bootstrap`), a daemon that answers `docker version` or not, `buildx ls` printing the table
    `others` and refusing flags (as buildx before v0.13.0 refuses `--format`; commands/ls.go). Logs each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    table = tmp_path / "buildx-ls.txt"
    table.write_text(others)
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
  "buildx ls") [ -z "$3" ] || {{ echo "unknown flag: $3" >&2; exit 1; }}; while IFS= read -r row; do printf '%s\\n' "$row"; done < {table}; exit 0 ;;
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
    assert "builders not of the docker driver: none)" in str(caught.value)
    assert _calls(tmp_path) == [
        "buildx version",
        "buildx inspect --bootstrap",
        "buildx ls",
    ]


#: `docker buildx ls` as buildx v0.13+ prints it (commands/ls.go): the current builder is the default docker context's
#: (dockerd down here), another context's builder, a remote and a kubernetes builder, one that cannot be loaded.
LISTING = r"""NAME/NODE         DRIVER/ENDPOINT                  STATUS     BUILDKIT   PLATFORMS
default*          docker
 \_ default       \_ default                       error
desktop-linux     docker
 \_ desktop-linux \_ desktop-linux                 running    v0.16.0    linux/amd64
broken                                             error
k8s               kubernetes
 \_ k8s0          \_ kubernetes:///k8s?deployment=  inactive
"""
#: What buildx v0.35 (the version pulumi-docker-build 0.0.22 vendors) really prints when a docker context's daemon is
#: down: it sets a context builder's driver only once the daemon answers a ping (builder/builder.go `Factory`), so the
#: row has an empty driver and `error`, and no node rows (REVIEW_INFRA21 L2). Here the current `default` and the other
#: context `desktop-linux` are both down.
DAEMON_DOWN_LISTING = r"""NAME/NODE         DRIVER/ENDPOINT                  STATUS     BUILDKIT   PLATFORMS
default*                                           error
desktop-linux                                      error
k8s               kubernetes
 \_ k8s0          \_ kubernetes:///k8s?deployment=  inactive
"""
#: The same builders as buildx before v0.13 prints them (`name *` for the current one, nodes indented two spaces).
OLD_LISTING = """NAME/NODE      DRIVER/ENDPOINT               STATUS   PLATFORMS
k8s            kubernetes
  k8s0         kubernetes:///k8s?deployment= inactive
default *      docker
  default      default                       error
desktop-linux  docker
  desktop-linux desktop-linux                running  linux/amd64
"""


@pytest.mark.parametrize(
    "listing",
    [LISTING, OLD_LISTING, DAEMON_DOWN_LISTING],
    ids=["buildx>=0.13", "buildx<0.13", "buildx-0.35-daemon-down"],
)
def test_another_builder_that_starts_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing: str
) -> None:
    """`docker buildx create --driver kubernetes` without `--use`: the current builder stays the default (docker
    driver, no dockerd here), which the provider passes over for the first builder of another driver whose nodes
    dial (pulumi-docker-build provider/internal/host.go `builderFor`). Node rows and the other docker context's
    builder are not asked (the provider skips every builder of the docker driver). Old buildx versions refuse
    `buildx ls --format`, so the check reads the plain table every version prints."""
    bin_dir = _fake_docker(tmp_path, buildx=True, bootstrap=False, daemon=False, others=listing, starts="k8s")
    monkeypatch.setenv("PATH", str(bin_dir))
    check_build_daemon()
    calls = _calls(tmp_path)
    assert calls[:3] == ["buildx version", "buildx inspect --bootstrap", "buildx ls"]
    assert calls[-1] == "buildx inspect --bootstrap k8s"
    assert not [c for c in calls if c.endswith(("desktop-linux", "k8s0", "default"))]


def test_only_another_docker_context_answering_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider never builds on another docker context's builder (it skips the docker driver) and falls back to
    creating a docker-container builder on the current context's daemon, which is down: the `up` would fail at the
    image, so the check refuses (it passed before: it asked every builder but `default`)."""
    listing = LISTING.replace("k8s               kubernetes\n", "").replace(
        " \\_ k8s0          \\_ kubernetes:///k8s?deployment=  inactive\n", ""
    )
    assert "k8s" not in listing
    bin_dir = _fake_docker(
        tmp_path, buildx=True, bootstrap=False, daemon=False, others=listing, starts="desktop-linux"
    )
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(BuildPrerequisiteError, match=r"builders not of the docker driver: none\)"):
        check_build_daemon()
    assert "buildx inspect --bootstrap desktop-linux" not in _calls(tmp_path)
    assert "buildx inspect --bootstrap broken" not in _calls(tmp_path)


def test_a_current_builder_of_another_driver_that_does_not_start_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docker buildx use k8s` with k8s down: the provider builds with the current builder as it is (no fallback),
    so another builder that starts does not help."""
    listing = LISTING.replace("default*", "default ").replace(
        "k8s               kubernetes", "k8s*              kubernetes"
    )
    bin_dir = _fake_docker(
        tmp_path, buildx=True, bootstrap=False, daemon=False, others=listing, starts="broken"
    )
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(BuildPrerequisiteError, match=r"current buildx builder k8s \(kubernetes driver\)"):
        check_build_daemon()
    assert _calls(tmp_path)[-1] == "buildx ls"


@pytest.mark.parametrize(
    "listing", [LISTING, DAEMON_DOWN_LISTING], ids=["buildx>=0.13", "buildx-0.35-daemon-down"]
)
def test_no_builder_that_starts_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing: str
) -> None:
    """Only the builders the provider could use are asked and named: not one listed with no driver (`broken`, or
    with the daemon down `default` and the other context `desktop-linux`), which buildx could not load and the
    provider skips (an empty Driver)."""
    bin_dir = _fake_docker(tmp_path, buildx=True, bootstrap=False, daemon=False, others=listing)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(BuildPrerequisiteError, match=r"builders not of the docker driver: k8s\)"):
        check_build_daemon()
    assert [c for c in _calls(tmp_path) if c.startswith("buildx inspect --bootstrap ")] == [
        "buildx inspect --bootstrap k8s"
    ]


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


def test_buildx_s_daemon_down_rows_read_as_builders_without_a_driver() -> None:
    from infra.components.image import buildx_builders

    assert buildx_builders(DAEMON_DOWN_LISTING) == [
        ("default", "", True),
        ("desktop-linux", "", False),
        ("k8s", "kubernetes", False),
    ]
