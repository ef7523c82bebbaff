"""The whole program under mocks: every real stack file on every cluster target.

Asserts the platform's promises on the recorded resources: parenting, providers only at the top level, protect
flags in prod (and nowhere else), secrets staying secret, replica counts and HPA bounds per environment, the
contract's stack outputs, determinism, and stable names: no URN of the committed snapshot per stack and target
may disappear (that would delete or replace a real resource). Refresh the snapshots after an intended change
with `UPDATE_SNAPSHOTS=1 pytest tests/infra/test_program.py -k urn` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from infra.offline import ACCOUNT_ID, StackRun, run_stack
from tests.infra.conftest import STACKS, TARGETS, run

SNAPSHOTS = Path(__file__).parent / "snapshots"
STACK_TYPE = "pulumi:pulumi:Stack"
DIGEST = "ghcr.io/example/rag-service@sha256:" + "b" * 64
OUTPUTS = {
    "serviceUrl",
    "ingressAddress",
    "imageDigest",
    "qdrantEndpoint",
    "kubeconfig",
    "promotion",
    "ephemeral",
    "apiKeys",
    "adminApiKey",
    "embedding",
    "tlsIssuer",
    "grafana",
    "grafanaAdminPassword",
    "alertReceivers",
}
# Resource types that hold data: protected in prod, never elsewhere.
STATEFUL_TYPES = {
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:postgresql.cnpg.io/v1:Cluster",
    "kubernetes:postgresql.cnpg.io/v1:ScheduledBackup",
    "aws:eks/cluster:Cluster",
    "aws:eks/nodeGroup:NodeGroup",
    "aws:ecr/repository:Repository",
    "aws:rds/instance:Instance",
    "aws:elasticache/replicationGroup:ReplicationGroup",
    "aws:s3/bucketV2:BucketV2",
    "aws:s3/bucket:Bucket",
    "gcp:container/cluster:Cluster",
    "gcp:container/nodePool:NodePool",
    "gcp:artifactregistry/repository:Repository",
    "gcp:sql/databaseInstance:DatabaseInstance",
    "gcp:redis/instance:Instance",
    "gcp:storage/bucket:Bucket",
}


# Resources of a stateful type that hold nothing worth keeping.
DISPOSABLE = {"registry-cache"}


def stack_urn(result: StackRun) -> str:
    return next(r.urn for r in result.resources if r.type == STACK_TYPE)


def statefulset(result: StackRun, name: str) -> dict:
    return result.by_name(f"{name}-statefulset").inputs


def test_every_resource_has_a_parent_in_the_run(target_run: StackRun) -> None:
    urns = {resource.urn for resource in target_run.resources}
    roots = [resource for resource in target_run.resources if resource.parent is None]
    assert [resource.type for resource in roots] == [STACK_TYPE]
    for resource in target_run.resources:
        assert resource.parent is None or resource.parent in urns, resource.urn


def test_providers_are_created_at_the_top_level_only(target_run: StackRun) -> None:
    providers = [r for r in target_run.resources if r.type.startswith("pulumi:providers:")]
    assert providers
    for provider in providers:
        assert provider.parent == stack_urn(target_run), provider.urn
    names = {p.urn for p in providers}
    # Every cloud or Kubernetes resource goes through an explicit provider, never the ambient default one.
    for resource in target_run.resources:
        # random, docker-build and command (the promotion's local copy) need no configuration: their default
        # providers are fine.
        if resource.custom and not resource.type.startswith(
            ("pulumi:providers:", "random:", "docker-build:", "command:")
        ):
            assert resource.provider in names, resource.urn


def test_outputs_follow_the_contract(target_run: StackRun) -> None:
    outputs = target_run.outputs
    assert set(outputs) == OUTPUTS
    assert re.fullmatch(r"https://[a-z0-9.-]+", outputs["serviceUrl"])
    assert outputs["qdrantEndpoint"].startswith("http://qdrant.")
    assert outputs["kubeconfig"]
    assert "kubeconfig" in target_run.secret_outputs
    assert outputs["promotion"] is None
    assert outputs["ephemeral"] is None
    # The generated API key is what a user needs to call the URL: a secret output, a JSON {key: tenant}.
    assert "apiKeys" in target_run.secret_outputs
    assert list(json.loads(outputs["apiKeys"]).values()) == ["default"]
    assert outputs["tlsIssuer"] in {"selfSigned", "letsencrypt-staging", "letsencrypt"}
    if outputs["grafana"] is None:
        assert outputs["grafanaAdminPassword"] is None
        assert outputs["alertReceivers"] is None
    else:
        assert "grafanaAdminPassword" in target_run.secret_outputs
        assert outputs["grafana"]["portForward"] == (
            "kubectl -n monitoring port-forward svc/kube-prometheus-stack-grafana 3000:80"
        )
        admin = target_run.by_name("monitoring-grafana-admin").inputs["stringData"]["admin-password"]
        assert outputs["grafanaAdminPassword"] == admin
        assert outputs["alertReceivers"] == []


def test_the_exported_api_key_is_the_one_the_service_runs_with() -> None:
    result = run("dev")
    secret = next(
        r for r in result.resources if r.type == "kubernetes:core/v1:Secret" and "API_KEYS" in str(r.inputs)
    )
    assert json.loads(result.outputs["apiKeys"]) == json.loads(secret.inputs["stringData"]["API_KEYS"])


def test_promotion_and_ephemeral_config_are_exported() -> None:
    promotion = {"from": "staging", "digest": DIGEST, "at": "2026-11-22T08:00:00Z", "by": "ci"}
    ephemeral = {"name": "pr-9", "owner": "alice", "expiresAt": "2026-11-23T08:00:00Z"}
    result = run("dev", promotion=promotion, ephemeral=ephemeral)
    assert result.outputs["promotion"] == promotion
    assert result.outputs["ephemeral"] == ephemeral
    annotations = result.by_name("namespace").inputs["metadata"]["annotations"]
    assert annotations == {"rag.dev/ephemeral-owner": "alice", "rag.dev/expires-at": "2026-11-23T08:00:00Z"}


@pytest.mark.parametrize("target", TARGETS)
def test_protect_is_set_on_stateful_resources_in_prod_only(target: str) -> None:
    for stack in STACKS:
        result = run(stack, target)
        protected = {r.urn for r in result.resources if r.protect}
        # The EKS build-cache repository is disposable (force_delete, rewritten by every build): not data.
        stateful = {r.urn for r in result.resources if r.type in STATEFUL_TYPES and r.name not in DISPOSABLE}
        assert stateful
        if stack == "prod":
            assert stateful <= protected, sorted(stateful - protected)
        else:
            assert protected == set(), sorted(protected)


def test_qdrant_replicas_per_environment(shipped_target_run: StackRun) -> None:
    spec = statefulset(shipped_target_run, "qdrant")["spec"]
    expected = {"dev": 1, "staging": 3, "prod": 3}[shipped_target_run.stack]
    assert spec["replicas"] == expected
    env = {item["name"]: item for item in spec["template"]["spec"]["containers"][0].get("env", [])}
    assert "QDRANT__CLUSTER__ENABLED" in env


def test_qdrant_api_key_stays_secret(target_run: StackRun) -> None:
    secret = target_run.by_name("qdrant-api-key")
    assert secret.type == "kubernetes:core/v1:Secret"
    assert "stringData" in secret.secret_keys
    generated = target_run.by_name("qdrant-api-key-random").inputs
    assert generated["length"] >= 32


def test_every_credential_input_stays_secret(target_run: StackRun) -> None:
    for secret in target_run.of_type("kubernetes:core/v1:Secret"):
        assert secret.secret_keys & {"stringData", "data"}, secret.urn
    credential_inputs = {
        "aws:rds/instance:Instance": "password",
        "aws:elasticache/replicationGroup:ReplicationGroup": "authToken",
        "gcp:sql/user:User": "password",
        "docker-build:index:Image": "registries",
    }
    for resource in target_run.resources:
        key = credential_inputs.get(resource.type)
        if key is not None and resource.inputs.get(key) and resource.type != "docker-build:index:Image":
            assert key in resource.secret_keys, resource.urn
    service_secret = target_run.by_name("rag-secrets")
    assert {"DATABASE_URL", "REDIS_URL", "QDRANT_API_KEY", "API_KEYS"} <= set(
        service_secret.inputs["stringData"]
    )


def test_service_deployment_runs_the_deployed_image_with_probes(target_run: StackRun) -> None:
    pod = target_run.by_name("rag-api").inputs["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == target_run.outputs["imageDigest"]
    assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", container["image"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz/serving"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"]
    worker = target_run.by_name("rag-worker").inputs["spec"]["template"]["spec"]["containers"][0]
    assert worker["image"] == container["image"]


def test_service_replicas_and_hpa_bounds_per_environment(shipped_target_run: StackRun) -> None:
    deployment = shipped_target_run.by_name("rag-api").inputs["spec"]
    hpas = shipped_target_run.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    pdbs = {r.name for r in shipped_target_run.of_type("kubernetes:policy/v1:PodDisruptionBudget")}
    if shipped_target_run.stack == "dev":
        assert deployment["replicas"] == 1
        assert hpas == []
        assert "rag-pdb" not in pdbs
        return
    bounds = {"staging": (2, 5), "prod": (3, 10)}[shipped_target_run.stack]
    (hpa,) = hpas
    assert (hpa.inputs["spec"]["minReplicas"], hpa.inputs["spec"]["maxReplicas"]) == bounds
    assert (
        hpa.inputs["spec"]["scaleTargetRef"]["name"]
        == shipped_target_run.by_name("rag-api").inputs["metadata"]["name"]
    )
    # The HPA owns the count: the Deployment starts at its floor and ignores the field afterwards, so `pulumi up`
    # neither fights the HPA nor releases the field (tests/infra/test_autoscaling_switch.py).
    assert deployment["replicas"] == bounds[0]
    assert "spec.replicas" in shipped_target_run.by_name("rag-api").ignore_changes
    assert {"rag-pdb", "qdrant-pdb"} <= pdbs


def test_settings_reach_the_service_config_map() -> None:
    result = run("staging", service={"settings": {"chunkSize": 320, "rateLimitSearch": "50/second"}})
    data = result.by_name("rag-config").inputs["data"]
    assert data["CHUNK_SIZE"] == "320"
    assert data["RATE_LIMIT_SEARCH"] == "50/second"
    assert data["ENVIRONMENT"] == "staging"
    assert data["QDRANT_REPLICATION_FACTOR"] == "2"


@pytest.mark.parametrize(
    ("stack", "target", "types"),
    [
        ("prod", "eks", {"aws:rds/instance:Instance", "aws:elasticache/replicationGroup:ReplicationGroup"}),
        ("prod", "gke", {"gcp:sql/databaseInstance:DatabaseInstance", "gcp:redis/instance:Instance"}),
        ("staging", "gke", {"kubernetes:postgresql.cnpg.io/v1:Cluster", "kubernetes:apps/v1:StatefulSet"}),
    ],
)
def test_data_store_modes_follow_config_and_target(stack: str, target: str, types: set[str]) -> None:
    result = run(stack, target)
    assert types <= {r.type for r in result.resources}


def test_managed_data_stores_switch_to_in_cluster_by_config() -> None:
    result = run("prod", postgres={"mode": "cloudnative"}, redis={"mode": "incluster"})
    found = {r.type for r in result.resources}
    assert "aws:rds/instance:Instance" not in found
    assert "aws:elasticache/replicationGroup:ReplicationGroup" not in found
    assert result.by_name("postgres-cluster").protect is True
    assert result.by_name("redis-statefulset").protect is True


def test_configured_qdrant_api_key_is_used_and_secret() -> None:
    result = run("dev", qdrantApiKey="configured-key-123")
    assert "qdrant-api-key-random" not in {r.name for r in result.resources}
    secret = result.by_name("qdrant-api-key")
    assert "stringData" in secret.secret_keys
    assert "configured-key-123" in secret.inputs["stringData"].values()


def test_cloud_kubeconfig_is_a_secret_provider_input() -> None:
    for target in ("gke", "eks"):
        result = run("staging", target)
        provider = next(r for r in result.of_type("pulumi:providers:kubernetes"))
        assert "kubeconfig" in provider.secret_keys


def test_same_stack_twice_gives_the_same_resources() -> None:
    first = run_stack("prod")
    second = run_stack("prod")
    assert first.urns == second.urns
    assert {r.urn: r.inputs for r in first.resources} == {r.urn: r.inputs for r in second.resources}
    assert first.outputs == second.outputs


@pytest.mark.parametrize("target", TARGETS)
def test_image_digest_from_config_is_copied_into_the_stack_registry_and_deployed_by_the_same_digest(
    target: str,
) -> None:
    result = run("staging", target, image=DIGEST)
    copy = result.by_name("service-image-copy")
    copied = copy.inputs["create"].strip().splitlines()[-1].removeprefix("echo ")
    repository, digest = copied.split("@")
    assert digest == DIGEST.rsplit("@", 1)[1]
    assert not repository.startswith("ghcr.io/")  # the stack's own registry, not the source's
    assert f"docker://{DIGEST}" in copy.inputs["create"]  # copied from the promoted ref
    assert result.outputs["imageDigest"] == copied
    assert result.of_type("docker-build:index:Image") == []
    assert result.by_name("rag-api").inputs["spec"]["template"]["spec"]["containers"][0]["image"] == copied


def test_without_an_image_digest_the_service_is_built_and_pushed_to_the_stack_registry() -> None:
    # dev builds (staging and prod only deploy promoted digests: infra/config.py refuses them an empty rag:image).
    result = run("dev", "eks")
    (image,) = result.of_type("docker-build:index:Image")
    # Pushed by digest only (its registry export), under no tag the immutable ECR repository could refuse again.
    assert image.inputs["push"] is False
    assert [e["registry"]["pushByDigest"] for e in image.inputs["exports"]] == [True]
    assert image.inputs["tags"] == ["123456789012.dkr.ecr.eu-west-1.amazonaws.com/rag-service-dev"]
    assert image.inputs["context"]["location"] == "."
    assert image.inputs["dockerfile"]["location"] == "service/Dockerfile"
    assert "registries" in image.secret_keys
    assert result.outputs["imageDigest"].startswith(
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rag-service-dev@"
    )


@pytest.mark.parametrize(("stack", "target"), [(s, t) for s in STACKS for t in TARGETS])
def test_no_committed_urn_disappears(stack: str, target: str) -> None:
    # A URN that vanishes is a resource a real `pulumi up` would delete (a rename is a delete plus a create),
    # so it must be a reviewed change of the snapshot. New resources only extend the snapshot.
    path = SNAPSHOTS / f"{stack}-{target}.txt"
    current = run(stack, target).urns
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text("\n".join(current) + "\n")
    # A new permanent stack (docs/delivery.md#adding-a-permanent-stack) commits its snapshots with the file.
    assert path.is_file(), (
        f"no URN snapshot {path.name} for Pulumi.{stack}.yaml: create it with "
        "`UPDATE_SNAPSHOTS=1 pytest tests/infra/test_program.py -k urn` and commit it"
    )
    committed = path.read_text().split()
    assert committed == sorted(committed)
    gone = sorted(set(committed) - set(current))
    assert gone == [], f"resources would be deleted or replaced; if intended, regenerate {path.name}"


def vanished(stack: str, target: str, result: StackRun) -> set[str]:
    """Committed URNs of `stack` on `target` that `result` no longer has."""
    return set((SNAPSHOTS / f"{stack}-{target}.txt").read_text().split()) - set(result.urns)


def test_the_snapshot_check_sees_resources_that_would_go() -> None:
    assert vanished("prod", "eks", run("prod")) == set()
    without_monitoring = vanished("prod", "eks", run("prod", monitoring={"enabled": False}))
    assert any(urn.endswith("::monitoring-stack") for urn in without_monitoring)
    # Names do not depend on values such as the namespace, so moving a stack renames nothing.
    assert vanished("dev", "existing", run("dev", namespace="rag-elsewhere")) == set()


def test_tls_issuer_follows_the_environment(shipped_target_run: StackRun) -> None:
    issuer = shipped_target_run.by_name("gateway-issuer").inputs["spec"]
    expected = {"dev": "selfSigned", "staging": "acme", "prod": "acme"}[shipped_target_run.stack]
    assert expected in issuer
    if expected == "acme":
        server = issuer["acme"]["server"]
        assert ("staging" in server) == (shipped_target_run.stack == "staging")
    assert (
        shipped_target_run.outputs["serviceUrl"]
        == f"https://{shipped_target_run.by_name('gateway-gateway').inputs['spec']['listeners'][1]['hostname']}"
    )


def test_without_tls_there_is_no_gateway_and_the_url_is_internal() -> None:
    result = run("dev", tls={"enabled": False})
    assert not [r for r in result.resources if r.type.startswith("rag:net:")]
    assert result.outputs["serviceUrl"].startswith("http://rag.rag.svc")


def test_monitors_and_rules_wait_for_the_monitoring_crds() -> None:
    result = run("prod")
    release = result.by_name("monitoring-stack").urn
    users = [r for r in result.resources if r.type.startswith("kubernetes:monitoring.coreos.com/")]
    assert {r.name for r in users} >= {"rag-servicemonitor", "qdrant-servicemonitor", "monitoring-rules"}
    for resource in users:
        assert release in resource.depends_on, resource.name
    assert "monitoring-stack" not in {r.name for r in run("dev").resources}


def test_backups_run_on_schedule_with_workload_identity_and_bucket_access() -> None:
    prod = run("prod")
    cronjob = prod.by_name("qdrant-backups-cronjob").inputs["spec"]
    assert cronjob["schedule"] == "30 2 * * *"
    account = prod.by_name("qdrant-backups-sa").inputs["metadata"]
    assert account["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    trust = prod.by_name("irsa-backup").inputs["assumeRolePolicy"]
    assert "system:serviceaccount:rag:qdrant-backups" in trust
    policy = prod.by_name("irsa-backup-bucket").inputs["policy"]
    assert f"arn:aws:s3:::rag-prod-qdrant-backups-{ACCOUNT_ID}-eu-west-1-an/*" in policy
    assert prod.by_name("qdrant-backups-bucket").protect is True
    staging = run("staging")
    account = staging.by_name("qdrant-backups-sa").inputs["metadata"]
    assert account["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    binding = staging.by_name("wi-backup-binding").inputs
    assert binding["member"] == "serviceAccount:rag-staging.svc.id.goog[rag/qdrant-backups]"
    assert staging.by_name("wi-backup-bucket").inputs["role"] == "roles/storage.objectAdmin"
    # The backup job's pods are admitted by Qdrant's NetworkPolicy.
    ingress = staging.by_name("qdrant-netpol").inputs["spec"]["ingress"]
    assert "qdrant-backups" in str(ingress)


def test_a_configured_backup_bucket_is_used_not_created() -> None:
    result = run("prod", backups={"bucket": "acme-rag-backups"})
    assert "qdrant-backups-bucket" not in {r.name for r in result.resources}
    assert "arn:aws:s3:::acme-rag-backups" in result.by_name("irsa-backup-bucket").inputs["policy"]


def test_shared_cluster_operators_can_be_left_to_the_cluster() -> None:
    own = run("dev")
    assert {"gateway-cert-manager", "postgres-operator"} <= {r.name for r in own.resources}
    shared = run(
        "dev", tls={"installCertManager": False}, postgres={"cloudnative": {"installOperator": False}}
    )
    names = {r.name for r in shared.resources}
    assert "gateway-cert-manager" not in names
    assert "postgres-operator" not in names
    assert "gateway-issuer" in names
    assert "postgres-cluster" in names


def test_api_admits_the_gateway_of_the_configured_class() -> None:
    gke_class = str(run("staging").by_name("rag-api-netpol").inputs["spec"]["ingress"])
    assert "35.191.0.0/16" in gke_class
    in_cluster = str(run("prod").by_name("rag-api-netpol").inputs["spec"]["ingress"])
    assert "envoy-gateway-system" in in_cluster
    assert "35.191.0.0/16" not in in_cluster


def test_multi_limit_rate_settings_reach_the_service_as_written() -> None:
    """docs/operations.md advertises "10/second;1000/hour"; the stack config pattern refused it (N/unit only)."""
    result = run("staging", service={"settings": {"rateLimitSearch": "10/second;1000/hour"}})
    assert result.by_name("rag-config").inputs["data"]["RATE_LIMIT_SEARCH"] == "10/second;1000/hour"


@pytest.mark.parametrize(
    "value",
    [
        "120/minute",
        "10/second;1000/hour",
        "5 per 2 minutes",
        "1/day,2/hour",
        "0/minute",
        "10/fortnight",
        "garbage",
        "-1/minute",
        "10/",
        "/minute",
        "10/second;",
        "3/2hours",
    ],
)
def test_the_stack_rate_limit_pattern_accepts_what_the_service_accepts(value: str) -> None:
    """The service checks RATE_LIMIT_* with the `limits` library at start-up (amounts of at least 1): the stack
    config must refuse at `pulumi preview` exactly what would stop every pod, and accept everything else."""
    from limits import parse_many

    from infra.config import RATE_LIMIT_RE

    try:
        service_accepts = all(item.amount >= 1 for item in parse_many(value))
    except ValueError:
        service_accepts = False
    assert bool(RATE_LIMIT_RE.match(value)) == service_accepts


def test_ingress_mode_admits_the_ingress_controller_and_its_plan_passes() -> None:
    """`gateway.ingress.enabled` on an existing cluster: the API's NetworkPolicy admits the controller's namespace
    (`gateway.proxyNamespaces`; it used to admit only envoy-gateway-system, so every request through
    ingress-nginx was dropped), the IngressClass is a listed prerequisite instead of a failure, and no
    GatewayClass or Gateway API is asked for since no Gateway is rendered."""
    from infra import deployability as d

    result = run(
        "dev",
        gateway={"ingress": {"enabled": True, "className": "nginx"}, "proxyNamespaces": ["ingress-nginx"]},
    )
    sources = str(result.by_name("rag-api-netpol").inputs["spec"]["ingress"])
    assert "'kubernetes.io/metadata.name': 'ingress-nginx'" in sources
    assert "envoy-gateway-system" not in sources
    analysis = d.analyse(result)
    assert not analysis.findings, analysis.findings
    prerequisites = {capability.name for capability in analysis.prerequisites}
    assert "ingressclass:nginx" in prerequisites
    assert not {name for name in prerequisites if name.startswith("gatewayclass:")}
