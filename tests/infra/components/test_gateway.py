"""Tests of the TlsGateway component: issuers per environment, Gateway API resources, CRD ordering, fallback."""

from __future__ import annotations

import dataclasses
import re

import pulumi_kubernetes as k8s
import pytest

from infra import deployability, render
from infra.clusters import eks
from infra.clusters.eks import NLB_TYPE_ANNOTATION
from infra.components import gateway as gw
from infra.components.specs import ComponentArgsError
from infra.offline import StackRun
from tests.infra.conftest import run

from .conftest import Program, assert_all_parented, resolve, run_components, validate_manifests


def gateway_args(**overrides: object) -> gw.TlsGatewayArgs:
    values: dict[str, object] = {
        "namespace": "rag",
        "hostname": "rag.example.com",
        "service_name": "rag",
        "service_port": 8000,
        "issuer": "letsencrypt-prod",
        "acme_email": "ops@example.com",
        "gateway_class_name": "gke-l7-global-external-managed",
    }
    values.update(overrides)
    return gw.TlsGatewayArgs(**values)  # type: ignore[arg-type]


def run_gateway(args: gw.TlsGatewayArgs) -> Program:
    return run_components(lambda: gw.TlsGateway("gateway", args))


def test_selfsigned_issuer_for_dev() -> None:
    assert gw.issuer_spec(
        "selfsigned", None, gateway="g", namespace="n", entry="gateway", ingress_class=None
    ) == {"selfSigned": {}}


@pytest.mark.parametrize(
    ("issuer", "server"),
    [
        ("letsencrypt-staging", "https://acme-staging-v02.api.letsencrypt.org/directory"),
        ("letsencrypt-prod", "https://acme-v02.api.letsencrypt.org/directory"),
    ],
)
def test_acme_issuers_solve_http01_through_the_gateway(issuer: str, server: str) -> None:
    spec = gw.issuer_spec(
        issuer, "ops@example.com", gateway="gw", namespace="rag", entry="gateway", ingress_class=None
    )
    assert spec["acme"]["server"] == server
    assert spec["acme"]["email"] == "ops@example.com"
    assert spec["acme"]["solvers"] == [
        {
            "http01": {
                "gatewayHTTPRoute": {
                    "parentRefs": [
                        {"name": "gw", "namespace": "rag", "kind": "Gateway", "sectionName": "http"}
                    ]
                }
            }
        }
    ]


def test_ingress_entry_solves_through_the_ingress_class() -> None:
    spec = gw.issuer_spec(
        "letsencrypt-prod", "a@b.co", gateway="g", namespace="n", entry="ingress", ingress_class="nginx"
    )
    assert spec["acme"]["solvers"] == [{"http01": {"ingress": {"ingressClassName": "nginx"}}}]


