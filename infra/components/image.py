"""`ServiceImage` (`rag:build:ServiceImage`): the service image, built and pushed, deployed by digest.

Either builds service/Dockerfile with pulumi-docker-build (context = repository root, linux/amd64, pushed to
`repository` tagged with the git commit, registry credentials from args, a registry build cache in
`cache_repository`, which must take tag overwrites) and outputs
`ref` = `<repository>@sha256:<digest>`; or, when `existing_ref` is given (promotion), builds nothing and `ref` is
that immutable digest reference. Deploying by digest means a tag moved later can never change what runs.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_docker_build as docker_build

from infra.components.specs import DIGEST_REF, require

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
    """An immutable `REGISTRY/REPO@sha256:<64 hex>` to deploy as is (nothing is built)."""
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
        return
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


def current_git_sha(repo_root: Path = REPO_ROOT) -> str:
    """The commit checked out in `repo_root` (what a build from this tree should be tagged with)."""
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, like any developer machine or CI runner
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def image_tags(repository: str, git_sha: str) -> list[str]:
    """Tags pushed for a build: the full commit id (unique, never reused)."""
    return [f"{repository}:{git_sha}"]


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
        if args.existing_ref is not None:
            self.built = False
            self.ref = pulumi.Output.from_input(args.existing_ref)
        else:
            self.built = True
            self.ref = self._build(name, args)
        self.register_outputs({"ref": self.ref})

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
            push=True,
            tags=repository.apply(lambda repo: image_tags(repo, sha)),
            registries=registries,
            cache_from=cache_from,
            cache_to=cache_to,
            build_args=dict(args.build_args) or None,
            labels={
                "org.opencontainers.image.revision": sha,
                "org.opencontainers.image.source": "rag-platform",
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        return pulumi.Output.all(repository, image.digest).apply(lambda v: digest_ref(v[0], v[1]))
