"""Cluster targets: existing kubeconfig/context, GKE (Standard or Autopilot) and EKS, as recorded under mocks."""

from __future__ import annotations

import ipaddress
import json

import pytest

from infra.clusters.eks import irsa_trust_policy, subnet_cidrs
from infra.clusters.eks import kubeconfig_for as eks_kubeconfig
from infra.clusters.gke import kubeconfig_for as gke_kubeconfig
from infra.config import ConfigError
from infra.offline import run_stack
from tests.infra.conftest import run


def test_existing_cluster_provider_uses_the_configured_context_and_kubeconfig() -> None:
    result = run("dev")
    provider = result.by_name("k8s")
    assert provider.type == "pulumi:providers:kubernetes"
    assert provider.inputs["context"] == "kind-rag"
    assert "kubeconfig" not in provider.inputs  # empty config: the ambient $KUBECONFIG / ~/.kube/config
    inline = run("dev", cluster={"existing": {"kubeconfig": "apiVersion: v1\nkind: Config\n"}})
    provider = inline.by_name("k8s")
    assert provider.inputs["kubeconfig"].startswith("apiVersion: v1")
    assert "kubeconfig" in provider.secret_keys
    assert "kubeconfig" in inline.secret_outputs
    assert not [r for r in result.resources if r.type.startswith(("aws:", "gcp:"))]


def test_gke_standard_cluster_has_a_node_pool_and_workload_identity() -> None:
    result = run("staging")
    cluster = result.by_name("gke").inputs
    assert cluster["workloadIdentityConfig"] == {"workloadPool": "rag-staging.svc.id.goog"}
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["releaseChannel"] == {"channel": "REGULAR"}
    pool = result.by_name("gke-nodes").inputs
    assert pool["autoscaling"] == {"minNodeCount": 1, "maxNodeCount": 3}
    assert pool["nodeConfig"]["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    registry = result.by_name("registry").inputs
    assert (registry["format"], registry["location"]) == ("DOCKER", "europe-west1")
    provider = result.by_name("gcp").inputs
    assert (provider["project"], provider["region"]) == ("rag-staging", "europe-west1")


def test_gke_autopilot_has_no_node_pool() -> None:
    result = run("staging", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False})
    assert result.by_name("gke").inputs["enableAutopilot"] is True
    assert result.of_type("gcp:container/nodePool:NodePool") == []


def test_gke_kubeconfig_uses_the_auth_plugin_not_a_credential() -> None:
    config = json.loads(gke_kubeconfig("c", "1.2.3.4", "Q0E="))
    assert config["clusters"][0]["cluster"]["server"] == "https://1.2.3.4"
    assert config["users"][0]["user"]["exec"]["command"] == "gke-gcloud-auth-plugin"
    exported = json.loads(run("staging").outputs["kubeconfig"])
    assert exported["current-context"] == "rag-staging"


def test_eks_network_spans_the_configured_zones() -> None:
    result = run("prod")
    subnets = result.of_type("aws:ec2/subnet:Subnet")
    assert len(subnets) == 6
    private = [s.inputs for s in subnets if s.name.startswith("private-")]
    assert all(s.get("mapPublicIpOnLaunch") in (None, False) for s in private)
    node_group = result.by_name("eks-nodes").inputs
    assert node_group["scalingConfig"] == {"minSize": 3, "maxSize": 9, "desiredSize": 3}
    assert node_group["instanceTypes"] == ["m6i.xlarge"]
    cluster = result.by_name("eks").inputs
    assert cluster["version"] == "1.35"
    repo = result.by_name("registry").inputs
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["forceDelete"] is False  # prod: never delete pushed images with the repository


