"""EKS create and destroy order. `pulumi destroy`: what the cluster creates outside the program must be gone before
the VPC goes.

The engine deletes in reverse dependency order and knows nothing of cloud resources a controller made. On EKS the
one such resource is the NLB that EKS's cloud controller creates for each Gateway's proxy Service (Envoy Gateway
makes that Service in its own namespace). Its network interfaces sit in the public subnets and its addresses are
mapped through the internet gateway, so if it outlives the cluster, deleting the subnets, the internet gateway and
the VPC fails with DependencyViolation. The program makes the engine wait for it: the namespace holding the
Service is a Pulumi resource that depends on the node group and the network, and the Kubernetes provider's
delete waits until the object is gone (pulumi-kubernetes `await/condition/deleted.go`: a GET 404 or a Deleted
event), which for a namespace means every Service in it, finalizers included, is gone.
"""

from __future__ import annotations

import pytest

from infra.clusters.eks import ENVOY_GATEWAY_NAMESPACE
from infra.deployability import closure
from infra.offline import StackRun
from tests.infra.conftest import run

NAMESPACE = "kubernetes:core/v1:Namespace"
RELEASE = "kubernetes:helm.sh/v3:Release"
EKS_RUNS = [("prod", None), ("staging", "eks"), ("dev", "eks")]


def _proxy_namespace(result: StackRun) -> str:
    """The namespace of the proxy Services: the one the GatewayClass's EnvoyProxy lives in (Envoy Gateway's
    default deploy type puts the proxy Deployment and Service in the controller's namespace)."""
    classes = [
        r
        for r in result.of_type("kubernetes:gateway.networking.k8s.io/v1:GatewayClass")
        if r.inputs.get("spec")
    ]
    assert classes
    (namespace,) = {c.inputs["spec"]["parametersRef"]["namespace"] for c in classes}
    return namespace


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_the_load_balancer_namespace_is_deleted_before_the_network(stack: str, target: str | None) -> None:
    result = run(stack, target)
    name = _proxy_namespace(result)
    assert name == ENVOY_GATEWAY_NAMESPACE
    (namespace,) = [r for r in result.of_type(NAMESPACE) if r.inputs["metadata"]["name"] == name]
    waits_for = closure(result, namespace.urn)
    # Reverse order on destroy: everything the namespace waits for is deleted after it. On create, the same
    # edges mean the proxy Service (hence the NLB) appears only once every public subnet routes to the internet
    # gateway: the cloud controller puts an internet-facing NLB only in subnets it finds public that way.
    network = [
        r.urn
        for r in result.resources
        if r.type
        in {
            "aws:ec2/subnet:Subnet",
            "aws:ec2/internetGateway:InternetGateway",
            "aws:ec2/vpc:Vpc",
            "aws:ec2/routeTableAssociation:RouteTableAssociation",
            "aws:eks/nodeGroup:NodeGroup",
            "aws:eks/cluster:Cluster",
        }
    ]
    assert network
    assert set(network) <= waits_for
    # The controller that creates the Service is installed into that namespace, not into one Helm makes (which
    # the program would not own, and so would not wait for).
    (release,) = [r for r in result.of_type(RELEASE) if r.inputs.get("name") == "eg"]
    assert release.inputs["namespace"] == name
    assert not release.inputs.get("createNamespace")
    assert namespace.urn in release.depends_on


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_no_other_namespace_gets_a_load_balancer_the_program_does_not_wait_for(
    stack: str, target: str | None
) -> None:
    """Every Service of type LoadBalancer the program declares lives in a namespace it owns (today: none, the
    Gateway's Service is the controller's), and every Gateway's class is the one whose namespace is owned."""
    result = run(stack, target)
    owned = {r.inputs["metadata"]["name"] for r in result.of_type(NAMESPACE)}
    for service in result.of_type("kubernetes:core/v1:Service"):
        if (service.inputs.get("spec") or {}).get("type") == "LoadBalancer":
            assert service.inputs["metadata"].get("namespace") in owned, service.urn
    classes = {
        r.inputs["metadata"]["name"]
        for r in result.of_type("kubernetes:gateway.networking.k8s.io/v1:GatewayClass")
    }
    for gateway in result.of_type("kubernetes:gateway.networking.k8s.io/v1:Gateway"):
        assert gateway.inputs["spec"]["gatewayClassName"] in classes, gateway.urn


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_the_ebs_csi_add_on_waits_for_its_permissions(stack: str, target: str | None) -> None:
    """The add-on names its IRSA role by ARN, which does not wait for the role's policy attachment: without an
    explicit edge, the controller can start (and the first PVC be provisioned) before it may create volumes."""
    result = run(stack, target)
    addon, policy = result.by_name("ebs-csi"), result.by_name("ebs-csi-policy")
    assert policy.inputs["policyArn"].endswith("/AmazonEBSCSIDriverPolicy")
    assert policy.urn in addon.depends_on
    assert result.by_name("eks-nodes").urn in addon.depends_on


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_the_nodes_follow_the_control_plane_version(stack: str, target: str | None) -> None:
    """`rag:cluster.eks.version` upgrades the nodes too: the node group's version is the cluster's output (an
    in-place UpdateNodegroupVersion after the cluster's own update), not left to what it was created with."""
    result = run(stack, target)
    cluster, nodes = result.by_name("eks"), result.by_name("eks-nodes")
    assert nodes.inputs["version"] == cluster.inputs["version"]
    assert cluster.urn in nodes.depends_on


