"""GKE target: network, cluster (Standard + node pool, or Autopilot), Artifact Registry and workload identity.

Created at the top level of the stack with an explicit `gcp.Provider` (project and region from `rag:cluster.gke`),
so nothing depends on ambient `gcp:*` config. The VPC is VPC-native with a private-services range so Cloud SQL and
Memorystore (managed modes) get private IPs on it. Workload identity: one Google service account per workload role
(`backup`, `service`, `registry`: the CloudNativePG instances), bound to its Kubernetes service account with
`roles/iam.workloadIdentityUser`; the component that creates the KSA puts the returned annotation on it. In prod the cluster, node pool and registry are protected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from infra.clusters import ClusterTarget, Registry, provider_stack_keys
from infra.clusters.volumes import volumes_released
from infra.components.gateway import GKE_PROXY_ONLY_CIDR, uses_proxy_only_subnet
from infra.components.image import artifact_registry_cleanup_policies, protect_existing_script
from infra.config import ConfigError, GkeCluster, StackConfig, internal_load_balancer, stack_file
from infra.guards import provider_unconfigured
from infra.naming import cloud_name

# Every API the program's Google resources call (infra/deployability.py GCP_RESOURCE_APIS says which resource type
# needs which; `make plan` fails when a resource does not wait for its API). Service Usage's "Services enabled by
# default" list (cloud.google.com/service-usage/docs/enabled-service) has neither Compute Engine, IAM nor Cloud
# Resource Manager, which project IAM members go through (terraform-provider-google resourcemanager/iam_project.go:
# cloudresourcemanager v1 getIamPolicy/setIamPolicy). The provider's Service resource waits until the API is listed
# as enabled (serviceusage waitForServiceUsageEnabledServices), so a dependency on it is enough.
APIS = (
    "compute.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "container.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "sqladmin.googleapis.com",
    "redis.googleapis.com",
    "servicenetworking.googleapis.com",
    "storage.googleapis.com",
)
WORKLOAD_ROLES = ("backup", "service", "registry")
# What a node service account needs on the project: GKE's minimum for node system tasks (logging, monitoring, the
# HPA's metrics), "Kubernetes Engine Default Node Service Account" (GKE "Configure node service accounts"), and
# reading the stack's images from Artifact Registry, which that role does not cover.
ARTIFACT_REGISTRY_READER = "roles/artifactregistry.reader"
NODE_ROLES = ("roles/container.defaultNodeServiceAccount", ARTIFACT_REGISTRY_READER)
NODE_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# Name limits of the Google APIs (pulumi-gcp 10.2.0 docstrings): a GKE cluster name is 1-40 characters, a service
# account ID 6-30 (^[a-z](?:[-a-z0-9]{4,28}[a-z0-9])$), an Artifact Registry repository ID at most 63.
CLUSTER_NAME_LIMIT = 40
ACCOUNT_ID_LIMIT = (6, 30)
REPOSITORY_ID_LIMIT = 63
# Private services access range (Cloud SQL, Memorystore PRIVATE_SERVICE_ACCESS): fixed, so egress can name it.
PRIVATE_SERVICES_CIDR = "10.100.0.0/16"
# What a destroy does to the private services connection when the API refuses to delete it (see build_gke).
PRIVATE_SERVICES_DELETION_POLICY = "REMOVE_PEERING"
# The proxy-only subnet of the regional Gateway classes (Envoy-based load balancers, internal or external).
PROXY_ONLY_CIDR = GKE_PROXY_ONLY_CIDR
# The control plane's private range (a /28 outside every other range of the network).
MASTER_CIDR = "172.16.0.0/28"
# Gateway API on GKE: the cluster's own controller and CRDs (pulumi-gcp `gateway_api_config.channel`).
GATEWAY_API_CHANNEL = "CHANNEL_STANDARD"
# Dataplane V2 (Cilium-based): enforces NetworkPolicies; the legacy datapath ignores them without Calico.
DATAPATH_PROVIDER = "ADVANCED_DATAPATH"
# The firewall rule GKE creates for a cluster with private nodes (`gke-<cluster>-<hash>-master`) lets the control plane
# reach nodes and pods on TCP 443 and 10250 only ("Adding firewall rules for specific use cases" in GKE's private
# cluster docs). An admission webhook served on another port times out, and every object it validates cannot be
# created: CloudNativePG's operator serves its webhooks on 9443 (cloudnative-pg chart 0.29.0 values.yaml
# `webhook.port: 9443`), so the `Cluster` would never be admitted. cert-manager (`webhook.securePort: 10250`) and
# kube-prometheus-stack's operator (`prometheusOperator.tls.internalPort: 10250`) chose 10250 for this reason.
CONTROL_PLANE_WEBHOOK_PORTS = (9443,)


def cluster_identity(cluster_id: pulumi.Input[str], autopilot: bool = False) -> pulumi.Output[str]:
    """The Kubernetes providers' `clusterIdentifier`: the cluster resource's id, which changes only with the cluster.

    Without it pulumi-kubernetes decides from the kubeconfig whether the provider points at another cluster, and
    replaces the provider, and with it every Kubernetes object of the stack, when the active cluster's server or
    CA changes (provider/pkg/provider/provider.go `DiffConfig`; the engine replaces each resource whose provider's
    DiffConfig asks for it, pkg/resource/deploy/step_generator.go `providerChanged`). GKE changes both on the same
    cluster: `rag:cluster.gke.privateEndpoint` switches `endpoint` between the public and the private address
    ("whether the master's internal IP address is used as the cluster endpoint"), and a credential or IP rotation
    gives the control plane a new address and CA. The replace is create-before-delete, so the `up` failed at the
    first named object with "already exists" (or at a protected one), after the cluster's own update. With the
    identifier the provider is updated in place instead, and replaced only when the identity changes (a new cluster).
    Only from the second `up` on: `DiffConfig` ignores an identifier being added, so the first `up` of a stack
    deployed without one must not move the endpoint or CA (infra/guards.py `endpoint_move_refusal` refuses a
    `privateEndpoint` switch in it; a rotation in between is not seen).
    The id is the cluster's path (project, location, name), which a same-name replacement keeps: the one such
    replacement the config can ask for, `enable_autopilot` (ForceNew), is in the identity too (and refused on a
    deployed stack by infra/guards.py)."""
    kind = "/autopilot" if autopilot else ""
    return pulumi.Output.from_input(cluster_id).apply(lambda value: f"gke:{value}{kind}")


def kubeconfig_for(name: str, endpoint: str, ca_data: str) -> str:
    """A kubeconfig that authenticates with gke-gcloud-auth-plugin (no long-lived credentials inside)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": {"server": f"https://{endpoint}", "certificate-authority-data": ca_data},
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
            "users": [
                {
                    "name": name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "gke-gcloud-auth-plugin",
                            "provideClusterInfo": True,
                            "installHint": "Install gke-gcloud-auth-plugin: gcloud components install gke-gcloud-auth-plugin",
                        }
                    },
                }
            ],
        }
    )


