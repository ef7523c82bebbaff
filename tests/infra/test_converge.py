"""A first `pulumi up` converges: what each resource needs exists before it is created (issue 8).

These tests read the dependency graph the engine would see (explicit `depends_on` plus input dependencies, as
recorded by `infra.offline`) and assert the orderings a real cluster and cloud demand: workloads after what they
read, custom resources after what installs their CRDs, cloud bindings after the cluster that creates their pool.
"""

from __future__ import annotations

import json
from functools import cache

from infra.offline import RecordedResource, StackRun
from tests.infra.conftest import run


def closure(result: StackRun, resource: RecordedResource) -> set[str]:
    """URNs `resource` transitively waits for (depends_on edges; a component stands for all its children)."""
    by_urn = {r.urn: r for r in result.resources}
    children: dict[str, list[str]] = {}
    for r in result.resources:
        if r.parent is not None:
            children.setdefault(r.parent, []).append(r.urn)

    @cache
    def expand(urn: str) -> frozenset[str]:
        # Depending on a component means depending on every resource under it.
        out = {urn}
        for child in children.get(urn, ()):
            out |= expand(child)
        return frozenset(out)

    seen: set[str] = set()
    stack = list(resource.depends_on)
    while stack:
        urn = stack.pop()
        for dep in expand(urn):
            if dep not in seen:
                seen.add(dep)
                stack.extend(by_urn[dep].depends_on if dep in by_urn else ())
    return seen


def waits_for(result: StackRun, resource: RecordedResource, other: RecordedResource) -> bool:
    return other.urn in closure(result, resource)


def test_service_workloads_wait_for_what_they_read_and_the_managed_stores() -> None:
    # prod on EKS: RDS and ElastiCache take 15-30 minutes; the Deployments' rollout await is 10.
    result = run("prod")
    api, worker = result.by_name("rag-api"), result.by_name("rag-worker")
    for needed in ("rag-secrets", "rag-config", "rag-sa", "postgres-instance", "redis-replication-group"):
        assert waits_for(result, api, result.by_name(needed)), needed
        assert waits_for(result, worker, result.by_name(needed)), needed
    assert waits_for(result, api, result.by_name("qdrant-statefulset"))


def test_cloud_sql_clients_wait_for_the_database_user() -> None:
    result = run("prod", "gke")
    api = result.by_name("rag-api")
    for needed in ("postgres-instance", "postgres-database", "postgres-user", "redis-instance"):
        assert waits_for(result, api, result.by_name(needed)), needed


def test_in_cluster_stores_wait_for_their_secrets() -> None:
    result = run("staging")
    assert waits_for(result, result.by_name("redis-statefulset"), result.by_name("redis-password"))
    assert waits_for(result, result.by_name("qdrant-statefulset"), result.by_name("qdrant-api-key"))
    assert waits_for(result, result.by_name("rag-api"), result.by_name("postgres-cluster"))


def test_the_backup_job_waits_for_its_script_account_and_qdrant_secret() -> None:
    result = run("prod")
    cronjob = result.by_name("qdrant-backups-cronjob")
    for needed in ("qdrant-backups-script", "qdrant-backups-sa", "qdrant-api-key"):
        assert waits_for(result, cronjob, result.by_name(needed)), needed


def test_workload_identity_bindings_wait_for_the_cluster_that_creates_the_pool() -> None:
    result = run("staging")
    cluster = result.by_name("gke")
    for binding in result.of_type("gcp:serviceaccount/iAMMember:IAMMember"):
        assert waits_for(result, binding, cluster), binding.name


# --- APIs before their users -------------------------------------------------------------------------------------

GATEWAY_KINDS = (
    "kubernetes:gateway.networking.k8s.io/v1:Gateway",
    "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
)