def test_eks_volumes_get_the_ebs_csi_driver_and_a_gp3_class() -> None:
    result = run("prod")
    addon = result.by_name("ebs-csi")
    assert addon.inputs["addonName"] == "aws-ebs-csi-driver"
    storage = result.by_name("gp3").inputs
    assert (storage["provisioner"], storage["parameters"]["type"]) == ("ebs.csi.aws.com", "gp3")
    assert storage["reclaimPolicy"] == "Retain"
    qdrant = result.by_name("qdrant-statefulset").inputs
    claim = qdrant["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "gp3"


def test_eks_workloads_wait_for_nodes_and_storage() -> None:
    result = run("prod")
    namespace = result.by_name("namespace")
    waits = {urn.rsplit("::", 1)[1] for urn in namespace.depends_on}
    assert {"eks-nodes", "ebs-csi", "gp3"} <= waits


def test_eks_irsa_trust_is_limited_to_one_service_account() -> None:
    policy = json.loads(
        irsa_trust_policy(
            "arn:aws:iam::1:oidc-provider/x", "https://oidc.example/id/ABC", "rag", "qdrant-backup"
        )
    )
    statement = policy["Statement"][0]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"]["StringEquals"] == {
        "oidc.example/id/ABC:sub": "system:serviceaccount:rag:qdrant-backup",
        "oidc.example/id/ABC:aud": "sts.amazonaws.com",
    }
    role = run("prod").by_name("ebs-csi-role").inputs
    trust = json.loads(role["assumeRolePolicy"])
    assert (
        trust["Statement"][0]["Condition"]["StringEquals"][
            next(k for k in trust["Statement"][0]["Condition"]["StringEquals"] if k.endswith(":sub"))
        ]
        == "system:serviceaccount:kube-system:ebs-csi-controller-sa"
    )


def test_eks_kubeconfig_uses_aws_eks_get_token() -> None:
    config = json.loads(eks_kubeconfig("c", "https://x", "Q0E=", "eu-west-1"))
    assert config["users"][0]["user"]["exec"]["args"][:4] == ["eks", "get-token", "--cluster-name", "c"]
    exported = json.loads(run("prod").outputs["kubeconfig"])
    assert exported["clusters"][0]["cluster"]["server"].startswith("https://")


@pytest.mark.parametrize(("cidr", "zones"), [("10.0.0.0/16", 3), ("10.1.0.0/18", 2)])
def test_subnet_cidrs_are_disjoint_and_inside_the_vpc(cidr: str, zones: int) -> None:
    public, private = subnet_cidrs(cidr, zones)
    assert len(public) == len(private) == zones
    networks = [ipaddress.ip_network(n) for n in public + private]
    assert all(n.subnet_of(ipaddress.ip_network(cidr)) for n in networks)
    assert len({str(n) for n in networks}) == 2 * zones


def test_subnet_cidrs_refuse_a_too_small_vpc() -> None:
    with pytest.raises(ValueError, match="too small"):
        subnet_cidrs("10.0.0.0/20", 2)


def test_cloud_targets_switch_by_config_alone() -> None:
    on_gke = run("prod", "gke")
    on_eks = run("staging", "eks")
    assert on_gke.of_type("gcp:container/cluster:Cluster")
    assert not on_gke.of_type("aws:eks/cluster:Cluster")
    assert on_eks.of_type("aws:eks/cluster:Cluster")
    assert not on_eks.of_type("gcp:container/cluster:Cluster")
    assert on_gke.by_name("gke").protect is True
    assert on_eks.by_name("eks").protect is False


