"""EKS target: VPC, cluster, managed node group, managed add-ons (VPC CNI, kube-proxy, CoreDNS, EBS CSI driver) at
the versions EKS pairs with the cluster's Kubernetes version, gp3 StorageClass, ECR and IRSA.

Built from `aws.*` resources (not the pulumi-eks multi-language component) so every resource is visible to the
offline tests and policies, with an explicit `aws.Provider` for `rag:cluster.eks.region`. The VPC has one public
and one private subnet per zone; nodes, RDS and ElastiCache (created by the postgres and redis components from
`network`) live in the private subnets. Their egress leaves by a NAT gateway in each zone, each zone's private
subnet routed to its own (`rag:cluster.eks.natGateways: perZone`), or by one shared NAT gateway (`single`), whose
zone's outage cuts every zone's egress: cheaper, for stacks that can wait out a zone (docs/infra.md, "NAT
gateways"). Zonal NATs rather than a regional NAT gateway: every address and route stays declared and checked.
IRSA: the cluster's OIDC issuer is registered as an IAM identity provider; `workload_identity(ns, ksa, role)`
creates a role only that Kubernetes service account can assume and returns its `eks.amazonaws.com/role-arn`
annotation. In prod the cluster, node group and ECR repository are protected.
Nodes: the managed node group scales between `nodeGroup.minSize` and `maxSize` by the Kubernetes Cluster Autoscaler
(`rag:cluster.eks.clusterAutoscaler`, a Helm release with its own IRSA role), which finds the group by the tags EKS
puts on its Auto Scaling group; the group's `desiredSize` is then the creation count only (ignoreChanges). Karpenter
would also pick instance types and zones per pod, at the cost of its own CRDs, an SQS interruption queue and
EventBridge rules, and node lifecycles outside the managed node group; one instance type in one group needs none of it.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_command as command
import pulumi_kubernetes as k8s

from infra.clusters import ClusterTarget, Registry, provider_stack_keys
from infra.clusters.volumes import volumes_released
from infra.components.gateway import envoy_gateway_crds
from infra.components.image import ecr_lifecycle_policy, protect_existing_script
from infra.config import (
    EKS_CLUSTER_AUTOSCALER_IMAGES,
    ConfigError,
    NatGateways,
    StackConfig,
    internal_load_balancer,
    stack_file,
)
from infra.guards import provider_unconfigured
from infra.naming import cloud_name

ECR_READ_POLICY = "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"
NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    ECR_READ_POLICY,
)
EBS_CSI_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
# VPC CNI managed add-on configuration: its network policy agent enforces NetworkPolicies (off by default on EKS,
# so every policy the stack declares would be inert). Key and string value per the add-on's configuration schema
# (`aws eks describe-addon-configuration --addon-name vpc-cni`) and AWS's "Restrict Pod network traffic" guide.
VPC_CNI_CONFIGURATION = {"enableNetworkPolicy": "true"}
# EKS ships no metrics API: the HPA needs metrics-server (kubernetes-sigs chart; app v0.8.1).
METRICS_SERVER_CHART = ("metrics-server", "3.13.1", "https://kubernetes-sigs.github.io/metrics-server/")
# EKS scales no node group by itself: the Kubernetes Cluster Autoscaler (kubernetes/autoscaler chart; its image is
# the cluster's minor, EKS_CLUSTER_AUTOSCALER_IMAGES in infra/config.py).
CLUSTER_AUTOSCALER_CHART = ("cluster-autoscaler", "9.59.0", "https://kubernetes.github.io/autoscaler")
CLUSTER_AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
#: The ASG tags EKS puts on a managed node group's Auto Scaling group ("Nodes launched as part of a managed node
#: group are automatically tagged for auto-discovery by the Kubernetes Cluster Autoscaler", EKS user guide, managed
#: node groups): `k8s.io/cluster-autoscaler/enabled = true` and `k8s.io/cluster-autoscaler/<cluster> = owned`. The
#: chart's default `autoDiscovery.tags` are these two keys, and the IAM policy scales only groups carrying both.
AUTOSCALER_ENABLED_TAG = "k8s.io/cluster-autoscaler/enabled"
#: The labels of the autoscaler's metrics Service (chart 9.59.0 `cluster-autoscaler.instance-name`: the release's
#: name, and `<cloudProvider>-<chart name>` as app name), its name (`fullnameOverride`) and namespace.
CLUSTER_AUTOSCALER_SERVICE_LABELS = {
    "app.kubernetes.io/instance": "cluster-autoscaler",
    "app.kubernetes.io/name": "aws-cluster-autoscaler",
}
CLUSTER_AUTOSCALER_NAME = "cluster-autoscaler"
CLUSTER_AUTOSCALER_NAMESPACE = "kube-system"
# EKS has no Gateway API implementation: Envoy Gateway (its chart installs the Gateway API CRDs it is built
# against, v1.6.1, before its controller starts). v1.9 supports Kubernetes 1.33-1.36 (its compatibility matrix).
ENVOY_GATEWAY_CHART = ("gateway-helm", "v1.9.0", "oci://docker.io/envoyproxy")
#: The Kubernetes minor versions that Envoy Gateway release supports (gateway.envoyproxy.io/news/releases/matrix).
ENVOY_GATEWAY_KUBERNETES = ("1.33", "1.34", "1.35", "1.36")
ENVOY_GATEWAY_NAMESPACE = "envoy-gateway-system"
ENVOY_GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
ENVOY_PROXY_NAME = "rag-proxy"
# Service annotations of the in-tree AWS load balancer controller (cloud-provider-aws, run by EKS's control plane:
# no extra install): `nlb` asks for a Network Load Balancer instead of the default Classic ELB, `internal` for one
# with private addresses only (in the subnets tagged kubernetes.io/role/internal-elb). The AWS Load Balancer
# Controller is not installed, so its `external`/`nlb-ip` modes and annotations are not used.
NLB_TYPE_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-type"
NLB_INTERNAL_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-internal"
ENVOY_INTERNAL_SERVICE = f"{ENVOY_PROXY_NAME}-internal"
"""The internal proxy Service's name (EnvoyProxy `envoyService.name`; a public one keeps Envoy Gateway's generated
name). The cloud provider never changes the scheme of an NLB it has created (cloud-provider-aws
pkg/providers/v1/aws_loadbalancer.go `ensureLoadBalancerv2`, v1.36.1: "TODO: Sync internal vs non-internal";
"Subnets cannot be modified on NLBs"), so a `rag:gateway.loadBalancer` switch that only changed the annotation
would leave the load balancer as it was: public after a switch to internal. With the name following the scheme,
Envoy Gateway creates the Service under the new name (a new NLB of the new scheme) and deletes the old one
(internal/infrastructure/kubernetes/infra_resource.go `createOrUpdateService`: `DeleteAllExcept`, v1.9.0): the
address changes, and DNS must follow (docs/operations.md, day two)."""


#: Labels Envoy Gateway puts on every proxy pod it creates, whatever the Gateway (internal/infrastructure/
#: kubernetes/proxy: app.kubernetes.io/{name: envoy, component: proxy, managed-by: envoy-gateway}).
ENVOY_PROXY_POD_LABELS = {
    "app.kubernetes.io/name": "envoy",
    "app.kubernetes.io/component": "proxy",
    "app.kubernetes.io/managed-by": "envoy-gateway",
}


def envoy_proxy_replicas(environment: str) -> int:
    """Proxy pods per Gateway (per merged fleet on dev): one per zone in prod, two elsewhere. Envoy Gateway's
    default is one (KubernetesDeploymentSpec.replicas), and every request of the stack goes through it: a node
    drain (each EKS version upgrade replaces every node), an eviction or an OOM was a full outage."""
    return 3 if environment == "prod" else 2


def envoy_proxy_spec(internal: bool, *, merge_gateways: bool = False, replicas: int = 2) -> dict[str, Any]:
    """EnvoyProxy (gateway.envoyproxy.io/v1alpha1, Envoy Gateway v1.9.0) for the stack's GatewayClass: the proxy
    Service Envoy Gateway creates gets an NLB, internal when `internal` (then under its own name,
    `ENVOY_INTERNAL_SERVICE`, so that a switch replaces the load balancer rather than leaving it as it was).

    With `merge_gateways`, every Gateway of the class (dev's and each PR stack's, in their own namespaces) is merged
    onto one Envoy fleet behind one Service, hence one NLB: the address `*.<preview domain>` points at. Without it
    Envoy Gateway gives each Gateway its own proxy and load balancer ("By default, each Gateway has its own
    dedicated set of Envoy Proxy", Deployment Mode docs), and a PR's hostname reaches nothing at dev's address.
    Merging needs (port, protocol, hostname) unique across all those listeners; a duplicate is rejected
    (`Accepted=False`), the older listener keeps serving (the EnvoyProxySpec.mergeGateways API docs)."""
    annotations = {NLB_TYPE_ANNOTATION: "nlb"}
    if internal:
        annotations[NLB_INTERNAL_ANNOTATION] = "true"
    # `replicas` proxy pods spread over zones and nodes (preferred, so a zone short of room still gets its pod),
    # and a PodDisruptionBudget so a drain takes them one at a time: the NLB's targets are the nodes that run a
    # proxy pod (externalTrafficPolicy Local, the default), so at least one stays serving.
    spread = [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(ENVOY_PROXY_POD_LABELS)},
        }
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]
    service: dict[str, Any] = {"annotations": annotations}
    if internal:
        service["name"] = ENVOY_INTERNAL_SERVICE
    kubernetes: dict[str, Any] = {
        "envoyService": service,
        "envoyDeployment": {"replicas": replicas, "pod": {"topologySpreadConstraints": spread}},
        "envoyPDB": {"maxUnavailable": 1},
    }
    spec: dict[str, Any] = {"provider": {"type": "Kubernetes", "kubernetes": kubernetes}}
    if merge_gateways:
        spec["mergeGateways"] = True
    return spec


def merges_gateways(config: StackConfig) -> bool:
    """Whether the stack's EnvoyProxy merges the class's Gateways: on dev, the cluster PR stacks share
    (docs/delivery.md). Not on staging or prod: each has its cluster to itself, and switching a deployed class to
    merged mode replaces its proxy Service, so its load balancer address would change once for nothing."""
    return config.environment == "dev"


def egress_zones(mode: NatGateways, zones: int) -> list[int]:
    """The zones (indexes) that get a NAT gateway and a private route table: each zone, or zone 0 alone."""
    return list(range(zones)) if mode == "perZone" else [0]


def private_route_zone(mode: NatGateways, zone: int) -> int:
    """The zone whose NAT gateway (and route table) a private subnet in `zone` sends internet traffic to."""
    return zone if mode == "perZone" else 0


def nat_suffix(mode: NatGateways, zone: int) -> str:
    """Name suffix of a zone's EIP, NAT gateway and private route table: none for the single NAT (the names it
    shipped with: `nat`, `nat-ip`, `private-rt`), `-<zone>` per zone."""
    return f"-{zone}" if mode == "perZone" else ""


def nat_alias_suffixes(mode: NatGateways, zone: int) -> list[str]:
    """The other layout's suffix for the same zone-0 resources, so that switching `natGateways` adopts them."""
    if zone != 0:
        return []
    return [""] if mode == "perZone" else ["-0"]