def test_gateway_listeners_terminate_tls_with_the_certificate_secret() -> None:
    spec = gw.gateway_spec("cls", "rag.example.com", "gateway-tls")
    http, https = spec["listeners"]
    assert (http["protocol"], http["port"]) == ("HTTP", 80)
    assert (https["protocol"], https["port"]) == ("HTTPS", 443)
    assert https["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "gateway-tls"}]
    assert spec["gatewayClassName"] == "cls"


def test_routes_redirect_http_and_send_https_to_the_service() -> None:
    redirect = gw.redirect_route_spec("gw", "rag.example.com")
    assert redirect["parentRefs"] == [{"name": "gw", "sectionName": "http"}]
    assert redirect["rules"][0]["filters"][0]["requestRedirect"] == {"scheme": "https", "statusCode": 301}
    route = gw.service_route_spec("gw", "rag.example.com", "rag", 8000)
    assert route["parentRefs"] == [{"name": "gw", "sectionName": "https"}]
    assert route["rules"][-1]["backendRefs"] == [{"name": "rag", "port": 8000}]


def test_the_public_route_keeps_metrics_inside_the_cluster() -> None:
    route = gw.service_route_spec("gw", "rag.example.com", "rag", 8000)

    def rule_for(path: str) -> dict:
        # Gateway API picks the longest matching PathPrefix.
        candidates = [
            (len(m["path"]["value"]), rule)
            for rule in route["rules"]
            for m in rule["matches"]
            if path == m["path"]["value"] or path.startswith(m["path"]["value"].rstrip("/") + "/")
        ]
        return max(candidates, key=lambda c: c[0])[1]

    assert "backendRefs" not in rule_for("/metrics")  # no backend: the gateway answers 404
    assert "backendRefs" not in rule_for("/metrics/extra")
    assert rule_for("/v1/search")["backendRefs"] == [{"name": "rag", "port": 8000}]
    assert rule_for("/metricsfoo")["backendRefs"] == [{"name": "rag", "port": 8000}]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hostname": "Not A Host"}, "hostname"),
        ({"acme_email": None}, "acme_email"),
        ({"issuer": "vault"}, "issuer"),
        ({"service_port": 0}, "service_port"),
        ({"entry": "loadbalancer"}, "entry"),
    ],
)
def test_invalid_args_fail_with_a_sentence(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        gw.validate_args(gateway_args(**overrides))
    assert str(info.value).endswith(".")


def test_selfsigned_needs_no_email() -> None:
    gw.validate_args(gateway_args(issuer="selfsigned", acme_email=None))


def test_gateway_entry_resources_and_crd_ordering() -> None:
    def build() -> gw.TlsGateway:
        crds = k8s.core.v1.Namespace("gateway-api-crds")
        return gw.TlsGateway("gateway", gateway_args(gateway_crds=(crds,)))

    program = run_components(build)
    component = program.one("rag:net:TlsGateway")
    children = [r for r in program.resources if r.parent == component.urn]
    assert {r.name for r in children} == {
        "gateway-cert-manager",
        "gateway-issuer",
        "gateway-certificate",
        "gateway-gateway",
        "gateway-redirect-route",
        "gateway-route",
        "gateway-health-check-policy",
    }
    release = program.named("gateway-cert-manager")
    assert release.inputs["chart"] == "cert-manager"
    assert release.inputs["version"] == gw.CERT_MANAGER_VERSION
    assert release.inputs["values"]["crds"]["enabled"] is True
    assert release.inputs["values"]["config"]["enableGatewayAPI"] is True
    crds = program.urn_of("gateway-api-crds")
    assert crds in release.depends_on
    for cr in ("gateway-issuer", "gateway-certificate"):
        assert release.urn in program.named(cr).depends_on
    for cr in ("gateway-gateway", "gateway-redirect-route", "gateway-route"):
        assert crds in program.named(cr).depends_on
    assert program.named("gateway-route").inputs["kind"] == "HTTPRoute"
    cert = program.named("gateway-certificate").inputs
    assert cert["spec"]["dnsNames"] == ["rag.example.com"]
    assert cert["spec"]["issuerRef"]["name"] == program.named("gateway-issuer").inputs["metadata"]["name"]
    gateway = program.named("gateway-gateway").inputs
    assert gateway["spec"]["listeners"][1]["tls"]["certificateRefs"][0]["name"] == cert["spec"]["secretName"]
    assert resolve(program.result.url) == "https://rag.example.com"


def test_gke_health_check_probes_readiness_path() -> None:
    spec = gw.gke_health_check_policy_spec("rag", 8000, "/readyz")
    assert spec["default"]["config"]["httpHealthCheck"] == {"port": 8000, "requestPath": "/readyz"}
    assert spec["targetRef"] == {"group": "", "kind": "Service", "name": "rag"}
    assert gw.lb_source_cidrs("gke-l7-global-external-managed") == ("35.191.0.0/16", "130.211.0.0/22")
    assert gw.lb_source_cidrs("eg") == ()
    other = run_gateway(gateway_args(gateway_class_name="eg"))
    assert "gateway-health-check-policy" not in {r.name for r in other.resources}


def test_ingress_fallback_and_existing_cert_manager() -> None:
    program = run_gateway(
        gateway_args(
            entry="ingress", ingress_class_name="nginx", install_cert_manager=False, issuer="selfsigned"
        )
    )
    assert_all_parented(program, "rag:net:TlsGateway")
    types = program.types()
    assert "kubernetes:helm.sh/v3:Release" not in types
    assert "kubernetes:gateway.networking.k8s.io/v1:Gateway" not in types
    ingress = program.one("kubernetes:networking.k8s.io/v1:Ingress").inputs
    assert ingress["spec"]["tls"] == [{"hosts": ["rag.example.com"], "secretName": "gateway-tls"}]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    # /metrics goes to a Service with no selector (no endpoints), never to the service's port.
    metrics, everything = ingress["spec"]["rules"][0]["http"]["paths"]
    assert (metrics["path"], metrics["pathType"]) == ("/metrics", "Prefix")
    assert metrics["backend"]["service"]["name"] == "gateway-closed"
    assert everything["path"] == "/"
    closed = program.one("kubernetes:core/v1:Service", "gateway-closed").inputs
    assert "selector" not in closed["spec"]
    assert validate_manifests(program) == 2


def test_a_guest_stack_issues_from_a_namespaced_issuer() -> None:
    program = run_gateway(gateway_args(namespace="pr-1", install_cert_manager=False, issuer_kind="Issuer"))
    issuer = program.one("kubernetes:cert-manager.io/v1:Issuer").inputs
    assert issuer["metadata"]["name"] == "gateway-letsencrypt-prod"
    assert issuer["metadata"]["namespace"] == "pr-1"
    # The HTTP-01 challenge is still answered through this stack's own Gateway.
    solver = issuer["spec"]["acme"]["solvers"][0]["http01"]["gatewayHTTPRoute"]
    assert solver["parentRefs"][0] == {
        "name": "gateway",
        "namespace": "pr-1",
        "kind": "Gateway",
        "sectionName": "http",
    }
    assert program.by_type("kubernetes:cert-manager.io/v1:ClusterIssuer") == []
    ref = program.named("gateway-certificate").inputs["spec"]["issuerRef"]
    assert ref == {"name": "gateway-letsencrypt-prod", "kind": "Issuer", "group": "cert-manager.io"}


def test_an_existing_cluster_issuer_is_used_and_none_is_created() -> None:
    program = run_gateway(
        gateway_args(
            install_cert_manager=False, existing_cluster_issuer="shared-letsencrypt", acme_email=None
        )
    )
    assert {r.name for r in program.resources} & {"gateway-issuer", "gateway-cert-manager"} == set()
    ref = program.named("gateway-certificate").inputs["spec"]["issuerRef"]
    assert ref == {"name": "shared-letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"issuer_kind": "Namespace"}, "issuer_kind"),
        ({"existing_cluster_issuer": "Not A Name"}, "existing_cluster_issuer"),
    ],
)
def test_invalid_issuer_choice_fails_with_a_sentence(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message):
        gw.validate_args(gateway_args(**overrides))