def test_service_account_is_bound_to_a_cloud_identity_on_clouds_only() -> None:
    gke = run("staging")
    annotations = gke.by_name("rag-sa").inputs["metadata"]["annotations"]
    assert annotations["iam.gke.io/gcp-service-account"].startswith("rag-staging-service@rag-staging.")
    assert (
        gke.by_name("wi-service-binding").inputs["member"]
        == "serviceAccount:rag-staging.svc.id.goog[rag/rag]"
    )
    eks = run("prod")
    assert (
        eks.by_name("rag-sa")
        .inputs["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        .startswith("arn:aws:iam::")
    )
    assert "system:serviceaccount:rag:rag" in eks.by_name("irsa-service").inputs["assumeRolePolicy"]
    existing = run("dev").by_name("rag-sa").inputs["metadata"]
    assert not existing.get("annotations")


def test_eks_grants_the_listed_principals_cluster_access() -> None:
    """Only the cluster's creator can use its API unless the stack adds access entries: the on-call role gets an
    admin entry, the drift role a reader entry whose policy can read Secrets (refresh reads them)."""
    from infra.clusters.eks import ADMIN_ACCESS_POLICY, READER_ACCESS_POLICY

    oncall = "arn:aws:iam::111122223333:role/platform/oncall"
    drift = "arn:aws:iam::111122223333:role/rag-prod-drift"
    result = run("prod", "eks", cluster={"eks": {"adminPrincipals": [oncall], "readerPrincipals": [drift]}})
    entries = {r.inputs["principalArn"]: r for r in result.of_type("aws:eks/accessEntry:AccessEntry")}
    assert set(entries) == {oncall, drift}
    assert {entry.inputs["type"] for entry in entries.values()} == {"STANDARD"}
    cluster = result.of_type("aws:eks/cluster:Cluster")[0]
    policies = {
        r.inputs["principalArn"]: r
        for r in result.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    }
    assert policies[oncall].inputs["policyArn"] == ADMIN_ACCESS_POLICY
    assert policies[drift].inputs["policyArn"] == READER_ACCESS_POLICY
    assert READER_ACCESS_POLICY.endswith(
        "AmazonEKSAdminViewPolicy"
    )  # AmazonEKSViewPolicy cannot read Secrets
    for principal, association in policies.items():
        assert association.inputs["accessScope"] == {"type": "cluster"}
        # Each association waits for its own entry (through principal_arn) and both for the cluster.
        assert entries[principal].urn in association.depends_on
        assert cluster.urn in entries[principal].depends_on
    # Without principals nothing is added (the creator's bootstrap entry is EKS's own).
    assert not run("prod", "eks").of_type("aws:eks/accessEntry:AccessEntry")


# --- one committed dev stack for a laptop (kind) and CI (infra/clusters/existing.py) -------------------------------


def _dev_with_env(monkeypatch: pytest.MonkeyPatch, **environ: str) -> object:
    """The dev stack file through the program with these environment variables (not cached: the env is input)."""
    for name in ("CI", "RAGOPS_KUBE_CONTEXT", "RAGOPS_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return run_stack("dev")


def test_ci_points_the_committed_dev_stack_at_its_cluster_and_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = _dev_with_env(
        monkeypatch, CI="true", RAGOPS_KUBE_CONTEXT="", RAGOPS_REGISTRY="ghcr.io/acme/rag-dev"
    )
    assert "context" not in result.by_name("k8s").inputs  # the CI kubeconfig's current context
    image = result.by_name("service-image-image").inputs
    assert image["tags"] == ["ghcr.io/acme/rag-dev/rag-service"]
    assert image["cacheTo"][0]["registry"]["ref"] == "ghcr.io/acme/rag-dev/rag-service:buildcache"
    named = _dev_with_env(
        monkeypatch, RAGOPS_KUBE_CONTEXT="dev-cluster", RAGOPS_REGISTRY="registry.example.com/rag"
    )
    assert named.by_name("k8s").inputs["context"] == "dev-cluster"
    # An empty registry variable (a repository variable that is not set) leaves the stack file's value.
    laptop = _dev_with_env(monkeypatch, RAGOPS_REGISTRY="")
    assert laptop.by_name("k8s").inputs["context"] == "kind-rag"
    assert laptop.by_name("service-image-image").inputs["tags"] == ["localhost:5001/rag/rag-service"]


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        # CI with the kubeconfig's current context and the committed localhost:5001: the runner's own loopback.
        ({"CI": "true", "RAGOPS_KUBE_CONTEXT": ""}, "rag:cluster.existing.registry"),
        # A remote cluster named on a laptop, with the kind registry.
        ({"RAGOPS_KUBE_CONTEXT": "gke_acme_europe-west1_dev"}, "rag:cluster.existing.registry"),
        ({"RAGOPS_KUBE_CONTEXT": "dev", "RAGOPS_REGISTRY": "127.0.0.1:5000/rag"}, "$RAGOPS_REGISTRY"),
        ({"RAGOPS_REGISTRY": "Not A Registry"}, "$RAGOPS_REGISTRY"),
    ],
)
def test_a_registry_the_nodes_cannot_reach_is_refused(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _dev_with_env(monkeypatch, **environ)
    assert raised.value.key == key
    assert raised.value.stack_file == "Pulumi.dev.yaml"


def test_a_local_cluster_keeps_its_loopback_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # make e2e in CI: kind's context, kind's registry (the nodes' containerd mirrors localhost:5001).
    assert _dev_with_env(monkeypatch, CI="true").by_name("k8s").inputs["context"] == "kind-rag"
    for context in ("minikube", "k3d-rag", "docker-desktop"):
        result = _dev_with_env(monkeypatch, RAGOPS_KUBE_CONTEXT=context)
        assert result.by_name("k8s").inputs["context"] == context
    # A laptop's current context (not CI) is trusted to be its local cluster.
    assert "context" not in _dev_with_env(monkeypatch, RAGOPS_KUBE_CONTEXT="").by_name("k8s").inputs


def test_a_preview_builds_no_image_and_touches_no_registry() -> None:
    """pulumi-docker-build builds on preview by default and exports the registry cache even then; a PR's
    `ragops preview` must not need dev's registry (or a full build)."""
    assert run("dev").by_name("service-image-image").inputs["buildOnPreview"] is False