def zone_opts(
    opts: pulumi.ResourceOptions, role: str, mode: NatGateways, zone: int, depends_on: list[pulumi.Resource]
) -> pulumi.ResourceOptions:
    """Options of a zone's egress resource `role`: the other layout's zone-0 name as an alias, and what it waits for."""
    aliases = [pulumi.Alias(name=f"{role}{suffix}") for suffix in nat_alias_suffixes(mode, zone)]
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=aliases, depends_on=depends_on))


def require_zones(names: list[str] | None, zones: int, region: str) -> Any:
    """The region's Availability Zones, refusing (with the key to change) a region that has fewer than asked for.

    `names` None is the empty answer of an aws provider the engine has not configured yet (infra/guards.py
    provider_unconfigured): the zones are unknown in a preview (as the subnets' zones then are), refused in an
    update rather than failing on the missing list."""
    from infra.config import ConfigError, stack_file

    if names is None:
        if pulumi.runtime.is_dry_run():
            return pulumi.output.UNKNOWN
        raise ConfigError(
            "rag:cluster.eks.availabilityZones",
            stack_file(pulumi.get_stack()),
            f"the aws provider answered the read of {region}'s Availability Zones with nothing (the engine's answer "
            "when it could not configure the provider), so the subnets cannot be placed",
        )
    if len(names) < zones:
        raise ConfigError(
            "rag:cluster.eks.availabilityZones",
            stack_file(pulumi.get_stack()),
            f"{zones} zones asked, but {region} offers {len(names)} Availability Zones to this account "
            f"({', '.join(names)}): "
            "lower it",
        )
    return list(names)


def subnet_cidrs(vpc_cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """(public, private) subnet CIDRs: /20s carved from the VPC range, publics first."""
    subnets = [str(net) for net in ipaddress.ip_network(vpc_cidr).subnets(new_prefix=20)]
    if len(subnets) < 2 * zones:
        raise ValueError(f"{vpc_cidr} is too small for {2 * zones} /20 subnets")
    return subnets[:zones], subnets[zones : 2 * zones]


def kubeconfig_for(name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig that authenticates with `aws eks get-token` (no long-lived credentials inside)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
            "users": [
                {
                    "name": name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "aws",
                            "args": [
                                "eks",
                                "get-token",
                                "--cluster-name",
                                name,
                                "--region",
                                region,
                                "--output",
                                "json",
                            ],
                        }
                    },
                }
            ],
        }
    )


def assume_role_policy(service: str) -> str:
    """Trust policy letting an AWS service assume a role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


def irsa_trust_policy(oidc_arn: str, issuer: str, namespace: str, service_account: str) -> str:
    """Trust policy letting exactly one Kubernetes service account assume a role through the cluster's OIDC."""
    host = issuer.removeprefix("https://")
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": oidc_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{host}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                            f"{host}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }
    )


def bucket_policy(bucket: str) -> str:
    """IAM policy: list one bucket and put/get/delete its objects (the backup job streams multipart uploads)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
                {
                    "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                    "Resource": f"arn:aws:s3:::{bucket}/*",
                },
            ],
        }
    )


def autoscaler_owner_tag(cluster_name: str) -> str:
    """The ASG tag naming the cluster whose autoscaler may scale that group."""
    return f"k8s.io/cluster-autoscaler/{cluster_name}"


def cluster_autoscaler_policy(cluster_name: str) -> str:
    """IAM policy of the Cluster Autoscaler with ASG auto-discovery (cluster-autoscaler/cloudprovider/aws/README.md,
    "Full Cluster Autoscaler Features Policy"), its scaling actions limited to the Auto Scaling groups EKS tags as
    this cluster's node groups (the README's advice: restrict them by tag), so it cannot resize another cluster's."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": [
                        "autoscaling:DescribeAutoScalingGroups",
                        "autoscaling:DescribeAutoScalingInstances",
                        "autoscaling:DescribeLaunchConfigurations",
                        "autoscaling:DescribeScalingActivities",
                        "ec2:DescribeImages",
                        "ec2:DescribeInstanceTypes",
                        "ec2:DescribeLaunchTemplateVersions",
                        "ec2:GetInstanceTypesFromInstanceRequirements",
                        "eks:DescribeNodegroup",
                    ],
                    "Resource": "*",
                },
                {
                    "Effect": "Allow",
                    "Action": [
                        "autoscaling:SetDesiredCapacity",
                        "autoscaling:TerminateInstanceInAutoScalingGroup",
                    ],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {
                            f"aws:ResourceTag/{AUTOSCALER_ENABLED_TAG}": "true",
                            f"aws:ResourceTag/{autoscaler_owner_tag(cluster_name)}": "owned",
                        }
                    },
                },
            ],
        }
    )


