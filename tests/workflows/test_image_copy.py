"""The promotion copy across a real registry boundary: two distribution registries on loopback, a pushed image,
and the exact script `ServiceImage` gives `command:local:Command` (`copy_script`) run by `/bin/sh -c`, as the
command provider runs it. The target digest must be the source digest, byte for byte."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from infra.components.image import (
    CopyPrerequisiteError,
    check_copy_source,
    copy_script,
    registry_login,
)
from tests.workflows.registries import (
    PASSWORD,
    USERNAME,
    docker_login,
    isolated_home,
    push_test_image,
    raw_manifest,
    registry,
)


@pytest.fixture
def two_registries(tmp_path: Path):
    """(env, source ref in an anonymous registry, target registry host needing a login)."""
    with registry(tmp_path, auth=False) as source, registry(tmp_path, auth=True) as target:
        env = isolated_home(tmp_path, source, target)
        ref = push_test_image(tmp_path, env, f"{source.host}/dev/rag-service")
        yield env, ref, target.host


def _sh(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # pulumi-command's local.Command default interpreter on Linux: ["/bin/sh", "-c"].
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False)


def _password_file(tmp: Path, password: str) -> str:
    path = tmp / "password"
    path.write_text(password, encoding="utf-8")
    return str(path)


def test_the_copy_keeps_the_digest_and_proves_it_in_the_target(two_registries, tmp_path: Path) -> None:
    env, source_ref, target_host = two_registries
    digest = source_ref.rsplit("@", 1)[1]
    repository = f"{target_host}/prod/rag-service"
    login = {target_host: (USERNAME, ("cat", _password_file(tmp_path, PASSWORD)))}

    done = _sh(copy_script(source_ref, repository, login=login.get), env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"{repository}@{digest}"
    served = raw_manifest(env, f"{repository}@{digest}", creds=f"{USERNAME}:{PASSWORD}")
    assert served.returncode == 0, served.stderr
    assert "sha256:" + hashlib.sha256(served.stdout).hexdigest() == digest
    assert served.stdout == raw_manifest(env, source_ref).stdout  # the whole index, attestation included
    tagged = raw_manifest(env, f"{repository}:{digest.replace(':', '-')}", creds=f"{USERNAME}:{PASSWORD}")
    assert tagged.stdout == served.stdout
    # The target really needs the login the script made (nothing ambient let it in), and it left no auth behind.
    assert raw_manifest(env, f"{repository}@{digest}").returncode != 0
    assert list(Path(env["TMPDIR"]).iterdir()) == []  # the script's auth file (mktemp) is gone

    again = _sh(
        copy_script(source_ref, repository, login=login.get), env
    )  # a re-run (an `up` after a failure)
    assert again.returncode == 0, again.stderr
    assert "already in the target registry" in again.stderr
    assert again.stdout.splitlines()[-1] == f"{repository}@{digest}"


def test_a_wrong_password_fails_the_copy_and_pushes_nothing(two_registries, tmp_path: Path) -> None:
    env, source_ref, target_host = two_registries
    repository = f"{target_host}/prod/rag-service"
    login = {target_host: (USERNAME, ("cat", _password_file(tmp_path, "wrong")))}

    done = _sh(copy_script(source_ref, repository, login=login.get), env)

    assert done.returncode != 0
    assert "unauthorized" in done.stderr.lower() or "invalid username/password" in done.stderr.lower()
    assert (
        raw_manifest(
            env, source_ref.replace(source_ref.split("@")[0], repository), creds=f"{USERNAME}:{PASSWORD}"
        ).returncode
        != 0
    )


def test_a_failing_login_command_stops_the_copy(two_registries) -> None:
    env, source_ref, target_host = two_registries
    login = {target_host: (USERNAME, ("false",))}  # e.g. `aws ecr get-login-password` without credentials

    done = _sh(copy_script(source_ref, f"{target_host}/prod/rag-service", login=login.get), env)

    assert done.returncode != 0
    assert "skopeo copy" not in done.stdout


def test_other_registries_use_the_runners_own_login(two_registries) -> None:
    env, source_ref, target_host = two_registries
    repository = f"{target_host}/staging/rag-service"
    docker_login(env, target_host)  # what `docker login` / a credential helper provides on a runner

    done = _sh(copy_script(source_ref, repository, login=lambda host: None), env)

    assert done.returncode == 0, done.stderr
    digest = source_ref.rsplit("@", 1)[1]
    assert done.stdout.splitlines()[-1] == f"{repository}@{digest}"


def test_the_preflight_reads_the_source_and_names_what_is_missing(
    two_registries, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, source_ref, _ = two_registries
    for key in ("HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(key, env[key])

    check_copy_source(source_ref)  # readable, digest verified

    missing = source_ref.rsplit("@", 1)[0] + "@sha256:" + "0" * 64
    with pytest.raises(
        CopyPrerequisiteError,
        match=r"Cannot read .*log in to 127\.0\.0\.1:\d+ with `skopeo login.*manifest unknown",
    ):
        check_copy_source(missing)
    with pytest.raises(CopyPrerequisiteError, match="skopeo is not on PATH"):
        check_copy_source(source_ref, which=lambda name: None)
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rag-service-staging@sha256:" + "a" * 64
    with pytest.raises(CopyPrerequisiteError, match="aws is not on PATH: it logs in to 123456789012"):
        check_copy_source(ecr, which=lambda name: "/usr/bin/skopeo" if name == "skopeo" else None)


def test_registry_logins_by_host() -> None:
    assert registry_login("europe-west1-docker.pkg.dev") == (
        "oauth2accesstoken",
        ("gcloud", "auth", "print-access-token"),
    )
    assert registry_login("123456789012.dkr.ecr.eu-west-1.amazonaws.com") == (
        "AWS",
        ("aws", "ecr", "get-login-password", "--region", "eu-west-1"),
    )
    assert registry_login("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn") == (
        "AWS",
        ("aws", "ecr", "get-login-password", "--region", "cn-north-1"),
    )
    for host in ("ghcr.io", "localhost:5001", "registry.example.com", "evil-docker.pkg.dev.example.com"):
        assert registry_login(host) is None
