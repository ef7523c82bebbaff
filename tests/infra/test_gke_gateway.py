"""GKE's regional Gateway classes: a proxy-only subnet, and the API's NetworkPolicy admitting the proxies in it.

`gke-l7-regional-external-managed` and `gke-l7-rilb` are Envoy-based load balancers. GKE requires a proxy-only
subnet in the region for them (without it the Gateway never gets an address), and their proxies reach the pods
from that subnet's addresses, not from Google's front-end ranges (35.191.0.0/16, 130.211.0.0/22), which only carry
their health checks. Before this, the regional external class (the one the config error suggests) had no subnet,
and both classes' traffic was dropped by the API's NetworkPolicy while the health checks passed.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from infra import deployability as d
from infra.components.gateway import GKE_HEALTH_CHECK_CIDRS, GKE_PROXY_ONLY_CIDR, lb_source_cidrs
from tests.infra.conftest import run

REGIONAL = {"className": "gke-l7-regional-external-managed", "loadBalancer": "public"}


def api_ingress_cidrs(result) -> set[str]:
    policy = result.by_name("rag-api-netpol").inputs["spec"]
    return {
        peer["ipBlock"]["cidr"]
        for rule in policy["ingress"]
        if 8000 in [p["port"] for p in rule["ports"]]
        for peer in rule.get("from", [])
        if "ipBlock" in peer
    }


def admits(cidrs: set[str], address: str) -> bool:
    return any(ipaddress.ip_address(address) in ipaddress.ip_network(cidr) for cidr in cidrs)


@pytest.mark.parametrize(
    ("gateway", "tls"),
    [(REGIONAL, {}), ({"className": "gke-l7-rilb", "loadBalancer": "internal"}, {"issuer": "selfSigned"})],
)
def test_a_regional_class_gets_the_subnet_and_the_api_admits_its_proxies(gateway: dict, tls: dict) -> None:
    result = run("staging", "gke", gateway=gateway, tls=tls)
    subnet = result.by_name("proxy-only-subnet")
    assert (subnet.inputs["purpose"], subnet.inputs["role"]) == ("REGIONAL_MANAGED_PROXY", "ACTIVE")
    assert subnet.inputs["ipCidrRange"] == GKE_PROXY_ONLY_CIDR
    cidrs = api_ingress_cidrs(result)
    # A proxy's address in the subnet, and a health check's, both reach the API port.
    assert admits(cidrs, "10.129.1.17")
    assert admits(cidrs, "35.191.3.4")
    # The Gateway waits for the subnet (a destroy removes its load balancer first).
    assert subnet.urn in d.Graph(result).closure(result.by_name("gateway-gateway").urn)
    assert d.analyse(result, waivers={}).findings == []


def test_the_global_class_needs_no_subnet_and_admits_only_googles_ranges() -> None:
    result = run("staging", "gke")
    assert not [r for r in result.resources if r.name == "proxy-only-subnet"]
    assert api_ingress_cidrs(result) == set(GKE_HEALTH_CHECK_CIDRS)
    assert lb_source_cidrs("gke-l7-global-external-managed") == GKE_HEALTH_CHECK_CIDRS
    assert lb_source_cidrs("gke-l7-regional-external-managed") == (
        *GKE_HEALTH_CHECK_CIDRS,
        GKE_PROXY_ONLY_CIDR,
    )


def test_a_regional_gateway_without_the_subnet_or_not_waiting_for_it_is_a_finding() -> None:
    result = run("staging", "gke", gateway=REGIONAL)
    subnet = result.by_name("proxy-only-subnet")
    gone = dataclasses.replace(result, resources=[r for r in result.resources if r is not subnet])
    found = [(f.check, f.name) for f in d.analyse(gone, waivers={}).findings]
    assert ("capability", "gateway-gateway") in found

    gateway = result.by_name("gateway-gateway")
    # The Gateway also waits for the subnet through its Certificate (-> cert-manager -> the cluster's Gateway API
    # resources): cut both paths.
    certificate = result.by_name("gateway-certificate").urn
    cut = dataclasses.replace(
        gateway, depends_on=tuple(u for u in gateway.depends_on if u not in (subnet.urn, certificate))
    )
    loose = dataclasses.replace(result, resources=[cut if r is gateway else r for r in result.resources])
    found = [(f.check, f.name, "subnet" in f.message) for f in d.analyse(loose, waivers={}).findings]
    assert sorted(found) == [
        ("reads-order", "gateway-gateway", False),
        ("reads-order", "gateway-gateway", True),
    ]


def test_staging_on_gke_bootstraps_its_listener_secret_and_the_check_catches_a_regression() -> None:
    """Staging on GKE issues from Let's Encrypt through its own Gateway (HTTP-01). GKE fails the whole Gateway while
    the HTTPS listener's Secret is missing, so the Certificate must have cert-manager write a temporary one first
    (cert-manager/google-cas-issuer#262: the Gateway only came up once the Secret existed)."""
    result = run("staging", "gke")
    certificate = result.by_name("gateway-certificate")
    gateway = result.by_name("gateway-gateway")
    assert gateway.inputs["spec"]["gatewayClassName"] == "gke-l7-global-external-managed"
    secret = gateway.inputs["spec"]["listeners"][1]["tls"]["certificateRefs"][0]["name"]
    assert certificate.inputs["spec"]["secretName"] == secret
    assert certificate.inputs["metadata"]["annotations"] == {
        "cert-manager.io/issue-temporary-certificate": "true"
    }
    assert certificate.urn in gateway.depends_on
    # The program never declares that Secret: cert-manager owns its data, so `pulumi up` cannot overwrite it.
    assert not [
        r for r in result.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["name"] == secret
    ]
    assert not [
        f
        for f in d.check_capabilities(result, d.Analysis(target="gke"), d.Graph(result))
        if f.name
        in (
            certificate.name,
            gateway.name,
        )
    ]

    bare = dataclasses.replace(
        certificate,
        inputs={**certificate.inputs, "metadata": {**certificate.inputs["metadata"], "annotations": {}}},
    )
    loose_gateway = dataclasses.replace(
        gateway, depends_on=tuple(u for u in gateway.depends_on if u != certificate.urn)
    )
    broken = dataclasses.replace(
        result,
        resources=[
            bare if r is certificate else loose_gateway if r is gateway else r for r in result.resources
        ],
    )
    found = sorted(
        (f.check, f.name)
        for f in d.check_capabilities(broken, d.Analysis(target="gke"), d.Graph(broken))
        if f.name in (certificate.name, gateway.name)
    )
    assert found == [("capability", certificate.name), ("reads-order", gateway.name)]
    # dev's self-signed issuer signs at once: no temporary certificate.
    dev = run("dev").by_name("gateway-certificate")
    assert "cert-manager.io/issue-temporary-certificate" not in dev.inputs["metadata"].get("annotations", {})