# ---------------------------------------------------------------------------------------------- PR stacks on EKS dev
GATEWAY_CLASS = "kubernetes:gateway.networking.k8s.io/v1:GatewayClass"
GATEWAY = "kubernetes:gateway.networking.k8s.io/v1:Gateway"


def _listeners(run_: StackRun) -> list[tuple[object, ...]]:
    return [
        (listener["port"], listener["protocol"], listener.get("hostname"))
        for g in run_.of_type(GATEWAY)
        for listener in g.inputs["spec"]["listeners"]
    ]


def test_an_eks_dev_merges_the_pr_stacks_gateways_onto_its_own_proxy() -> None:
    """dev on EKS declares the GatewayClass PR stacks name; only a merged EnvoyProxy puts their Gateways behind dev's
    NLB, the address *.<preview domain> points at (Envoy Gateway v1.9 EnvoyProxySpec.mergeGateways)."""
    dev = run("dev", "eks")
    (klass,) = dev.of_type(GATEWAY_CLASS)
    ref = klass.inputs["spec"]["parametersRef"]
    proxy = dev.by_name("envoy-proxy")
    assert (ref["kind"], ref["name"], ref["namespace"]) == (
        "EnvoyProxy",
        proxy.inputs["metadata"]["name"],
        proxy.inputs["metadata"]["namespace"],
    )
    assert proxy.inputs["spec"]["mergeGateways"] is True
    # The NLB settings stay: the merged fleet's one Service is that NLB.
    assert (
        proxy.inputs["spec"]["provider"]["kubernetes"]["envoyService"]["annotations"][NLB_TYPE_ANNOTATION]
        == "nlb"
    )
    source, errors = render.validate_manifest(render.manifest_of(proxy))
    assert source
    assert errors == []

    # A PR stack on dev's cluster (the template's overrides, reaching it as an existing cluster): it names dev's
    # class, and its listeners do not collide with dev's, so Envoy Gateway accepts both onto one fleet.
    pr = run(
        "dev",
        "existing",
        namespace="pr-7",
        gateway={"className": klass.inputs["metadata"]["name"], "hostname": "pr-7.preview.example.com"},
        tls={"installCertManager": False},
    )
    assert {g.inputs["spec"]["gatewayClassName"] for g in pr.of_type(GATEWAY)} == {
        klass.inputs["metadata"]["name"]
    }
    both = _listeners(dev) + _listeners(pr)
    assert all(hostname for *_, hostname in both)
    assert len(set(both)) == len(both)

    # The deployability check (make plan) catches a dev class that does not merge; test_deployability.py's matrix
    # already runs the whole analysis on dev as it is.
    def merge_findings(run_: StackRun) -> list[tuple[str, str]]:
        found = deployability.check_cloud_args(
            run_, deployability.Analysis(target="eks"), deployability.Graph(run_)
        )
        return [(f.check, f.name) for f in found if "merge" in f.message]

    assert merge_findings(dev) == []
    unmerged_spec = {k: v for k, v in proxy.inputs["spec"].items() if k != "mergeGateways"}
    cut = dataclasses.replace(proxy, inputs={**proxy.inputs, "spec": unmerged_spec})
    broken = dataclasses.replace(dev, resources=[cut if r is proxy else r for r in dev.resources])
    assert merge_findings(broken) == [("cloud-args", klass.name)]


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_staging_and_prod_on_eks_keep_one_proxy_per_gateway(stack: str) -> None:
    """Their clusters hold one Gateway each: merging buys nothing, and switching a deployed class to merged mode
    replaces its proxy Service, so the load balancer's address would change once."""
    proxy = run(stack, "eks").by_name("envoy-proxy")
    assert "mergeGateways" not in proxy.inputs["spec"]
    assert eks.envoy_proxy_spec(False) == eks.envoy_proxy_spec(False, merge_gateways=False)
    assert eks.envoy_proxy_spec(True, merge_gateways=True)["mergeGateways"] is True


