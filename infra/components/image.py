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
            opts=pulumi.ResourceOptions(parent=self),
        )
        if not args.protect_build:
            return pulumi.Output.all(repository, image.digest).apply(lambda v: digest_ref(v[0], v[1]))
        # The deploying code path protects what it deploys: the build gets its `sha256-<hex>` tag before the
        # reference reaches a Deployment (the reference carries the step as a dependency). Nothing on delete.
        self.protect = command.local.Command(
            f"{name}-protect",
            create=pulumi.Output.all(repository, image.digest).apply(
                lambda v: copy_script(digest_ref(v[0], v[1]), v[0])
            ),
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


#: The tag prefix that protects an image from the registries' retention rules: `sha256-<hex>`, one tag per digest
#: (never moved, so ECR's IMMUTABLE tags take it), put on every image a stack deploys by the code path that deploys
#: it (`copy_script`: a promotion's or rollback's copy, and a build's protection step). The retention rules
#: (`ecr_lifecycle_policy`, `artifact_registry_cleanup_policies`) expire only what carries no such tag.
PROTECTED_TAG_PREFIX = "sha256-"
#: How long an unprotected image stays: a build pushed by an `up` that failed before it deployed it, the manifests
#: of an index that was never deployed, a tag someone pushed by hand.
UNPROTECTED_EXPIRY_DAYS = 14
_CHILD_DIGEST = (
    r"""grep -oE '"digest"[[:space:]]*:[[:space:]]*"sha256:[0-9a-f]{64}"' | grep -oE 'sha256:[0-9a-f]{64}'"""
)


def protected_tag(digest: str) -> str:
    """The protecting tag of a digest: `sha256:<hex>` -> `sha256-<hex>`."""
    require(digest.startswith("sha256:"), f"Image digest {digest!r} is not a sha256 digest.")
    return digest.replace(":", "-", 1)


def copy_script(
    source_ref: str, repository: str, *, login: Callable[[str], Login | None] = registry_login
) -> str:
    """The `/bin/sh -c` script that puts `source_ref`'s digest into `repository` under its protected tag, and proves it.

    It prints `<repository>@<digest>` last. Idempotent: an image whose protected tag is already there is not copied
    again (ECR's IMMUTABLE tags refuse a second push of a tag); one already in the repository by digest only (a
    build, pushed untagged) is tagged where it is, so `source_ref` may name the repository itself. The tag is
    `sha256-<hex>` (`protected_tag`), which the retention rules never expire; an index's manifests (the platform
    image, BuildKit's attestation) each get theirs too, so no rule can take a manifest from under a protected index
    whatever the registry makes of untagged children.
    """
    digest = source_ref.rsplit("@", 1)[1]
    target = f"docker://{repository}@{digest}"
    tag = f"docker://{repository}:{protected_tag(digest)}"
    q = shlex.quote
    copy = 'skopeo copy --all --preserve-digests --retry-times 3 --authfile "$auth"'
    lines = [
        *_AUTH_FILE,
        *_login_lines((_host(source_ref), _host(repository)), login),
        f'if skopeo inspect --raw --authfile "$auth" {q(tag)} >/dev/null 2>&1; then',
        f"  echo {q(f'{repository}:{protected_tag(digest)} is already in the target registry')} >&2",
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
        *_child_tag_lines(repository),
        f"echo {q(f'{repository}@{digest}')}",
    ]
    return "\n".join(lines) + "\n"


def _child_tag_lines(repository: str, indent: str = "") -> list[str]:
    """Shell lines giving each manifest the index in `$raw` lists its protected tag (nothing for an image manifest:
    only an index has `manifests`)."""
    q = shlex.quote
    lines = [
        """if printf '%s' "$raw" | grep -q '"manifests"'; then""",
        f"""  for child in $(printf '%s' "$raw" | {_CHILD_DIGEST}); do""",
        f'    child_tag={q(f"docker://{repository}:")}"sha256-${{child#sha256:}}"',
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


def ecr_lifecycle_policy(days: int = UNPROTECTED_EXPIRY_DAYS) -> dict[str, Any]:
    """The image repository's ECR lifecycle policy: expire untagged images pushed more than `days` ago, nothing else.

    ECR's rules (Lifecycle policy properties): `tagStatus: untagged` selects images without any tag, and a rule
    can only expire what it selects, so every image with a tag (the protected `sha256-<hex>` of each deployed image
    and of each manifest its index lists) stays whatever its age or count. The former "keep the last 50 images"
    (`tagStatus: any`, `imageCountMoreThan`) counted every build and every index's manifests, and expired the
    running release and every rollback target once 50 newer ones were pushed. A rule protecting tagged images by
    priority is not used: ECR has no "keep" action, only rules that expire beyond a count or an age."""
    return {
        "rules": [
            {
                "rulePriority": 1,
                "description": f"expire images with no tag (never deployed: no {PROTECTED_TAG_PREFIX}* tag) after {days} days",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": days,
                },
                "action": {"type": "expire"},
            }
        ]
    }


def artifact_registry_cleanup_policies(days: int = UNPROTECTED_EXPIRY_DAYS) -> list[dict[str, Any]]:
    """The image repository's Artifact Registry cleanup policies (pulumi-gcp 10.2.0 RepositoryCleanupPolicyArgs):
    delete untagged versions older than `days`, and keep every version tagged `sha256-*`. A version matching both a
    delete and a keep policy is kept (Artifact Registry "Cleanup policy overview"), so the keep policy still holds
    if a broader delete policy is ever added. Durations are seconds, as the API returns them."""
    return [
        {
            "id": "keep-deployed",
            "action": "KEEP",
            "condition": {"tag_state": "TAGGED", "tag_prefixes": [PROTECTED_TAG_PREFIX]},
        },
        {
            "id": "delete-undeployed",
            "action": "DELETE",
            "condition": {"tag_state": "UNTAGGED", "older_than": f"{days * 86400}s"},
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
