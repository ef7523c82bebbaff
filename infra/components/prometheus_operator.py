"""Prometheus Operator objects (`monitoring.coreos.com/v1`) that components create next to their workloads.

Their CRDs arrive with kube-prometheus-stack (`Monitoring.crds_ready`), so every caller passes options that wait
for them (a component's `monitoring_crds`); the spec builders live with each component or in `specs`.
"""

from __future__ import annotations

from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s

API_VERSION = "monitoring.coreos.com/v1"


def monitoring_object(
    resource_name: str,
    kind: Literal["ServiceMonitor", "PodMonitor", "PrometheusRule"],
    *,
    metadata: dict[str, Any],
    spec: dict[str, Any],
    opts: pulumi.ResourceOptions,
) -> k8s.apiextensions.CustomResource:
    """A ServiceMonitor, PodMonitor or PrometheusRule custom resource."""
    return k8s.apiextensions.CustomResource(
        resource_name, api_version=API_VERSION, kind=kind, metadata=metadata, spec=spec, opts=opts
    )
