"""Tests of the RagService component: pure spec builders, then the component under Pulumi mocks."""

from __future__ import annotations

import hashlib
import json

import pulumi
import pulumi_kubernetes as k8s
import pytest

from infra.components import rag_service as rs
from infra.components import specs
from infra.components.specs import ComponentArgsError, EgressTarget, Resources

from .conftest import Program, assert_all_parented, is_secret, resolve, run_components, validate_manifests

IMAGE = "registry.example.com/rag/service@sha256:" + "a" * 64
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def prod_args(**overrides: object) -> rs.RagServiceArgs:
    values: dict[str, object] = {
        "namespace": "rag",
        "image": IMAGE,
        "environment": "production",
        "qdrant_url": "http://qdrant.rag.svc:6333",
        "qdrant_api_key": pulumi.Output.secret("qdrant-key"),
        "database_url": pulumi.Output.secret("postgresql+psycopg://rag:pw@db:5432/rag"),
        "redis_url": pulumi.Output.secret("redis://:pw@redis:6379/0"),
        "api_keys": pulumi.Output.secret("k1:tenant-a"),
        "qdrant_replication_factor": 2,
        "autoscaling": rs.Autoscaling(min_replicas=3, max_replicas=10, memory_utilization=80),
        "worker": rs.WorkerSettings(replicas=2),
        "settings": {"LOG_LEVEL": "WARNING"},
        "service_account_annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/rag"},
        "network": rs.NetworkAccess(
            gateway_namespaces=("gateway",),
            egress=(EgressTarget("qdrant", 6333, {"app.kubernetes.io/name": "qdrant"}, extra_ports=(6334,)),),
        ),
        "service_monitor": True,
    }
    values.update(overrides)
    return rs.RagServiceArgs(**values)  # type: ignore[arg-type]


def dev_args(**overrides: object) -> rs.RagServiceArgs:
    values: dict[str, object] = {
        "namespace": "rag-dev",
        "image": "rag/service:0.1.0",
        "worker": rs.WorkerSettings(enabled=False),
    }
    values.update(overrides)
    return rs.RagServiceArgs(**values)  # type: ignore[arg-type]


def run_service(args: rs.RagServiceArgs, opts: pulumi.ResourceOptions | None = None) -> Program:
    return run_components(lambda: rs.RagService("rag", args, opts))


# ---------------------------------------------------------------------------------------------- pure specs
def test_api_container_probes_security_and_writable_dirs() -> None:
    container = rs.api_container(IMAGE, 8000, Resources(), 10001, "cfg", "sec")
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz/serving", "port": "http"}
    assert container["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "10"]}}}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", rs.DATA_DIR}
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert container["envFrom"] == [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "sec"}}]


def test_worker_container_runs_the_worker_module() -> None:
    container = rs.worker_container(IMAGE, Resources(), 10001, "cfg", "sec")
    assert container["command"] == ["python", "-m", "service.worker"]