def maintenance_policy(gke: GkeCluster) -> dict[str, Any]:
    """`maintenance_policy` of the cluster (pulumi-gcp 10.2.0 ClusterMaintenancePolicyArgs): the recurring window
    (`recurring_window`: RFC 3339 "Zulu" start/end, RFC 5545 recurrence; GKE returns other forms in UTC, a
    permanent diff otherwise) and the exclusions, each with `end_time` or `exclusion_options.end_time_behavior`
    UNTIL_END_OF_SUPPORT (exactly one of the two). Without a policy GKE upgrades whenever its rollout reaches the
    cluster, prod's business hours included."""
    window = gke.maintenance.window
    exclusions = []
    for exclusion in gke.maintenance.exclusions:
        options: dict[str, str] = {"scope": exclusion.scope}
        item: dict[str, Any] = {"exclusion_name": exclusion.name, "start_time": exclusion.start}
        if exclusion.untilEndOfSupport:
            options["end_time_behavior"] = "UNTIL_END_OF_SUPPORT"
        else:
            item["end_time"] = exclusion.end
        exclusions.append({**item, "exclusion_options": options})
    return {
        "recurring_window": {
            "start_time": window.start,
            "end_time": window.end,
            "recurrence": window.recurrence,
        },
        "maintenance_exclusions": exclusions,
    }