def test_a_version_change_reaches_the_node_group() -> None:
    result = run("dev", "eks", cluster={"provider": "eks", "eks": {"version": "1.34"}})
    assert result.by_name("eks-nodes").inputs["version"] == "1.34"


ADDONS = ("vpc-cni", "kube-proxy", "coredns", "ebs-csi")


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_every_add_on_runs_the_version_eks_pairs_with_the_cluster(stack: str, target: str | None) -> None:
    """Each managed add-on names its version, EKS's default for the cluster's Kubernetes version (the mock answers
    getAddonVersion per add-on and version, as DescribeAddonVersions does), and waits for the control plane."""
    result = run(stack, target)
    cluster = result.by_name("eks")
    (minor,) = {cluster.inputs["version"]}
    names = {r.name for r in result.of_type("aws:eks/addon:Addon")}
    assert names == set(ADDONS)
    for name in ADDONS:
        addon = result.by_name(name)
        assert addon.inputs["addonVersion"].startswith(f"v{minor}."), addon.inputs
        assert addon.inputs["addonVersion"].endswith("-eksbuild.1"), "the default build, not the newest"
        assert addon.inputs["resolveConflictsOnUpdate"] == "OVERWRITE", name


def test_raising_the_cluster_version_raises_every_add_on() -> None:
    """The defect: add-ons kept the version they were created with, and CoreDNS and kube-proxy were EKS's
    self-managed copies, which no `pulumi up` ever touched."""
    before = run("dev", "eks", cluster={"provider": "eks", "eks": {"version": "1.34"}})
    after = run("dev", "eks", cluster={"provider": "eks", "eks": {"version": "1.35"}})
    for name in ADDONS:
        old, new = before.by_name(name).inputs["addonVersion"], after.by_name(name).inputs["addonVersion"]
        assert old.startswith("v1.34."), (name, old)
        assert new.startswith("v1.35."), (name, new)


@pytest.mark.parametrize(("stack", "target"), EKS_RUNS)
def test_every_add_on_is_updated_after_the_nodes(stack: str, target: str | None) -> None:
    """AWS's upgrade order is control plane, nodes, add-ons (EKS user guide, "Update existing cluster to new
    Kubernetes version", step 4); CoreDNS's Deployment is ACTIVE only once nodes run it anyway. The nodes join a
    new cluster with the self-managed aws-node and kube-proxy EKS installs at creation."""
    result = run(stack, target)
    nodes = result.by_name("eks-nodes")
    for name in ("vpc-cni", "kube-proxy", "coredns"):
        addon = result.by_name(name)
        assert nodes.urn in addon.depends_on, name
        assert addon.urn not in nodes.depends_on, name


@pytest.mark.parametrize(
    ("stack", "target", "replicas"), [("prod", None, 3), ("staging", "eks", 2), ("dev", "eks", 2)]
)
def test_the_gateway_proxy_survives_a_node_drain(stack: str, target: str | None, replicas: int) -> None:
    """Every request passes through the Envoy proxy: one pod (Envoy Gateway's default) made each node drain of an
    upgrade, and any node failure, a full outage. prod runs one per zone, the others two, spread over zones and
    nodes, with a PodDisruptionBudget; the object is valid against Envoy Gateway v1.9.0's CRD schema."""
    from infra.clusters.eks import ENVOY_PROXY_POD_LABELS as ENVOY_PROXY_LABELS
    from infra.render import manifest_of, validate_manifest

    result = run(stack, target)
    (proxy,) = result.of_type("kubernetes:gateway.envoyproxy.io/v1alpha1:EnvoyProxy")
    kubernetes = proxy.inputs["spec"]["provider"]["kubernetes"]
    deployment = kubernetes["envoyDeployment"]
    assert deployment["replicas"] == replicas
    spread = {c["topologyKey"]: c for c in deployment["pod"]["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(c["labelSelector"]["matchLabels"] == ENVOY_PROXY_LABELS for c in spread.values())
    assert kubernetes["envoyPDB"] == {"maxUnavailable": 1}
    assert (
        kubernetes["envoyService"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"]
        == "nlb"
    )
    _, errors = validate_manifest(manifest_of(proxy))
    assert errors == []


def test_a_misspelt_proxy_field_is_refused_by_the_schema() -> None:
    """The schema check above can fail: the CRD's schema is strict about the fields it reads."""
    from infra.render import manifest_of, validate_manifest

    (proxy,) = run("prod").of_type("kubernetes:gateway.envoyproxy.io/v1alpha1:EnvoyProxy")
    manifest = manifest_of(proxy)
    manifest["spec"]["provider"]["kubernetes"]["envoyPdb"] = manifest["spec"]["provider"]["kubernetes"].pop(
        "envoyPDB"
    )
    _, errors = validate_manifest(manifest)
    assert errors