def test_deployment_spec_leaves_replicas_to_the_hpa() -> None:
    container = rs.api_container(IMAGE, 8000, Resources(), 10001, "cfg", "sec")
    match = {"app": "x"}
    with_hpa = rs.deployment_spec(
        container, match=match, pod_labels=match, replicas=None, service_account="sa", run_as_user=10001
    )
    fixed = rs.deployment_spec(
        container, match=match, pod_labels=match, replicas=2, service_account="sa", run_as_user=10001
    )
    assert "replicas" not in with_hpa
    assert fixed["replicas"] == 2
    spread = fixed["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert {v["name"] for v in fixed["template"]["spec"]["volumes"]} == {"tmp", "data"}


def test_hpa_spec_targets_cpu_and_optional_memory() -> None:
    cpu_only = rs.hpa_spec("rag", rs.Autoscaling(min_replicas=2, max_replicas=5))
    both = rs.hpa_spec("rag", rs.Autoscaling(min_replicas=3, max_replicas=10, memory_utilization=75))
    assert [m["resource"]["name"] for m in cpu_only["metrics"]] == ["cpu"]
    assert [m["resource"]["name"] for m in both["metrics"]] == ["cpu", "memory"]
    assert both["minReplicas"] == 3
    assert both["maxReplicas"] == 10
    assert both["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rag"}
    assert both["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


@pytest.mark.parametrize(
    ("replicas", "autoscaling", "expected"),
    [
        (1, None, False),
        (2, None, True),
        (1, rs.Autoscaling(min_replicas=1, max_replicas=3), False),
        (1, rs.Autoscaling(min_replicas=2, max_replicas=3), True),
    ],
)
def test_pdb_only_when_more_than_one_pod(
    replicas: int, autoscaling: rs.Autoscaling | None, expected: bool
) -> None:
    assert rs.wants_pdb(replicas, autoscaling) is expected


def test_config_map_name_changes_with_content() -> None:
    first = rs.config_map_name("rag", {"A": "1"})
    assert first.startswith("rag-config-")
    assert first == rs.config_map_name("rag", {"A": "1"})
    assert first != rs.config_map_name("rag", {"A": "2"})


def test_api_network_policy_opens_gateway_monitoring_and_backends() -> None:
    network = rs.NetworkAccess(
        gateway_namespaces=("gw",),
        gateway_cidrs=("35.191.0.0/16",),
        monitoring_namespace="monitoring",
        egress=(EgressTarget("pg", 5432, cidrs=("10.0.0.0/16",)),),
    )
    spec = rs.api_network_policy({"app": "rag"}, 8000, network)
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    sources = spec["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gw"}}} in sources
    assert {"ipBlock": {"cidr": "35.191.0.0/16"}} in sources
    assert spec["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"][
        "kubernetes.io/metadata.name"
    ] == ("monitoring")
    ports = [p["port"] for rule in spec["egress"] for p in rule["ports"]]
    assert 53 in ports
    assert 5432 in ports
    assert {"ipBlock": {"cidr": "10.0.0.0/16"}} in spec["egress"][1]["to"]


def test_acme_solver_pods_stay_reachable_under_default_deny() -> None:
    spec = rs.acme_solver_network_policy()
    assert spec["podSelector"]["matchLabels"] == {"acme.cert-manager.io/http01-solver": "true"}
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8089}]}]


def test_worker_network_policy_admits_only_prometheus_to_the_metrics_port() -> None:
    spec = rs.worker_network_policy({"app": "w"}, rs.NetworkAccess())
    assert spec["ingress"] == [
        specs.ingress_rule([rs.WORKER_METRICS_PORT], [specs.namespace_peer("monitoring")])
    ]
    assert "Ingress" in spec["policyTypes"]
    closed = rs.worker_network_policy({"app": "w"}, rs.NetworkAccess(monitoring_namespace=None))
    assert closed["ingress"] == []


