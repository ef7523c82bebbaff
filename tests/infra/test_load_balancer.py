"""The gateway's cloud load balancer: an NLB on EKS (not the in-tree Classic ELB), internal in a private prod.

`rag:gateway.loadBalancer` (auto | internal | public) decides; `auto` is internal in prod when the cluster's API
endpoint is private. The annotations are the in-tree AWS controller's (cloud-provider-aws
`ServiceAnnotationLoadBalancerType` / `...Internal`), set through Envoy Gateway v1.9.0's EnvoyProxy
`provider.kubernetes.envoyService.annotations`, referenced by the GatewayClass `parametersRef`.
"""

from __future__ import annotations

import dataclasses

import pytest

from infra import deployability as d
from infra.config import ConfigError, StackConfig, internal_load_balancer
from infra.offline import StackRun
from tests.infra.conftest import run
from tests.infra.test_deployability import findings, k8s, program, release, res
from tests.infra.test_stack import config

NLB = {d.AWS_LB_TYPE: "nlb"}
INTERNAL = {**NLB, d.AWS_LB_INTERNAL: "true"}
#: An existing ClusterIssuer (e.g. DNS-01): the one way a private gateway still gets a public certificate.
DNS01 = {"clusterIssuer": "corp-dns01"}


def with_choice(config: StackConfig, choice: str, *, endpoint_public: bool | None = None) -> StackConfig:
    """`config` with gateway.loadBalancer `choice` (past the config rules, to test the resolution alone)."""
    config = dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, loadBalancer=choice))
    if endpoint_public is not None:
        eks = dataclasses.replace(config.cluster.eks, endpointPublicAccess=endpoint_public)
        config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, eks=eks))
    return config


def proxy_annotations(result: StackRun) -> dict[str, str]:
    spec = result.by_name("envoy-proxy").inputs["spec"]
    return spec["provider"]["kubernetes"]["envoyService"]["annotations"]


def test_the_eks_gateway_gets_an_nlb_through_the_gateway_class() -> None:
    result = run("prod", "eks")
    assert proxy_annotations(result) == NLB  # Pulumi.prod.yaml opens it: gateway.loadBalancer public
    gateway_class = result.by_name("gateway-class")
    assert gateway_class.inputs["spec"]["parametersRef"] == {
        "group": "gateway.envoyproxy.io",
        "kind": "EnvoyProxy",
        "name": "rag-proxy",
        "namespace": "envoy-gateway-system",
    }
    # The EnvoyProxy exists before the class that references it, and after the chart that installs its CRD.
    assert result.by_name("envoy-proxy").urn in gateway_class.depends_on
    assert result.by_name("envoy-gateway").urn in result.by_name("envoy-proxy").depends_on
    (subnet,) = [r.inputs["tags"] for r in result.of_type("aws:ec2/subnet:Subnet") if r.name == "private-0"]
    assert subnet["kubernetes.io/cluster/rag-prod"] == "shared"
    assert subnet["kubernetes.io/role/internal-elb"] == "1"


def test_auto_is_internal_in_a_private_prod_and_public_elsewhere() -> None:
    prod = config("prod")
    assert not internal_load_balancer(prod)  # Pulumi.prod.yaml: public, on purpose
    assert internal_load_balancer(with_choice(prod, "auto"))  # the EKS endpoint is private by default
    assert not internal_load_balancer(with_choice(prod, "auto", endpoint_public=True))
    assert not internal_load_balancer(with_choice(config("staging"), "auto"))  # auto is public outside prod
    assert internal_load_balancer(with_choice(config("staging"), "internal"))
    # The program follows it: an internal NLB on EKS.
    staging = run(
        "staging",
        "eks",
        gateway={"loadBalancer": "internal", "className": "envoy-gateway"},
        tls={"issuer": "selfSigned"},
    )
    assert proxy_annotations(staging) == INTERNAL
    assert proxy_annotations(run("staging", "eks")) == NLB


def test_an_internal_gateway_cannot_answer_http01_and_an_internal_gke_class_is_required() -> None:
    with pytest.raises(ConfigError, match=r"gateway\.loadBalancer.*HTTP-01"):
        run("prod", "eks", gateway={"loadBalancer": "auto"})  # private prod + Let's Encrypt HTTP-01
    with pytest.raises(ConfigError, match=r"gateway\.className.*external GKE Gateway class"):
        run("staging", "gke", gateway={"loadBalancer": "internal"}, tls={"issuer": "selfSigned"})
    internal = run(
        "staging",
        "gke",
        gateway={"loadBalancer": "internal", "className": "gke-l7-rilb"},
        tls={"issuer": "selfSigned"},
    )
    subnet = internal.by_name("proxy-only-subnet").inputs
    assert (subnet["purpose"], subnet["role"]) == ("REGIONAL_MANAGED_PROXY", "ACTIVE")
    assert not [r for r in run("staging", "gke").resources if r.name == "proxy-only-subnet"]


