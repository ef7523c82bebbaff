"""`ServiceImage` (`rag:build:ServiceImage`): the service image, built and pushed, deployed by digest.

Either builds service/Dockerfile with pulumi-docker-build (context = repository root, linux/amd64, pushed to
`repository` by digest, registry credentials from args, a registry build cache in `cache_repository`, which must
take tag overwrites) and outputs `ref` = `<repository>@sha256:<digest>`; or, when `existing_ref` is given (promotion), builds nothing: with
`copy_to` the image is copied by digest into that repository (the target stack's own registry) and `ref` is
`<copy_to>@<the same digest>`, else `ref` is `existing_ref` as is. Deploying by digest means a tag moved later can
never change what runs.

A build is pushed by digest only (BuildKit's `push-by-digest`), with no tag: the commit it was built from is its
`org.opencontainers.image.revision` label. A tag would be the commit id, and ECR's IMMUTABLE repositories refuse a
second push of an existing tag even when the digest is the same (ImageTagAlreadyExistsException; aws/containers-
roadmap#2179), while a rebuild of one commit is routine: a retried `up` after one killed between the push and the
state write, a build argument or an uncommitted change, a `--replace`. BuildKit images are not reproducible by
default, so such a rebuild has a new digest under the old tag. By digest nothing is ever overwritten, immutability
stays on for the repository (promotion copies tag by digest, `sha256-<hex>`), and pulumi-docker-build's refresh still
checks the image by digest (its Read inspects `<name>@<digest>`; a 404 drops it from state).

The copy (`copy_script`) is a `command:local:Command` running skopeo on the machine that runs `pulumi up`:
`skopeo copy --all --preserve-digests` copies the whole index (platform images and attestations) and fails rather
than write anything under another digest; the script then reads the manifest back from the target by digest and
checks its sha256, so what the Deployments reference is proven to be there, byte for byte. Credentials are fetched
when the copy runs, never stored in state (a stored token would differ on every run, a perpetual diff that would
also make every promotion from that stack refuse on "pending changes"): Artifact Registry hosts log in with
`gcloud auth print-access-token`, ECR hosts with `aws ecr get-login-password`, any other registry with what the
runner is logged in to (`docker login` / `skopeo login`, `~/.docker/config.json` credential helpers), which is
also how the source is read when its host is neither. Runner prerequisites: skopeo (>= 1.6, for
`--preserve-digests`), and gcloud / the AWS CLI for those hosts (GitHub's ubuntu-24.04 image has all three);
`ragops promote` checks them first (`check_copy_source`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_docker_build as docker_build

from infra.components.specs import DIGEST_REF, require
from infra.schema import schema_labels

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = "service/Dockerfile"
_REPOSITORY = re.compile(
    r"^[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9._-]+)+$|^[a-z0-9][a-z0-9._-]*(/[a-z0-9._-]+)*$"
)
_SHA = re.compile(r"^[0-9a-f]{7,40}$")


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for pushing (e.g. ECR authorization token, or `oauth2accesstoken` for Artifact Registry)."""

    address: pulumi.Input[str]
    username: pulumi.Input[str]
    password: pulumi.Input[str]
    """Secret."""


@dataclass(frozen=True)
class ServiceImageArgs:
    """Arguments of `ServiceImage`: `existing_ref`, or `repository` + `git_sha` to build."""

    existing_ref: str | None = None
    """An immutable `REGISTRY/REPO@sha256:<64 hex>` to deploy (nothing is built): as is, or copied into `copy_to`."""
    copy_to: pulumi.Input[str] | None = None
    """With `existing_ref`: the repository (without tag, e.g. the stack's Artifact Registry / ECR repository) the
    image is copied into by digest and deployed from."""
    copy_after: Sequence[pulumi.Resource] = ()
    """What the copy waits for besides `copy_to` (e.g. IAM that lets the runner push)."""
    repository: pulumi.Input[str] | None = None
    """Registry repository to push to, without tag (e.g. the ECR / Artifact Registry repository URL)."""
    git_sha: str | None = None
    """Commit the image is built from; becomes its tag."""
    registry: RegistryAuth | None = None
    context_dir: str = str(REPO_ROOT)
    dockerfile: str = DOCKERFILE
    """Path of the Dockerfile, relative to `context_dir`."""
    platforms: tuple[str, ...] = ("linux/amd64",)
    build_args: Mapping[str, str] = field(default_factory=dict)
    registry_cache: bool = True
    """Use a BuildKit registry cache (needs a `docker-container` buildx builder: the default `docker` driver
    cannot export cache to a registry, so CI sets one up with docker/setup-buildx-action)."""
    protect_build: bool = False
    """Give the pushed build its protected tag (`copy_script` on its own repository) before anything deploys it: for
    registries whose retention rules expire untagged images (ECR, Artifact Registry), where a build pushed by
    digest alone would expire while it runs."""
    cache_repository: pulumi.Input[str] | None = None
    """Repository holding the cache as `<cache_repository>:buildcache`; None uses `repository`. It is rewritten on
    every build, so it must allow tag overwrites: an ECR repository with IMMUTABLE tags refuses the second push,
    hence a separate MUTABLE cache repository there."""