#: Maintenance exclusion scopes that hold the node pools' minor too (GKE API MaintenanceExclusionOptions.Scope:
#: NO_MINOR_UPGRADES "excludes all minor upgrades for the cluster, only patches are allowed", control plane and
#: nodes alike; NO_MINOR_OR_NODE_UPGRADES also excludes every node pool upgrade). Exclusions only stop *automatic*
#: upgrades ("Maintenance windows and exclusions" concepts page): raising minMasterVersion upgrades the control plane
#: by hand, and the node pools would stay a minor behind, since their auto-upgrade is what the exclusion holds.
NODE_MINOR_HOLDING_SCOPES = frozenset({"NO_MINOR_UPGRADES", "NO_MINOR_OR_NODE_UPGRADES"})
MIN_MASTER_VERSION_KEY = "rag:cluster.gke.minMasterVersion"
#: How the Container API answers on a project where it is not enabled yet (a first `up`: the program enables it):
#: `googleapi: Error 403: Kubernetes Engine API has not been used in project N before or it is disabled ...
#: SERVICE_DISABLED`. No cluster can exist there.
CONTAINER_API_DISABLED = re.compile(r"SERVICE_DISABLED|has not been used in project .* or it is disabled")


def nodes_follow_master(gke: GkeCluster) -> bool:
    """Whether the node pool is upgraded with the control plane by the stack (its `version` is the cluster's
    `master_version`): when an exclusion holds the nodes' minor, so their auto-upgrade never will."""
    return any(exclusion.scope in NODE_MINOR_HOLDING_SCOPES for exclusion in gke.maintenance.exclusions)


def _gke_minor(version: str) -> int:
    return int(version.split(".")[1])


def check_master_step(wanted: str, running: str | None, file: str) -> None:
    """Refuse (ConfigError naming rag:cluster.gke.minMasterVersion and the stack file) a `minMasterVersion` more
    than one minor above the control plane's `running` version: GKE upgrades a control plane one minor at a time
    (and refuses a skip in the update). Lower or equal is a floor already met (the provider upgrades the master
    only when its version is below the minimum); `running` None: no cluster yet, created at `wanted`."""
    if not wanted or running is None:
        return
    step = _gke_minor(wanted) - _gke_minor(running)
    if step > 1:
        raise ConfigError(
            MIN_MASTER_VERSION_KEY,
            file,
            f"the cluster's control plane runs {running}, and GKE upgrades a control plane one minor at a time "
            f"({wanted} is {step} minors ahead): set 1.{_gke_minor(running) + 1}, `ragops up`, and raise it again "
            "after that upgrade (docs/infra.md, gke.minMasterVersion)",
        )


#: No Google credentials, or ones Google rejects (golang.org/x/oauth2/google: "could not find default credentials";
#: an expired or revoked user login: "oauth2: ... invalid_grant", "Reauthentication is needed"; the API: 401
#: "Request had invalid authentication credentials"). Sent to fix IAM permissions before.
GOOGLE_BAD_CREDENTIALS = re.compile(
    r"could not find default credentials|invalid_grant|invalid_rapt|reauthentication is needed|"
    r"invalid authentication credentials|oauth2: cannot fetch token",
    re.IGNORECASE,
)