# --------------------------------------------------------------------------------------------- the checks
def eks_program(*proxy: object, parameters: bool = True, **config: object) -> StackRun:
    cluster = res(d.EKS_CLUSTER, "eks", {"name": "rag-t", "vpcConfig": {"endpointPublicAccess": False}})
    chart = release("envoy-gateway", "gateway-helm")
    spec: dict = {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}
    if parameters:
        spec["parametersRef"] = {
            "group": "gateway.envoyproxy.io",
            "kind": "EnvoyProxy",
            "name": "rag-proxy",
            "namespace": "envoy-gateway-system",
        }
    gateway_class = k8s(
        "GatewayClass", "eg", spec, api="gateway.networking.k8s.io/v1", ns=None, deps=(chart, *proxy)
    )
    return program(cluster, chart, *proxy, gateway_class, **config)


def envoy_proxy(annotations: dict[str, str]) -> object:
    spec = {
        "provider": {"type": "Kubernetes", "kubernetes": {"envoyService": {"annotations": annotations}}},
        # As the EKS target sets it on dev (the synthetic programs' environment): PR stacks share dev's proxy.
        "mergeGateways": True,
    }
    chart = release("envoy-gateway", "gateway-helm")
    return dataclasses.replace(
        k8s("EnvoyProxy", "rag-proxy", spec, api="gateway.envoyproxy.io/v1alpha1", ns="envoy-gateway-system"),
        depends_on=(chart.urn,),
    )


def test_a_classic_elb_is_a_finding() -> None:
    # (Without any EnvoyProxy, dev's class also merges nothing: a second cloud-args finding.)
    found = [f.message for f in findings(eks_program(parameters=False)) if f.check == "cloud-args"]
    assert [m for m in found if "Classic Load Balancer" in m]
    assert [f for f in findings(eks_program(envoy_proxy(NLB))) if f.check == "cloud-args"] == []


def test_a_public_gateway_in_a_private_prod_is_an_exposure_unless_config_opens_it() -> None:
    public = eks_program(envoy_proxy(NLB), environment="prod")
    assert [f.check for f in findings(public)] == ["exposure"]
    assert findings(eks_program(envoy_proxy(INTERNAL), environment="prod")) == []
    opened = eks_program(envoy_proxy(NLB), environment="prod", gateway={"loadBalancer": "public"})
    assert findings(opened) == []
    assert findings(eks_program(envoy_proxy(NLB), environment="staging")) == []


def _api_sources(result: StackRun) -> list[str]:
    """The ipBlock CIDRs the API's NetworkPolicy admits."""
    return [
        peer["ipBlock"]["cidr"]
        for rule in result.by_name("rag-api-netpol").inputs["spec"]["ingress"]
        for peer in rule.get("from", [])
        if "ipBlock" in peer
    ]


@pytest.mark.parametrize(
    ("class_name", "load_balancer", "regional"),
    [
        ("gke-l7-global-external-managed", "public", False),
        ("gke-l7-regional-external-managed", "public", True),
        ("gke-l7-rilb", "internal", True),
    ],
)
def test_each_gke_class_reaches_the_pods_from_where_its_proxies_are(
    class_name: str, load_balancer: str, regional: bool
) -> None:
    """A request travels LB proxy -> pod: the proxies of the regional Envoy-based classes sit in the region's
    proxy-only subnet (Google Cloud, "Proxy-only subnets for Envoy-based load balancers"), so that subnet must
    exist (or the Gateway never gets an address) and the API's NetworkPolicy must admit it (or every proxied
    request is dropped while the health checks, from 35.191.0.0/16 and 130.211.0.0/22, still pass)."""
    result = run(
        "staging",
        "gke",
        gateway={"loadBalancer": load_balancer, "className": class_name},
        tls={"issuer": "selfSigned"},
    )
    subnets = [r for r in result.resources if r.name == "proxy-only-subnet"]
    sources = _api_sources(result)
    assert {"35.191.0.0/16", "130.211.0.0/22"} <= set(sources)  # health checks (and the GFE proxies)
    if regional:
        (subnet,) = subnets
        assert (subnet.inputs["purpose"], subnet.inputs["role"]) == ("REGIONAL_MANAGED_PROXY", "ACTIVE")
        assert subnet.inputs["ipCidrRange"] in sources
    else:
        assert not subnets
        assert len(sources) == 2
