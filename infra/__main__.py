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
from infra.config import load_config, load_secrets  # noqa: E402

config = load_config()
secrets = load_secrets()
cluster = build_cluster(config)
k8s_opts = pulumi.ResourceOptions(provider=cluster.k8s_provider, depends_on=list(cluster.depends_on))

namespace = k8s.core.v1.Namespace(
    "namespace",
    metadata={"name": config.namespace, "labels": {"app.kubernetes.io/part-of": "rag"}},
    opts=k8s_opts,
)

image_ref: pulumi.Input[str] = config.image
qdrant_endpoint: pulumi.Input[str] = f"http://qdrant.{config.namespace}.svc.cluster.local:6333"
service_url = f"https://{config.gateway.hostname}"

pulumi.export("serviceUrl", service_url)
pulumi.export("imageDigest", image_ref)
pulumi.export("qdrantEndpoint", qdrant_endpoint)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("promotion", dict(config.promotion_raw) if config.promotion_raw else None)
pulumi.export("ephemeral", dict(config.ephemeral_raw) if config.ephemeral_raw else None)