def running_master_version(name: str, gke: GkeCluster, provider: gcp.Provider, file: str) -> str | None:
    """The version the control plane of GKE cluster `name` runs (`master_version` of the container cluster data
    source, currentMasterVersion), read with the stack's own `provider`; None when there is no such cluster yet:
    the data source's "<projects/P/locations/L/clusters/N> not found" error (terraform-provider-google
    datasourceContainerClusterRead), or a Container API not enabled yet; also in a preview whose `provider` is not
    configured yet (warned: infra/guards.py provider_unconfigured). A blocking invoke made before any cloud
    resource is declared (as on EKS: infra/clusters/eks.py running_version), so a refused step changes nothing.
    Any other failure is refused too: without the read the step cannot be checked."""
    try:
        found = gcp.container.get_cluster(
            name=name, location=gke.region, project=gke.project, opts=pulumi.InvokeOptions(provider=provider)
        )
    except Exception as exc:
        text = str(exc)
        if f"clusters/{name} not found" in text or CONTAINER_API_DISABLED.search(text):
            return None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if GOOGLE_BAD_CREDENTIALS.search(text):
            cause = next(line for line in lines if GOOGLE_BAD_CREDENTIALS.search(line))
            raise ConfigError(
                MIN_MASTER_VERSION_KEY,
                file,
                f"could not read the version GKE cluster {name} runs: the Google credentials in the environment are "
                f"missing, expired or rejected ({cause}); run `gcloud auth application-default login` (or set "
                "GOOGLE_APPLICATION_CREDENTIALS) and run again (docs/infra.md, gke.minMasterVersion)",
            ) from exc
        raise ConfigError(
            MIN_MASTER_VERSION_KEY,
            file,
            f"could not read the version GKE cluster {name} runs ({text.strip().splitlines()[0]}), so the "
            "one-minor step cannot be checked: the deploying identity needs container.clusters.get "
            "(docs/infra.md, gke.minMasterVersion)",
        ) from exc
    # A provider not configured yet (an Output among its inputs, in a preview) answers with nothing: warned and not
    # checked in a preview, refused in an update; never read as "no cluster" (infra/guards.py).
    if provider_unconfigured(
        found, "gcp", MIN_MASTER_VERSION_KEY, file, f"the version GKE cluster {name} runs"
    ):
        return None
    return found.master_version or None


def check_gcp_keys(gke: GkeCluster, keys: Mapping[str, Any], file: str) -> None:
    """Refuse `gcp:*` stack keys the explicit Google provider would not read (`keys`: bare name -> value).

    `gcp:project` / `gcp:region` equal to rag:cluster.gke.project / region are harmless; a different value is what
    the reader of the stack file would believe is deployed, so it is refused, as is any other `gcp:*` key
    (credentials come from the environment: ADC or GOOGLE_APPLICATION_CREDENTIALS)."""
    sources = {
        "project": ("rag:cluster.gke.project", gke.project),
        "region": ("rag:cluster.gke.region", gke.region),
    }
    for bare, value in sorted(keys.items()):
        key = f"gcp:{bare}"
        if bare in sources:
            source, wanted = sources[bare]
            if value != wanted:
                raise ConfigError(
                    key,
                    file,
                    f"{value} differs from {source} ({wanted}), the only {bare} the stack's Google provider uses: "
                    f"remove {key} (or make it equal)",
                )
            continue
        raise ConfigError(
            key,
            file,
            "not read: the stack's Google provider is explicit (infra/clusters/gke.py) and takes its project and "
            "region from rag:cluster.gke; credentials come from the environment (gcloud auth "
            "application-default login, GOOGLE_APPLICATION_CREDENTIALS). Remove the key",
        )


