"""Cluster targets: where the platform runs (`existing`, `gke`, `eks`), each built at the top level of the stack.

`build_cluster(config)` returns a `ClusterTarget`: the Kubernetes provider every component receives through `opts`
(providers are never built inside a component), the registry the image is pushed to, the kubeconfig (a secret
Output), the storage class, and - for the clouds - the cloud provider and network that managed databases, caches,
buckets and workload identity are created with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s

from infra.config import StackConfig


@dataclass(frozen=True)
class Registry:
    """Where the service image is pushed: `repository` is `HOST/PATH/NAME` (no tag); credentials may be None."""

    repository: pulumi.Output[str]
    server: pulumi.Output[str]
    username: pulumi.Output[str] | None = None
    password: pulumi.Output[str] | None = None  # secret
    # Where the BuildKit cache goes (`<cache_repository>:buildcache`, overwritten each build); None: `repository`.
    cache_repository: pulumi.Output[str] | None = None
    # The registry expires untagged images (ECR lifecycle policy, Artifact Registry cleanup policies): a build must get
    # its protected tag before it is deployed (ServiceImageArgs.protect_build).
    expires_untagged: bool = False


@dataclass(frozen=True)
class ClusterTarget:
    """What the rest of the program needs from a cluster target."""

    provider_name: Literal["existing", "gke", "eks"]
    k8s_provider: k8s.Provider
    kubeconfig: pulumi.Output[str]  # secret
    registry: Registry
    storage_class: str
    cloud_provider: pulumi.ProviderResource | None = None  # gcp/aws provider for managed resources
    region: str = ""
    network: Mapping[str, Any] = field(
        default_factory=dict
    )  # vpc/subnets/security group (eks), network (gke)
    depends_on: tuple[pulumi.Resource, ...] = ()  # what must exist before workloads (node pool / node group)
    # What lets the nodes pull the stack's own image (the node identity's registry read grant): the service's pods
    # wait for it explicitly, not only through the node pool, so no first pull is refused and backed off.
    image_pull: tuple[pulumi.Resource, ...] = ()
    # What provides the Gateway API on this target (its CRDs, a controller, the GatewayClass): the Gateway, its
    # routes and cert-manager (whose Gateway API support needs the CRDs at start-up) wait for these. Empty on
    # `existing`, where they are a prerequisite of the cluster (docs/infra.md).
    gateway_api: tuple[pulumi.Resource, ...] = ()
    # (namespace, service account name, role) -> annotations binding that KSA to the role's cloud identity.
    workload_identity: Callable[[str, str, str], Mapping[str, pulumi.Input[str]]] | None = None
    # (role, bucket name) -> lets the role's cloud identity write backups into the bucket; returns the grant.
    grant_bucket_write: Callable[[str, pulumi.Input[str]], pulumi.Resource | None] | None = None
    cloud: Literal["aws", "gcp"] | None = None

    def cloud_opts(self, *, protect: bool = False, **extra: Any) -> pulumi.ResourceOptions:
        """Options for a managed cloud resource created outside a component (protected in prod)."""
        return pulumi.ResourceOptions(provider=self.cloud_provider, protect=protect, **extra)


def build_cluster(config: StackConfig) -> ClusterTarget:
    """The configured cluster target (import is lazy so a dev run never loads the cloud SDKs)."""
    check_kubernetes_keys(provider_stack_keys("kubernetes"), config.stack_file)
    for namespace, target in CLOUD_NAMESPACES.items():
        if config.cluster.provider != target:
            check_no_cloud_keys(
                namespace, target, config.cluster.provider, provider_stack_keys(namespace), config.stack_file
            )
    if config.cluster.provider == "gke":
        from infra.clusters.gke import build_gke

        return build_gke(config)
    if config.cluster.provider == "eks":
        from infra.clusters.eks import build_eks

        return build_eks(config)
    from infra.clusters.existing import build_existing

    return build_existing(config)


def provider_stack_keys(namespace: str) -> dict[str, Any]:
    """The `<namespace>:*` keys (bare name -> value as the CLI hands it) the stack's config sets.

    The program's cloud providers are explicit (`aws.Provider("aws", ...)`, `gcp.Provider("gcp", ...)`), and an
    explicit provider reads no stack config of its package: `aws:profile` or `gcp:project` in a stack file would do
    nothing at all. The cloud targets read them from here to honour or refuse each one (eks.py, gke.py).
    """
    from pulumi.runtime.config import CONFIG, get_config, get_config_env

    prefix = f"{namespace}:"
    return {
        key[len(prefix) :]: get_config(key)
        for key in sorted({*CONFIG.get(), *get_config_env()})
        if key.startswith(prefix)
    }


def check_kubernetes_keys(keys: Mapping[str, Any], file: str) -> None:
    """Refuse `kubernetes:*` stack keys (`keys`: bare name -> value): every Kubernetes provider of the program is
    explicit (built by the cluster target), so `kubernetes:context` or `kubernetes:kubeconfig` would be ignored and
    the stack deployed to whatever cluster the target names."""
    from infra.config import ConfigError

    for bare in sorted(keys):
        raise ConfigError(
            f"kubernetes:{bare}",
            file,
            "not read: the stack's Kubernetes provider is explicit (infra/clusters/), built from rag:cluster "
            "(an existing cluster's rag:cluster.existing.context / kubeconfig; gke/eks: the cluster the stack "
            "creates). Remove the key",
        )


#: Each cloud's config namespace and the one cluster target that builds its provider.
CLOUD_NAMESPACES = {"aws": "eks", "gcp": "gke"}


def check_no_cloud_keys(
    namespace: str, target: str, provider: str, keys: Mapping[str, Any], file: str
) -> None:
    """Refuse `<namespace>:*` keys on a stack whose cluster target builds no provider of that cloud (`keys`: bare
    name -> value). Nothing would read them, and a reader of the stack file would believe them in force:
    `aws:allowedAccountIds` on a gke or existing stack guards no account (infra review finding 4). Refused rather
    than listed by `make plan` alone, so a bare `pulumi up` says it too."""
    from infra.config import ConfigError

    for bare in sorted(keys):
        raise ConfigError(
            f"{namespace}:{bare}",
            file,
            f"not read: rag:cluster.provider is {provider}, and only the {target} target builds the stack's "
            f"{namespace} provider, so this key guards or sets nothing. Remove it (a stack switched to {target} "
            "takes it again)",
        )
