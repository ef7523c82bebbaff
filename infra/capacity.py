"""Node capacity on EKS: do the stack's pods, at the most replicas its autoscalers may ask for, fit the nodes the
node group can have? (`make plan`'s `node-capacity` check, `check_node_capacity`.)

An HPA that scales the API past what the nodes hold leaves the extra pods Pending: the HPA reports the replicas it
asked for, the Service has fewer endpoints, and nothing of the stack's own alerts. The nodes the group can have are
`maxSize` when the Cluster Autoscaler runs for the cluster (it adds nodes for Pending pods, up to the group's
maximum), else `desiredSize`: a managed node group scales by nothing else, whatever its `maxSize`.

The pods counted are the ones the program declares, at their peak: each Deployment at its HPA's `maxReplicas` (at
`replicas` without one), each StatefulSet at `replicas`, each CloudNativePG Cluster at `instances`, one pod of each
CronJob (a backup may run at the peak), a pod's request being the larger of its init containers' and the sum of its
containers'. They are packed first-fit-decreasing onto the nodes' allocatable (the pods of a required pod
anti-affinity on the hostname first, each on a node of its own), a heuristic: a finding means no easy placement. On top of them:

- per node, `NODE_DAEMONS`: the DaemonSets every EKS node of this target runs (aws-node, kube-proxy, the EBS CSI
  node plugin, and node-exporter when monitoring is on) - an estimate from their usual requests;
- once, `CLUSTER_ADDONS`: the add-on controllers the target installs (CoreDNS x2, metrics-server x2, the Cluster
  Autoscaler, Envoy Gateway and its proxy, cert-manager, the CloudNativePG operator, kube-prometheus-stack's
  operator, Prometheus and Alertmanager) - an estimate of their requests, counted as `ADDON_PODS` equal pods.

Allocatable per node follows the EKS-optimized AMI's kubelet settings (awslabs/amazon-eks-ami): kube-reserved CPU
6 % of the first core, 1 % of the second, 0.5 % of the third and fourth, 0.25 % of each further core; kube-reserved
memory 255 MiB + 11 MiB per pod the instance's ENIs allow (max pods); eviction threshold 100 MiB; of the nominal
memory, `MEMORY_VISIBLE` is taken as what the kernel reports as capacity. Instance types outside `INSTANCE_SHAPES`
are a finding: the check cannot say whether the pods fit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from infra.components.specs import quantity_value
from infra.offline import RecordedResource, StackRun

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
CNPG_CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
HOST_KEY = "kubernetes.io/hostname"

#: vCPUs per size; nominal GiB per vCPU of each family; max pods per size (ENIs x (IPv4 addresses per ENI - 1) + 2,
#: the VPC CNI's default without prefix delegation; amazon-eks-ami's eni-max-pods list). t3: medium to 2xlarge.
_SIZES = {"medium": 2, "large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16}
_MAX_PODS = {"medium": 17, "large": 29, "xlarge": 58, "2xlarge": 58, "4xlarge": 234}
_GIB_PER_VCPU = {"m": 4, "c": 2, "r": 8}
_FAMILY = re.compile(r"^(?P<kind>[mcr])(?P<gen>5|5a|6i|6a|7i|7a)\.(?P<size>large|xlarge|2xlarge|4xlarge)$")
_BURSTABLE = re.compile(r"^t3a?\.(?P<size>medium|large|xlarge|2xlarge)$")
#: Share of the nominal memory the kernel reports as the node's capacity (the rest is firmware and kernel).
MEMORY_VISIBLE = 0.95
MIB = 2**20
#: (millicores, MiB) every node gives its DaemonSets before any pod of the stack (estimate, see the module doc).
NODE_DAEMONS = (200, 256)
#: (millicores, MiB) of the add-on controllers the EKS target installs, all nodes together (estimate).
CLUSTER_ADDONS = (1000, 2560)
#: ... counted as this many equal pods (they are a dozen small ones, spread over the nodes).
ADDON_PODS = 10


@dataclass(frozen=True)
class NodeShape:
    """An instance type's vCPUs, nominal memory and max pods."""

    vcpus: int
    memory_gib: int
    max_pods: int


@dataclass(frozen=True)
class Pod:
    """One pod to place: its workload, requests, and whether its workload wants one pod per node."""

    workload: str
    cpu_m: float
    memory_mib: float
    one_per_node: bool


