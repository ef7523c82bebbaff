"""An existing cluster (kind, minikube, any): a Kubernetes provider from the kubeconfig and context in config.

Nothing cloud-side is created. The image goes to `cluster.existing.registry` (kind's local-registry convention by
default); managed databases are refused by the config validator on this target.
"""

from __future__ import annotations

import os

import pulumi
import pulumi_kubernetes as k8s

from infra.clusters import ClusterTarget, Registry
from infra.config import StackConfig


def build_existing(config: StackConfig) -> ClusterTarget:
    """A provider for the configured kubeconfig/context; the kubeconfig output is a secret."""
    existing = config.cluster.existing
    kubeconfig = existing.kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config")
    provider = k8s.Provider(
        "k8s",
        kubeconfig=pulumi.Output.secret(existing.kubeconfig) if existing.kubeconfig else None,
        context=existing.context or None,
        # Server-side apply is the default in pulumi-kubernetes v4; keep field ownership with Pulumi.
        enable_server_side_apply=True,
    )
    server = existing.registry.split("/", 1)[0]
    return ClusterTarget(
        provider_name="existing",
        k8s_provider=provider,
        kubeconfig=pulumi.Output.secret(kubeconfig),
        registry=Registry(
            repository=pulumi.Output.from_input(f"{existing.registry}/rag-service"),
            server=pulumi.Output.from_input(server),
        ),
        storage_class=existing.storageClass,
    )
