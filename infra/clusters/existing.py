"""An existing cluster (kind, minikube, any): a Kubernetes provider from the kubeconfig and context in config.

Nothing cloud-side is created. The image goes to `cluster.existing.registry` (kind's local-registry convention by
default); managed databases are refused by the config validator on this target.

One committed stack file serves a laptop and CI (`resolve_existing`): `$RAGOPS_KUBE_CONTEXT` and `$RAGOPS_REGISTRY`,
when set, override `cluster.existing.context` and `.registry`. The committed dev stack names kind's context
(`kind-rag`) and its local registry (`localhost:5001`), which exist only on the machine running kind; a CI job sets
the two variables to the cluster its `$KUBECONFIG` reaches and a registry both the runner and that cluster's nodes
reach (.github/workflows: the `KUBE_CONTEXT` and `REGISTRY` variables of the job's environment). A registry on the
pushing machine's loopback is refused for a cluster that is not a local one (kind, k3d, minikube, Docker/Rancher
Desktop, OrbStack): its nodes would pull from their own loopback, and on a CI runner nothing listens there either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.clusters import ClusterTarget, Registry
from infra.config import ConfigError, ExistingCluster, StackConfig, _is_local_registry, stack_file

CONTEXT_ENV = "RAGOPS_KUBE_CONTEXT"
REGISTRY_ENV = "RAGOPS_REGISTRY"
#: Contexts of clusters that run on the machine itself, whose nodes reach a registry on its loopback (kind through
#: the containerd mirror `make e2e` configures, the others through their own registry add-ons or shared daemon).
LOCAL_CONTEXT = re.compile(r"^(kind-.+|k3d-.+|minikube|docker-desktop|rancher-desktop|orbstack)$")
_REGISTRY = re.compile(r"^[a-z0-9][a-z0-9._:/-]*[a-z0-9]$")


@dataclass(frozen=True)
class ExistingTarget:
    """The context and registry a run uses, and where each came from (for messages)."""

    context: str
    """kubeconfig context; empty: the kubeconfig's current context."""
    registry: str
    context_from: str
    registry_from: str


def resolve_existing(existing: ExistingCluster, stack: str, environ: Mapping[str, str]) -> ExistingTarget:
    """`cluster.existing.{context,registry}` with the environment's overrides, checked (ConfigError naming the key
    or variable and the stack file).

    `$RAGOPS_KUBE_CONTEXT` set, even empty, replaces the context (empty: the kubeconfig's current context, what a
    CI job's one-context kubeconfig wants); an empty `$RAGOPS_REGISTRY` is ignored.
    """
    file = stack_file(stack)
    context, context_from = existing.context, "rag:cluster.existing.context"
    if CONTEXT_ENV in environ:
        context, context_from = environ[CONTEXT_ENV], f"${CONTEXT_ENV}"
    registry, registry_from = existing.registry, "rag:cluster.existing.registry"
    if environ.get(REGISTRY_ENV):
        registry, registry_from = environ[REGISTRY_ENV], f"${REGISTRY_ENV}"
        if not _REGISTRY.fullmatch(registry):
            raise ConfigError(
                registry_from,
                file,
                f"invalid registry {registry!r} (expected host[:port]/path, e.g. ghcr.io/acme/rag)",
            )
    if _is_local_registry(registry.split("/", 1)[0]):
        ci = environ.get("CI", "").lower() in ("true", "1")
        local = bool(LOCAL_CONTEXT.fullmatch(context)) or (not context and not ci)
        if not local:
            where = (
                f"context {context!r} ({context_from})" if context else "the current context on a CI runner"
            )
            raise ConfigError(
                registry_from,
                file,
                f"{registry!r} is on the loopback of the machine running pulumi, and {where} is not a cluster on "
                f"this machine: its nodes would pull from their own loopback. Set ${REGISTRY_ENV} (or "
                "rag:cluster.existing.registry) to a registry the nodes and this machine both reach, or point "
                f"${CONTEXT_ENV} at the local cluster (kind: kind-<name>)",
            )
    return ExistingTarget(context, registry, context_from, registry_from)


def build_existing(config: StackConfig) -> ClusterTarget:
    """A provider for the configured kubeconfig/context; the kubeconfig output is a secret."""
    existing = config.cluster.existing
    target = resolve_existing(existing, config.stack, os.environ)
    kubeconfig = existing.kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config")
    provider = k8s.Provider(
        "k8s",
        kubeconfig=pulumi.Output.secret(existing.kubeconfig) if existing.kubeconfig else None,
        context=target.context or None,
        # Server-side apply is the default in pulumi-kubernetes v4; keep field ownership with Pulumi.
        enable_server_side_apply=True,
    )
    server = target.registry.split("/", 1)[0]
    return ClusterTarget(
        provider_name="existing",
        k8s_provider=provider,
        kubeconfig=pulumi.Output.secret(kubeconfig),
        registry=Registry(
            repository=pulumi.Output.from_input(f"{target.registry}/rag-service"),
            server=pulumi.Output.from_input(server),
        ),
        storage_class=existing.storageClass,
    )