def cluster_autoscaler_values(
    cluster_name: pulumi.Input[str], region: str, image_tag: str, role_arn: pulumi.Input[str]
) -> dict[str, Any]:
    """Helm values (chart cluster-autoscaler 9.59.0) for the AWS provider with ASG auto-discovery of this cluster's
    node groups (`--node-group-auto-discovery=asg:tag=<the chart's two default tag keys>`), IRSA credentials, and
    the image of the cluster's minor."""
    return {
        "cloudProvider": "aws",
        "awsRegion": region,
        "autoDiscovery": {"clusterName": cluster_name},
        "fullnameOverride": CLUSTER_AUTOSCALER_NAME,
        "image": {"tag": image_tag},
        "rbac": {
            "serviceAccount": {
                "name": CLUSTER_AUTOSCALER_SERVICE_ACCOUNT,
                "annotations": {"eks.amazonaws.com/role-arn": role_arn},
            }
        },
        # Rendered as `--skip-nodes-with-local-storage=false`. Its default (true) never removes a node running a pod
        # with an emptyDir, and every API and worker pod has two (/tmp and DATA_DIR, scratch that any rollout
        # discards), so after a peak the nodes holding them would never be scaled down. PodDisruptionBudgets still
        # hold evictions to one pod at a time.
        # `--emit-per-nodegroup-metrics`: the per-group target and max counts the "at maxSize" alert compares
        # (registered only with this flag; cluster-autoscaler/metrics/metrics.go RegisterAll).
        "extraArgs": {"skip-nodes-with-local-storage": False, "emit-per-nodegroup-metrics": True},
        # Requests for a cluster of tens of nodes; a limit on memory only (throttled CPU would only slow its loop).
        "resources": {"requests": {"cpu": "100m", "memory": "600Mi"}, "limits": {"memory": "600Mi"}},
    }


#: EKS access policies (arn:aws:eks::aws:cluster-access-policy/...). AdminView, unlike View, reads Secrets, which a
#: `pulumi refresh` of the stack's Secrets and Helm releases needs.
ADMIN_ACCESS_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
READER_ACCESS_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSAdminViewPolicy"


def cluster_access(
    cluster: aws.eks.Cluster,
    admins: tuple[str, ...],
    readers: tuple[str, ...],
    opts: pulumi.ResourceOptions,
) -> list[aws.eks.AccessPolicyAssociation]:
    """An access entry and a cluster-wide access policy per principal of `rag:cluster.eks.adminPrincipals` /
    `readerPrincipals`. Without them only the identity that created the cluster can use its Kubernetes API: the
    on-call engineer's role gets Unauthorized, and so does a drift job running as another role. Named by a hash
    of the ARN, so removing one principal does not touch the others' entries."""
    granted = []
    for arn, policy in [
        *((a, ADMIN_ACCESS_POLICY) for a in admins),
        *((r, READER_ACCESS_POLICY) for r in readers),
    ]:
        suffix = hashlib.sha256(arn.encode()).hexdigest()[:10]
        entry = aws.eks.AccessEntry(
            f"eks-access-{suffix}", cluster_name=cluster.name, principal_arn=arn, type="STANDARD", opts=opts
        )
        granted.append(
            aws.eks.AccessPolicyAssociation(
                f"eks-access-policy-{suffix}",
                cluster_name=cluster.name,
                principal_arn=entry.principal_arn,
                policy_arn=policy,
                access_scope={"type": "cluster"},
                opts=opts,
            )
        )
    return granted


def addon_version(addon: str, cluster: aws.eks.Cluster, provider: aws.Provider) -> pulumi.Output[str]:
    """The version of EKS managed add-on `addon` for the cluster's Kubernetes version: the one EKS itself installs
    on a new cluster of that version (DescribeAddonVersions' default, `most_recent` false; the most recent build
    is not always the one AWS has validated as default). Read from the cluster's `version` output, so raising
    `rag:cluster.eks.version` raises every add-on, after the control plane's own update. Without an
    `addon_version`, the add-on keeps the version it was created with whatever the cluster runs (EKS does not
    upgrade add-ons with the cluster), and a minor or two later the CNI or kube-proxy is outside the versions
    EKS supports for the control plane."""
    return aws.eks.get_addon_version_output(
        addon_name=addon,
        kubernetes_version=cluster.version,
        most_recent=False,
        opts=pulumi.InvokeOutputOptions(provider=provider),
    ).version


#: End of standard support per EKS Kubernetes minor (EKS user guide, "Understand the Kubernetes version lifecycle on
#: EKS", release calendar: 14 months after EKS releases the minor; then 12 months of extended support, billed per
#: cluster hour, then an automatic upgrade). A minor not listed has no recorded date: no warning is given for it.
EKS_STANDARD_SUPPORT_ENDS: Mapping[str, date] = {
    "1.33": date(2026, 7, 29),
    "1.34": date(2026, 12, 2),
    "1.35": date(2027, 3, 27),
}
#: How long before a minor's end of standard support `make plan` and every preview/`up` start warning: a quarter,
#: the time to take one minor through staging and then prod (each a one-minor step, docs/infra.md cluster.eks.version).
EKS_SUPPORT_WARNING_DAYS = 90


def support_warning(version: str, today: date, file: str) -> str | None:
    """A warning when `version` (rag:cluster.eks.version) leaves EKS standard support within
    EKS_SUPPORT_WARNING_DAYS of `today`, or has left it; None otherwise (or when the minor has no recorded date).

    A warning, not a refusal: a cluster moves one minor per update, so the way off a minor past its end goes through
    the next one, which may itself be days from its own end (1.33 -> 1.34 on 2026-11-26): refusing those would block
    the only upgrade path. A date-driven refusal would also turn a green `make plan` red overnight with no change."""
    ends = EKS_STANDARD_SUPPORT_ENDS.get(version)
    if ends is None:
        return None
    days = (ends - today).days
    if days > EKS_SUPPORT_WARNING_DAYS:
        return None
    newer = sorted((m for m in EKS_STANDARD_SUPPORT_ENDS if _minor(m) > _minor(version)), key=_minor)
    step = f"raise it one minor at a time (next: {newer[0]})" if newer else "raise it one minor"
    when = (
        f"left EKS standard support on {ends}"
        if days < 0
        else f"leaves EKS standard support on {ends} ({days} days)"
    )
    return (
        f"rag:cluster.eks.version in {file}: {version} {when}; after that EKS bills extended support per cluster "
        f"hour and upgrades the cluster itself when that ends: {step} (docs/infra.md, cluster.eks.version)"
    )


def _minor(version: str) -> int:
    return int(version.split(".")[1])


