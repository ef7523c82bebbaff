"""The Pulumi program (`main: infra/`): config -> cluster target -> components -> stack outputs.

The CLI runs this file as a script, so it first makes the repository root importable; everything else lives in
the `infra` package (config checks in infra/config.py, cluster targets in infra/clusters/, building blocks in
infra/components/). `infra/offline.py` runs this same file under mocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402
import pulumi_kubernetes as k8s  # noqa: E402

from infra.clusters import build_cluster  # noqa: E402
from infra.components.qdrant import QdrantCluster, QdrantClusterArgs  # noqa: E402
from infra.components.rag_service import client_selector  # noqa: E402
from infra.components.specs import Resources  # noqa: E402
from infra.config import Resources as ConfigResources  # noqa: E402
from infra.config import load_config, load_secrets  # noqa: E402

SERVICE_NAME = "rag"  # the RagService component's name: its pods' labels admit it to the data stores


def resources(spec: ConfigResources) -> Resources:
    """Config requests/limits -> the components' Resources."""
    return Resources(
        cpu_request=spec.requests.cpu,
        memory_request=spec.requests.memory,
        cpu_limit=spec.limits.cpu,
        memory_limit=spec.limits.memory,
    )


config = load_config()
secrets = load_secrets()
cluster = build_cluster(config)
k8s_opts = pulumi.ResourceOptions(provider=cluster.k8s_provider, depends_on=list(cluster.depends_on))

namespace = k8s.core.v1.Namespace(
    "namespace",
    metadata={
        "name": config.namespace,
        "labels": {
            "app.kubernetes.io/part-of": "rag",
            # Enforce baseline; warn/audit against restricted (the platform's own pods meet it).
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
        },
    },
    opts=k8s_opts,
)
in_cluster = pulumi.ResourceOptions(provider=cluster.k8s_provider)

qdrant_cfg = config.qdrant
qdrant = QdrantCluster(
    "qdrant",
    QdrantClusterArgs(
        namespace=config.namespace,
        api_key=secrets.qdrant_api_key,
        replicas=qdrant_cfg.replicas,
        replication_factor=qdrant_cfg.replicationFactor,
        image=f"qdrant/qdrant:{qdrant_cfg.version}-unprivileged",
        storage_size=qdrant_cfg.storage.size,
        storage_class=qdrant_cfg.storage.storageClass or cluster.storage_class or None,
        snapshots_size=qdrant_cfg.snapshotsStorage.size,
        resources=resources(qdrant_cfg.resources),
        protect=config.protect,
        client_selectors=(client_selector(SERVICE_NAME),),
        depends_on=(namespace,),
    ),
    opts=in_cluster,
)

image_ref: pulumi.Input[str] = config.image
service_url = f"https://{config.gateway.hostname}"

pulumi.export("serviceUrl", service_url)
pulumi.export("imageDigest", image_ref)
pulumi.export("qdrantEndpoint", qdrant.endpoint)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("promotion", dict(config.promotion_raw) if config.promotion_raw else None)
pulumi.export("ephemeral", dict(config.ephemeral_raw) if config.ephemeral_raw else None)