def validate_args(args: ServiceImageArgs) -> None:
    """Raise ComponentArgsError with a full sentence when there is neither a digest to deploy nor a build."""
    if args.existing_ref is not None:
        require(
            bool(DIGEST_REF.match(args.existing_ref)),
            f"ServiceImageArgs.existing_ref {args.existing_ref!r} must be an immutable reference "
            "REGISTRY/REPO@sha256:<64 hex digits>.",
        )
        if isinstance(args.copy_to, str):
            require(
                bool(_REPOSITORY.match(args.copy_to)),
                f"ServiceImageArgs.copy_to {args.copy_to!r} must be a registry repository without tag or digest.",
            )
        return
    require(
        args.copy_to is None, "ServiceImageArgs.copy_to needs existing_ref (a build pushes to repository)."
    )
    require(
        args.repository is not None, "ServiceImageArgs.repository is required when no existing_ref is given."
    )
    if isinstance(args.repository, str):
        require(
            bool(_REPOSITORY.match(args.repository)),
            f"ServiceImageArgs.repository {args.repository!r} must be a registry repository without tag or digest.",
        )
    require(
        args.git_sha is not None and bool(_SHA.match(args.git_sha)),
        "ServiceImageArgs.git_sha must be the hex commit id the image is built from.",
    )
    require(bool(args.platforms), "ServiceImageArgs.platforms must name at least one platform.")
    valid = {p.value for p in docker_build.Platform}
    for platform in args.platforms:
        require(platform in valid, f"ServiceImageArgs.platforms entry {platform!r} is not a known platform.")
    dockerfile = Path(args.context_dir) / args.dockerfile
    require(dockerfile.is_file(), f"ServiceImageArgs.dockerfile {dockerfile} does not exist.")


#: Names the commit a build is tagged with when the tree is not a git checkout (a source tarball, a CI artifact).
GIT_SHA_ENV = "RAG_GIT_SHA"


class GitCommitError(ValueError):
    """The commit a build must be labelled with cannot be found (one line for `make plan` and `pulumi up`)."""


def current_git_sha(repo_root: Path = REPO_ROOT, environ: Mapping[str, str] | None = None) -> str:
    """The commit checked out in `repo_root` (what a build from this tree should be tagged with), or, outside a
    git checkout, the commit named by RAG_GIT_SHA."""
    import os

    environ = os.environ if environ is None else environ
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, like any developer machine or CI runner
            cwd=repo_root,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:  # no git on PATH
        result = subprocess.CompletedProcess([], 127, "", str(exc))
    sha = result.stdout.strip()
    if result.returncode == 0 and _SHA.match(sha):
        return sha
    named = environ.get(GIT_SHA_ENV, "").strip().lower()
    if named:
        if not _SHA.match(named):
            raise GitCommitError(f"{GIT_SHA_ENV}={named!r} is not a commit id (7-40 hex digits)")
        return named
    reason = (result.stderr.strip().splitlines() or ["git rev-parse HEAD failed"])[-1]
    raise GitCommitError(
        f"a build of this stack is labelled with the git commit, but {repo_root} is not a git checkout ({reason}): "
        f"run from a checkout, set {GIT_SHA_ENV} to the commit the tree comes from, or deploy a built image "
        "with rag:image"
    )


def image_names(repository: str) -> list[str]:
    """The names a build is exported under: the repository alone. BuildKit refuses to push a tagged name by digest
    ("can't push tagged ref ... by digest", util/push/push.go), and pulumi-docker-build gives an export the
    image's `tags` as its names (ExportWithNames: "overridden if tags are already specified")."""
    return [repository]


def push_by_digest_export() -> docker_build.ExportArgs:
    """The registry export of a build: pushed under its digest only, never under a tag (see the module docstring).
    With `push` left off on the Image: `push: true` would add a second registry export pushing `<name>:latest`."""
    return docker_build.ExportArgs(registry=docker_build.ExportRegistryArgs(push=True, push_by_digest=True))


def digest_ref(repository: str, digest: str) -> str:
    """`repository@sha256:...` from a repository and a build digest."""
    require(digest.startswith("sha256:"), f"Image digest {digest!r} is not a sha256 digest.")
    return f"{repository}@{digest}"