def check_version_step(wanted: str, running: str | None, node_groups: Mapping[str, str], file: str) -> str:
    """`wanted` (rag:cluster.eks.version) when EKS can move the running cluster to it in one update, else a
    ConfigError naming the key and the stack file. EKS's UpdateClusterVersion goes one minor up at a time ("The only
    values allowed ... are the current version of the cluster or one version higher", eksctl's cluster-upgrade
    docs), never down, and only when every managed node group already runs the cluster's version ("all of your node
    groups' Kubernetes versions must match the cluster's Kubernetes version in order to update the cluster",
    UpdateClusterVersion API reference). `running` None: no such cluster yet (a new stack takes any version)."""
    if running is None:
        return wanted
    key = "rag:cluster.eks.version"
    step = _minor(wanted) - _minor(running)
    if step < 0:
        raise ConfigError(
            key,
            file,
            f"{wanted} is older than the {running} the cluster runs: EKS cannot downgrade a control plane "
            "(a new cluster would be the only way, and it would replace every workload)",
        )
    if step > 1:
        raise ConfigError(
            key,
            file,
            f"the cluster runs {running}, and EKS upgrades one minor at a time (UpdateClusterVersion refuses "
            f"{wanted}): set 1.{_minor(running) + 1}, `ragops up`, and raise it again after that update "
            "(docs/infra.md, cluster.eks.version)",
        )
    lagging = {name: version for name, version in sorted(node_groups.items()) if version != running}
    if step == 1 and lagging:
        names = ", ".join(f"{name} at {version}" for name, version in lagging.items())
        raise ConfigError(
            key,
            file,
            f"the cluster runs {running} but its node groups do not ({names}): EKS updates a control plane only "
            f"when every managed node group runs its version. Run `ragops up` with {running} first (it updates the "
            f"node groups to the cluster's version), then raise it to {wanted}",
        )
    return wanted


#: The `aws:*` stack keys the program hands its explicit AWS provider (stack key -> ProviderArgs argument): the
#: account guards. pulumi-aws checks the credentials' account (STS GetCallerIdentity) against them when the provider
#: is configured, before any read or change: `aws:allowedAccountIds: ["111122223333"]` in a stack file is what stops
#: a deploy from a shell whose credentials reach another account (docs/infra.md, "AWS credentials and account").
AWS_ACCOUNT_GUARDS = {
    "allowedAccountIds": "allowed_account_ids",
    "forbiddenAccountIds": "forbidden_account_ids",
}
_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")


def check_region(region: str, file: str) -> str:
    """`region` if AWS has such a region (pulumi-aws's `Region` enum, the provider's own list); a ConfigError naming
    rag:cluster.eks.region otherwise. pulumi-aws defaults `skip_region_validation` to true, so a mistyped region
    passed every offline check and a real `up` failed at the first call (a DNS error for
    eks.<region>.amazonaws.com), reported as an unreadable cluster version."""
    known = sorted(r.value for r in aws.Region)
    if region not in known:
        close = difflib.get_close_matches(region, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            "rag:cluster.eks.region",
            file,
            f"{region!r} is not an AWS region{hint}: one of {', '.join(known)}",
        )
    return region


def aws_provider_args(
    region: str, keys: Mapping[str, Any], file: str, *, prod: bool = False
) -> dict[str, Any]:
    """The explicit AWS provider's arguments from the stack's `aws:*` keys (`keys`, bare name -> value).

    An explicit provider reads no `aws:*` stack config, so each key is honoured here or refused, never ignored:
    - `aws:allowedAccountIds` / `aws:forbiddenAccountIds` (lists of 12-digit account IDs) are passed on.
    - `aws:region` must equal rag:cluster.eks.region (the one source: the kubeconfig and the plan use it).
    - `aws:profile` is refused: the provider is not the only AWS client of an `up` (the kubeconfig's
      `aws eks get-token`, the image copy's `aws ecr get-login-password` run with the shell's credentials), so a
      profile given to the provider alone would split one deploy across two identities. The shell's
      `AWS_PROFILE` reaches them all; `aws:allowedAccountIds` guards the account.
    - `aws:assumeRole` / `aws:assumeRoles` (pulumi-aws 7 reads the list `assumeRoles`) are refused for the same
      reason: the role would reach the provider alone, and `aws eks get-token` (which takes a role ARN but no
      external ID nor session name) and the image scripts' `aws ecr` calls would run as the shell's identity, which
      has no access entry on a cluster the role created: the `up` would stop half way at the first Kubernetes
      object. A profile with `role_arn` (and `external_id`, `role_session_name`) reaches every AWS client.
    - Any other `aws:*` key is refused as doing nothing.
    - `prod`: `aws:allowedAccountIds` is required, so credentials that reach another account cannot deploy prod.
    """
    if prod and "allowedAccountIds" not in keys:
        raise ConfigError(
            "aws:allowedAccountIds",
            file,
            'missing: a prod EKS stack pins its AWS account (aws:allowedAccountIds: ["<12-digit account ID>"]), '
            "so credentials that reach another account fail before anything is read or changed "
            '(docs/infra.md, "AWS credentials and account")',
        )
    args: dict[str, Any] = {}
    for bare, value in sorted(keys.items()):
        key = f"aws:{bare}"
        if bare == "region":
            if value != region:
                raise ConfigError(
                    key,
                    file,
                    f"{value} differs from rag:cluster.eks.region ({region}), the only region the stack's AWS "
                    "provider uses: remove aws:region (or make it equal)",
                )
        elif bare == "profile":
            raise ConfigError(
                key,
                file,
                "not read (the stack's AWS provider is explicit, and the kubeconfig and image copy use the "
                f"shell's credentials): remove it and run with AWS_PROFILE={value}; pin the account with "
                'aws:allowedAccountIds (docs/infra.md, "AWS credentials and account")',
            )
        elif bare in ("assumeRole", "assumeRoles"):
            raise ConfigError(
                key,
                file,
                "not read: a role given to the stack's AWS provider alone would not reach `aws eks get-token` nor "
                "the image scripts' `aws ecr` calls, which run with the shell's credentials (an `up` stopped half "
                "way, Unauthorized at the cluster the role created). Put the role in an AWS profile (role_arn, "
                "source_profile or credential_source, external_id, role_session_name) and run with AWS_PROFILE; "
                'in CI, assume it before `up` (docs/infra.md, "AWS credentials and account")',
            )
        elif bare in AWS_ACCOUNT_GUARDS:
            try:
                ids = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError:
                ids = value
            if (
                not isinstance(ids, list)
                or not ids
                or not all(isinstance(i, str) and _ACCOUNT_ID.match(i) for i in ids)
            ):
                raise ConfigError(
                    key,
                    file,
                    f'must be a list of quoted 12-digit AWS account IDs, e.g. ["111122223333"] (got {value})',
                )
            args[AWS_ACCOUNT_GUARDS[bare]] = ids
        else:
            raise ConfigError(
                key,
                file,
                "not read: the stack's AWS provider is explicit (infra/clusters/eks.py) and takes only "
                "aws:allowedAccountIds, aws:forbiddenAccountIds and rag:cluster.eks.region; credentials come from "
                "the environment (AWS_PROFILE; a role to assume goes in that profile). Remove the key",
            )
    return args


def running_version(name: str, provider: aws.Provider, file: str) -> tuple[str | None, dict[str, str]]:
    """(the Kubernetes version the cluster `name` runs, {node group: its version}), read from EKS (ListClusters,
    DescribeCluster, ListNodegroups, DescribeNodegroup) with the stack's own `provider`; (None, {}) when no cluster
    of that name exists (a first `up`), or in a preview whose `provider` is not configured yet (warned:
    infra/guards.py provider_unconfigured). Read from the cloud rather than from the stack's state: it is what
    UpdateClusterVersion will compare against, even after an update made outside the stack or one that failed half
    way.

    Plain (blocking) invokes, called before the program registers any cloud resource: the Python SDK's
    `pulumi.runtime.invoke` awaits the provider's registration, then the engine's Invoke, pumping the event loop
    until it answers (`_sync_await`), and the engine runs invokes in `pulumi preview` as in `up`. So a refused step
    stops the program before the VPC, IAM or RDS are even declared: nothing is updated. (As Outputs, the check only
    held back the cluster, and an `up` updated everything that does not wait for it before failing.) A read that
    fails (no `eks:ListClusters`, throttling) refuses too, naming the key: without it the step cannot be checked."""
    invoke = pulumi.InvokeOptions(provider=provider)
    try:
        clusters = aws.eks.get_clusters(opts=invoke)
    except Exception as exc:
        raise _unreadable(name, file, exc) from exc
    # A provider not configured yet (an Output among its inputs, in a preview) answers with nothing: warned and not
    # checked in a preview, refused in an update; never read as "no cluster" (infra/guards.py).
    if provider_unconfigured(
        clusters, "aws", "rag:cluster.eks.version", file, f"the version EKS cluster {name} runs"
    ):
        return None, {}
    try:
        if name not in (clusters.names or []):
            return None, {}
        running = aws.eks.get_cluster(name=name, opts=invoke).version
        groups = sorted(aws.eks.get_node_groups(cluster_name=name, opts=invoke).names or [])
        versions = {
            group: aws.eks.get_node_group(cluster_name=name, node_group_name=group, opts=invoke).version
            for group in groups
        }
    except Exception as exc:
        raise _unreadable(name, file, exc) from exc
    return running, versions