def test_worker_exposes_its_metrics_port_by_the_agreed_name() -> None:
    container = rs.worker_container("img@sha256:" + "a" * 64, Resources(), 10001, "cfg", "sec")
    assert container["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert {"name": "WORKER_METRICS_PORT", "value": "9100"} in container["env"]
    # Probes that fail when the worker stops consuming (the worker's /healthz, /readyz on the same port).
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"image": "rag/service:latest"}, "latest"),
        ({"image": "rag/service"}, "pinned"),
        ({"environment": "prod"}, "environment"),
        ({"api_keys": None}, "api_keys is required"),
        ({"autoscaling": rs.Autoscaling(min_replicas=4, max_replicas=2)}, "max_replicas"),
        ({"redis_url": None}, "worker.enabled needs redis_url"),
        ({"settings": {"DATABASE_URL": "x"}}, "must not set DATABASE_URL"),
        ({"settings": {"log_level": "x"}}, "environment variable name"),
        ({"resources": Resources(memory_limit="lots")}, "quantity"),
    ],
)
def test_invalid_args_fail_with_a_sentence(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        rs.validate_args(prod_args(**overrides))
    assert str(info.value).endswith(".")


def test_invalid_args_fail_before_any_resource_is_registered() -> None:
    with pytest.raises(ComponentArgsError):
        run_service(prod_args(environment="prod"))


# ---------------------------------------------------------------------------------------------- component
def test_production_service_resources_and_names() -> None:
    program = run_service(prod_args())
    component = assert_all_parented(program, "rag:app:RagService")
    assert component.custom is False
    names = {r.name for r in program.resources if r is not component}
    assert names == {
        "rag-sa",
        "rag-config",
        "rag-secrets",
        "rag-api",
        "rag-service",
        "rag-hpa",
        "rag-pdb",
        "rag-worker",
        "rag-worker-pdb",
        "rag-default-deny",
        "rag-acme-solver-netpol",
        "rag-api-netpol",
        "rag-worker-netpol",
        "rag-servicemonitor",
        "rag-worker-podmonitor",
        "rag-digest-salt",  # keys the Secret digest on the pod templates (not a Kubernetes object)
    }
    for res in program.resources:
        if res is not component:
            assert res.parent == component.urn
            if res.type.startswith("kubernetes:"):
                assert res.inputs["metadata"]["namespace"] == "rag"


def test_hpa_floor_starts_the_api_and_worker_has_its_own() -> None:
    # The API Deployment sends the HPA's floor and ignores later changes of it (tests/infra/test_autoscaling_switch.py):
    # dropping the field under server-side apply would reset it to 1.
    program = run_service(prod_args())
    api = program.named("rag-api").inputs["spec"]
    worker = program.named("rag-worker").inputs["spec"]
    assert api["replicas"] == 3
    assert worker["replicas"] == 2
    assert worker["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "service.worker"]
    hpa = program.named("rag-hpa").inputs["spec"]
    assert hpa["minReplicas"] == 3
    assert hpa["maxReplicas"] == 10


def test_secrets_stay_secret_and_config_is_plain() -> None:
    program = run_service(prod_args())
    secret = program.named("rag-secrets")
    assert "stringData" in secret.secret_paths
    assert set(secret.inputs["stringData"]) == {"DATABASE_URL", "REDIS_URL", "QDRANT_API_KEY", "API_KEYS"}
    config = program.named("rag-config")
    assert not config.secret_paths
    data = config.inputs["data"]
    assert data["QDRANT_URL"] == "http://qdrant.rag.svc:6333"
    assert data["QDRANT_REPLICATION_FACTOR"] == "2"
    assert data["ENVIRONMENT"] == "production"
    assert data["LOG_LEVEL"] == "WARNING"
    assert not set(data) & set(rs.SECRET_KEYS)
    api = program.named("rag-api")
    assert not api.secret_paths
    env_from = api.inputs["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from[0]["configMapRef"]["name"] == config.inputs["metadata"]["name"]
    assert env_from[1]["secretRef"]["name"] == secret.inputs["metadata"]["name"]


def test_a_changed_secret_value_restarts_the_api_and_the_worker() -> None:
    # The pods read the Secret into their environment at start: a rotated Qdrant key must restart them, or they
    # keep using the old one (which a later step of the rotation removes from Qdrant).
    def digests(program: Program) -> set[str]:
        found = set()
        for name in ("rag-api", "rag-worker"):
            deployment = program.named(name)
            assert not deployment.secret_paths
            found.add(deployment.inputs["spec"]["template"]["metadata"]["annotations"][rs.SECRETS_ANNOTATION])
        return found

    before = digests(run_service(prod_args()))
    assert len(before) == 1  # the same Secret for both
    assert digests(run_service(prod_args())) == before  # stable: no restart without a change
    after = digests(run_service(prod_args(qdrant_api_key=pulumi.Output.secret("rotated-key"))))
    assert len(after) == 1
    assert after != before
    assert "rotated-key" not in repr(
        run_service(prod_args(qdrant_api_key="rotated-key")).named("rag-api").inputs
    )
    # A tenant key rotation (docs/runbooks.md "Rotate a tenant's or the admin API key"): adding the new key, and
    # later removing the old one, each roll the pods, as does a new admin key.
    for rotated in (
        {"api_keys": pulumi.Output.secret('{"k1": "tenant-a", "k2": "tenant-a"}')},
        {"api_keys": pulumi.Output.secret('{"k2": "tenant-a"}')},
        {"admin_api_key": pulumi.Output.secret("new-admin-key")},
    ):
        rolled = digests(run_service(prod_args(**rotated)))
        assert len(rolled) == 1
        assert rolled != before, rotated
    # Keyed with the component's secret salt: a plain SHA-256 of the values (brute-forceable for a key chosen by
    # hand) is not what the pod template shows.
    program = run_service(prod_args())
    values = program.named("rag-secrets").inputs["stringData"]
    assert before == {rs.secrets_digest(values, "random-rag-digest-salt")}
    assert before != {hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()}


def test_service_account_carries_identity_annotations() -> None:
    program = run_service(prod_args())
    sa = program.named("rag-sa").inputs
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/rag"}
    pod = program.named("rag-api").inputs["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_service_monitor_waits_for_monitoring_crds() -> None:
    def build() -> rs.RagService:
        crds = k8s.helm.v3.Release("crds", chart="kube-prometheus-stack", version="1.0.0")
        return rs.RagService("rag", prod_args(monitoring_crds=(crds,)))

    program = run_components(build)
    monitor = program.named("rag-servicemonitor")
    assert monitor.type == "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"
    assert program.urn_of("crds") in monitor.depends_on
    assert monitor.inputs["spec"]["endpoints"][0]["path"] == "/metrics"
    worker = program.named("rag-worker-podmonitor")
    assert worker.type == "kubernetes:monitoring.coreos.com/v1:PodMonitor"
    assert program.urn_of("crds") in worker.depends_on
    assert worker.inputs["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    selected = worker.inputs["spec"]["selector"]["matchLabels"]
    pod_labels = program.named("rag-worker").inputs["spec"]["template"]["metadata"]["labels"]
    assert selected.items() <= pod_labels.items()
    api_labels = program.named("rag-api").inputs["spec"]["template"]["metadata"]["labels"]
    assert not selected.items() <= api_labels.items()


def test_dev_service_is_minimal() -> None:
    program = run_service(dev_args())
    types = [r.type for r in program.resources]
    assert "kubernetes:autoscaling/v2:HorizontalPodAutoscaler" not in types
    assert "kubernetes:policy/v1:PodDisruptionBudget" not in types
    assert "kubernetes:monitoring.coreos.com/v1:ServiceMonitor" not in types
    assert types.count(DEPLOYMENT) == 1
    api = program.named("rag-api").inputs["spec"]
    assert api["replicas"] == 1
    secret = program.named("rag-secrets").inputs
    assert secret.get("stringData", {}) == {}


def test_create_namespace_makes_every_child_wait_for_it() -> None:
    program = run_service(dev_args(create_namespace=True))
    namespace = program.named("rag-namespace")
    assert namespace.inputs["metadata"]["name"] == "rag-dev"
    for res in program.resources:
        if res.custom and res is not namespace:
            assert namespace.urn in res.depends_on, res.name


def test_provider_comes_from_opts_and_no_provider_is_created() -> None:
    program = run_service(dev_args())
    assert not [r for r in program.resources if r.type.startswith("pulumi:providers:")]


def test_outputs() -> None:
    program = run_service(prod_args())
    service: rs.RagService = program.result
    assert resolve(service.url) == "http://rag.rag.svc:8000"
    assert service.selector_labels["app.kubernetes.io/component"] == "api"
    assert not is_secret(service.url)


@pytest.mark.parametrize("make_args", [prod_args, dev_args])
def test_manifests_pass_strict_kubernetes_validation(make_args: object) -> None:
    program = run_service(make_args(create_namespace=True))  # type: ignore[operator]
    assert validate_manifests(program) >= 5


def test_children_inherit_the_provider_passed_through_opts() -> None:
    def build() -> rs.RagService:
        provider = k8s.Provider("cluster", kubeconfig="apiVersion: v1\nkind: Config\n")
        return rs.RagService("rag", prod_args(), pulumi.ResourceOptions(provider=provider))

    program = run_components(build)
    provider_urn = program.urn_of("cluster")
    children = [r for r in program.resources if r.custom and r.type.startswith("kubernetes:")]
    assert len(children) >= 10
    for res in children:
        assert res.provider.startswith(provider_urn + "::"), res.name