def build_gke(config: StackConfig) -> ClusterTarget:
    """The GKE cluster target for `config` (provider `gke`)."""
    gke = config.cluster.gke
    stack = pulumi.get_stack()
    cluster_name = cloud_name(stack, limit=CLUSTER_NAME_LIMIT)
    low, high = ACCOUNT_ID_LIMIT
    protect = config.protect
    check_gcp_keys(gke, provider_stack_keys("gcp"), stack_file(stack))
    gcp_provider = gcp.Provider("gcp", project=gke.project, region=gke.region)
    if gke.minMasterVersion:
        # Checked against what runs before anything else is declared: a refused step fails the preview or `up`
        # with the reason and changes nothing, instead of an `up` failing at the cluster after the rest moved.
        file = stack_file(stack)
        check_master_step(
            gke.minMasterVersion, running_master_version(cluster_name, gke, gcp_provider, file), file
        )
    opts = pulumi.ResourceOptions(provider=gcp_provider)
    kept = pulumi.ResourceOptions(provider=gcp_provider, protect=protect)

    services = [
        gcp.projects.Service(f"api-{api.split('.')[0]}", service=api, disable_on_destroy=False, opts=opts)
        for api in APIS
    ]
    # Every Google resource below waits for the APIs: on a fresh project the service accounts, the project IAM
    # members and the network would otherwise be created while their APIs are still being enabled (403
    # SERVICE_DISABLED, a half-done first `up`).
    after_apis = pulumi.ResourceOptions(depends_on=services)
    opts = pulumi.ResourceOptions.merge(opts, after_apis)
    kept = pulumi.ResourceOptions.merge(kept, after_apis)

    network = gcp.compute.Network("network", auto_create_subnetworks=False, opts=opts)
    subnet = gcp.compute.Subnetwork(
        "subnet",
        network=network.id,
        region=gke.region,
        ip_cidr_range="10.10.0.0/20",
        private_ip_google_access=True,
        secondary_ip_ranges=[
            {"range_name": "pods", "ip_cidr_range": "10.20.0.0/14"},
            {"range_name": "services", "ip_cidr_range": "10.24.0.0/20"},
        ],
        opts=opts,
    )
    gateway_entry = config.tls.enabled and not config.gateway.ingress.enabled
    proxy_only: gcp.compute.Subnetwork | None = None
    if internal_load_balancer(config) or (gateway_entry and uses_proxy_only_subnet(config.gateway.className)):
        # The regional classes (gke-l7-rilb, gke-l7-regional-external-managed) and internal Ingress run their Envoy
        # proxies in a proxy-only subnet of the region; without one the Gateway never gets an address.
        proxy_only = gcp.compute.Subnetwork(
            "proxy-only-subnet",
            network=network.id,
            region=gke.region,
            ip_cidr_range=PROXY_ONLY_CIDR,
            purpose="REGIONAL_MANAGED_PROXY",
            role="ACTIVE",
            opts=opts,
        )
    # Private services access: Cloud SQL and Memorystore get addresses in this range, reachable from the pods.
    private_range = gcp.compute.GlobalAddress(
        "private-services-range",
        purpose="VPC_PEERING",
        address_type="INTERNAL",
        address=PRIVATE_SERVICES_CIDR.split("/")[0],
        prefix_length=int(PRIVATE_SERVICES_CIDR.split("/")[1]),
        network=network.id,
        opts=opts,
    )
    peering = gcp.servicenetworking.Connection(
        "private-services",
        network=network.id,
        service="servicenetworking.googleapis.com",
        reserved_peering_ranges=[private_range.name],
        # A destroy deletes Cloud SQL/Memorystore first, but the API still refuses deleteConnection while the
        # producer holds their resources (Cloud SQL keeps them to allow a restore), and the peering then blocks
        # the network's delete. REMOVE_PEERING removes the peering when deleteConnection is refused (pulumi-gcp
        # 10.2.0 docstring; ABANDON would leave the peering and the network still blocked). Upstream keeps it for
        # teardown once no instance uses the connection: here only a destroy (instances first) or a replaced
        # network deletes it. A provider-side field: an in-place update of the state, no replacement; an existing
        # stack records it at its next `up`, before which a destroy still uses DELETE.
        deletion_policy=PRIVATE_SERVICES_DELETION_POLICY,
        opts=opts,
    )

    # Private nodes have no external address: Cloud NAT lets them pull public images (Docker Hub, ghcr.io).
    router = gcp.compute.Router("nat-router", network=network.id, region=gke.region, opts=opts)
    nat = gcp.compute.RouterNat(
        "nat",
        router=router.name,
        region=gke.region,
        nat_ip_allocate_option="AUTO_ONLY",
        source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
        log_config={"enable": True, "filter": "ERRORS_ONLY"},
        opts=opts,
    )

    # The control plane (MASTER_CIDR) calls admission webhooks on the pods' own ports (see CONTROL_PLANE_WEBHOOK_PORTS).
    # No target: every instance of this network, which holds only this cluster's nodes (pod IPs are their aliases).
    webhooks = gcp.compute.Firewall(
        "control-plane-webhooks",
        network=network.id,
        direction="INGRESS",
        source_ranges=[MASTER_CIDR],
        allows=[{"protocol": "tcp", "ports": [str(port) for port in CONTROL_PLANE_WEBHOOK_PORTS]}],
        description="GKE control plane to admission webhooks on ports other than 443/10250 (CloudNativePG)",
        opts=opts,
    )

    workload_pool = f"{gke.project}.svc.id.goog"
    common = {
        "location": gke.region,
        "network": network.id,
        "subnetwork": subnet.id,
        "release_channel": {"channel": gke.releaseChannel},
        # Upgrades come inside the window and outside the exclusions; the minimum version is a floor the channel
        # upgrades past (GKE keeps only versions of the channel: one it does not offer is refused at create).
        "maintenance_policy": maintenance_policy(gke),
        **({"min_master_version": gke.minMasterVersion} if gke.minMasterVersion else {}),
        "deletion_protection": gke.deletionProtection,
        "ip_allocation_policy": {
            "cluster_secondary_range_name": "pods",
            "services_secondary_range_name": "services",
        },
        "gateway_api_config": {"channel": GATEWAY_API_CHANNEL},
        "datapath_provider": DATAPATH_PROVIDER,
        # Nodes never get external IPs; the endpoint is private unless rag:cluster.gke.privateEndpoint is false.
        "private_cluster_config": {
            "enable_private_nodes": True,
            "enable_private_endpoint": gke.privateEndpoint,
            "master_ipv4_cidr_block": MASTER_CIDR,
            "master_global_access_config": {"enabled": True},
        },
        "master_authorized_networks_config": {
            "cidr_blocks": [
                {"cidr_block": cidr, "display_name": f"deployers-{index}"}
                for index, cidr in enumerate(gke.masterAuthorizedNetworks)
            ],
            # Google Cloud's public ranges (other customers' VMs included) may not reach the endpoint.
            "gcp_public_cidrs_access_enabled": False,
        },
    }
    # The nodes' own identity (Standard pool and Autopilot alike): without one, GKE runs them as the Compute Engine
    # default service account, which organisations created after 2024-05-03 no longer grant anything
    # (iam.automaticIamGrantsForDefaultServiceAccounts): no system logs/metrics, and no pulls from the stack's
    # Artifact Registry repository (ImagePullBackOff).
    node_sa = gcp.serviceaccount.Account(
        "node-sa",
        account_id=cloud_name(stack, "nodes", limit=high, minimum=low),
        display_name=f"GKE nodes of {cluster_name}",
        opts=opts,
    )
    node_member = node_sa.email.apply(lambda email: f"serviceAccount:{email}")
    node_roles = [
        gcp.projects.IAMMember(
            f"node-sa-{role.split('/')[1]}",
            project=gke.project,
            role=role,
            member=node_member,
            opts=opts,
        )
        for role in NODE_ROLES
    ]
    # Nodes boot with their roles in place (a node without them starts without logging and cannot pull yet).
    after_node_roles = pulumi.ResourceOptions(depends_on=node_roles)
    depends: list[pulumi.Resource] = []
    if gke.autopilot:
        cluster = gcp.container.Cluster(
            "gke",
            name=cluster_name,
            enable_autopilot=True,
            # Autopilot's nodes take their identity from the auto-provisioning defaults (pulumi-gcp: "the
            # Google Cloud Platform Service Account to be used by the node VMs created by GKE Autopilot or NAP").
            cluster_autoscaling={
                "auto_provisioning_defaults": {"service_account": node_sa.email, "oauth_scopes": NODE_SCOPES}
            },
            opts=pulumi.ResourceOptions.merge(kept, after_node_roles),
            **common,
        )
    else:
        cluster = gcp.container.Cluster(
            "gke",
            name=cluster_name,
            remove_default_node_pool=True,
            initial_node_count=1,
            # GKE creates the default pool (deleted right after) with this identity; without it, with the Compute
            # Engine default account, which hardened projects delete and the deploy identity cannot act as.
            node_config={"service_account": node_sa.email, "oauth_scopes": NODE_SCOPES},
            workload_identity_config={"workload_pool": workload_pool},
            # node_config is ForceNew on the cluster (terraform-provider-google node_config.go): an existing
            # cluster, created without it, keeps its state instead of being replaced.
            opts=pulumi.ResourceOptions.merge(
                kept, pulumi.ResourceOptions(depends_on=node_roles, ignore_changes=["nodeConfig"])
            ),
            **common,
        )
        pool = gke.nodePool
        node_pool = gcp.container.NodePool(
            "gke-nodes",
            cluster=cluster.name,
            location=gke.region,
            autoscaling={"min_node_count": pool.minNodes, "max_node_count": pool.maxNodes},
            management={"auto_repair": True, "auto_upgrade": True},
            # Under an exclusion that holds the nodes' minor, the nodes follow the control plane's version (never
            # newer than it, as GKE requires): raising minMasterVersion upgrades the master, then the pool, in one
            # `up`. Otherwise auto-upgrade moves them after the master, and a `version` here would fight it.
            **({"version": cluster.master_version} if nodes_follow_master(gke) else {}),
            node_config={
                "machine_type": pool.machineType,
                "disk_size_gb": pool.diskSizeGb,
                "spot": pool.spot,
                "service_account": node_sa.email,
                "oauth_scopes": NODE_SCOPES,
                "workload_metadata_config": {"mode": "GKE_METADATA"},
            },
            # Private nodes pull public images only through Cloud NAT: a failed NAT fails the `up` here, not
            # every release on ImagePullBackOff after its timeout.
            opts=pulumi.ResourceOptions.merge(kept, pulumi.ResourceOptions(depends_on=[*node_roles, nat])),
        )
        depends.append(node_pool)

    registry = gcp.artifactregistry.Repository(
        "registry",
        # Per stack: two stacks in one project (PR stacks next to dev) must not share a repository.
        repository_id=cloud_name(stack, limit=REPOSITORY_ID_LIMIT),
        location=gke.region,
        format="DOCKER",
        description=f"RAG service images ({stack})",
        # What the stack runs, its rollback target and promoted images stay; superseded builds and what nothing
        # deployed go (infra/components/image.py artifact_registry_cleanup_policies, rag:cluster.imageRetention).
        # Not a dry run: the policies act.
        cleanup_policies=artifact_registry_cleanup_policies(
            config.cluster.imageRetention.neverDeployedDays, config.cluster.imageRetention.supersededBuildDays
        ),
        cleanup_policy_dry_run=False,
        opts=kept,
    )

    # Images deployed before each index's manifests got their own protected tags: tag them once (the cleanup
    # policies act about a day after they are set, long after this runs).
    host = f"{gke.region}-docker.pkg.dev"
    image_repository = registry.repository_id.apply(lambda repo: f"{host}/{gke.project}/{repo}/rag-service")
    command.local.Command("registry-protect-existing", create=image_repository.apply(protect_existing_script))

    identities: dict[str, gcp.serviceaccount.Account] = {
        role: gcp.serviceaccount.Account(
            f"wi-{role}",
            account_id=cloud_name(stack, role, limit=high, minimum=low),
            display_name=f"rag {stack} {role} workload",
            opts=opts,
        )
        for role in WORKLOAD_ROLES
    }

    def workload_identity(namespace: str, service_account: str, role: str) -> Mapping[str, pulumi.Input[str]]:
        """Bind KSA `namespace/service_account` to the `role` GSA; returns the KSA annotation."""
        account = identities[role]
        gcp.serviceaccount.IAMMember(
            f"wi-{role}-binding",
            service_account_id=account.name,
            role="roles/iam.workloadIdentityUser",
            member=f"serviceAccount:{workload_pool}[{namespace}/{service_account}]",
            # The workload identity pool PROJECT.svc.id.goog exists only once a cluster enables it: IAM refuses
            # a member in a pool that does not exist yet, and the name carries no dependency on the cluster.
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[cluster])),
        )
        return {"iam.gke.io/gcp-service-account": account.email}

    def grant_bucket_write(role: str, bucket: pulumi.Input[str]) -> pulumi.Resource:
        """Let the `role` Google service account manage the bucket's objects."""
        return gcp.storage.BucketIAMMember(
            f"wi-{role}-bucket",
            bucket=bucket,
            role="roles/storage.objectAdmin",
            member=identities[role].email.apply(lambda email: f"serviceAccount:{email}"),
            opts=opts,
        )

    kubeconfig = pulumi.Output.secret(
        pulumi.Output.all(cluster.name, cluster.endpoint, cluster.master_auth).apply(
            lambda parts: kubeconfig_for(parts[0], parts[1], parts[2]["cluster_ca_certificate"])
        )
    )
    k8s_provider = k8s.Provider(
        "k8s",
        kubeconfig=kubeconfig,
        enable_server_side_apply=True,
        cluster_identifier=cluster_identity(cluster.id, gke.autopilot),
    )
    # A destroy deletes the claims before the node pool and the cluster; GKE's PD CSI driver deletes the disks
    # behind them afterwards (infra/clusters/volumes.py). Not in prod: its cluster is protected from deletion.
    released = (
        ()
        if protect
        else (
            volumes_released(
                "volumes-released", gke.storageClass, kubeconfig, [*(depends or [cluster]), nat]
            ),
        )
    )
    token = gcp.organizations.get_client_config_output(opts=pulumi.InvokeOutputOptions(provider=gcp_provider))
    return ClusterTarget(
        provider_name="gke",
        k8s_provider=k8s_provider,
        kubeconfig=kubeconfig,
        registry=Registry(
            repository=image_repository,
            server=pulumi.Output.from_input(host),
            username=pulumi.Output.from_input("oauth2accesstoken"),
            password=pulumi.Output.secret(token.access_token),
            expires_untagged=True,
        ),
        storage_class=gke.storageClass,
        cloud_provider=gcp_provider,
        region=gke.region,
        network={
            "network_id": network.id,
            "private_services": peering,
            "private_services_cidr": PRIVATE_SERVICES_CIDR,
            "project": gke.project,
        },
        # Workloads wait for the nodes (the cluster itself on Autopilot), the webhooks' firewall rule and Cloud NAT
        # (Autopilot's nodes come with the first pods).
        depends_on=(*(depends or [cluster]), webhooks, nat, *released),
        # The service's pods pull from the stack's Artifact Registry repository as the node account.
        image_pull=tuple(
            grant
            for grant, role in zip(node_roles, NODE_ROLES, strict=True)
            if role == ARTIFACT_REGISTRY_READER
        ),
        # GKE installs the Gateway API CRDs and runs the controller of its gke-l7-* classes itself. A regional class's
        # Gateway also waits for the proxy-only subnet, so a destroy deletes the Gateway (and the load balancer GKE
        # made for it) before the subnet, which cannot be deleted while a load balancer's proxies use it.
        gateway_api=(cluster,) if proxy_only is None else (cluster, proxy_only),
        workload_identity=workload_identity,
        grant_bucket_write=grant_bucket_write,
        cloud="gcp",
    )
