"""EKS node autoscaling: the Cluster Autoscaler, its IAM, the node group it scales, and what `pulumi up` leaves it.

The chart's templates (cluster-autoscaler 9.59.0, read at its tag) turn `autoDiscovery.clusterName` into
`--node-group-auto-discovery=asg:tag=k8s.io/cluster-autoscaler/enabled,k8s.io/cluster-autoscaler/<clusterName>` and
`rbac.serviceAccount.{name,annotations}` into the ServiceAccount the Deployment runs as; EKS tags each managed node
group's Auto Scaling group with both keys (`enabled=true`, `<cluster>=owned`). So the tests hold the values to the
cluster's own name, the IRSA trust to that ServiceAccount, and the IAM conditions to those tag values.
"""

from __future__ import annotations

import json

import pytest

from infra import chart_values
from infra.clusters.eks import CLUSTER_AUTOSCALER_CHART, cluster_autoscaler_policy
from infra.config import EKS_CLUSTER_AUTOSCALER_IMAGES
from infra.deployability import effective_config
from infra.offline import RecordedResource, StackRun
from tests.infra.conftest import run

EKS_RUNS = [("prod", None), ("staging", "eks"), ("dev", "eks")]
OFF = {"provider": "eks", "eks": {"clusterAutoscaler": {"enabled": False}}}