class ServiceImage(pulumi.ComponentResource):
    """The service image: built and pushed (deployed by digest), or an existing digest reference."""

    ref: pulumi.Output[str]
    """Immutable image reference `REGISTRY/REPO@sha256:<digest>`."""
    built: bool
    """Whether this run builds the image."""

    def __init__(self, name: str, args: ServiceImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        validate_args(args)
        super().__init__("rag:build:ServiceImage", name, None, opts)
        self.copy: command.local.Command | None = None
        self.protect: command.local.Command | None = None
        if args.existing_ref is not None and args.copy_to is not None:
            self.built = False
            self.ref = self._copy(name, args.existing_ref, args.copy_to, args.copy_after)
        elif args.existing_ref is not None:
            self.built = False
            self.ref = pulumi.Output.from_input(args.existing_ref)
        else:
            self.built = True
            self.ref = self._build(name, args)
        self.register_outputs({"ref": self.ref})

    def _copy(
        self,
        name: str,
        source_ref: str,
        repository: pulumi.Input[str],
        after: Sequence[pulumi.Resource],
    ) -> pulumi.Output[str]:
        digest = source_ref.rsplit("@", 1)[1]
        target = pulumi.Output.from_input(repository)
        self.copy = command.local.Command(
            f"{name}-copy",
            # Built from the repository Output: the copy waits for the repository to exist.
            create=target.apply(lambda repo: copy_script(source_ref, repo)),
            # Nothing on delete: an image a rollback may need stays until the registry's lifecycle rules drop it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )
        # The reference carries the copy as a dependency: whatever deploys it waits until the digest is there.
        return pulumi.Output.all(target, self.copy.id).apply(lambda v: f"{v[0]}@{digest}")

    def _build(self, name: str, args: ServiceImageArgs) -> pulumi.Output[str]:
        repository = pulumi.Output.from_input(args.repository)
        sha = args.git_sha or ""
        registries = None
        if args.registry is not None:
            registries = [
                docker_build.RegistryArgs(
                    address=args.registry.address,
                    username=args.registry.username,
                    password=pulumi.Output.secret(args.registry.password),
                )
            ]
        cache_from = cache_to = None
        if args.registry_cache:
            cache_repository = pulumi.Output.from_input(args.cache_repository or args.repository)
            cache_ref = cache_repository.apply(lambda repo: f"{repo}:buildcache")
            cache_from = [
                docker_build.CacheFromArgs(registry=docker_build.CacheFromRegistryArgs(ref=cache_ref))
            ]
            cache_to = [
                docker_build.CacheToArgs(
                    registry=docker_build.CacheToRegistryArgs(
                        ref=cache_ref,
                        mode=docker_build.CacheMode.MAX,
                        # An OCI image manifest rather than a manifest list: ECR refuses the latter for caches
                        # (pulumi-docker-build's CacheToRegistry docs); Artifact Registry and registry:2 take both.
                        image_manifest=True,
                        oci_media_types=True,
                    )
                )
            ]
        image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=args.context_dir),
            dockerfile=docker_build.DockerfileArgs(location=str(Path(args.context_dir) / args.dockerfile)),
            platforms=[docker_build.Platform(p) for p in args.platforms],
            push=False,
            # A preview builds nothing: a build in a preview still exports its registry cache, so `ragops preview`
            # would need write access to the stack's registry (a PR's preview runs where dev's registry may be a
            # laptop's localhost:5001), and the full build (model included) for every preview. The Dockerfile is
            # still parsed; `ragops ephemeral up` and `make e2e` build for real.
            build_on_preview=False,
            exports=[push_by_digest_export()],
            tags=repository.apply(image_names),
            registries=registries,
            cache_from=cache_from,
            cache_to=cache_to,
            build_args=dict(args.build_args) or None,
            labels={
                "org.opencontainers.image.revision": sha,
                "org.opencontainers.image.source": "rag-platform",
                # The registry schema the build migrates to, and the oldest release that may run on it: what
                # `ragops rollback` checks before it moves a stack to another release (infra/schema.py).
                **schema_labels(args.context_dir),
            },
            # pulumi-docker-build's delete removes `<repository>@<digest>` from the registry (v0.0.22
            # internal/client.go `Delete`: ManifestDelete, errors ignored): a `destroy`, but also the stack moving to
            # a promoted or rolled-back image, or a `--replace`, deleted the last build at once (ECR takes it), the
            # release a roll-forward or a promotion from this registry needs. Where retention rules decide
            # (`protect_build`: its tags, then `supersededBuildDays`), the delete only leaves the state. Elsewhere
            # (`existing`: a PR stack's registry has no rules) the delete still cleans the build up.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=args.protect_build),
        )
        if not args.protect_build:
            return pulumi.Output.all(repository, image.digest).apply(lambda v: digest_ref(v[0], v[1]))
        # The deploying code path protects what it deploys: the build gets its `sha256-<hex>` tag before the
        # reference reaches a Deployment (the reference carries the step as a dependency). Nothing on delete.
        self.protect = command.local.Command(
            f"{name}-protect",
            # An update (the next build) runs it again in place: pulumi-command replaces a Command only when its
            # `triggers` change, and hands the run the last stdout, from which it learns the releases to keep.
            create=pulumi.Output.all(repository, image.digest).apply(
                lambda v: build_script(digest_ref(v[0], v[1]), v[0])
            ),
            delete=repository.apply(release_script),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return pulumi.Output.all(repository, image.digest, self.protect.id).apply(
            lambda v: digest_ref(v[0], v[1])
        )


# --- copying a promoted image into the target's registry ------------------------------------------------------

#: A registry login fetched when the copy runs: (username, argv printing a short-lived password).
Login = tuple[str, tuple[str, ...]]

_ARTIFACT_REGISTRY = re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev$")
_ECR = re.compile(r"^[0-9]{12}\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")

# A private auth file for the logins this script makes; skopeo still falls back to the runner's
# ~/.docker/config.json (its auths and credHelpers) for any other registry.
_AUTH_FILE = (
    "set -eu",
    "umask 077",
    'auth="$(mktemp)"',
    "trap 'rm -f \"$auth\"' EXIT",
    'printf \'{"auths":{}}\' > "$auth"',
)


def registry_login(host: str) -> Login | None:
    """How to log in to a registry host at copy time, or None for the runner's own docker/skopeo logins.

    Artifact Registry takes an OAuth access token as the password of `oauth2accesstoken`; ECR's
    `get-login-password` is the password of `AWS` for the region in the host name (both valid for hours at most).
    """
    if _ARTIFACT_REGISTRY.fullmatch(host):
        return "oauth2accesstoken", ("gcloud", "auth", "print-access-token")
    match = _ECR.fullmatch(host)
    if match:
        return "AWS", ("aws", "ecr", "get-login-password", "--region", match.group("region"))
    return None


def _host(ref: str) -> str:
    return ref.split("/", 1)[0]


def _login_lines(hosts: Sequence[str], login: Callable[[str], Login | None]) -> list[str]:
    """Shell lines logging in to each host that has a known login (the password never reaches an argv)."""
    lines: list[str] = []
    for host in dict.fromkeys(hosts):
        found = login(host)
        if found is None:
            continue
        username, argv = found
        lines += [
            f'password="$({shlex.join(argv)})"',
            f'printf \'%s\' "$password" | skopeo login --authfile "$auth" --username {shlex.quote(username)} '
            f"--password-stdin {shlex.quote(host)} >/dev/null",
            "password=",
        ]
    return lines


#: The tag prefix that keeps an image for good: `sha256-<hex>`, one tag per digest (never moved, so ECR's IMMUTABLE
#: tags take it), put on by the copy of a promotion or rollback (`copy_script` into the stack's own registry): every
#: image a promoted stack runs or ran, hence every rollback target there. Builds deployed before `build-`/`live-`
#: existed carry it too, and stay.
PROTECTED_TAG_PREFIX = "sha256-"
#: A build a stack deployed (`build_script`): expires `supersededBuildDays` after its push unless it is live.
BUILD_TAG_PREFIX = "build-"
#: What a building stack deploys now and the release it replaced (its rollback target): kept while the stack
#: deploys it; removed by the stack's own protection step when it moves two releases on, or is destroyed.
LIVE_TAG_PREFIX = "live-"
#: Tags the retention rules never expire (the build cache `buildcache` is rewritten by every build).
KEPT_TAG_PREFIXES = (PROTECTED_TAG_PREFIX, LIVE_TAG_PREFIX)
#: How long an image nothing deployed stays: a build pushed by an `up` that failed before it deployed it, the
#: manifests of an index that was never deployed, a tag someone pushed by hand (`rag:cluster.imageRetention`).
UNPROTECTED_EXPIRY_DAYS = 14
#: How long a build a stack deployed stays after its push once no stack deploys it (the default).
SUPERSEDED_BUILD_DAYS = 30
_CHILD_DIGEST = (
    r"""grep -oE '"digest"[[:space:]]*:[[:space:]]*"sha256:[0-9a-f]{64}"' | grep -oE 'sha256:[0-9a-f]{64}'"""
)


def protected_tag(digest: str) -> str:
    """The protecting tag of a digest: `sha256:<hex>` -> `sha256-<hex>`."""
    require(digest.startswith("sha256:"), f"Image digest {digest!r} is not a sha256 digest.")
    return digest.replace(":", "-", 1)


def copy_script(
    source_ref: str,
    repository: str,
    *,
    login: Callable[[str], Login | None] = registry_login,
    prefix: str = PROTECTED_TAG_PREFIX,
) -> str:
    """The `/bin/sh -c` script that puts `source_ref`'s digest into `repository` under its protected tag, and proves it.

    It prints `<repository>@<digest>` last. Idempotent: an image whose tag is already there is not copied again
    (ECR's IMMUTABLE tags refuse a second push of a tag); one already in the repository by digest only (a build,
    pushed untagged) is tagged where it is, so `source_ref` may name the repository itself. The tag is
    `<prefix><hex>`: `sha256-<hex>` (`protected_tag`, kept for good: a promotion's or rollback's copy) unless
    `prefix` says otherwise (`build_script`); an index's manifests (the platform image, BuildKit's attestation) each
    get theirs too, so no rule can take a manifest from under an index whatever the registry makes of untagged
    children.
    """
    digest = source_ref.rsplit("@", 1)[1]
    lines = [
        *_copy_lines(source_ref, repository, login, prefix),
        f"echo {shlex.quote(f'{repository}@{digest}')}",
    ]
    return "\n".join(lines) + "\n"


def _copy_lines(
    source_ref: str, repository: str, login: Callable[[str], Login | None], prefix: str
) -> list[str]:
    """`copy_script` without its last line; leaves the proven index manifest in `$raw`."""
    digest = source_ref.rsplit("@", 1)[1]
    target = f"docker://{repository}@{digest}"
    tag = f"docker://{repository}:{_tag(prefix, digest)}"
    q = shlex.quote
    copy = 'skopeo copy --all --preserve-digests --retry-times 3 --authfile "$auth"'
    return [
        *_AUTH_FILE,
        *_login_lines((_host(source_ref), _host(repository)), login),
        f'if skopeo inspect --raw --authfile "$auth" {q(tag)} >/dev/null 2>&1; then',
        f"  echo {q(f'{repository}:{_tag(prefix, digest)} is already in the target registry')} >&2",
        f'elif skopeo inspect --raw --authfile "$auth" {q(target)} >/dev/null 2>&1; then',
        f"  {copy} {q(target)} {q(tag)} >&2",
        "else",
        f"  {copy} {q('docker://' + source_ref)} {q(tag)} >&2",
        "fi",
        f'got="sha256:$(skopeo inspect --raw --authfile "$auth" {q(target)} | sha256sum | cut -d " " -f 1)"',
        f'if [ "$got" != {q(digest)} ]; then',
        f'  echo {q(f"{repository}@{digest}: the target registry serves a manifest whose digest is ")}"$got" >&2',
        "  exit 1",
        "fi",
        f'raw="$(skopeo inspect --raw --authfile "$auth" {q(target)})"',
        *_child_tag_lines(repository, prefix=prefix),
    ]


def _tag(prefix: str, digest: str) -> str:
    require(digest.startswith("sha256:"), f"Image digest {digest!r} is not a sha256 digest.")
    return prefix + digest.removeprefix("sha256:")


#: How to remove one tag of an image from a repository (the image stays while it has another tag): a shell line that
#: reads the tag from `$tag`, or None where no command is known.
Untag = Callable[[str], str | None]


def registry_untag(repository: str) -> str | None:
    """Removes `$tag` from `repository`: ECR's BatchDeleteImage by tag ("when you remove the last tag from an image,
    the image is deleted", so never the last one: every image this removes a `live-` tag from keeps its `build-`
    tag), Artifact Registry's `gcloud artifacts docker tags delete` (roles/artifactregistry.repoAdmin)."""
    q = shlex.quote
    host, path = repository.split("/", 1)
    if _ARTIFACT_REGISTRY.fullmatch(host):
        return f'gcloud artifacts docker tags delete {q(repository + ":")}"$tag" --quiet'
    match = _ECR.fullmatch(host)
    if match:
        return (
            f"aws ecr batch-delete-image --region {q(match.group('region'))} --registry-id {q(host.split('.', 1)[0])} "
            f'--repository-name {q(path)} --image-ids imageTag="$tag" >/dev/null'
        )
    return None


def _untag_releases(line: str, skip: str) -> list[str]:
    """Shell lines removing the `live-` tags of every release the last run printed (`live <digest> <manifests>`)
    but those `skip` (a shell condition on `$release`) names. A failure only warns: it leaves an image kept."""
    return [
        """printf '%s\\n' "${PULUMI_COMMAND_STDOUT:-}" | grep '^live sha256:' | cut -c 6- | while read -r release; do""",
        f"  if {skip}; then continue; fi",
        "  for manifest in $release; do",
        f'    tag="{LIVE_TAG_PREFIX}${{manifest#sha256:}}"',
        f'    {line} </dev/null || echo "warning: could not remove the tag $tag; the image stays until it is removed" >&2',
        "  done",
        "done",
    ]


def build_script(
    built_ref: str,
    repository: str,
    *,
    login: Callable[[str], Login | None] = registry_login,
    untag: Untag = registry_untag,
) -> str:
    """The `/bin/sh -c` script of a build's protection step (`<name>-protect`), run on create and on every update.

    Tags the build `build-<hex>` (it expires `supersededBuildDays` after its push) and `live-<hex>` (kept), each
    manifest of its index too, and proves the digest like `copy_script`. It prints `live <digest> <manifests>` for
    the build it deploys and for the one before (read from `PULUMI_COMMAND_STDOUT`, the previous run's stdout
    pulumi-command passes in), then `<repository>@<digest>`; every other release the last run listed loses its
    `live-` tags. So a building stack keeps what it runs and its rollback target, whatever their age."""
    line = untag(repository)
    require(
        line is not None,
        f"ServiceImage: {repository} is neither ECR nor Artifact Registry; no command removes its `live-` tags.",
    )
    digest = built_ref.rsplit("@", 1)[1]
    q = shlex.quote
    live = f"docker://{repository}:{_tag(LIVE_TAG_PREFIX, digest)}"
    lines = [
        *_copy_lines(built_ref, repository, login, BUILD_TAG_PREFIX),
        f'if ! skopeo inspect --raw --authfile "$auth" {q(live)} >/dev/null 2>&1; then',
        f'  skopeo copy --all --preserve-digests --retry-times 3 --authfile "$auth" '
        f"{q(f'docker://{repository}@{digest}')} {q(live)} >&2",
        "fi",
        *_child_tag_lines(repository, prefix=LIVE_TAG_PREFIX),
        'manifests=""',
        """if printf '%s' "$raw" | grep -q '"manifests"'; then""",
        f"""  manifests="$(printf '%s' "$raw" | {_CHILD_DIGEST} | tr '\\n' ' ')\"""",
        "fi",
        # The release before: the first one the last run printed that is not this one.
        """previous="$(printf '%s\\n' "${PULUMI_COMMAND_STDOUT:-}" | grep '^live sha256:' | """
        f"""grep -v {q(f"^live {digest}")} | head -n 1 | cut -c 6-)\"""",
        *_untag_releases(
            line,
            f'[ "${{release%% *}}" = {q(digest)} ] || {{ [ -n "$previous" ] && '
            '[ "${release%% *}" = "${previous%% *}" ]; }',
        ),
        f'echo "live {digest} $manifests"',
        'if [ -n "$previous" ]; then echo "live $previous"; fi',
        f"echo {q(f'{repository}@{digest}')}",
    ]
    return "\n".join(lines) + "\n"


def release_script(repository: str, *, untag: Untag = registry_untag) -> str:
    """The delete script of a build's protection step: the stack no longer deploys a build of its own (destroyed, or
    moved to a promoted or rolled-back image, which its copy keeps), so the releases the last run kept lose their
    `live-` tags and expire with their `build-` tag."""
    line = untag(repository)
    require(line is not None, f"ServiceImage: no command removes tags from {repository}.")
    return "\n".join(["set -u", *_untag_releases(line, "false")]) + "\n"


def _child_tag_lines(repository: str, indent: str = "", prefix: str = PROTECTED_TAG_PREFIX) -> list[str]:
    """Shell lines giving each manifest the index in `$raw` lists its `<prefix><hex>` tag (nothing for an image
    manifest: only an index has `manifests`)."""
    q = shlex.quote
    lines = [
        """if printf '%s' "$raw" | grep -q '"manifests"'; then""",
        f"""  for child in $(printf '%s' "$raw" | {_CHILD_DIGEST}); do""",
        # The prefix inside the quotes: the text of `copy_script` for `sha256-` stays what deployed stacks ran (a
        # changed script would update every promoted stack's copy Command in place on its next `up`).
        f'    child_tag={q(f"docker://{repository}:")}"{prefix}${{child#sha256:}}"',
        '    if ! skopeo inspect --raw --authfile "$auth" "$child_tag" >/dev/null 2>&1; then',
        f'      skopeo copy --preserve-digests --retry-times 3 --authfile "$auth" {q(f"docker://{repository}@")}"$child" "$child_tag" >&2',
        "    fi",
        "  done",
        "fi",
    ]
    return [indent + line for line in lines]


def protect_existing_script(repository: str, *, login: Callable[[str], Login | None] = registry_login) -> str:
    """The `/bin/sh -c` script that tags the manifests of every index already protected in `repository`.

    Images deployed before each index's manifests got their own tags carry `sha256-<hex>` on the index only; the
    retention rules expire untagged images, which those manifests are. Run once per repository, before its
    retention rule is set (the ECR lifecycle policy waits for it). A repository with no images yet (an Artifact
    Registry package is created by its first push, and listing it is a 404) has nothing to do. Any other failure to
    list (403: an ECR identity without `ecr:ListImages`, 401, the network) fails the step: it runs once, and a
    retention rule set after a silent skip would expire the manifests of the releases deployed before."""
    q = shlex.quote
    lines = [
        *_AUTH_FILE,
        *_login_lines((_host(repository),), login),
        f'if ! listed="$(skopeo list-tags --authfile "$auth" {q("docker://" + repository)} 2>&1)"; then',
        """  case "$listed" in""",
        f"    *'404 (Not Found)'*|*NAME_UNKNOWN*) echo {q(f'{repository}: no images to protect yet: ')}"
        + '"$listed" >&2; exit 0 ;;',
        "  esac",
        f"  echo {q(f'{repository}: cannot list its tags, so the images deployed before cannot be protected: ')}"
        + '"$listed" >&2',
        "  exit 1",
        "fi",
        f"""for tag in $(printf '%s' "$listed" | grep -oE '"{PROTECTED_TAG_PREFIX}[0-9a-f]{{64}}"' | tr -d '"'); do""",
        f'  raw="$(skopeo inspect --raw --authfile "$auth" {q(f"docker://{repository}:")}"$tag")"',
        *_child_tag_lines(repository, indent="  "),
        "done",
    ]
    return "\n".join(lines) + "\n"


def ecr_lifecycle_policy(
    days: int = UNPROTECTED_EXPIRY_DAYS, build_days: int = SUPERSEDED_BUILD_DAYS
) -> dict[str, Any]:
    """The image repository's ECR lifecycle policy: keep `sha256-*` and `live-*` images, expire `build-*` images
    pushed more than `build_days` ago, and any other image (untagged, or tagged by hand) after `days`.

    ECR's evaluation rules (Lifecycle policies, "Lifecycle policy evaluation rules"): rules apply lowest
    `rulePriority` first; "an image that matches the tagging requirements of a rule cannot be expired by a rule with
    a lower priority"; a `tagPrefixList` rule selects an image with a tag starting with the prefix; a `tagStatus:
    any` rule must come last; only one rule may select untagged images (the last one here). ECR has no "keep"
    action, so a keep is a rule that selects the kept prefix and expires beyond a count no repository reaches (the
    idiom of the AWS CDK's `addLifecycleRule({tagPrefixList: ['prod'], maxImageCount: 9999})`). The former
    "keep the last 50 images" counted every build and every index's manifests, and expired the running release and
    every rollback target once 50 newer ones were pushed."""

    def keep(priority: int, prefix: str, why: str) -> dict[str, Any]:
        return {
            "rulePriority": priority,
            "description": f"keep {prefix}* images ({why})",
            "selection": {
                "tagStatus": "tagged",
                "tagPrefixList": [prefix],
                "countType": "imageCountMoreThan",
                "countNumber": ECR_KEEP_COUNT,
            },
            "action": {"type": "expire"},
        }

    return {
        "rules": [
            keep(1, PROTECTED_TAG_PREFIX, "promoted or rolled back to"),
            keep(2, LIVE_TAG_PREFIX, "deployed now, or the release before"),
            {
                "rulePriority": 3,
                "description": f"expire builds no stack deploys any more {build_days} days after their push",
                "selection": {
                    "tagStatus": "tagged",
                    "tagPrefixList": [BUILD_TAG_PREFIX],
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": build_days,
                },
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 4,
                "description": f"expire what was never deployed (untagged, or tagged by hand) after {days} days",
                "selection": {
                    "tagStatus": "any",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": days,
                },
                "action": {"type": "expire"},
            },
        ]
    }


#: The count a keep rule expires beyond: ECR's default quota is 20,000 images per repository; a promoted stack's
#: repository reaches 9,999 `sha256-` images after some 3,300 releases (an index and two manifests each).
ECR_KEEP_COUNT = 9999


def artifact_registry_cleanup_policies(
    days: int = UNPROTECTED_EXPIRY_DAYS, build_days: int = SUPERSEDED_BUILD_DAYS
) -> list[dict[str, Any]]:
    """The image repository's Artifact Registry cleanup policies (pulumi-gcp 10.2.0 RepositoryCleanupPolicyArgs):
    the same retention as `ecr_lifecycle_policy`. A version matching a delete and a keep policy is kept (Artifact
    Registry "Cleanup policy overview"); `tagPrefixes` applies on any prefix match; durations are seconds, as the
    API returns them. So: keep `sha256-*`, `live-*` and the build cache; keep `build-*` versions newer than
    `build_days`; delete `build-*` versions older than that; delete anything else older than `days`."""
    return [
        {
            "id": "keep-deployed",
            "action": "KEEP",
            "condition": {"tag_state": "TAGGED", "tag_prefixes": [*KEPT_TAG_PREFIXES, "buildcache"]},
        },
        {
            "id": "keep-recent-builds",
            "action": "KEEP",
            "condition": {
                "tag_state": "TAGGED",
                "tag_prefixes": [BUILD_TAG_PREFIX],
                "newer_than": f"{build_days * 86400}s",
            },
        },
        {
            "id": "delete-superseded-builds",
            "action": "DELETE",
            "condition": {
                "tag_state": "TAGGED",
                "tag_prefixes": [BUILD_TAG_PREFIX],
                "older_than": f"{build_days * 86400}s",
            },
        },
        {
            "id": "delete-undeployed",
            "action": "DELETE",
            "condition": {"tag_state": "ANY", "older_than": f"{days * 86400}s"},
        },
    ]


class CopyPrerequisiteError(Exception):
    """This machine cannot copy the image: a tool is missing, or the source cannot be read (the message says)."""


#: The CLI that logs in to each cluster target's own registry (`registry_login`): what it is, and how to install it.
REGISTRY_CLIS: Mapping[str, tuple[str, str, str]] = {
    "gke": (
        "gcloud",
        "Artifact Registry",
        "install the Google Cloud CLI, https://cloud.google.com/sdk/docs/install",
    ),
    "eks": (
        "aws",
        "ECR",
        "install the AWS CLI v2, https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html",
    ),
}


def check_registry_tools(provider: str, *, which: Callable[[str], str | None] = shutil.which) -> None:
    """What a gke/eks `up` that tags images in the stack's own registry on this machine needs (a build's protection
    step, `registry-protect-existing`, a promotion's copy): skopeo, and the registry's CLI for its login.

    Raises CopyPrerequisiteError naming the first tool missing and how to install it; other providers need none.
    """
    if provider not in REGISTRY_CLIS:
        return
    cli, registry, install = REGISTRY_CLIS[provider]
    if which("skopeo") is None:
        raise CopyPrerequisiteError(
            f"skopeo is not on PATH: it tags the stack's images in {registry} "
            "(Debian/Ubuntu: `apt-get install skopeo`; GitHub's ubuntu-24.04 runners have it)."
        )
    if which(cli) is None:
        raise CopyPrerequisiteError(
            f"{cli} is not on PATH: it logs in to {registry} for skopeo ({install}; GitHub's ubuntu-24.04 runners "
            "have it)."
        )


class BuildPrerequisiteError(Exception):
    """This machine cannot build the service image: no buildx builder (or, without buildx, no Docker daemon) answers
    (the message says where it looked)."""


def _docker(
    run: Callable[..., subprocess.CompletedProcess[str]], args: list[str], what: str
) -> subprocess.CompletedProcess[str]:
    try:
        return run(["docker", *args], capture_output=True, text=True, check=False, timeout=120)
    except subprocess.TimeoutExpired:
        raise BuildPrerequisiteError(
            f"`docker {' '.join(args)}` did not answer within 120 s ({what}): start it, or set DOCKER_HOST (or "
            "`docker context use` / `docker buildx use`) to one that runs."
        ) from None


def _last_line(done: subprocess.CompletedProcess[str], default: str) -> str:
    return (done.stderr.strip().splitlines() or [default])[-1]


def buildx_builders(table: str) -> list[tuple[str, str, bool]]:
    """(name, driver, current) of each builder a plain `docker buildx ls` lists, in its order.

    Read from the table every buildx prints (`--format` came with v0.13.0; older versions refuse the flag): a
    builder's row starts in the first column, its nodes' rows are indented (`  node` before v0.13, ` \\_ node` since);
    the current builder is marked `name *` (before v0.13) or `name*` (commands/ls.go `lsContext.Name`); the next
    column is the driver (`docker` for the docker contexts' builders), empty when the builder could not be loaded."""
    builders: list[tuple[str, str, bool]] = []
    for line in table.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith(("NAME/NODE", "\\_")):
            continue
        tokens = line.split()
        current = tokens[0].endswith("*") or (len(tokens) > 1 and tokens[1] == "*")
        rest = tokens[2:] if len(tokens) > 1 and tokens[1] == "*" else tokens[1:]
        driver = rest[0] if rest and rest[0] not in ("error", "inactive", "running", "stopped") else ""
        builders.append((tokens[0].rstrip("*"), driver, current))
    return builders


def check_build_daemon(
    *,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """What an `up` that builds the service image on this machine needs: a build daemon. pulumi-docker-build builds
    through a buildx builder from the docker CLI's builder store (provider/internal/host.go `builderFor`, the program
    names no builder): the current one; when that is a docker context's builder (the `docker` driver: `default`, or
    any other context), the first builder of another driver whose every node dials, else a `docker-container` one it
    creates, which needs the Docker daemon. A current builder of another driver is used as it is.

    So with the buildx plugin here, `docker buildx inspect --bootstrap` asks the current builder to start and answer
    (a remote/kubernetes builder needs no local dockerd); when it does not, and `docker buildx ls` (its plain table,
    which every buildx version prints) shows it is a docker context's builder, each listed builder of another driver
    is asked the same (at most 8); another context's builder is not, as the provider would not use it, nor one listed
    with no driver (buildx could not load it: a context whose daemon is down, or a broken entry). Without the
    plugin, `docker version` asks the daemon (context included); without the docker CLI, a unix-socket DOCKER_HOST
    (or the default /var/run/docker.sock) must exist; another DOCKER_HOST is not checked.

    Raises BuildPrerequisiteError naming what did not answer and what to do."""
    if which("docker") is not None:
        if _docker(run, ["buildx", "version"], "the buildx plugin").returncode == 0:
            done = _docker(run, ["buildx", "inspect", "--bootstrap"], "the current buildx builder")
            if done.returncode == 0:
                return
            listed = _docker(run, ["buildx", "ls"], "the buildx builders")
            builders = buildx_builders(listed.stdout) if listed.returncode == 0 else []
            current = next(((name, driver) for name, driver, is_current in builders if is_current), None)
            if current is not None and current[1] not in ("", "docker"):
                raise BuildPrerequisiteError(
                    f"the current buildx builder {current[0]} ({current[1]} driver) does not start (`docker buildx "
                    f"inspect --bootstrap`: {_last_line(done, 'no reason given')}), and the build uses it: start "
                    "it, or `docker buildx use` a builder that runs; or deploy a built image with `rag:image`."
                )
            # Not a docker context's builder, nor one buildx could not load (an empty driver with status `error`: a
            # docker context whose daemon is down, buildx v0.35 builder/builder.go `Factory`, or a broken entry),
            # which the provider skips too (an empty Driver, pulumi-docker-build host.go `builderFor`).
            others = [
                name for name, driver, _ in builders if driver not in ("", "docker") and name != "default"
            ][:8]
            for name in others:
                if (
                    _docker(
                        run, ["buildx", "inspect", "--bootstrap", name], f"buildx builder {name}"
                    ).returncode
                    == 0
                ):
                    return
            raise BuildPrerequisiteError(
                f"the current buildx builder does not start (`docker buildx inspect --bootstrap`: "
                f"{_last_line(done, 'no reason given')}), nor does any other the build could use (`docker buildx "
                f"ls`, builders not of the docker driver: {', '.join(others) or 'none'}): start the Docker daemon, "
                "or create a builder that runs (a `remote` or `kubernetes` one needs no local daemon); or deploy a "
                "built image with `rag:image`."
            )
        done = _docker(run, ["version", "--format", "{{.Server.Version}}"], "the Docker daemon")
        if done.returncode != 0 or not done.stdout.strip():
            raise BuildPrerequisiteError(
                f"no Docker daemon answers `docker version` ({_last_line(done, 'no server version')}) and there is "
                "no buildx plugin: start the daemon (the build runs in its BuildKit), or set DOCKER_HOST (or "
                "`docker context use`) to one that runs; or deploy a built image with `rag:image`."
            )
        return
    host = environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://") and not Path(host[len("unix://") :]).exists():
        raise BuildPrerequisiteError(
            f"no Docker daemon socket at {host} (and no docker CLI on PATH): start Docker (the build runs in its "
            "BuildKit), or set DOCKER_HOST to one that runs; or deploy a built image with `rag:image`."
        )


def check_copy_source(
    source_ref: str,
    *,
    which: Callable[[str], str | None] = shutil.which,
    login: Callable[[str], Login | None] = registry_login,
) -> None:
    """What `ragops promote` checks before it writes anything: skopeo is here and reads the source digest.

    Reads the source manifest the way the copy will (same login, same auth fallbacks) and checks its sha256
    against the digest. Raises CopyPrerequisiteError naming what is missing and how to fix it.
    """
    if which("skopeo") is None:
        raise CopyPrerequisiteError(
            "skopeo is not on PATH: the promotion copies the image into the target's registry with it "
            "(Debian/Ubuntu: `apt-get install skopeo`; GitHub's ubuntu-24.04 runners have it)."
        )
    host = _host(source_ref)
    found = login(host)
    if found is not None and which(found[1][0]) is None:
        raise CopyPrerequisiteError(
            f"{found[1][0]} is not on PATH: it logs in to {host}, the registry the promoted image is read from."
        )
    script = [
        *_AUTH_FILE,
        *_login_lines((host,), login),
        f'skopeo inspect --raw --authfile "$auth" {shlex.quote("docker://" + source_ref)}',
    ]
    result = subprocess.run(  # noqa: S603 - a fixed interpreter; every value in the script is quoted
        ["/bin/sh", "-c", "\n".join(script)], capture_output=True, check=False, timeout=120
    )
    if result.returncode != 0:
        how = (
            f"`{shlex.join(found[1])}` logs in to {host}"
            if found is not None
            else f"log in to {host} with `skopeo login {host}` or `docker login {host}`"
        )
        error = result.stderr.decode(errors="replace").strip() or "no error output"
        raise CopyPrerequisiteError(
            f"Cannot read {source_ref} from this machine; the digest must be in that registry and this machine "
            f"allowed to read it ({how}): {error}"
        )
    got = "sha256:" + hashlib.sha256(result.stdout).hexdigest()
    if got != source_ref.rsplit("@", 1)[1]:
        raise CopyPrerequisiteError(f"{source_ref}: the registry serves a manifest whose digest is {got}.")