def test_eks_installs_a_gateway_controller_and_its_class_before_the_gateway() -> None:
    for stack in ("prod", "staging"):
        result = run(stack, "eks")
        release = result.by_name("envoy-gateway")
        assert release.inputs["chart"] == "oci://docker.io/envoyproxy/gateway-helm"
        assert release.inputs["version"] == "v1.9.0"
        gateway_class = result.by_name("gateway-class")
        gateway = result.by_name("gateway-gateway")
        assert gateway_class.inputs["metadata"]["name"] == gateway.inputs["spec"]["gatewayClassName"]
        assert (
            gateway_class.inputs["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
        )
        assert waits_for(result, gateway_class, release)
        for kind in GATEWAY_KINDS:
            for resource in result.of_type(kind):
                assert waits_for(result, resource, gateway_class), resource.name
        # cert-manager's Gateway API support needs the CRDs when it starts.
        assert waits_for(result, result.by_name("gateway-cert-manager"), release)


def test_gke_switches_on_its_gateway_api_before_the_gateway_and_cert_manager() -> None:
    for stack in ("staging", "prod"):
        result = run(stack, "gke")
        cluster = result.by_name("gke")
        assert cluster.inputs["gatewayApiConfig"] == {"channel": "CHANNEL_STANDARD"}
        for name in (
            "gateway-gateway",
            "gateway-route",
            "gateway-cert-manager",
            "gateway-health-check-policy",
        ):
            assert waits_for(result, result.by_name(name), cluster), name


def test_cert_manager_gateway_api_support_follows_the_entry() -> None:
    gateway = run("dev").by_name("gateway-cert-manager").inputs["values"]
    assert gateway["config"]["enableGatewayAPI"] is True
    ingress = run(
        "dev", gateway={"className": "envoy-gateway", "ingress": {"enabled": True, "className": "nginx"}}
    )
    assert "config" not in ingress.by_name("gateway-cert-manager").inputs["values"]


def test_custom_resources_wait_for_what_installs_their_crds() -> None:
    providers = {
        "cert-manager.io": "gateway-cert-manager",
        "monitoring.coreos.com": "monitoring-stack",
        "postgresql.cnpg.io": "postgres-operator",
    }
    for stack, target in (("staging", "gke"), ("staging", "eks"), ("dev", "existing")):
        result = run(stack, target)
        for resource in result.resources:
            group = resource.type.split(":")[1].split("/")[0]
            if group in providers:
                provider = result.by_name(providers[group])
                assert waits_for(result, resource, provider), (stack, target, resource.name)


# --- what the cluster enforces -----------------------------------------------------------------------------------


def test_eks_enforces_network_policies_and_serves_the_metrics_api() -> None:
    result = run("prod")
    addon = result.by_name("vpc-cni")
    assert addon.inputs["addonName"] == "vpc-cni"
    assert json.loads(addon.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    # The add-on takes over after the nodes (AWS's upgrade order), and nothing of the service runs before it.
    assert waits_for(result, addon, result.by_name("eks-nodes"))
    for workload in ("rag-api", "rag-worker", "qdrant-statefulset", "metrics-server"):
        assert waits_for(result, result.by_name(workload), addon), workload
    assert result.by_name("metrics-server").inputs["chart"] == "metrics-server"
    assert waits_for(result, result.by_name("rag-hpa"), result.by_name("metrics-server"))


def test_gke_enforces_network_policies_with_dataplane_v2() -> None:
    for stack in ("staging", "prod"):
        assert run(stack, "gke").by_name("gke").inputs["datapathProvider"] == "ADVANCED_DATAPATH"


def test_kube_prometheus_stack_does_not_scrape_managed_control_planes() -> None:
    values = run("prod").by_name("monitoring-stack").inputs["values"]
    for component in ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy"):
        assert values[component] == {"enabled": False}, component
    assert not any(values["defaultRules"]["rules"].values())


# --- security defaults -------------------------------------------------------------------------------------------


def test_prod_clusters_are_private_by_default() -> None:
    vpc = run("prod").by_name("eks").inputs["vpcConfig"]
    assert vpc["endpointPublicAccess"] is False
    assert vpc["endpointPrivateAccess"] is True
    gke = run("prod", "gke").by_name("gke").inputs
    assert gke["privateClusterConfig"]["enablePrivateNodes"] is True
    assert gke["privateClusterConfig"]["enablePrivateEndpoint"] is True
    assert gke["masterAuthorizedNetworksConfig"]["gcpPublicCidrsAccessEnabled"] is False
    # Private nodes still pull public images through Cloud NAT.
    assert (
        run("prod", "gke").by_name("nat").inputs["sourceSubnetworkIpRangesToNat"]
        == "ALL_SUBNETWORKS_ALL_IP_RANGES"
    )


def test_opening_an_endpoint_takes_the_ranges_it_opens_to() -> None:
    vpc = run("staging", "eks").by_name("eks").inputs["vpcConfig"]
    assert vpc["endpointPublicAccess"] is True
    assert vpc["publicAccessCidrs"] == ["0.0.0.0/0"]
    opened = run(
        "prod", cluster={"eks": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}}
    )
    assert opened.by_name("eks").inputs["vpcConfig"]["publicAccessCidrs"] == ["203.0.113.0/24"]
    gke = run("staging").by_name("gke").inputs
    assert gke["privateClusterConfig"]["enablePrivateEndpoint"] is False
    assert gke["masterAuthorizedNetworksConfig"]["cidrBlocks"] == [
        {"cidrBlock": "0.0.0.0/0", "displayName": "deployers-0"}
    ]


# --- values cloud APIs accept and keep -------------------------------------------------------------------------


def test_the_build_cache_goes_to_a_repository_that_takes_overwrites() -> None:
    result = run("dev", "eks")  # a building stack (staging/prod deploy promoted digests)
    image = result.by_name("service-image-image").inputs
    cache = result.by_name("registry-cache").inputs
    assert cache["imageTagMutability"] == "MUTABLE"
    assert result.by_name("registry").inputs["imageTagMutability"] == "IMMUTABLE"
    (cache_to,) = image["cacheTo"]
    assert cache_to["registry"]["ref"].split("/")[-1] == f"{cache['name']}:buildcache"
    assert cache_to["registry"]["imageManifest"] is True
    assert cache_to["registry"]["ociMediaTypes"] is True


def test_managed_engine_versions_follow_the_config_and_do_not_fight_minor_upgrades() -> None:
    result = run("prod")
    assert result.by_name("postgres-instance").inputs["engineVersion"] == "17"
    assert result.by_name("redis-replication-group").inputs["engineVersion"] == "8.1"
    older = run("prod", postgres={"version": "16"}, redis={"version": "8.0.2"})
    assert older.by_name("postgres-instance").inputs["engineVersion"] == "16"
    assert older.by_name("redis-replication-group").inputs["engineVersion"] == "8.0"


# --- config that reaches the system ----------------------------------------------------------------------------


def config_map(result: StackRun) -> dict:
    return result.by_name("rag-config").inputs["data"]


def test_qdrant_shard_number_reaches_the_service() -> None:
    assert config_map(run("prod"))["QDRANT_SHARD_NUMBER"] == "6"
    assert config_map(run("staging"))["QDRANT_SHARD_NUMBER"] == "3"
    assert config_map(run("dev"))["QDRANT_SHARD_NUMBER"] == "1"


def test_pdb_settings_reach_the_disruption_budgets() -> None:
    prod = run("prod")
    assert prod.by_name("rag-pdb").inputs["spec"]["minAvailable"] == 2
    assert prod.by_name("qdrant-pdb")
    off = run("prod", service={"pdb": {"enabled": False}}, qdrant={"pdb": {"enabled": False}})
    names = {r.name for r in off.resources}
    assert not names & {"rag-pdb", "rag-worker-pdb", "qdrant-pdb"}


# --- operations at the declared sizes --------------------------------------------------------------------------


def test_qdrant_snapshot_scratch_holds_a_node_and_takes_its_configured_class() -> None:
    result = run("prod", qdrant={"snapshotsStorage": {"storageClass": "gp3-snapshots"}})
    pod = result.by_name("qdrant-statefulset").inputs["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "snapshots")
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    # 2 x qdrant.storage.size (100Gi) in Pulumi.prod.yaml: a restore unpacks the uploaded snapshot next to it.
    assert claim["resources"]["requests"]["storage"] == "200Gi"
    assert claim["storageClassName"] == "gp3-snapshots"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["QDRANT__STORAGE__TEMP_PATH"].startswith("/qdrant/snapshots/")


def test_no_snapshot_scratch_volume_without_backups_and_twice_the_data_by_default_with_them() -> None:
    # O12: PR stacks and dev (backups off) got a 20Gi volume per pod, prod a 200Gi one per node whatever backups did.
    for stack, target in (("dev", "existing"), ("prod", "existing")):
        pod = run(stack, target).by_name("qdrant-statefulset").inputs["spec"]["template"]["spec"]
        assert "snapshots" not in [v["name"] for v in pod["volumes"]], stack
    staging = run("staging", "eks").by_name("qdrant-statefulset").inputs["spec"]["template"]["spec"]
    volume = next(v for v in staging["volumes"] if v["name"] == "snapshots")
    # Pulumi.staging.yaml no longer names a size: 2 x its qdrant.storage.size (20Gi).
    assert volume["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "40Gi"
    grown = run("staging", "eks", qdrant={"storage": {"size": "35Gi"}})
    pod = grown.by_name("qdrant-statefulset").inputs["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "snapshots")
    assert volume["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "70Gi"


def test_the_restore_job_is_declared_with_scratch_for_a_whole_node() -> None:
    result = run("prod")
    restore = result.by_name("qdrant-backups-restore").inputs["spec"]
    assert restore["suspend"] is True
    pod = restore["jobTemplate"]["spec"]["template"]["spec"]
    scratch = next(v for v in pod["volumes"] if v["name"] == "scratch")
    assert scratch["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert waits_for(
        result, result.by_name("qdrant-backups-restore"), result.by_name("qdrant-backups-script")
    )