def instance_shape(instance_type: str) -> NodeShape | None:
    """The shape of an m/c/r generation 5-7 type (large to 4xlarge) or a t3/t3a (medium to 2xlarge); None else."""
    if burstable := _BURSTABLE.fullmatch(instance_type):
        size = burstable["size"]
        memory_gib = 4 if size == "medium" else 4 * _SIZES[size]
        return NodeShape(_SIZES[size], memory_gib, 35 if size == "large" else _MAX_PODS[size])
    if match := _FAMILY.fullmatch(instance_type):
        vcpus = _SIZES[match["size"]]
        return NodeShape(vcpus, vcpus * _GIB_PER_VCPU[match["kind"]], _MAX_PODS[match["size"]])
    return None


def allocatable(shape: NodeShape) -> tuple[float, float]:
    """(millicores, MiB) a node of `shape` offers to pods, after the EKS AMI's kube-reserved and eviction threshold."""
    reserved_m = 0.0
    for core in range(1, shape.vcpus + 1):
        reserved_m += 1000 * (0.06 if core == 1 else 0.01 if core == 2 else 0.005 if core <= 4 else 0.0025)
    memory = shape.memory_gib * 1024 * MEMORY_VISIBLE - (255 + 11 * shape.max_pods) - 100
    return shape.vcpus * 1000 - reserved_m, memory


def _pod_requests(pod_spec: Mapping[str, Any]) -> tuple[float, float]:
    """(millicores, MiB) the scheduler reserves for a pod: max(largest init container, sum of containers)."""

    def requests(container: Mapping[str, Any]) -> tuple[float, float]:
        wanted = (container.get("resources") or {}).get("requests") or {}
        cpu, memory = wanted.get("cpu"), wanted.get("memory")
        return (
            quantity_value(str(cpu)) * 1000 if cpu is not None else 0.0,
            quantity_value(str(memory)) / MIB if memory is not None else 0.0,
        )

    main = [requests(c) for c in pod_spec.get("containers") or []]
    init = [requests(c) for c in pod_spec.get("initContainers") or []]
    cpu = max([sum(c for c, _ in main), *(c for c, _ in init)])
    memory = max([sum(m for _, m in main), *(m for _, m in init)])
    return cpu, memory