def release(result: StackRun) -> RecordedResource:
    return result.by_name("cluster-autoscaler")


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_the_autoscaler_discovers_this_clusters_node_group_with_its_own_role(
    stack: str, target: str | None
) -> None:
    result = run(stack, target)
    cluster, nodes, chart = result.by_name("eks"), result.by_name("eks-nodes"), release(result)
    values = chart.inputs["values"]
    assert (chart.inputs["chart"], chart.inputs["version"]) == CLUSTER_AUTOSCALER_CHART[:2]
    assert chart.inputs["repositoryOpts"]["repo"] == CLUSTER_AUTOSCALER_CHART[2]
    assert values["cloudProvider"] == "aws"
    assert values["autoDiscovery"]["clusterName"] == cluster.inputs["name"] == nodes.inputs["clusterName"]
    assert values["awsRegion"] == effective_config(result)["cluster"]["eks"]["region"]
    # The image is the cluster's minor (the autoscaler's README: CA 1.x.* for Kubernetes 1.x).
    minor = cluster.inputs["version"]
    assert values["image"]["tag"] == EKS_CLUSTER_AUTOSCALER_IMAGES[minor]
    assert values["image"]["tag"].startswith(f"v{minor}.")
    # IRSA: the role only kube-system/cluster-autoscaler can assume is the one the ServiceAccount names.
    account = values["rbac"]["serviceAccount"]
    role = result.by_name("cluster-autoscaler-role")
    # (The annotation is the role's ARN output: the release takes it, hence waits for it.)
    assert ":role/cluster-autoscaler-role" in account["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.urn in chart.depends_on
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    (sub,) = [v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    assert sub == f"system:serviceaccount:{chart.inputs['namespace']}:{account['name']}"
    # Scale-down may move the API's and worker's pods, whose emptyDirs are scratch (the default keeps any node
    # running one, i.e. almost every node, forever); the chart renders each extraArgs entry as --key=value.
    # `--emit-per-nodegroup-metrics` registers the per-group target and max counts the maxSize alert compares.
    assert values["extraArgs"] == {"skip-nodes-with-local-storage": False, "emit-per-nodegroup-metrics": True}
    # Every values key is one the chart has (Helm would ignore a misspelt one).
    record = chart_values.load(*CLUSTER_AUTOSCALER_CHART[:2])
    assert record is not None
    assert list(chart_values.unknown_keys(record.tree, values)) == []
    # It starts once nodes run it and its role may act.
    policy = result.by_name("cluster-autoscaler-policy")
    assert {nodes.urn, policy.urn} <= set(chart.depends_on)
    assert role.urn in policy.depends_on


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_the_autoscaler_may_resize_only_this_clusters_groups(stack: str, target: str | None) -> None:
    result = run(stack, target)
    name = result.by_name("eks").inputs["name"]
    document = json.loads(result.by_name("cluster-autoscaler-policy").inputs["policy"])
    assert document == json.loads(cluster_autoscaler_policy(name))
    writes = [s for s in document["Statement"] if "autoscaling:SetDesiredCapacity" in s["Action"]]
    (write,) = writes
    assert set(write["Action"]) == {
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    }
    assert write["Condition"]["StringEquals"] == {
        "aws:ResourceTag/k8s.io/cluster-autoscaler/enabled": "true",
        f"aws:ResourceTag/k8s.io/cluster-autoscaler/{name}": "owned",
    }
    # Reads stay unconditioned (Describe* do not support resource tags), and the writes are nowhere else.
    reads = [s for s in document["Statement"] if s is not write]
    assert all(not any(a in {"autoscaling:SetDesiredCapacity"} for a in s["Action"]) for s in reads)
    assert "eks:DescribeNodegroup" in reads[0]["Action"]


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_pulumi_up_leaves_the_autoscalers_node_count_alone(stack: str, target: str | None) -> None:
    """The engine applies `ignoreChanges` paths to the inputs (Pulumi property paths, camelCase): desiredSize is
    sent at creation and left out of every later diff; min and max stay the stack's."""
    result = run(stack, target)
    nodes = result.by_name("eks-nodes")
    assert nodes.ignore_changes == ("scalingConfig.desiredSize",)
    group = effective_config(result)["cluster"]["eks"]["nodeGroup"]
    assert nodes.inputs["scalingConfig"] == {
        "minSize": group["minSize"],
        "maxSize": group["maxSize"],
        "desiredSize": group["desiredSize"],
    }


def test_with_the_autoscaler_off_the_stack_sets_the_node_count() -> None:
    result = run("prod", None, cluster=OFF)
    assert "cluster-autoscaler" not in {r.name for r in result.resources}
    assert not [r for r in result.resources if r.name.startswith("cluster-autoscaler")]
    assert result.by_name("eks-nodes").ignore_changes == ()


def test_min_and_max_sizes_reach_the_node_group_the_autoscaler_reads() -> None:
    """The autoscaler scales within the Auto Scaling group's min and max, which EKS sets from the node group's."""
    result = run(
        "prod",
        None,
        cluster={"provider": "eks", "eks": {"nodeGroup": {"minSize": 4, "maxSize": 12, "desiredSize": 4}}},
    )
    assert result.by_name("eks-nodes").inputs["scalingConfig"] == {
        "minSize": 4,
        "maxSize": 12,
        "desiredSize": 4,
    }


def test_raising_the_cluster_version_moves_the_autoscaler_image_with_it() -> None:
    before = run("dev", "eks", cluster={"provider": "eks", "eks": {"version": "1.34"}})
    after = run("dev", "eks", cluster={"provider": "eks", "eks": {"version": "1.35"}})
    assert release(before).inputs["values"]["image"]["tag"].startswith("v1.34.")
    assert release(after).inputs["values"]["image"]["tag"].startswith("v1.35.")


def test_the_pinned_images_are_one_per_supported_minor() -> None:
    from infra.clusters.eks import ENVOY_GATEWAY_KUBERNETES

    # Every minor the stack may declare (Envoy Gateway's range) has an autoscaler of that minor.
    assert set(ENVOY_GATEWAY_KUBERNETES) <= set(EKS_CLUSTER_AUTOSCALER_IMAGES)
    for minor, tag in EKS_CLUSTER_AUTOSCALER_IMAGES.items():
        assert tag.startswith(f"v{minor}.")


SERVICE_MONITOR = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"
AUTOSCALER_ALERTS = {
    "ClusterAutoscalerMaxSizeReached",
    "ClusterAutoscalerScaleUpFailing",
    "ClusterAutoscalerDown",
}


def _alerts(result: StackRun) -> dict[str, dict]:
    (rules,) = result.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
    return {r["alert"]: r for g in rules.inputs["spec"]["groups"] for r in g["rules"]}


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_prometheus_scrapes_the_autoscaler_its_alerts_read(stack: str, target: str | None) -> None:
    """The chart's Service (templates/service.yaml at chart 9.59.0: labels `cluster-autoscaler.instance-name`, port
    `service.portName` = http -> 8085) is what the ServiceMonitor selects, and the alerts read the scrape's job."""
    result = run(stack, target)
    chart = release(result)
    if not effective_config(result)["monitoring"]["enabled"]:
        assert not result.of_type(SERVICE_MONITOR)  # dev: no Prometheus to scrape it
        return
    (monitor,) = [r for r in result.of_type(SERVICE_MONITOR) if "cluster-autoscaler" in r.name]
    spec = monitor.inputs["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [chart.inputs["namespace"]]}
    # instance: the release's name; name: `<cloudProvider>-<chart name>` (no nameOverride set).
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/instance": chart.inputs["name"],
        "app.kubernetes.io/name": f"{chart.inputs['values']['cloudProvider']}-{CLUSTER_AUTOSCALER_CHART[0]}",
    }
    assert spec["endpoints"][0]["port"] == "http"
    # prometheus-operator's `job` is the value of the Service's `jobLabel` label: the release's name.
    assert spec["jobLabel"] == "app.kubernetes.io/instance"
    job = chart.inputs["name"]
    alerts = _alerts(result)
    assert set(alerts) >= AUTOSCALER_ALERTS
    for name in AUTOSCALER_ALERTS:
        assert f'job="{job}"' in alerts[name]["expr"]
        assert f'namespace="{chart.inputs["namespace"]}"' in alerts[name]["expr"]


def test_without_the_autoscaler_only_the_pending_pod_alert_remains() -> None:
    result = run("prod", None, cluster=OFF)
    assert not [r for r in result.of_type(SERVICE_MONITOR) if "cluster-autoscaler" in r.name]
    alerts = set(_alerts(result))
    assert AUTOSCALER_ALERTS.isdisjoint(alerts)
    assert "RagPodsUnschedulable" in alerts