def test_a_load_balancer_scheme_switch_on_eks_gives_the_proxy_a_new_service() -> None:
    """The cloud provider never changes an existing NLB's scheme (cloud-provider-aws ensureLoadBalancerv2, "TODO:
    Sync internal vs non-internal"): a switch that only flipped the annotation left a public NLB behind a stack set
    to internal. The internal Service has its own name, so Envoy Gateway creates a new one (a new NLB) and deletes
    the other; the public one keeps Envoy Gateway's generated name, which deployed public stacks run with."""

    def proxy(load_balancer: str) -> dict[str, object]:
        spec = (
            run("dev", "eks", gateway={"loadBalancer": load_balancer}).by_name("envoy-proxy").inputs["spec"]
        )
        return spec["provider"]["kubernetes"]

    public, service = proxy("public"), proxy("internal")["envoyService"]
    assert "name" not in public["envoyService"]
    assert public["envoyService"]["annotations"] == {eks.NLB_TYPE_ANNOTATION: "nlb"}
    assert service["name"] == eks.ENVOY_INTERNAL_SERVICE
    assert service["annotations"][eks.NLB_INTERNAL_ANNOTATION] == "true"
    # A Service name: a DNS-1035 label.
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", eks.ENVOY_INTERNAL_SERVICE)