def _one_per_node(pod_spec: Mapping[str, Any]) -> bool:
    terms = ((pod_spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or []
    return any(term.get("topologyKey") == HOST_KEY for term in terms)


def _hpa_max(run: StackRun) -> dict[tuple[str, str], int]:
    """(namespace, Deployment name) -> its HPA's maxReplicas."""
    bounds = {}
    for hpa in run.of_type(HPA):
        spec = hpa.inputs.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        if target.get("kind") == "Deployment":
            namespace = (hpa.inputs.get("metadata") or {}).get("namespace") or "default"
            bounds[(namespace, str(target.get("name")))] = int(spec.get("maxReplicas") or 1)
    return bounds


def peak_pods(run: StackRun) -> Iterator[Pod]:
    """Every pod the program's workloads may run at once, at their peak replica counts."""
    hpa = _hpa_max(run)
    for resource in run.resources:
        kind = resource.type.rsplit(":", 1)[-1]
        if resource.type.startswith("kubernetes:apps/v1:") and kind in ("Deployment", "StatefulSet"):
            metadata = resource.inputs.get("metadata") or {}
            spec = resource.inputs.get("spec") or {}
            key = (metadata.get("namespace") or "default", str(metadata.get("name")))
            replicas = hpa.get(key) if kind == "Deployment" and key in hpa else spec.get("replicas", 1)
            pod_spec = (spec.get("template") or {}).get("spec") or {}
        elif resource.type == "kubernetes:batch/v1:CronJob":
            replicas = 1
            job = ((resource.inputs.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
            pod_spec = (job.get("template") or {}).get("spec") or {}
        elif resource.type == CNPG_CLUSTER:
            spec = resource.inputs.get("spec") or {}
            replicas = spec.get("instances", 1)
            resources = spec.get("resources") or {}
            pod_spec = {"containers": [{"resources": resources}]}
            pod_spec["affinity"] = (
                {
                    "podAntiAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": HOST_KEY}]
                    }
                }
                if (spec.get("affinity") or {}).get("podAntiAffinityType") == "required"
                else {}
            )
        else:
            continue
        cpu, memory = _pod_requests(pod_spec)
        for _ in range(int(replicas or 0)):
            yield Pod(resource.name, cpu, memory, _one_per_node(pod_spec))


def unplaced(pods: list[Pod], nodes: int, node_cpu: float, node_memory: float) -> list[Pod]:
    """The pods first-fit-decreasing cannot place on `nodes` nodes of the given free capacity (each node's
    daemons already taken off), keeping a one-per-node workload's pods on distinct nodes."""
    free = [[node_cpu, node_memory] for _ in range(nodes)]
    held: list[set[str]] = [set() for _ in range(nodes)]
    left = []

    # Constrained pods first (they need distinct nodes), then largest first, by their share of a node.
    def order(pod: Pod) -> tuple[bool, float]:
        return (not pod.one_per_node, -(pod.cpu_m / max(node_cpu, 1) + pod.memory_mib / max(node_memory, 1)))

    for pod in sorted(pods, key=order):
        for index, (cpu, memory) in enumerate(free):
            if (
                pod.cpu_m <= cpu
                and pod.memory_mib <= memory
                and not (pod.one_per_node and pod.workload in held[index])
            ):
                free[index][0] -= pod.cpu_m
                free[index][1] -= pod.memory_mib
                held[index].add(pod.workload)
                break
        else:
            left.append(pod)
    return left


def autoscaled_clusters(run: StackRun) -> set[str]:
    """Names of the clusters a Cluster Autoscaler release in the run discovers node groups of."""
    names = set()
    for release in run.of_type(HELM_RELEASE):
        if str(release.inputs.get("chart") or "").rsplit("/", 1)[-1] == "cluster-autoscaler":
            values = release.inputs.get("values") or {}
            if values.get("cloudProvider", "aws") == "aws":
                names.add(str((values.get("autoDiscovery") or {}).get("clusterName") or ""))
    return names


@dataclass(frozen=True)
class CapacityProblem:
    """One node group the stack's pods do not fit."""

    node_group: RecordedResource
    message: str
    fix: str


def node_capacity_problems(run: StackRun) -> list[CapacityProblem]:
    """What keeps the stack's peak pods from fitting its EKS node groups (see the module doc)."""
    groups = run.of_type(NODE_GROUP)
    if not groups:
        return []
    autoscaled = autoscaled_clusters(run)
    pods = list(peak_pods(run))
    problems = []
    for group in groups:
        cluster = str(group.inputs.get("clusterName"))
        # EKS's default when a group names no type (CreateNodegroup: t3.medium).
        types = group.inputs.get("instanceTypes") or ["t3.medium"]
        scaling = group.inputs.get("scalingConfig") or {}
        if not scaling:
            continue  # a required argument: the provider refuses the group before any pod is placed
        shape = instance_shape(str(types[0])) if types else None
        if shape is None:
            problems.append(
                CapacityProblem(
                    group,
                    f"instance type {types!r} is not one the node-capacity check knows the allocatable of, so no "
                    "check says whether the stack's pods fit its nodes.",
                    "use an m/c/r generation 5-7 type (large to 4xlarge) or a t3, or add its shape to infra/capacity.py.",
                )
            )
            continue
        with_autoscaler = cluster in autoscaled
        nodes = int(scaling.get("maxSize" if with_autoscaler else "desiredSize") or 0)
        cpu, memory = allocatable(shape)
        free_cpu, free_memory = cpu - NODE_DAEMONS[0], memory - NODE_DAEMONS[1]
        addons = [
            Pod(
                "cluster add-ons",
                CLUSTER_ADDONS[0] / ADDON_PODS,
                CLUSTER_ADDONS[1] / ADDON_PODS,
                one_per_node=False,
            )
        ] * ADDON_PODS
        left = unplaced([*pods, *addons], nodes, free_cpu, free_memory)
        if not left:
            continue
        need_cpu = sum(p.cpu_m for p in pods) + CLUSTER_ADDONS[0] + nodes * NODE_DAEMONS[0]
        need_memory = sum(p.memory_mib for p in pods) + CLUSTER_ADDONS[1] + nodes * NODE_DAEMONS[1]
        pending = sorted({p.workload for p in left})
        which = (
            "maxSize (the Cluster Autoscaler's ceiling)" if with_autoscaler else "desiredSize (no autoscaler)"
        )
        problems.append(
            CapacityProblem(
                group,
                f"at their peak (HPA maxReplicas) the stack's pods and the cluster's add-ons request "
                f"{need_cpu / 1000:.1f} vCPU and {need_memory / 1024:.1f} GiB, and {len(left)} pod(s) of "
                f"{', '.join(pending)} fit none of the {nodes} x {types[0]} nodes of {which}, "
                f"{free_cpu / 1000:.2f} vCPU and {free_memory / 1024:.1f} GiB free each: they would stay Pending.",
                "raise rag:cluster.eks.nodeGroup.maxSize (with cluster.eks.clusterAutoscaler on) or instanceType, "
                "or lower service.autoscaling.maxReplicas or the pods' requests"
                + ("" if with_autoscaler else "; or turn rag:cluster.eks.clusterAutoscaler.enabled on")
                + " (docs/infra.md, 'Node capacity').",
            )
        )
    return problems