#: The stack's AWS provider refused the account its credentials reach (aws-sdk-go-base `VerifyAccountIDAllowed`:
#: "AWS account ID not allowed: <id>" for aws:allowedAccountIds and aws:forbiddenAccountIds alike; older
#: terraform-provider-aws releases said "Forbidden AWS Account ID: <id>").
_WRONG_ACCOUNT = re.compile(r"account id not allowed|forbidden aws account id", re.IGNORECASE)
#: No credentials, or ones AWS rejects (pulumi-aws's pre-configure check: "No valid credential sources found",
#: "Invalid credentials configured"; STS/EKS: InvalidClientTokenId, ExpiredToken, an expired SSO session, ...).
_BAD_CREDENTIALS = re.compile(
    r"no valid credential sources|invalid credentials configured|InvalidClientTokenId|ExpiredToken|"
    r"UnrecognizedClientException|SignatureDoesNotMatch|security token included in the request is|"
    r"failed to refresh cached credentials|SSO session .*(expired|invalid)|token has expired",
    re.IGNORECASE,
)
_NAMED_ACCOUNT = re.compile(r"not allowed:?\s*(\d{12})|Account ID:\s*(\d{12})", re.IGNORECASE)


def _unreadable(name: str, file: str, exc: Exception) -> ConfigError:
    """The refusal when the first reads through the stack's AWS provider fail, by what failed: the account guard
    (naming aws:allowedAccountIds), the credentials, or the read itself (the permissions it needs)."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if _WRONG_ACCOUNT.search(text):
        found = _NAMED_ACCOUNT.search(text)
        account = next((g for g in found.groups() if g), None) if found else None
        return ConfigError(
            "aws:allowedAccountIds",
            file,
            f"the AWS credentials in the environment reach account {account or '(see the provider error)'}, which "
            "this stack's aws:allowedAccountIds / aws:forbiddenAccountIds rule out: deploy with the credentials "
            'of the stack\'s account (AWS_PROFILE; docs/infra.md, "AWS credentials and account")',
        )
    cause = next((line for line in lines if _BAD_CREDENTIALS.search(line)), lines[0] if lines else repr(exc))
    if _BAD_CREDENTIALS.search(text):
        return ConfigError(
            "rag:cluster.eks.version",
            file,
            f"could not read the version EKS cluster {name} runs: the AWS credentials in the environment are "
            f"missing, expired or rejected ({cause}); set AWS_PROFILE (or renew the session: aws sso login) and "
            'run again (docs/infra.md, "AWS credentials and account")',
        )
    return ConfigError(
        "rag:cluster.eks.version",
        file,
        f"could not read the version EKS cluster {name} runs ({cause}), so the "
        "one-minor step cannot be checked: the deploying identity needs eks:ListClusters, eks:DescribeCluster, "
        "eks:ListNodegroups and eks:DescribeNodegroup (docs/infra.md, cluster.eks.version)",
    )


#: The control-plane log types the cluster sends to CloudWatch Logs.
CONTROL_PLANE_LOG_TYPES = ("api", "audit", "authenticator")
#: Logical name of the stack's control-plane log group (`ragops up` names it in its adoption instructions).
CONTROL_PLANE_LOG_GROUP = "eks-control-plane-logs"


def control_plane_log_group(cluster_name: str) -> str:
    """The CloudWatch log group EKS writes a cluster's control-plane logs to: `/aws/eks/<cluster>/cluster` (EKS
    user guide, "Send control plane logs to CloudWatch Logs"), a name EKS does not let one choose."""
    return f"/aws/eks/{cluster_name}/cluster"


def build_eks(config: StackConfig) -> ClusterTarget:
    """The EKS cluster target for `config` (provider `eks`)."""
    eks = config.cluster.eks
    stack = pulumi.get_stack()
    # EKS CreateCluster: 1-100 characters, [0-9A-Za-z][A-Za-z0-9_-]*; unique per account and region.
    name = cloud_name(stack, limit=100)
    # The in-tree load balancer controller picks subnets carrying this tag (cloud-provider-aws findSubnets).
    cluster_tag = f"kubernetes.io/cluster/{name}"
    file = stack_file(stack)
    aws_provider = aws.Provider(
        "aws",
        region=check_region(eks.region, file),
        default_tags={"tags": {"project": "rag", "stack": stack}},
        **aws_provider_args(eks.region, provider_stack_keys("aws"), file, prod=config.is_prod),
    )
    # The version EKS can reach from what runs, checked before any cloud resource is declared (running_version):
    # a refused step fails the preview or `up` with the reason, not an `up` half way at UpdateClusterVersion.
    running, node_groups = running_version(name, aws_provider, file)
    version = check_version_step(eks.version, running, node_groups, file)
    warning = support_warning(version, date.today(), file)
    if warning:
        pulumi.log.warn(warning)
    opts = pulumi.ResourceOptions(provider=aws_provider)
    kept = pulumi.ResourceOptions(provider=aws_provider, protect=config.protect)

    # Availability Zones only: with a Local Zone opted in, the API lists it too (pulumi-aws `get_availability_zones`
    # docstring), and it sorts before the region's lettered zones ("eu-west-1-...-1a" < "eu-west-1a"), so
    # subnet 0 (the nodes, NAT 0, the EKS control plane's interfaces) would land where EKS cannot run.
    zones = aws.get_availability_zones_output(
        state="available",
        filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
        opts=pulumi.InvokeOutputOptions(provider=aws_provider),
    )
    zone_names = zones.names.apply(lambda names: require_zones(names, eks.availabilityZones, eks.region))
    public_cidrs, private_cidrs = subnet_cidrs(eks.vpcCidr, eks.availabilityZones)

    vpc = aws.ec2.Vpc(
        "vpc",
        cidr_block=eks.vpcCidr,
        enable_dns_hostnames=True,
        enable_dns_support=True,
        tags={"Name": name},
        opts=opts,
    )
    gateway = aws.ec2.InternetGateway("igw", vpc_id=vpc.id, opts=opts)
    public_rt = aws.ec2.RouteTable(
        "public-rt", vpc_id=vpc.id, routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}], opts=opts
    )
    public_subnets: list[aws.ec2.Subnet] = []
    private_subnets: list[aws.ec2.Subnet] = []
    public_associations: list[aws.ec2.RouteTableAssociation] = []
    for index, cidr in enumerate(public_cidrs):
        subnet = aws.ec2.Subnet(
            f"public-{index}",
            vpc_id=vpc.id,
            cidr_block=cidr,
            availability_zone=zone_names[index],
            map_public_ip_on_launch=True,
            tags={"Name": f"{name}-public-{index}", "kubernetes.io/role/elb": "1", cluster_tag: "shared"},
            opts=opts,
        )
        public_associations.append(
            aws.ec2.RouteTableAssociation(
                f"public-{index}", subnet_id=subnet.id, route_table_id=public_rt.id, opts=opts
            )
        )
        public_subnets.append(subnet)
    # Egress of the private subnets: per zone (rag:cluster.eks.natGateways perZone) one EIP + NAT gateway in that
    # zone's public subnet and one route table sending 0.0.0.0/0 to it, so losing a zone loses only its own
    # egress; `single` shares zone 0's NAT (and its fate) between all zones. Names stay those shipped with the
    # single NAT, and the two layouts alias each other's zone-0 names, so switching keeps zone 0's NAT and its
    # public address (allow-listed by peers) instead of replacing them.
    nat_zones = egress_zones(eks.natGateways, eks.availabilityZones)
    private_tables: list[aws.ec2.RouteTable] = []
    for zone in nat_zones:
        suffix = nat_suffix(eks.natGateways, zone)
        # Terraform/pulumi-aws: an EIP and a NAT gateway need the VPC's internet gateway attached (on destroy,
        # the gateway cannot detach while an address is still mapped); the NAT's subnet must route to it too.
        nat_ip = aws.ec2.Eip(
            f"nat-ip{suffix}",
            domain="vpc",
            tags={"Name": f"{name}-nat-{zone}"},
            opts=zone_opts(opts, "nat-ip", eks.natGateways, zone, [gateway]),
        )
        nat = aws.ec2.NatGateway(
            f"nat{suffix}",
            subnet_id=public_subnets[zone].id,
            allocation_id=nat_ip.id,
            tags={"Name": f"{name}-nat-{zone}"},
            opts=zone_opts(opts, "nat", eks.natGateways, zone, [gateway, public_associations[zone]]),
        )
        private_tables.append(
            aws.ec2.RouteTable(
                f"private-rt{suffix}",
                vpc_id=vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                tags={"Name": f"{name}-private{suffix}"},
                opts=zone_opts(opts, "private-rt", eks.natGateways, zone, []),
            )
        )
    # S3 traffic from the private subnets (backup uploads and restores, ECR image layers, which ECR serves from S3)
    # through a free gateway endpoint instead of the NAT gateways, which bill every GB they process. A gateway
    # endpoint is a route in each table it is attached to: every private table, or a zone's S3 traffic goes
    # through its NAT.
    aws.ec2.VpcEndpoint(
        "s3-endpoint",
        vpc_id=vpc.id,
        service_name=f"com.amazonaws.{eks.region}.s3",
        vpc_endpoint_type="Gateway",
        route_table_ids=[table.id for table in private_tables],
        tags={"Name": f"{name}-s3"},
        opts=opts,
    )
    private_associations: list[aws.ec2.RouteTableAssociation] = []
    for index, cidr in enumerate(private_cidrs):
        subnet = aws.ec2.Subnet(
            f"private-{index}",
            vpc_id=vpc.id,
            cidr_block=cidr,
            availability_zone=zone_names[index],
            tags={
                "Name": f"{name}-private-{index}",
                "kubernetes.io/role/internal-elb": "1",
                cluster_tag: "shared",
            },
            opts=opts,
        )
        private_associations.append(
            aws.ec2.RouteTableAssociation(
                f"private-{index}",
                subnet_id=subnet.id,
                route_table_id=private_tables[nat_zones.index(private_route_zone(eks.natGateways, index))].id,
                opts=opts,
            )
        )
        private_subnets.append(subnet)

    cluster_role = aws.iam.Role(
        "eks-cluster-role", assume_role_policy=assume_role_policy("eks.amazonaws.com"), opts=opts
    )
    cluster_policy = aws.iam.RolePolicyAttachment(
        "eks-cluster-policy",
        role=cluster_role.name,
        policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
        opts=opts,
    )
    # The control-plane log group, declared by the stack: when logging is on and the group is missing, EKS creates
    # it itself with no retention (kept forever, billed forever) and deleting the cluster leaves it behind, so the
    # next stack of the same name failed creating it. Created first (the cluster waits for it: terraform-provider-aws
    # eks_cluster docs, "Enabling Control Plane Logging", depends_on for exactly this race), so EKS finds it and
    # never creates its own; deleted by destroy after the cluster. Protected in prod like the cluster: it holds the
    # audit trail. A stack whose cluster was created before this group was declared has EKS's group already:
    # `ragops up` then stops with the `pulumi import` that adopts it (docs/operations.md).
    log_group = aws.cloudwatch.LogGroup(
        CONTROL_PLANE_LOG_GROUP,
        name=control_plane_log_group(name),
        retention_in_days=eks.controlPlaneLogs.retentionDays,
        opts=kept,
    )
    cluster = aws.eks.Cluster(
        "eks",
        name=name,
        version=version,
        role_arn=cluster_role.arn,
        vpc_config={
            "subnet_ids": [subnet.id for subnet in private_subnets + public_subnets],
            "endpoint_private_access": True,
            # Private by default (rag:cluster.eks.endpointPublicAccess); when opened, only from the listed ranges.
            "endpoint_public_access": eks.endpointPublicAccess,
            **({"public_access_cidrs": list(eks.publicAccessCidrs)} if eks.endpointPublicAccess else {}),
        },
        access_config={
            "authentication_mode": "API_AND_CONFIG_MAP",
            "bootstrap_cluster_creator_admin_permissions": True,
        },
        enabled_cluster_log_types=list(CONTROL_PLANE_LOG_TYPES),
        opts=pulumi.ResourceOptions.merge(
            kept, pulumi.ResourceOptions(depends_on=[cluster_policy, log_group])
        ),
    )

    cluster_access(cluster, eks.adminPrincipals, eks.readerPrincipals, opts)

    node_role = aws.iam.Role(
        "eks-node-role", assume_role_policy=assume_role_policy("ec2.amazonaws.com"), opts=opts
    )
    node_policies = [
        aws.iam.RolePolicyAttachment(
            f"eks-node-{arn.rsplit('/', 1)[1]}", role=node_role.name, policy_arn=arn, opts=opts
        )
        for arn in NODE_POLICIES
    ]
    group = eks.nodeGroup
    node_group = aws.eks.NodeGroup(
        "eks-nodes",
        cluster_name=cluster.name,
        node_role_arn=node_role.arn,
        subnet_ids=[subnet.id for subnet in private_subnets],
        # The nodes follow the control plane: without it the node group's version is only computed at creation,
        # so raising rag:cluster.eks.version upgraded the control plane and left every node on the old minor
        # (terraform-provider-aws aws_eks_node_group `version`: Optional+Computed; a change is an in-place
        # UpdateNodegroupVersion, a rolling replacement of the nodes within update_config.max_unavailable).
        version=cluster.version,
        instance_types=[group.instanceType],
        disk_size=group.diskSizeGb,
        scaling_config={
            "min_size": group.minSize,
            "max_size": group.maxSize,
            "desired_size": group.desiredSize,
        },
        update_config={"max_unavailable": 1},
        # Nodes boot pulling the self-managed VPC CNI and kube-proxy images from ECR through their zone's NAT: the
        # route to it must exist first (no output links the node group to the route tables).
        # With the Cluster Autoscaler on, desiredSize is the count at creation only: the autoscaler sets the
        # group's desired capacity from then on, and a `pulumi up` sending the stack's desiredSize again would
        # undo its scale-up (pulumi-aws NodeGroup docs, "Ignoring Changes to Desired Size"). ignoreChanges keeps
        # the value for the create and leaves it out of every later diff.
        opts=pulumi.ResourceOptions.merge(
            kept,
            pulumi.ResourceOptions(
                # The control plane first, the nodes after it (also implied by version=cluster.version; explicit
                # so no refactor of the inputs can reorder an upgrade: nodes newer than the API server are refused).
                depends_on=[cluster, *node_policies, *private_associations],
                ignore_changes=["scalingConfig.desiredSize"] if eks.clusterAutoscaler.enabled else None,
            ),
        ),
    )
    # The VPC CNI (with network policy enforcement on) and kube-proxy as managed add-ons, after the node group: on a
    # version upgrade AWS's order is control plane, then nodes, then the add-ons (EKS user guide, "Update existing
    # cluster to new Kubernetes version", step 4). On a new cluster the nodes join with the self-managed aws-node
    # and kube-proxy EKS installs at creation (bootstrap_self_managed_addons defaults to true), which these add-ons
    # then take over; the stack's in-cluster resources wait for the VPC CNI add-on (and the ClusterTarget for
    # both), so no pod of the service ever runs unpoliced.
    after_nodes = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[node_group]))
    vpc_cni = aws.eks.Addon(
        "vpc-cni",
        cluster_name=cluster.name,
        addon_name="vpc-cni",
        addon_version=addon_version("vpc-cni", cluster, aws_provider),
        configuration_values=json.dumps(VPC_CNI_CONFIGURATION),
        # EKS installs a self-managed aws-node at cluster creation: the add-on takes it over.
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        opts=after_nodes,
    )
    # kube-proxy and CoreDNS as managed add-ons too. EKS installs both self-managed at creation and never upgrades
    # them: without these, raising the cluster's version left the cluster's DNS and service proxy on the minor it
    # was created with.
    kube_proxy = aws.eks.Addon(
        "kube-proxy",
        cluster_name=cluster.name,
        addon_name="kube-proxy",
        addon_version=addon_version("kube-proxy", cluster, aws_provider),
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        opts=after_nodes,
    )
    coredns = aws.eks.Addon(
        "coredns",
        cluster_name=cluster.name,
        addon_name="coredns",
        addon_version=addon_version("coredns", cluster, aws_provider),
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        opts=pulumi.ResourceOptions(provider=aws_provider, depends_on=[node_group]),
    )

    issuer = cluster.identities.apply(lambda ids: ids[0]["oidcs"][0]["issuer"])
    oidc = aws.iam.OpenIdConnectProvider(
        "eks-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=opts
    )

    def irsa_role(resource_name: str, namespace: str, service_account: str) -> aws.iam.Role:
        return aws.iam.Role(
            resource_name,
            assume_role_policy=pulumi.Output.all(oidc.arn, issuer).apply(
                lambda parts: irsa_trust_policy(parts[0], parts[1], namespace, service_account)
            ),
            opts=opts,
        )

    # PersistentVolumes on EKS need the EBS CSI driver (an add-on with its own IRSA role) and a gp3 class.
    ebs_role = irsa_role("ebs-csi-role", "kube-system", "ebs-csi-controller-sa")
    ebs_policy = aws.iam.RolePolicyAttachment(
        "ebs-csi-policy", role=ebs_role.name, policy_arn=EBS_CSI_POLICY, opts=opts
    )
    ebs_addon = aws.eks.Addon(
        "ebs-csi",
        cluster_name=cluster.name,
        addon_name="aws-ebs-csi-driver",
        addon_version=addon_version("aws-ebs-csi-driver", cluster, aws_provider),
        service_account_role_arn=ebs_role.arn,
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        # The controller needs its permissions before the first volume is asked of it (the role's ARN alone does
        # not make the add-on wait for the policy attachment).
        opts=pulumi.ResourceOptions(provider=aws_provider, depends_on=[node_group, ebs_policy]),
    )

    repository = aws.ecr.Repository(
        "registry",
        # ECR: lowercase, single separators, at most 256 characters; unique per account and region.
        name=cloud_name(stack, limit=200, prefix="rag-service"),
        image_tag_mutability="IMMUTABLE",
        image_scanning_configuration={"scan_on_push": True},
        force_delete=not config.protect,
        opts=kept,
    )
    # The build cache is one tag rewritten by every build: it cannot live in the IMMUTABLE repository.
    cache_repository = aws.ecr.Repository(
        "registry-cache",
        name=cloud_name(stack, "cache", limit=200, prefix="rag-service"),
        image_tag_mutability="MUTABLE",
        force_delete=not config.protect,
        opts=kept,  # an ECR repository, protected in prod like the image repository
    )
    aws.ecr.LifecyclePolicy(
        "registry-cache-lifecycle",
        repository=cache_repository.name,
        policy=json.dumps(
            {
                "rules": [
                    {
                        "rulePriority": 1,
                        "description": "drop cache blobs no tag points to any more",
                        "selection": {
                            "tagStatus": "untagged",
                            "countType": "sinceImagePushed",
                            "countUnit": "days",
                            "countNumber": 7,
                        },
                        "action": {"type": "expire"},
                    }
                ]
            }
        ),
        opts=opts,
    )
    # Retention that never takes what the stack runs, its rollback target or a promoted image; builds it moved on
    # from and images nothing deployed expire (infra/components/image.py ecr_lifecycle_policy, rag:cluster.imageRetention).
    # Images deployed before each index's manifests got their own protected tags: tag them once, before the rule
    # that expires untagged images is set.
    protect_existing = command.local.Command(
        "registry-protect-existing", create=repository.repository_url.apply(protect_existing_script)
    )
    aws.ecr.LifecyclePolicy(
        "registry-lifecycle",
        repository=repository.name,
        policy=json.dumps(
            ecr_lifecycle_policy(
                config.cluster.imageRetention.neverDeployedDays,
                config.cluster.imageRetention.supersededBuildDays,
            )
        ),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[protect_existing])),
    )

    kubeconfig = pulumi.Output.secret(
        pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority).apply(
            lambda parts: kubeconfig_for(parts[0], parts[1], parts[2]["data"], eks.region)
        )
    )
    # The cluster's id, not the kubeconfig, tells pulumi-kubernetes whether the provider points at another cluster
    # (infra/clusters/gke.py `cluster_identity`): no stack-wide replace when the endpoint or CA in the state moves.
    identity = cluster.arn.apply(lambda arn: f"eks:{arn}")
    k8s_provider = k8s.Provider(
        "k8s", kubeconfig=kubeconfig, enable_server_side_apply=True, cluster_identifier=identity
    )
    storage_class = k8s.storage.v1.StorageClass(
        "gp3",
        metadata={
            "name": eks.storageClass,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        provisioner="ebs.csi.aws.com",
        parameters={"type": "gp3", "encrypted": "true", "fsType": "ext4"},
        volume_binding_mode="WaitForFirstConsumer",
        allow_volume_expansion=True,
        reclaim_policy="Retain" if config.protect else "Delete",
        opts=pulumi.ResourceOptions(provider=k8s_provider, depends_on=[ebs_addon]),
    )
    # A destroy deletes the claims (with their namespaces) before the EBS CSI add-on and the node group; the disks
    # behind them are deleted by the driver afterwards. Outside prod (whose class retains them) wait for that.
    released = (
        ()
        if config.protect
        else (
            volumes_released(
                "volumes-released",
                eks.storageClass,
                kubeconfig,
                [storage_class, ebs_addon, node_group, vpc_cni],
            ),
        )
    )

    in_cluster = pulumi.ResourceOptions(provider=k8s_provider, depends_on=[node_group, vpc_cni])
    chart, version, repo = METRICS_SERVER_CHART
    metrics_server = k8s.helm.v3.Release(
        "metrics-server",
        name="metrics-server",
        chart=chart,
        version=version,
        repository_opts={"repo": repo},
        namespace="kube-system",
        atomic=True,
        timeout=600,
        values={"replicas": 2, "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}},
        opts=in_cluster,
    )
    autoscaler: list[pulumi.Resource] = []
    if eks.clusterAutoscaler.enabled:
        autoscaler_role = irsa_role(
            "cluster-autoscaler-role", "kube-system", CLUSTER_AUTOSCALER_SERVICE_ACCOUNT
        )
        autoscaler_policy = aws.iam.RolePolicy(
            "cluster-autoscaler-policy",
            role=autoscaler_role.id,
            policy=cluster.name.apply(cluster_autoscaler_policy),
            opts=opts,
        )
        chart, version, repo = CLUSTER_AUTOSCALER_CHART
        autoscaler.append(
            k8s.helm.v3.Release(
                "cluster-autoscaler",
                name=CLUSTER_AUTOSCALER_NAME,
                chart=chart,
                version=version,
                repository_opts={"repo": repo},
                namespace=CLUSTER_AUTOSCALER_NAMESPACE,
                atomic=True,
                timeout=600,
                values=cluster_autoscaler_values(
                    cluster.name, eks.region, EKS_CLUSTER_AUTOSCALER_IMAGES[eks.version], autoscaler_role.arn
                ),
                # Its first loop lists the groups and may scale them: the role's permissions must be in place.
                opts=pulumi.ResourceOptions.merge(
                    in_cluster, pulumi.ResourceOptions(depends_on=[autoscaler_policy])
                ),
            )
        )
    # Envoy Gateway creates each Gateway's proxy Service (type LoadBalancer, hence an NLB that EKS's cloud
    # controller creates in the public subnets) in its own namespace, outside the program. A Pulumi Namespace
    # rather than Helm's `create_namespace`, because its deletion is what `pulumi destroy` waits on: the engine
    # deletes it before the node group, subnets and VPC it depends on, and the Kubernetes provider waits until
    # the namespace is gone (GET 404), which is only once the proxy Service's load-balancer-cleanup finalizer has
    # been removed, i.e. once the NLB is deleted. Without it, the NLB outlives the cluster: its network
    # interfaces and public addresses keep the subnets and the internet gateway from being deleted.
    # It also waits for every public subnet's route to the internet gateway: the cloud controller places an
    # internet-facing load balancer only in subnets whose route table routes to an igw- (isSubnetPublic), so a
    # proxy Service created before a zone's public association would get an NLB without that zone.
    envoy_namespace = k8s.core.v1.Namespace(
        "envoy-gateway-namespace",
        metadata={"name": ENVOY_GATEWAY_NAMESPACE},
        opts=pulumi.ResourceOptions.merge(in_cluster, pulumi.ResourceOptions(depends_on=public_associations)),
    )
    chart, version, repo = ENVOY_GATEWAY_CHART
    # The Gateway API and Envoy Gateway CRDs at the chart's version, applied by Pulumi before the controller and
    # upgraded with every bump (gateway-helm's own come from crds/, which Helm never upgrades: skip_crds). Their
    # provider adopts the CRDs an earlier gateway-helm install created and takes over their fields; only the
    # CRDs use it (infra/components/gateway.py envoy_gateway_crds).
    crd_provider = k8s.Provider(
        "k8s-crds",
        kubeconfig=kubeconfig,
        cluster_identifier=identity,
        enable_server_side_apply=True,
        upsert_existing_objects=True,
        enable_patch_force=True,
    )
    envoy_crds = envoy_gateway_crds(
        "envoy-gateway-crds",
        repo,
        version,
        pulumi.ResourceOptions(provider=crd_provider, depends_on=[node_group, vpc_cni]),
    )
    envoy_gateway = k8s.helm.v3.Release(
        "envoy-gateway",
        name="eg",
        chart=f"{repo}/{chart}",
        version=version,
        namespace=envoy_namespace.metadata["name"],
        atomic=True,
        timeout=600,
        skip_crds=True,
        opts=pulumi.ResourceOptions.merge(in_cluster, pulumi.ResourceOptions(depends_on=[envoy_crds])),
    )
    gateway_classes: list[pulumi.Resource] = []
    if config.tls.enabled and not config.gateway.ingress.enabled:
        # The proxy's Service: an NLB (internal per rag:gateway.loadBalancer) rather than the in-tree default,
        # a Classic ELB. Created before the GatewayClass that references it (Envoy Gateway's recommendation).
        envoy_proxy = k8s.apiextensions.CustomResource(
            "envoy-proxy",
            api_version="gateway.envoyproxy.io/v1alpha1",
            kind="EnvoyProxy",
            metadata={"name": ENVOY_PROXY_NAME, "namespace": ENVOY_GATEWAY_NAMESPACE},
            spec=envoy_proxy_spec(
                internal_load_balancer(config),
                merge_gateways=merges_gateways(config),
                replicas=envoy_proxy_replicas(config.environment),
            ),
            opts=pulumi.ResourceOptions(provider=k8s_provider, depends_on=[envoy_gateway]),
        )
        # The GatewayClass the stack's Gateway names, handed to Envoy Gateway's controller.
        gateway_classes.append(
            k8s.apiextensions.CustomResource(
                "gateway-class",
                api_version="gateway.networking.k8s.io/v1",
                kind="GatewayClass",
                metadata={"name": config.gateway.className},
                spec={
                    "controllerName": ENVOY_GATEWAY_CONTROLLER,
                    "parametersRef": {
                        "group": "gateway.envoyproxy.io",
                        "kind": "EnvoyProxy",
                        "name": ENVOY_PROXY_NAME,
                        "namespace": ENVOY_GATEWAY_NAMESPACE,
                    },
                },
                opts=pulumi.ResourceOptions(provider=k8s_provider, depends_on=[envoy_gateway, envoy_proxy]),
            )
        )

    roles: dict[str, aws.iam.Role] = {}

    def workload_identity(namespace: str, service_account: str, role: str) -> Mapping[str, pulumi.Input[str]]:
        """An IRSA role only `namespace/service_account` can assume; returns the KSA annotation."""
        if role not in roles:
            roles[role] = irsa_role(f"irsa-{role}", namespace, service_account)
        return {"eks.amazonaws.com/role-arn": roles[role].arn}

    def grant_bucket_write(role: str, bucket: pulumi.Input[str]) -> pulumi.Resource:
        """Let the `role` IRSA role list the bucket and write/read/delete its objects."""
        return aws.iam.RolePolicy(
            f"irsa-{role}-bucket",
            role=roles[role].id,
            policy=pulumi.Output.from_input(bucket).apply(bucket_policy),
            opts=opts,
        )

    token = aws.ecr.get_authorization_token_output(
        registry_id=repository.registry_id, opts=pulumi.InvokeOutputOptions(provider=aws_provider)
    )
    return ClusterTarget(
        provider_name="eks",
        k8s_provider=k8s_provider,
        kubeconfig=kubeconfig,
        registry=Registry(
            repository=repository.repository_url,
            server=repository.repository_url.apply(lambda url: url.split("/", 1)[0]),
            username=token.user_name,
            password=pulumi.Output.secret(token.password),
            cache_repository=cache_repository.repository_url,
            expires_untagged=True,
        ),
        storage_class=eks.storageClass,
        cloud_provider=aws_provider,
        region=eks.region,
        network={
            "private_subnet_ids": [subnet.id for subnet in private_subnets],
            "vpc_id": vpc.id,
            "vpc_cidr": eks.vpcCidr,
            "oidc_provider": oidc,
        },
        depends_on=(
            node_group,
            vpc_cni,
            kube_proxy,
            coredns,
            ebs_addon,
            storage_class,
            metrics_server,
            *autoscaler,
            *released,
        ),
        gateway_api=(envoy_gateway, *gateway_classes),
        # The service's pods pull from the stack's ECR repository with the node role.
        image_pull=tuple(
            p for p, arn in zip(node_policies, NODE_POLICIES, strict=True) if arn == ECR_READ_POLICY
        ),
        workload_identity=workload_identity,
        grant_bucket_write=grant_bucket_write,
        cloud="aws",
    )