@pytest.mark.parametrize(("stack", "replicas"), [("dev", 2), ("staging", 2), ("prod", 3)])
def test_the_eks_proxy_runs_several_pods_spread_and_drained_one_at_a_time(stack: str, replicas: int) -> None:
    """Every request of the stack goes through Envoy: Envoy Gateway's default of one proxy pod, no budget, made
    each node drain (every EKS version upgrade replaces every node) a full outage. Pods follow the labels Envoy
    Gateway gives its proxies, so the spread counts them and nothing else."""
    spec = run(stack, "eks").by_name("envoy-proxy").inputs["spec"]["provider"]["kubernetes"]
    deployment = spec["envoyDeployment"]
    assert deployment["replicas"] == replicas >= 2
    assert spec["envoyPDB"] == {"maxUnavailable": 1}
    spread = deployment["pod"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "envoy",
            "app.kubernetes.io/component": "proxy",
            "app.kubernetes.io/managed-by": "envoy-gateway",
        }
        # Preferred, not required: a zone short of room must still get a proxy pod rather than none.
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spec["envoyService"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"


# ---------------------------------------------------------------------------------------------- TLS bootstrap
@pytest.mark.parametrize(
    ("overrides", "temporary"),
    [
        ({"issuer": "letsencrypt-staging"}, True),
        ({"issuer": "letsencrypt-prod"}, True),
        ({"install_cert_manager": False, "existing_cluster_issuer": "shared", "acme_email": None}, True),
        ({"issuer": "selfsigned"}, False),
        ({"issuer": "letsencrypt-prod", "entry": "ingress", "ingress_class_name": "gce"}, True),
    ],
)
def test_the_listener_secret_exists_before_issuance_and_the_entry_waits_for_it(
    overrides: dict[str, object], temporary: bool
) -> None:
    """An ACME Certificate gets cert-manager's temporary certificate, so the Secret the HTTPS listener (or the
    Ingress) names exists from the start: GKE does not program a Gateway whose listener Secret is missing, and then
    the HTTP-01 challenge through that Gateway could never be answered. The Secret itself is never declared (it is
    cert-manager's to write), and the entry is created after the Certificate."""
    program = run_gateway(gateway_args(**overrides))
    certificate = program.named("gateway-certificate")
    annotations = certificate.inputs["metadata"].get("annotations", {})
    if temporary:
        assert annotations == {gw.TEMPORARY_CERTIFICATE_ANNOTATION: "true"}
    else:
        assert gw.TEMPORARY_CERTIFICATE_ANNOTATION not in annotations
    assert gw.TEMPORARY_CERTIFICATE_ANNOTATION == "cert-manager.io/issue-temporary-certificate"
    assert program.by_type("kubernetes:core/v1:Secret") == []
    entry = (
        program.one("kubernetes:networking.k8s.io/v1:Ingress")
        if overrides.get("entry") == "ingress"
        else program.named("gateway-gateway")
    )
    assert certificate.urn in entry.depends_on
    document = {k: certificate.inputs[k] for k in ("apiVersion", "kind", "metadata", "spec")}
    source, errors = render.validate_manifest(document)
    assert source.startswith("cert-manager.io/")
    assert errors == []
