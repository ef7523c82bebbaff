"""The `ops-sizing` deployability check: backup and restore work at the data sizes each stack declares.

Each test takes the real recorded prod program on EKS (backups on) and reintroduces one defect: a snapshot volume
that cannot take a restore, a restore scratch volume smaller than a node's data, an upload buffer the backup
container's memory cannot hold, no S3 gateway endpoint, data a job cannot move before its deadline.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from infra import deployability as d
from infra.components.backups import upload_memory_bytes
from infra.offline import RecordedResource, StackRun
from infra.stack import backup_resources
from tests.infra.conftest import run


def sizing(result: StackRun) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check == "ops-sizing"]


def patched(result: StackRun, name: str, change: Callable[[dict[str, Any]], None]) -> StackRun:
    resource = result.by_name(name)
    inputs = copy.deepcopy(resource.inputs)
    change(inputs)
    new = dataclasses.replace(resource, inputs=inputs)
    return dataclasses.replace(result, resources=[new if r is resource else r for r in result.resources])


def without(result: StackRun, type_: str) -> StackRun:
    return dataclasses.replace(result, resources=[r for r in result.resources if r.type != type_])


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod["volumes"] if v["name"] == name)


def set_ephemeral(pod: dict[str, Any], name: str, size: str) -> None:
    claim = volume(pod, name)["ephemeral"]["volumeClaimTemplate"]["spec"]
    claim["resources"]["requests"]["storage"] = size


def qdrant_name(result: StackRun) -> str:
    (statefulset,) = [
        r
        for r in result.of_type("kubernetes:apps/v1:StatefulSet")
        if "QDRANT__STORAGE__SNAPSHOTS_PATH" in str(r.inputs)
    ]
    return statefulset.name


def test_the_declared_stacks_back_up_and_restore_at_their_sizes() -> None:
    for stack, target in (("prod", "eks"), ("prod", "gke"), ("staging", "gke")):
        assert sizing(run(stack, target)) == [], (stack, target)


def test_a_snapshot_volume_only_as_large_as_the_data_cannot_take_a_restore() -> None:
    result = run("prod", "eks")
    name = qdrant_name(result)

    def one_x(inputs: dict[str, Any]) -> None:
        set_ephemeral(inputs["spec"]["template"]["spec"], "snapshots", "100Gi")  # = storage, the old rule

    (finding,) = sizing(patched(result, name, one_x))
    assert finding.name == name
    assert "twice qdrant.storage.size" in finding.fix

    def temp_on_data(inputs: dict[str, Any]) -> None:
        for item in inputs["spec"]["template"]["spec"]["containers"][0]["env"]:
            if item["name"] == "QDRANT__STORAGE__TEMP_PATH":
                item["value"] = "/qdrant/storage/snapshots_temp"

    (finding,) = sizing(patched(result, name, temp_on_data))
    assert "the temp path is not on it" in finding.message


def test_a_restore_scratch_smaller_than_a_node_is_a_finding() -> None:
    result = run("prod", "eks")

    def small(inputs: dict[str, Any]) -> None:
        set_ephemeral(inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"], "scratch", "10Gi")

    (finding,) = sizing(patched(result, "qdrant-backups-restore", small))
    assert finding.name == "qdrant-backups-restore"
    assert "scratch" in finding.message


def test_the_s3_upload_buffer_must_fit_the_backup_containers_memory() -> None:
    result = run("prod", "eks")
    name = qdrant_name(result)

    def big(inputs: dict[str, Any]) -> None:
        for claim in inputs["spec"]["volumeClaimTemplates"]:
            claim["spec"]["resources"]["requests"]["storage"] = "2Ti"
        set_ephemeral(inputs["spec"]["template"]["spec"], "snapshots", "4Ti")

    broken = patched(result, name, big)
    messages = [(f.name, f.message) for f in sizing(broken)]
    # 512Mi cannot hold 10 x 220 MB parts; 3 x 2 TiB (twice for a restore) at 50 MiB/s outlast the deadlines.
    assert any(n == "qdrant-backups-cronjob" and "buffers 10 parts" in m for n, m in messages)
    assert any(n == "qdrant-backups-cronjob" and "activeDeadlineSeconds" in m for n, m in messages)
    assert any(n == "qdrant-backups-restore" and "activeDeadlineSeconds" in m for n, m in messages)
    # The program's own sizing covers it: at 2Ti the memory limit grows past the buffer, and (below) the deadlines.
    assert int(backup_resources("2Ti").memory_limit.removesuffix("Mi")) * 2**20 >= upload_memory_bytes(
        2 * 2**40
    )
    assert backup_resources("100Gi").memory_limit == "512Mi"


def test_the_program_sizes_deadlines_and_timeouts_from_the_declared_data() -> None:
    result = run("prod", "eks", qdrant={"storage": {"size": "2Ti"}, "snapshotsStorage": {"size": "4Ti"}})
    assert sizing(result) == []
    backup = result.by_name("qdrant-backups-cronjob").inputs["spec"]["jobTemplate"]["spec"]
    restore = result.by_name("qdrant-backups-restore").inputs["spec"]["jobTemplate"]["spec"]
    assert backup["activeDeadlineSeconds"] > 3 * 2 * 2**40 / (50 * 2**20)  # 3 nodes x 2 TiB at 50 MiB/s
    assert restore["activeDeadlineSeconds"] >= 2 * backup["activeDeadlineSeconds"] - 1
    container = backup["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == backup_resources("2Ti").memory_limit


def test_a_fixed_transfer_timeout_is_a_finding() -> None:
    result = run("prod", "eks", qdrant={"storage": {"size": "2Ti"}, "snapshotsStorage": {"size": "4Ti"}})

    def fixed(inputs: dict[str, Any]) -> None:
        container = inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        for item in container["env"]:
            if item["name"] == "TRANSFER_MAX_SECONDS":
                item["value"] = "18000"  # the old fixed curl --max-time: 5 h for an 11.7 h transfer

    (finding,) = sizing(patched(result, "qdrant-backups-cronjob", fixed))
    assert "TRANSFER_MAX_SECONDS" in finding.message


def test_backups_through_the_nat_gateway_are_a_finding() -> None:
    result = run("prod", "eks")
    assert result.by_name("s3-endpoint").inputs["serviceName"] == "com.amazonaws.eu-west-1.s3"
    (finding,) = sizing(without(result, "aws:ec2/vpcEndpoint:VpcEndpoint"))
    assert "NAT gateway" in finding.message


def test_a_zone_whose_route_table_lacks_the_s3_endpoint_is_a_finding() -> None:
    result = run("prod", "eks")  # a NAT gateway and private route table per zone

    def two_zones(inputs: dict[str, Any]) -> None:
        inputs["routeTableIds"] = [t for t in inputs["routeTableIds"] if t != "private-rt-2-id"]

    (finding,) = sizing(patched(result, "s3-endpoint", two_zones))
    assert finding.resource.endswith("::private-rt-2")
    assert "NAT gateway" in finding.message
    assert sizing(result) == []


def test_no_backups_no_sizing_findings() -> None:
    result = run("prod", "eks")
    jobs: list[RecordedResource] = result.of_type("kubernetes:batch/v1:CronJob")
    assert sizing(without(result, "kubernetes:batch/v1:CronJob")) == []
    assert jobs  # the prod program does run them


def with_declared_rate(result: StackRun, mib_per_second: int) -> StackRun:
    """The same rendered jobs under a stack that declares another transfer rate (what the check reads)."""
    backups = json.loads(result.config.get("rag:backups") or "{}")
    config = {**result.config, "rag:backups": json.dumps({**backups, "transferMiBps": mib_per_second})}
    return dataclasses.replace(result, config=config)


def test_the_transfer_rate_is_a_declared_stack_setting_the_jobs_are_sized_for() -> None:
    base = run("prod", "eks")
    # Jobs sized at the default 50 MiB/s cannot move prod's 3 x 100Gi within their deadlines at 5 MiB/s.
    slow = sizing(with_declared_rate(base, 5))
    assert {f.name for f in slow} == {"qdrant-backups-cronjob", "qdrant-backups-restore"}
    assert all("5 MiB/s (backups.transferMiBps)" in f.message for f in slow)
    # Declaring the slower rate makes the program size longer deadlines and timeouts: the check passes.
    declared = run("prod", "eks", backups={"transferMiBps": 5})
    assert sizing(declared) == []
    backup = base.by_name("qdrant-backups-cronjob").inputs["spec"]["jobTemplate"]["spec"]
    slower = declared.by_name("qdrant-backups-cronjob").inputs["spec"]["jobTemplate"]["spec"]
    assert slower["activeDeadlineSeconds"] > backup["activeDeadlineSeconds"]
    assert slower["activeDeadlineSeconds"] >= 1.5 * 3 * 100 * 2**30 / (5 * 2**20)


# ------------------------------------------------------------------------------------------- node-capacity
def capacity_findings(result: StackRun) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check == "node-capacity"]


def with_hpa_max(result: StackRun, replicas: int) -> StackRun:
    (hpa,) = result.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")

    def raise_max(inputs: dict[str, Any]) -> None:
        inputs["spec"]["maxReplicas"] = replicas

    return patched(result, hpa.name, raise_max)


AUTOSCALER_OFF = {"provider": "eks", "eks": {"clusterAutoscaler": {"enabled": False}}}


def test_the_declared_eks_stacks_fit_their_node_groups_at_peak() -> None:
    for stack, target in (("prod", None), ("staging", "eks"), ("dev", "eks")):
        assert capacity_findings(run(stack, target)) == [], stack
        # Without the autoscaler their peak still fits desiredSize (3 nodes each): the declared sizes are honest.
        assert capacity_findings(run(stack, target, cluster=AUTOSCALER_OFF)) == [], stack


def test_an_hpa_past_what_desired_size_holds_needs_the_autoscaler() -> None:
    """The defect: prod's HPA may ask for more API pods than 3 x m6i.xlarge hold, and nothing added nodes."""
    off = with_hpa_max(run("prod", None, cluster=AUTOSCALER_OFF), 20)
    (finding,) = capacity_findings(off)
    assert finding.name == "eks-nodes"
    assert "desiredSize (no autoscaler)" in finding.message
    assert "rag-api" in finding.message
    assert "clusterAutoscaler.enabled" in finding.fix
    # The same peak with the Cluster Autoscaler: it may grow the group to maxSize 9, which holds it.
    assert capacity_findings(with_hpa_max(run("prod"), 20)) == []


