"""The tag that protects a deployed image from the registries' retention rules, put on by the code path that deploys
it (O19), across a real registry boundary: distribution registries on loopback and the exact `copy_script` run by
`/bin/sh -c`. An index and every manifest it lists end up under their `sha256-<hex>` tags; an image already in the
repository by digest (a build, pushed untagged) is tagged where it is."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from infra.components.image import (
    build_script,
    copy_script,
    protect_existing_script,
    protected_tag,
    release_script,
)
from tests.workflows.registries import (
    PASSWORD,
    USERNAME,
    isolated_home,
    push_test_image,
    raw_manifest,
    registry,
)


def _sh(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False)


def _children(env: dict[str, str], ref: str, creds: str | None = None) -> list[str]:
    index = json.loads(raw_manifest(env, ref, creds=creds).stdout)
    return [entry["digest"] for entry in index["manifests"]]


@pytest.fixture
def two_registries(tmp_path: Path):
    with registry(tmp_path, auth=False) as source, registry(tmp_path, auth=True) as target:
        env = isolated_home(tmp_path, source, target)
        ref = push_test_image(tmp_path, env, f"{source.host}/dev/rag-service")
        yield env, ref, target.host


def test_a_copied_index_and_each_of_its_manifests_carry_their_protected_tags(
    two_registries, tmp_path: Path
) -> None:
    env, source_ref, target_host = two_registries
    repository = f"{target_host}/prod/rag-service"
    password = tmp_path / "password"
    password.write_text(PASSWORD, encoding="utf-8")
    login = {target_host: (USERNAME, ("cat", str(password)))}.get
    creds = f"{USERNAME}:{PASSWORD}"

    done = _sh(copy_script(source_ref, repository, login=login), env)

    assert done.returncode == 0, done.stderr
    assert "Copying" in done.stderr  # skopeo's progress: the re-run below must show none
    digest = source_ref.rsplit("@", 1)[1]
    children = _children(env, f"{repository}@{digest}", creds)
    assert len(children) == 2  # the platform image and the attestation manifest
    for manifest in (digest, *children):
        by_tag = raw_manifest(env, f"{repository}:{protected_tag(manifest)}", creds=creds)
        assert by_tag.returncode == 0, by_tag.stderr
        assert by_tag.stdout == raw_manifest(env, f"{repository}@{manifest}", creds=creds).stdout

    again = _sh(copy_script(source_ref, repository, login=login), env)  # a rollback to it, a retried `up`
    assert again.returncode == 0, again.stderr
    assert "is already in the target registry" in again.stderr
    assert "Copying" not in again.stderr


def test_a_build_pushed_by_digest_is_tagged_where_it_is(tmp_path: Path) -> None:
    with registry(tmp_path, auth=False) as own:
        env = isolated_home(tmp_path, own)
        repository = f"{own.host}/dev/rag-service"
        built = push_test_image(tmp_path, env, repository)  # tagged `build` only: no protected tag yet
        digest = built.rsplit("@", 1)[1]
        assert raw_manifest(env, f"{repository}:{protected_tag(digest)}").returncode != 0

        done = _sh(copy_script(built, repository, login=lambda host: None), env)

        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == built
        for manifest in (digest, *_children(env, built)):
            assert raw_manifest(env, f"{repository}:{protected_tag(manifest)}").returncode == 0


def test_releases_deployed_before_get_their_manifests_tagged_once(tmp_path: Path) -> None:
    """A release copied before the manifests got tags of their own carries `sha256-<hex>` on its index only; the
    one-time step tags its manifests before the untagged-image rule is set. An empty repository is nothing to do."""
    with registry(tmp_path, auth=False) as own:
        env = isolated_home(tmp_path, own)
        repository = f"{own.host}/prod/rag-service"
        empty = _sh(protect_existing_script(repository, login=lambda host: None), env)
        assert empty.returncode == 0, empty.stderr
        assert "no images to protect yet" in empty.stderr

        built = push_test_image(tmp_path, env, repository)
        digest = built.rsplit("@", 1)[1]
        old_copy = subprocess.run(  # what the copy did before: the index tagged, its manifests not
            [
                "skopeo",
                "copy",
                "--all",
                "--preserve-digests",
                f"docker://{built}",
                f"docker://{repository}:{protected_tag(digest)}",
            ],
            env=env,
            capture_output=True,
            check=False,
        )
        assert old_copy.returncode == 0, old_copy.stderr
        children = _children(env, built)
        assert all(raw_manifest(env, f"{repository}:{protected_tag(c)}").returncode != 0 for c in children)

        done = _sh(protect_existing_script(repository, login=lambda host: None), env)

        assert done.returncode == 0, done.stderr
        for child in children:
            by_tag = raw_manifest(env, f"{repository}:{protected_tag(child)}")
            assert by_tag.returncode == 0, by_tag.stderr
            assert by_tag.stdout == raw_manifest(env, f"{repository}@{child}").stdout
        again = _sh(protect_existing_script(repository, login=lambda host: None), env)
        assert again.returncode == 0, again.stderr
        assert "Copying" not in again.stderr


def test_the_one_time_step_fails_when_it_cannot_list_the_repository(tmp_path: Path) -> None:
    """Only a repository that does not exist yet (404) is nothing to do. A refused listing (here 401: no login; on
    ECR a 403 for a role without ecr:ListImages) fails the step: it runs once, and the untagged-image rule set after
    a silent skip would expire the manifests of every release deployed before."""
    with registry(tmp_path, auth=True) as locked:
        env = isolated_home(tmp_path, locked)
        repository = f"{locked.host}/prod/rag-service"

        refused = _sh(protect_existing_script(repository, login=lambda host: None), env)

        assert refused.returncode == 1, refused.stderr
        assert "cannot list its tags" in refused.stderr
        assert "no images to protect yet" not in refused.stderr


def test_a_building_stack_keeps_what_it_runs_and_the_release_before_live(tmp_path: Path) -> None:
    """The build step (`build_script`) run as pulumi-command runs it: on create, then on each update in place with
    the last run's stdout in PULUMI_COMMAND_STDOUT (trailing newline trimmed); its delete runs `release_script`.
    A build gets `build-` and `live-` tags (each manifest too); the third build frees the first's `live-` tags, the
    second stays (the rollback target); a retried `up` of the same build frees nothing; the delete frees both."""
    with registry(tmp_path, auth=False) as own:
        env = isolated_home(tmp_path, own)
        repository = f"{own.host}/dev/rag-service"
        removed = tmp_path / "removed"
        untag = lambda repo: f'echo "$tag" >> {removed}'  # noqa: E731 - what ECR/AR would be told to remove
        builds = [push_test_image(tmp_path, env, repository, labels={"build": str(n)}) for n in range(3)]

        def run(ref: str, last: subprocess.CompletedProcess[str] | None) -> subprocess.CompletedProcess[str]:
            stdout = {} if last is None else {"PULUMI_COMMAND_STDOUT": last.stdout.rstrip("\n")}
            done = _sh(build_script(ref, repository, login=lambda host: None, untag=untag), {**env, **stdout})
            assert done.returncode == 0, done.stderr
            return done

        def live(ref: str) -> set[str]:
            digest = ref.rsplit("@", 1)[1]
            return {f"live-{m.removeprefix('sha256:')}" for m in (digest, *_children(env, ref))}

        first = run(builds[0], None)
        for manifest in (builds[0].rsplit("@", 1)[1], *_children(env, builds[0])):
            hexa = manifest.removeprefix("sha256:")
            for tag in (f"build-{hexa}", f"live-{hexa}"):
                assert raw_manifest(env, f"{repository}:{tag}").returncode == 0, tag
            assert raw_manifest(env, f"{repository}:{protected_tag(manifest)}").returncode != 0
        assert first.stdout.splitlines()[-1] == builds[0]

        second = run(builds[1], first)
        assert not removed.exists()  # the first build is the rollback target now
        assert [line.split()[1] for line in second.stdout.splitlines()[:2]] == [
            builds[1].rsplit("@", 1)[1],
            builds[0].rsplit("@", 1)[1],
        ]

        third = run(builds[2], second)
        assert set(removed.read_text().split()) == live(builds[0])
        assert [line.split()[1] for line in third.stdout.splitlines()[:2]] == [
            builds[2].rsplit("@", 1)[1],
            builds[1].rsplit("@", 1)[1],
        ]

        retried = run(builds[2], third)
        assert set(removed.read_text().split()) == live(builds[0])
        assert retried.stdout == third.stdout

        gone = _sh(release_script(repository, untag=untag), {**env, "PULUMI_COMMAND_STDOUT": retried.stdout})
        assert gone.returncode == 0, gone.stderr
        assert set(removed.read_text().split()) == live(builds[0]) | live(builds[1]) | live(builds[2])


def test_a_failed_untag_only_warns(tmp_path: Path) -> None:
    """Removing a `live-` tag can only keep an image longer when it fails: the step goes on."""
    last = f"live sha256:{'a' * 64} \nlive sha256:{'b' * 64}"
    done = _sh(
        release_script("example.invalid/r", untag=lambda repo: "false"),
        {"PATH": "/usr/bin:/bin", "PULUMI_COMMAND_STDOUT": last},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("could not remove the tag live-") == 2
