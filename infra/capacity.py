"""Node capacity on EKS and GKE Standard: do the stack's pods, at the most replicas its autoscalers may ask for, fit the nodes the
node group can have? (`make plan`'s `node-capacity` check, `check_node_capacity`.)

An HPA that scales the API past what the nodes hold leaves the extra pods Pending: the HPA reports the replicas it
asked for, the Service has fewer endpoints, and nothing of the stack's own alerts. The nodes the group can have are
`maxSize` when the Cluster Autoscaler runs for the cluster (it adds nodes for Pending pods, up to the group's
maximum), else `desiredSize`: a managed node group scales by nothing else, whatever its `maxSize`.

The pods counted are the ones the program declares, at their peak: each Deployment at its HPA's `maxReplicas` (at
`replicas` without one), each StatefulSet at `replicas`, each CloudNativePG Cluster at `instances` (its `resources`
plus, when it archives through the Barman Cloud plugin, the plugin's sidecar: the `instanceSidecarConfiguration`
resources of the ObjectStore its plugin entry names, a native sidecar whose requests add to the pod's), the Barman
Cloud plugin's controller (its release's `replicaCount` x `resources`), one pod of each
CronJob (a backup may run at the peak), each Gateway's Envoy proxies (its EnvoyProxy's `envoyDeployment`), a pod's request being the larger of its init containers' and the sum of its
containers'. They are packed first-fit-decreasing onto the nodes' allocatable (the pods of a required pod
anti-affinity on the hostname first, each on a node of its own), a heuristic: a finding means no easy placement. On top of them:

- per node, `NODE_DAEMONS`: the DaemonSets every EKS node of this target runs (aws-node, kube-proxy, the EBS CSI
  node plugin, and node-exporter when monitoring is on) - an estimate from their usual requests;
- once, `CLUSTER_ADDONS`: the add-on controllers the target installs (CoreDNS x2, metrics-server x2, the Cluster
  Autoscaler, Envoy Gateway's controller, cert-manager, the CloudNativePG operator, kube-prometheus-stack's
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
OBJECT_STORE = "kubernetes:barmancloud.cnpg.io/v1:ObjectStore"
#: The plugin's name in `Cluster.spec.plugins` (infra/components/postgres.py BARMAN_CLOUD_PLUGIN).
BARMAN_CLOUD_PLUGIN = "barman-cloud.cloudnative-pg.io"
BARMAN_CLOUD_CHART = "plugin-barman-cloud"
HOST_KEY = "kubernetes.io/hostname"
ENVOY_PROXY = "kubernetes:gateway.envoyproxy.io/v1alpha1:EnvoyProxy"
GATEWAY_CLASS = "kubernetes:gateway.networking.k8s.io/v1:GatewayClass"
GATEWAY = "kubernetes:gateway.networking.k8s.io/v1:Gateway"

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
    memory_gib: float
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


def is_ec2_instance_type(instance_type: str) -> bool:
    """Whether EC2 has an instance type of that name (pulumi-aws's `ec2.InstanceType` enum, the provider's list)."""
    import pulumi_aws as aws

    return instance_type in {t.value for t in aws.ec2.InstanceType}


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


#: Envoy Gateway's requests for a proxy container whose EnvoyProxy sets none (v1.9.0 api/v1alpha1/shared_types.go
#: DefaultDeploymentCPUResourceRequests / DefaultDeploymentMemoryResourceRequests).
ENVOY_PROXY_DEFAULT_REQUESTS = {"cpu": "100m", "memory": "512Mi"}


def _gateway_proxies(run: StackRun) -> Iterator[Pod]:
    """The proxy pods Envoy Gateway runs for each Gateway of a class whose parametersRef is an EnvoyProxy of the
    run: `envoyDeployment.replicas` (default 1) pods per Gateway (each gets its own proxy Deployment), or per class
    when the EnvoyProxy sets `mergeGateways`."""
    proxies = {}
    for proxy in run.of_type(ENVOY_PROXY):
        metadata = proxy.inputs.get("metadata") or {}
        proxies[(metadata.get("namespace"), metadata.get("name"))] = proxy
    classes = {}
    for gateway_class in run.of_type(GATEWAY_CLASS):
        ref = (gateway_class.inputs.get("spec") or {}).get("parametersRef") or {}
        if ref.get("kind") == "EnvoyProxy" and (ref.get("namespace"), ref.get("name")) in proxies:
            classes[(gateway_class.inputs.get("metadata") or {}).get("name")] = proxies[
                (ref["namespace"], ref["name"])
            ]
    merged: set[str] = set()
    for gateway in run.of_type(GATEWAY):
        class_name = (gateway.inputs.get("spec") or {}).get("gatewayClassName")
        proxy = classes.get(class_name)
        if proxy is None:
            continue
        if (proxy.inputs.get("spec") or {}).get("mergeGateways"):
            # One fleet serves every Gateway of the class.
            if class_name in merged:
                continue
            merged.add(class_name)
        kubernetes = ((proxy.inputs.get("spec") or {}).get("provider") or {}).get("kubernetes") or {}
        deployment = kubernetes.get("envoyDeployment") or {}
        resources = (deployment.get("container") or {}).get("resources") or {
            "requests": ENVOY_PROXY_DEFAULT_REQUESTS
        }
        cpu, memory = _pod_requests({"containers": [{"resources": resources}]})
        for _ in range(int(deployment.get("replicas") or 1)):
            yield Pod(f"{gateway.name} proxy", cpu, memory, one_per_node=False)


def backup_sidecars(run: StackRun, cluster: RecordedResource) -> list[dict[str, Any]]:
    """The Barman Cloud plugin's sidecar container of a CloudNativePG Cluster's instance pods, as a container with its
    resources: those of the ObjectStore its plugin entry names (plugin-barman-cloud v0.13.0
    `collectSidecarResourcesForPod`: `spec.instanceSidecarConfiguration.resources`); none without the plugin."""
    namespace = (cluster.inputs.get("metadata") or {}).get("namespace")
    stores = {
        (
            (store.inputs.get("metadata") or {}).get("namespace"),
            (store.inputs.get("metadata") or {}).get("name"),
        ): store
        for store in run.of_type(OBJECT_STORE)
    }
    for plugin in (cluster.inputs.get("spec") or {}).get("plugins") or []:
        if plugin.get("name") != BARMAN_CLOUD_PLUGIN:
            continue
        store = stores.get((namespace, (plugin.get("parameters") or {}).get("barmanObjectName")))
        sidecar = ((store.inputs.get("spec") or {}) if store is not None else {}).get(
            "instanceSidecarConfiguration"
        )
        return [{"name": "plugin-barman-cloud", "resources": (sidecar or {}).get("resources") or {}}]
    return []


def _barman_cloud_controllers(run: StackRun) -> Iterator[Pod]:
    """The Barman Cloud plugin's controller pods (its chart's Deployment: `replicaCount` x `resources`)."""
    for release in run.of_type(HELM_RELEASE):
        if str(release.inputs.get("chart") or "").rsplit("/", 1)[-1] != BARMAN_CLOUD_CHART:
            continue
        values = release.inputs.get("values") or {}
        cpu, memory = _pod_requests({"containers": [{"resources": values.get("resources") or {}}]})
        for _ in range(int(values.get("replicaCount") or 1)):
            yield Pod(f"{release.name} controller", cpu, memory, one_per_node=False)


def peak_pods(run: StackRun) -> Iterator[Pod]:
    """Every pod the program's workloads may run at once, at their peak replica counts."""
    yield from _gateway_proxies(run)
    yield from _barman_cloud_controllers(run)
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
            # The plugin's sidecar is a restartable init container: its requests add to the postgres container's.
            pod_spec = {"containers": [{"resources": resources}, *backup_sidecars(run, resource)]}
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
    """What keeps the stack's peak pods from fitting its EKS node groups or GKE node pools (see the module doc)."""
    groups = run.of_type(NODE_GROUP)
    problems = gke_node_capacity_problems(run)
    if not groups:
        return problems
    autoscaled = autoscaled_clusters(run)
    pods = list(peak_pods(run))
    for group in groups:
        cluster = str(group.inputs.get("clusterName"))
        # EKS's default when a group names no type (CreateNodegroup: t3.medium).
        types = group.inputs.get("instanceTypes") or ["t3.medium"]
        scaling = group.inputs.get("scalingConfig") or {}
        if not scaling:
            continue  # a required argument: the provider refuses the group before any pod is placed
        shape = instance_shape(str(types[0])) if types else None
        if shape is None:
            known = "use an m/c/r generation 5-7 type (large to 4xlarge) or a t3/t3a (medium to 2xlarge)"
            if types and not is_ec2_instance_type(str(types[0])):
                problems.append(
                    CapacityProblem(
                        group,
                        f"instance type {types[0]!r} (rag:cluster.eks.nodeGroup.instanceType) is not an EC2 instance type (pulumi-aws's InstanceType list "
                        "has no such name: a typo, or a type newer than the pinned pulumi-aws).",
                        f"{known}.",
                    )
                )
                continue
            problems.append(
                CapacityProblem(
                    group,
                    f"instance type {types!r} (rag:cluster.eks.nodeGroup.instanceType) is not one the node-capacity check knows the allocatable of, so no "
                    "check says whether the stack's pods fit its nodes.",
                    f"{known}, or add its shape to infra/capacity.py.",
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


# ---------------------------------------------------------------------------------------------- GKE node pools
NODE_POOL = "gcp:container/nodePool:NodePool"
#: Nominal GB (Compute Engine's GB: 2^30 bytes) per vCPU of each family's standard / highmem / highcpu types.
_GCE_GIB_PER_VCPU: dict[str, dict[str, float]] = {
    **{family: {"standard": 4, "highmem": 8, "highcpu": 1} for family in ("e2", "n2", "n2d")},
    **{family: {"standard": 4, "highmem": 8, "highcpu": 2} for family in ("n4", "c3", "c3d", "c4")},
    "n1": {"standard": 3.75, "highmem": 6.5, "highcpu": 0.9},
    "t2d": {"standard": 4},
}
_GCE_TYPE = re.compile(r"^(?P<family>[a-z0-9]+)-(?P<kind>standard|highmem|highcpu)-(?P<vcpus>[0-9]+)$")
#: GB of the E2 shared-core types the check knows (their vCPUs: `gce_vcpus`).
_GCE_SHARED_GIB = {"e2-medium": 4.0, "e2-small": 2.0}
#: (millicores, MiB) the DaemonSets of every GKE Standard node request (kube-proxy, fluentbit-gke, gke-metrics-agent,
#: pdcsi-node, and node-exporter when monitoring is on): an estimate, like NODE_DAEMONS for EKS.
GKE_NODE_DAEMONS = (300, 320)
#: Pods per node on a VPC-native Standard cluster (`max_pods_per_node` default).
GKE_MAX_PODS = 110


def gce_shape(machine_type: str) -> NodeShape | None:
    """vCPUs, nominal GiB and max pods of a Compute Engine machine type the check knows; None else."""
    vcpus = gce_vcpus(machine_type)
    if vcpus is not None and machine_type in _GCE_SHARED_GIB:
        return NodeShape(vcpus, _GCE_SHARED_GIB[machine_type], GKE_MAX_PODS)
    match = _GCE_TYPE.fullmatch(machine_type)
    per_vcpu = _GCE_GIB_PER_VCPU.get(match["family"], {}).get(match["kind"]) if match else None
    if vcpus is None or per_vcpu is None:
        return None
    return NodeShape(vcpus, vcpus * per_vcpu, GKE_MAX_PODS)


def gke_allocatable(shape: NodeShape) -> tuple[float, float]:
    """(millicores, MiB) a GKE Standard node offers to pods (GKE "Plan node sizes", memory and CPU reservations):
    memory reserved 25 % of the first 4 GiB, 20 % of the next 4, 10 % of the next 8, 6 % of the next 112 and 2 %
    above 128 GiB (255 MiB under 1 GiB), plus a 100 MiB eviction threshold; CPU as on EKS (6 % of the first core,
    1 % of the second, 0.5 % of the third and fourth, 0.25 % above). Of the nominal memory, `MEMORY_VISIBLE`."""
    cpu, _ = allocatable(NodeShape(shape.vcpus, 0, 0))
    total = shape.memory_gib * MEMORY_VISIBLE
    if total < 1:
        reserved = 255 / 1024
    else:
        reserved = sum(
            share * min(max(total - low, 0.0), high - low)
            for low, high, share in (
                (0, 4, 0.25),
                (4, 8, 0.20),
                (8, 16, 0.10),
                (16, 128, 0.06),
                (128, 1e9, 0.02),
            )
        )
    return cpu, (total - reserved) * 1024 - 100


def _pool_zones(pool: RecordedResource) -> int:
    """Zones a node pool's per-zone counts apply to: its nodeLocations, else 3 in a region and 1 in a zone."""
    locations = pool.inputs.get("nodeLocations")
    if locations:
        return len(locations)
    location = str(pool.inputs.get("location") or "")
    return GKE_DEFAULT_ZONES if location.count("-") == 1 else 1


def gke_node_capacity_problems(run: StackRun) -> list[CapacityProblem]:
    """The GKE Standard half of `node_capacity_problems`: each node pool at its autoscaler's maximum (GKE's own
    cluster autoscaler runs for a pool with an `autoscaling` block; `maxNodeCount` is per zone), else at
    `nodeCount` per zone. Autopilot has no node pools: Google sizes its nodes to the pods."""
    pools = run.of_type(NODE_POOL)
    if not pools:
        return []
    pods = list(peak_pods(run))
    problems = []
    for pool in pools:
        machine_type = str((pool.inputs.get("nodeConfig") or {}).get("machineType") or "e2-medium")
        shape = gce_shape(machine_type)
        if shape is None:
            problems.append(
                CapacityProblem(
                    pool,
                    f"machine type {machine_type!r} is not one the node-capacity check knows the allocatable of, so "
                    "no check says whether the stack's pods fit its nodes.",
                    "use an e2/n1/n2/n2d/n4/c3/c3d/c4/t2d standard, highmem or highcpu type, or add it to "
                    "infra/capacity.py.",
                )
            )
            continue
        zones = _pool_zones(pool)
        scaling = pool.inputs.get("autoscaling") or {}
        if scaling.get("totalMaxNodeCount"):
            nodes = int(scaling["totalMaxNodeCount"])
        elif scaling:
            nodes = int(scaling.get("maxNodeCount") or 0) * zones
        else:
            nodes = int(pool.inputs.get("nodeCount") or pool.inputs.get("initialNodeCount") or 0) * zones
        cpu, memory = gke_allocatable(shape)
        free_cpu, free_memory = cpu - GKE_NODE_DAEMONS[0], memory - GKE_NODE_DAEMONS[1]
        addons = [
            Pod("cluster add-ons", CLUSTER_ADDONS[0] / ADDON_PODS, CLUSTER_ADDONS[1] / ADDON_PODS, False)
        ] * ADDON_PODS
        left = unplaced([*pods, *addons], nodes, free_cpu, free_memory)
        if not left:
            continue
        pending = sorted({p.workload for p in left})
        which = "maxNodeCount per zone (GKE's autoscaler ceiling)" if scaling else "nodeCount per zone"
        problems.append(
            CapacityProblem(
                pool,
                f"at their peak (HPA maxReplicas) {len(left)} pod(s) of {', '.join(pending)} fit none of the "
                f"{nodes} x {machine_type} nodes ({which}, {zones} zone(s)), {free_cpu / 1000:.2f} vCPU and "
                f"{free_memory / 1024:.1f} GiB free each after GKE's reservations and node daemons: they would "
                "stay Pending.",
                "raise rag:cluster.gke.nodePool.maxNodes or machineType, or lower service.autoscaling.maxReplicas "
                "or the pods' requests (docs/infra.md, 'Node capacity').",
            )
        )
    return problems


# ---------------------------------------------------------------------------------------------- GKE quotas
#: Compute Engine's regional quota metrics a GKE stack draws on (`gcloud compute regions describe <region>` lists
#: each as `metric`, `limit`, `usage`). Persistent disks: pd-balanced and pd-ssd count against SSD_TOTAL_GB
#: ("Persistent Disk SSD (GB)": a regional cluster's default node pool of pd-balanced boot disks is the classic
#: `Insufficient regional quota to satisfy request: resource "SSD_TOTAL_GB"`), pd-standard against DISKS_TOTAL_GB.
GCE_DISK_QUOTA = {"pd-balanced": "SSD_TOTAL_GB", "pd-ssd": "SSD_TOTAL_GB", "pd-standard": "DISKS_TOTAL_GB"}
#: The disk type of GKE's own storage classes (the PD CSI driver's `type` parameter).
GKE_STORAGE_CLASS_DISK = {"standard-rwo": "pd-balanced", "premium-rwo": "pd-ssd", "standard": "pd-standard"}
#: A GKE node's boot disk when the pool names no `diskType` (pulumi-gcp NodeConfig `disk_type`: pd-balanced unless
#: the machine type only takes hyperdisk-balanced, which the machine types this stack validates do not).
GKE_BOOT_DISK = "pd-balanced"
#: Zones a regional cluster's node pool spans when it names no `nodeLocations` (GKE: three zones of the region);
#: `maxNodeCount` / `minNodeCount` are per zone.
GKE_DEFAULT_ZONES = 3
#: The default node pool GKE creates with the cluster before the program removes it (`remove_default_node_pool`,
#: `initial_node_count` per zone): e2-medium nodes with 100 GB pd-balanced boot disks.
GKE_DEFAULT_POOL = ("e2-medium", 100)
#: The regional vCPU quota of a machine family (Compute Engine: E2 and N1 count against CPUS, the newer families
#: against their own metric); CPUS_ALL_REGIONS (project-wide) counts them all.
_CPU_QUOTA = {"e2": "CPUS", "n1": "CPUS", "n2": "N2_CPUS", "n2d": "N2D_CPUS", "c2": "C2_CPUS", "c2d": "C2D_CPUS",
              "c3": "C3_CPUS", "c3d": "C3D_CPUS", "t2d": "T2D_CPUS", "n4": "N4_CPUS", "c4": "C4_CPUS"}  # fmt: skip
_SHARED_CORE = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2, "f1-micro": 1, "g1-small": 1}


def gce_vcpus(machine_type: str) -> int | None:
    """vCPUs of a Compute Engine machine type (`<family>-<kind>-<vCPUs>`; E2 shared-core types count 2)."""
    if machine_type in _SHARED_CORE:
        return _SHARED_CORE[machine_type]
    match = re.fullmatch(r"[a-z0-9]+-[a-z]+-(?P<cpus>[0-9]+)", machine_type)
    return int(match.group("cpus")) if match else None


def _gib(size: Any) -> int:
    """A Kubernetes storage quantity as whole GB of a persistent disk (GiB: the PD CSI driver rounds up)."""
    return -(-int(quantity_value(str(size))) // 2**30)


def _claims(run: StackRun, default_class: str) -> Iterator[tuple[str, str, int]]:
    """(owner, storage class, GiB) of every PersistentVolumeClaim the stack's workloads will make, at their count."""

    def claim(spec: Mapping[str, Any]) -> tuple[str, int]:
        return spec.get("storageClassName") or default_class, _gib(spec["resources"]["requests"]["storage"])

    for sts in run.of_type("kubernetes:apps/v1:StatefulSet"):
        spec = sts.inputs.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        templates = [t["spec"] for t in spec.get("volumeClaimTemplates", [])]
        templates += [
            v["ephemeral"]["volumeClaimTemplate"]["spec"]
            for v in spec.get("template", {}).get("spec", {}).get("volumes", [])
            if "ephemeral" in v
        ]
        for template in templates:
            cls, size = claim(template)
            yield sts.name, cls, size * replicas
    for pg in run.of_type(CNPG_CLUSTER):
        spec = pg.inputs.get("spec") or {}
        for key in ("storage", "walStorage"):
            if spec.get(key):
                yield (
                    pg.name,
                    spec[key].get("storageClass") or default_class,
                    _gib(spec[key]["size"]) * int(spec.get("instances", 1)),
                )
    for release in run.of_type(HELM_RELEASE):
        prometheus = ((release.inputs.get("values") or {}).get("prometheus") or {}).get(
            "prometheusSpec"
        ) or {}
        template = (prometheus.get("storageSpec") or {}).get("volumeClaimTemplate")
        if template:
            cls, size = claim(template["spec"])
            yield f"{release.name} (Prometheus)", cls, size * int(prometheus.get("replicas", 1))
    for pvc in run.of_type("kubernetes:core/v1:PersistentVolumeClaim"):
        cls, size = claim(pvc.inputs["spec"])
        yield pvc.name, cls, size


def gke_quota_usage(run: StackRun, default_class: str = "standard-rwo") -> list[str]:
    """What a GKE stack takes of Compute Engine's regional quotas, at its node pool's minimum and maximum: vCPUs,
    SSD / standard persistent disk GB (node boot disks and the workloads' volumes), and the external addresses of its
    Cloud NAT. Nothing offline sees the project's other usage: each line says how to read the quota and its usage."""
    (cluster,) = run.of_type("gcp:container/cluster:Cluster") or [None]
    if cluster is None:
        return []
    region = str(cluster.inputs.get("location", "<region>"))
    check = (
        f"`gcloud compute regions describe {region} --flatten=quotas "
        "--format='table(quotas.metric,quotas.limit,quotas.usage)'`"
    )
    disks: dict[str, list[int]] = {}  # quota metric -> [at the minimum, at the maximum]
    cpus: dict[str, list[int]] = {}
    notes: list[str] = []
    for _owner, cls, size in _claims(run, default_class):
        disk = GKE_STORAGE_CLASS_DISK.get(cls)
        if disk is None:
            notes.append(
                f"storage class {cls!r} is not one of GKE's ({', '.join(GKE_STORAGE_CLASS_DISK)}): not counted"
            )
            continue
        totals = disks.setdefault(GCE_DISK_QUOTA[disk], [0, 0])
        totals[0] += size
        totals[1] += size
    pools = run.of_type("gcp:container/nodePool:NodePool")
    for pool in pools:
        config = pool.inputs.get("nodeConfig") or {}
        zones = len(pool.inputs.get("nodeLocations") or []) or GKE_DEFAULT_ZONES
        scaling = pool.inputs.get("autoscaling") or {}
        low = int(scaling.get("minNodeCount", pool.inputs.get("nodeCount", 1))) * zones
        high = int(scaling.get("maxNodeCount", pool.inputs.get("nodeCount", 1))) * zones
        machine = str(config.get("machineType", "e2-medium"))
        per_node = gce_vcpus(machine)
        if per_node is None:
            notes.append(f"machine type {machine!r}: vCPUs unknown, not counted")
        else:
            metric = _CPU_QUOTA.get(machine.split("-", 1)[0], f"{machine.split('-', 1)[0].upper()}_CPUS")
            if config.get("spot") or config.get("preemptible"):
                metric = "PREEMPTIBLE_CPUS (when the project has that quota; else " + metric + ")"
            totals = cpus.setdefault(metric, [0, 0])
            totals[0] += per_node * low
            totals[1] += per_node * high
        boot = disks.setdefault(
            GCE_DISK_QUOTA.get(str(config.get("diskType", GKE_BOOT_DISK)), "SSD_TOTAL_GB"), [0, 0]
        )
        boot[0] += int(config.get("diskSizeGb", 100)) * low
        boot[1] += int(config.get("diskSizeGb", 100)) * high
    lines = []
    for metric, (low, high) in sorted(cpus.items()):
        lines.append(
            f"{metric} in {region}: this stack takes {low} vCPUs at the node pool's minimum, {high} at its maximum "
            f"(also CPUS_ALL_REGIONS, project-wide); check {check} and raise it (IAM & Admin > Quotas) before "
            "`pulumi up` or the autoscaler's scale-up fails"
        )
    for metric, (low, high) in sorted(disks.items()):
        span = (
            f"{low} GB" if low == high else f"{low} GB at the node pool's minimum, {high} GB at its maximum"
        )
        lines.append(
            f"{metric} in {region}: this stack takes {span} (node boot disks and the workloads' volumes); check "
            f"{check}: a volume over the quota stays Pending (ProvisioningFailed, QUOTA_EXCEEDED)"
        )
    if not pools and cluster.inputs.get("enableAutopilot"):
        lines.append(
            f"CPUS in {region}: Autopilot's nodes follow the pods' requests (and their boot disks count against "
            f"SSD_TOTAL_GB): check {check}"
        )
    elif pools and cluster.inputs.get("removeDefaultNodePool"):
        machine, disk = GKE_DEFAULT_POOL
        count = int(cluster.inputs.get("initialNodeCount", 1)) * GKE_DEFAULT_ZONES
        lines.append(
            f"while the cluster is created, GKE's default node pool (removed before the stack's own) briefly takes "
            f"{count * (gce_vcpus(machine) or 2)} CPUS and {count * disk} GB of SSD_TOTAL_GB in {region}"
        )
    if run.of_type("gcp:compute/routerNat:RouterNat"):
        lines.append(
            f"STATIC_ADDRESSES and IN_USE_ADDRESSES in {region}: Cloud NAT (automatic allocation) reserves 1 regional "
            "external address (more only past ~1000 nodes at 64 ports each); the nodes have none"
        )
    return lines + notes


# --- Qdrant memory -----------------------------------------------------------------------------------------------

#: Qdrant's sizing rule for the RAM a vector takes (qdrant.tech "Capacity planning": vectors x dimension x 4 bytes
#: x 1.5, the 1.5 covering the HNSW graph, ids and the optimizer's temporary segments).
QDRANT_OVERHEAD = 1.5


def qdrant_bytes_per_point(dimension: int, *, vectors_on_disk: bool, quantization: str) -> float:
    """RAM one point's dense vector takes on a node, by `rag:qdrant.collection` (an estimate, Qdrant's rule).

    - float32 in RAM (the default): 4 bytes per dimension;
    - `quantization: int8`: a 1-byte-per-dimension copy kept in RAM (`always_ram`), searched first. With the float
      vectors still in RAM it ADDS to them; only with `vectorsOnDisk` does it replace them;
    - `vectorsOnDisk`: the float vectors are memory-mapped: the kernel keeps what fits in the page cache, so they
      take no RAM the pod must hold (searches are slower without quantization: every distance reads them).
    """
    in_ram = 0 if vectors_on_disk else 4 * dimension
    if quantization == "int8":
        in_ram += dimension
    return max(in_ram, 0) * QDRANT_OVERHEAD


def qdrant_points_in_memory(
    memory_bytes: float,
    dimension: int,
    *,
    nodes: int,
    replication_factor: int,
    vectors_on_disk: bool,
    quantization: str,
) -> float:
    """How many points (chunks) a cluster of `nodes` with `memory_bytes` each holds in RAM: every node holds
    `replication_factor / nodes` of the points. Infinite when no vector stays in RAM (on disk, unquantized)."""
    per_point = qdrant_bytes_per_point(dimension, vectors_on_disk=vectors_on_disk, quantization=quantization)
    if per_point == 0:
        return float("inf")
    return memory_bytes / per_point * nodes / replication_factor


# ---------------------------------------------------------------------------------------- the namespace's quota
QUOTA = "kubernetes:core/v1:ResourceQuota"
LIMIT_RANGE = "kubernetes:core/v1:LimitRange"
#: The ResourceQuota's `hard` keys the peak is compared with, and the `rag:` key that sets each (stack.namespace_quota_spec).
QUOTA_KEYS = {
    "requests.cpu": "namespaceQuota.requests.cpu",
    "requests.memory": "namespaceQuota.requests.memory",
    "limits.cpu": "namespaceQuota.limits.cpu",
    "limits.memory": "namespaceQuota.limits.memory",
    "requests.storage": "namespaceQuota.storage",
    "persistentvolumeclaims": "namespaceQuota.persistentVolumeClaims",
    "pods": "namespaceQuota.pods",
}


def _surge(spec: Mapping[str, Any], replicas: int) -> int:
    """A Deployment's extra pods during a rolling update (`maxSurge`, default 25 %, rounded up)."""
    surge = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return -(-replicas * int(surge[:-1]) // 100)
    return int(surge)


def _container_defaults(run: StackRun, namespace: str) -> dict[str, dict[str, str]]:
    """The namespace's LimitRange container defaults (`default` limits, `defaultRequest` requests), if any."""
    for limit_range in run.of_type(LIMIT_RANGE):
        if (limit_range.inputs.get("metadata") or {}).get("namespace") != namespace:
            continue
        for rule in (limit_range.inputs.get("spec") or {}).get("limits") or []:
            if rule.get("type") == "Container":
                return {"limits": rule.get("default") or {}, "requests": rule.get("defaultRequest") or {}}
    return {"limits": {}, "requests": {}}


def namespace_peak(run: StackRun, namespace: str) -> dict[str, float]:
    """What the stack's workloads in `namespace` charge its ResourceQuota at their peak, in the quota's `hard` keys
    (cpu in cores, memory and storage in bytes): each Deployment at its HPA's `maxReplicas` (else `replicas`) plus
    its rolling update's surge pods, each StatefulSet at `replicas` with its claims, each CloudNativePG Cluster's
    instances plus the operator's one-off Job pod with the same resources (and the backup sidecar), one pod of
    each CronJob and Job. A container's missing requests or limits are what the admission plugins give it: a
    missing request is its limit, else the LimitRange's `defaultRequest`; a missing limit the LimitRange's
    `default`. A pod charges max(largest init container, sum of containers + restartable init containers)."""
    total = dict.fromkeys(QUOTA_KEYS, 0.0)
    defaults = _container_defaults(run, namespace)
    hpa = _hpa_max(run)

    def charge(container: Mapping[str, Any]) -> dict[str, float]:
        resources = container.get("resources") or {}
        limits = {**defaults["limits"], **(resources.get("limits") or {})}
        requests = {
            **defaults["requests"],
            **(resources.get("limits") or {}),
            **(resources.get("requests") or {}),
        }
        return {
            f"{kind}.{name}": quantity_value(str(values[name])) if values.get(name) is not None else 0.0
            for kind, values in (("requests", requests), ("limits", limits))
            for name in ("cpu", "memory")
        }

    def add_pods(pod_spec: Mapping[str, Any], count: int) -> None:
        init = pod_spec.get("initContainers") or []
        sidecars = [c for c in init if c.get("restartPolicy") == "Always"]
        main = [charge(c) for c in [*(pod_spec.get("containers") or []), *sidecars]]
        others = [charge(c) for c in init if c.get("restartPolicy") != "Always"]
        for key in ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory"):
            total[key] += count * max([sum(c[key] for c in main), *(c[key] for c in others)])
        total["pods"] += count

    def add_claim(size: str, count: int) -> None:
        total["requests.storage"] += count * quantity_value(size)
        total["persistentvolumeclaims"] += count

    for resource in run.resources:
        metadata = resource.inputs.get("metadata") or {}
        if metadata.get("namespace") != namespace:
            continue
        spec = resource.inputs.get("spec") or {}
        if resource.type == "kubernetes:apps/v1:Deployment":
            replicas = hpa.get((namespace, str(metadata.get("name"))), int(spec.get("replicas", 1)))
            add_pods((spec.get("template") or {}).get("spec") or {}, replicas + _surge(spec, replicas))
        elif resource.type == "kubernetes:apps/v1:StatefulSet":
            replicas = int(spec.get("replicas", 1))
            pod_spec = (spec.get("template") or {}).get("spec") or {}
            add_pods(pod_spec, replicas)
            for claim in spec.get("volumeClaimTemplates") or []:
                add_claim(claim["spec"]["resources"]["requests"]["storage"], replicas)
            for volume in pod_spec.get("volumes") or []:
                if "ephemeral" in volume:
                    template = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
                    add_claim(template["resources"]["requests"]["storage"], replicas)
        elif resource.type == CNPG_CLUSTER:
            instances = int(spec.get("instances", 1))
            containers = [{"resources": spec.get("resources") or {}}, *backup_sidecars(run, resource)]
            add_pods({"containers": containers}, instances + 1)
            add_claim(spec["storage"]["size"], instances)
            if spec.get("walStorage"):
                add_claim(spec["walStorage"]["size"], instances)
        elif resource.type == "kubernetes:batch/v1:CronJob":
            job = (spec.get("jobTemplate") or {}).get("spec") or {}
            add_pods((job.get("template") or {}).get("spec") or {}, 1)
        elif resource.type == "kubernetes:batch/v1:Job":
            add_pods((spec.get("template") or {}).get("spec") or {}, int(spec.get("parallelism", 1)))
    return total


def quota_problems(run: StackRun) -> list[tuple[RecordedResource, str, float, float]]:
    """(the ResourceQuota, its `hard` key, what the peak takes, the quota) for each key the peak exceeds."""
    problems = []
    for quota in run.of_type(QUOTA):
        namespace = str((quota.inputs.get("metadata") or {}).get("namespace"))
        used = namespace_peak(run, namespace)
        for key, value in ((quota.inputs.get("spec") or {}).get("hard") or {}).items():
            if key in used and used[key] > quantity_value(str(value)):
                problems.append((quota, key, used[key], quantity_value(str(value))))
    return problems