def test_a_peak_past_max_size_is_a_finding_even_with_the_autoscaler() -> None:
    (finding,) = capacity_findings(with_hpa_max(run("prod"), 80))
    assert "maxSize (the Cluster Autoscaler's ceiling)" in finding.message
    assert "9 x m6i.xlarge" in finding.message
    assert "nodeGroup.maxSize" in finding.fix


def test_an_autoscaler_that_discovers_another_cluster_scales_nothing() -> None:
    """Auto-discovery matches the ASG tag k8s.io/cluster-autoscaler/<clusterName>: a wrong name finds no group,
    so only desiredSize nodes count."""
    result = with_hpa_max(run("prod"), 20)

    def elsewhere(inputs: dict[str, Any]) -> None:
        inputs["values"]["autoDiscovery"]["clusterName"] = "rag-other"

    (finding,) = capacity_findings(patched(result, "cluster-autoscaler", elsewhere))
    assert "desiredSize (no autoscaler)" in finding.message


def test_a_pod_larger_than_any_node_is_a_finding() -> None:
    result = run("prod")
    name = qdrant_name(result)

    def huge(inputs: dict[str, Any]) -> None:
        inputs["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "15Gi"

    (finding,) = capacity_findings(patched(result, name, huge))
    assert name in finding.message


def test_one_pod_per_node_workloads_need_as_many_nodes() -> None:
    """Qdrant's required anti-affinity: 3 replicas cannot share 2 nodes, whatever room is left on them."""
    result = run("prod", None, cluster=AUTOSCALER_OFF)

    def two_nodes(inputs: dict[str, Any]) -> None:
        inputs["scalingConfig"] = {"minSize": 2, "maxSize": 2, "desiredSize": 2}

    (finding,) = capacity_findings(patched(result, "eks-nodes", two_nodes))
    assert qdrant_name(result) in finding.message


def test_an_instance_type_of_unknown_shape_is_a_finding() -> None:
    def graviton(inputs: dict[str, Any]) -> None:
        inputs["instanceTypes"] = ["m7g.xlarge"]

    (finding,) = capacity_findings(patched(run("prod"), "eks-nodes", graviton))
    assert "m7g.xlarge" in finding.message


def test_instance_type_messages_say_which_types_are_known_and_which_do_not_exist() -> None:
    """EYES8 L2: t3.small was told to "use ... a t3" (only t3/t3a medium to 2xlarge are known), and m6i.huge, no EC2
    type at all, was told to add its shape."""

    def of_type(name: str) -> Callable[[dict[str, Any]], None]:
        def patch(inputs: dict[str, Any]) -> None:
            inputs["instanceTypes"] = [name]

        return patch

    (small,) = capacity_findings(patched(run("prod"), "eks-nodes", of_type("t3.small")))
    assert "t3/t3a (medium to 2xlarge)" in small.fix
    assert "add its shape" in small.fix
    (typo,) = capacity_findings(patched(run("prod"), "eks-nodes", of_type("m6i.huge")))
    assert "'m6i.huge' (rag:cluster.eks.nodeGroup.instanceType) is not an EC2 instance type" in typo.message
    assert "add its shape" not in typo.fix


def test_allocatable_follows_the_eks_ami_reservations() -> None:
    from infra.capacity import allocatable, instance_shape

    shape = instance_shape("m6i.xlarge")
    assert shape == instance_shape("m5.xlarge")
    assert shape is not None
    cpu, memory = allocatable(shape)
    assert cpu == 3920  # 4000m - (60 + 10 + 5 + 5)m
    assert round(memory) == round(16 * 1024 * 0.95 - (255 + 11 * 58) - 100)
    large = instance_shape("m6i.large")
    assert large is not None
    assert allocatable(large)[0] == 1930
    assert instance_shape("r6i.2xlarge") is not None
    assert instance_shape("t3.large") is not None
    assert instance_shape("m3.large") is None
    assert instance_shape("t5.large") is None
    assert instance_shape("t3.4xlarge") is None  # no such size
    assert instance_shape("t3.medium") == instance_shape("t3a.medium")


# ------------------------------------------------------------------------------------- node-capacity on GKE
QDRANT_6_CPU = {
    "resources": {"requests": {"cpu": "6", "memory": "20Gi"}, "limits": {"cpu": "6", "memory": "20Gi"}}
}


def test_the_declared_gke_stacks_fit_their_node_pools_at_peak() -> None:
    for stack, target in (("staging", None), ("prod", "gke"), ("dev", "gke")):
        assert capacity_findings(run(stack, target)) == [], stack


def test_a_qdrant_no_gke_node_can_hold_is_a_finding() -> None:
    """EYES6 G5: 6 vCPU / 20Gi Qdrant pods on e2-standard-4 nodes passed `make plan` on GKE (the check knew only
    EKS node groups) and would stay Pending for ever on a real cluster."""
    (finding,) = capacity_findings(run("staging", qdrant=QDRANT_6_CPU))
    assert finding.name == "gke-nodes"
    assert "qdrant" in finding.message
    assert (
        "9 x e2-standard-4 nodes (maxNodeCount per zone (GKE's autoscaler ceiling), 3 zone(s))"
        in finding.message
    )
    assert "cluster.gke.nodePool.maxNodes or machineType" in finding.fix
    # The same pods on nodes large enough: no finding.
    bigger = {"provider": "gke", "gke": {"nodePool": {"machineType": "n2-standard-8"}}}
    assert capacity_findings(run("staging", qdrant=QDRANT_6_CPU, cluster=bigger)) == []


def test_a_fixed_gke_pool_counts_node_count_per_zone() -> None:
    result = with_hpa_max(run("staging"), 40)
    assert capacity_findings(result) == []  # the autoscaler may grow the pool to 3 per zone x 3 zones

    def fixed_one_per_zone(inputs: dict[str, Any]) -> None:
        inputs.pop("autoscaling")
        inputs["nodeCount"] = 1
        inputs["nodeLocations"] = ["europe-west1-b", "europe-west1-c"]

    (finding,) = capacity_findings(patched(result, "gke-nodes", fixed_one_per_zone))
    assert "2 x e2-standard-4 nodes (nodeCount per zone, 2 zone(s))" in finding.message


def test_a_gke_machine_type_of_unknown_shape_is_a_finding() -> None:
    def arm(inputs: dict[str, Any]) -> None:
        inputs["nodeConfig"]["machineType"] = "t2a-standard-4"

    (finding,) = capacity_findings(patched(run("staging"), "gke-nodes", arm))
    assert "t2a-standard-4" in finding.message


def test_gke_allocatable_follows_gkes_reservations() -> None:
    from infra.capacity import MEMORY_VISIBLE, NodeShape, gce_shape, gke_allocatable

    # A node whose kernel sees exactly 16 GiB: 25 % of 4 + 20 % of 4 + 10 % of 8 = 2.6 GiB reserved, and the
    # 100 MiB eviction threshold (GKE's "Plan node sizes" example figures).
    cpu, memory = gke_allocatable(NodeShape(4, 16 / MEMORY_VISIBLE, 110))
    assert cpu == 3920
    assert round(memory, 1) == round((16 - 2.6) * 1024 - 100, 1)
    # 200 GiB: + 6 % of 112 + 2 % of 72.
    _, big = gke_allocatable(NodeShape(32, 200 / MEMORY_VISIBLE, 110))
    assert round(big, 1) == round((200 - 2.6 - 0.06 * 112 - 0.02 * 72) * 1024 - 100, 1)
    assert gce_shape("e2-standard-4") == NodeShape(4, 16, 110)
    assert gce_shape("n1-standard-4") == NodeShape(4, 15.0, 110)
    assert gce_shape("c3-highcpu-8") == NodeShape(8, 16, 110)
    assert gce_shape("e2-medium") == NodeShape(2, 4.0, 110)
    assert gce_shape("m5.large") is None
    assert gce_shape("t2d-highmem-4") is None  # T2D has standard types only
