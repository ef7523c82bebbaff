"""`TlsGateway` (`rag:net:TlsGateway`): HTTPS entry to the service with certificates from cert-manager.

Creates:
- cert-manager from its official Helm chart (pinned; CRDs installed by the chart; Gateway API support switched on
  in its ControllerConfiguration) unless `install_cert_manager=False`,
- an issuer per environment: `selfsigned` (dev), `letsencrypt-staging` or `letsencrypt-prod` (ACME with the
  HTTP-01 challenge answered through a Gateway API HTTPRoute on our Gateway). It is a cluster-scoped
  `ClusterIssuer` by default, or a namespaced `Issuer` (`issuer_kind="Issuer"`) so several stacks can share one
  cluster without fighting over one cluster-wide name; with `existing_cluster_issuer` none is created and the
  Certificate uses that ClusterIssuer,
- a Certificate for the hostname, stored in the Secret the listener uses. With an ACME (or an existing) issuer it
  carries cert-manager's `issue-temporary-certificate` annotation: cert-manager writes a temporary certificate for
  the hostname (signed by a throw-away CA) into that Secret at once, and replaces it when the real one is issued.
  GKE's Gateway controller translates a Gateway only when every listener is valid, and an HTTPS listener whose
  Secret does not exist is not ("failed to translate Gateway ... Listener "https" is invalid"): without the
  temporary certificate the load balancer is never programmed, so Let's Encrypt's HTTP-01 request on port 80
  never reaches the solver, so the Secret is never written. The Secret stays cert-manager's alone (the program
  declares no Secret, so nothing fights over its data), and the Gateway (or Ingress) is created after the
  Certificate. Until issuance HTTPS answers with the temporary certificate (untrusted) instead of failing the
  handshake; on Envoy Gateway, which only marks such a listener invalid, that is the one difference,
- entry `gateway` (default): a Gateway API `Gateway` of `gateway_class_name` with an HTTP listener (only
  redirects) and an HTTPS listener terminating TLS with `certificateRefs`, an HTTPRoute redirecting HTTP to
  HTTPS (301) and the HTTPRoute to the service; entry `ingress`: a networking.k8s.io/v1 Ingress fallback with
  the same certificate (ACME solved through the ingress class), `/metrics` sent to a selector-less Service
  `<name>-closed` (no endpoints: never the service's port),
- on GKE gateway classes, a `HealthCheckPolicy` so Google's load balancer probes the readiness path rather than `/`.

CRD ordering: the ClusterIssuer and Certificate depend on the cert-manager release that installs their CRDs; the
Gateway and HTTPRoutes depend on `gateway_crds` (whatever installs the Gateway API CRDs: GKE has them built in).
Outputs: `url`, the public https URL of the service, and `address`, the load balancer's address to point the
hostname's DNS record at, read from the deployed entry's status at every `up` (`entry_address`).

Why a read and not the entry's own outputs: a resource's outputs are what the provider saw at its last create or
update, and the load balancer can change under an unchanged entry (on EKS a `gateway.loadBalancer` switch changes
the EnvoyProxy, not the Gateway; an ingress controller may replace its Service). A `get` is read again by every
`up` (and by a preview of a deployed stack), so the address never comes from an earlier update. On cloud targets
the Gateway also waits for `Programmed` (`wait_for_address`): Envoy Gateway v1.9.0 and GKE set it only once the
Gateway has an address (Envoy Gateway `updateGatewayProgrammedCondition`: `AddressNotAssigned` until then), so the
first `up`'s read already finds one; on cloud targets the Ingress is awaited until its controller publishes an address
(pulumi-kubernetes' Ingress awaiter), elsewhere not (`SKIP_AWAIT_ANNOTATION`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s

from infra.components import specs
from infra.components.specs import require

CERT_MANAGER_CHART = "cert-manager"
CERT_MANAGER_REPO = "https://charts.jetstack.io"
CERT_MANAGER_VERSION = "v1.21.1"
ACME_SERVERS = {
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "letsencrypt-prod": "https://acme-v02.api.letsencrypt.org/directory",
}
ISSUERS = ("selfsigned", *ACME_SERVERS)
TEMPORARY_CERTIFICATE_ANNOTATION = "cert-manager.io/issue-temporary-certificate"
"""cert-manager's Certificate annotation (cmapi.IssueTemporaryCertificateAnnotation): while the issuer works, store
a temporary certificate in the target Secret when that Secret is missing or holds no valid pair."""
ENVOY_GATEWAY_CRDS_CHART = "gateway-crds-helm"
"""Envoy Gateway's CRD-only chart, released with the same version as gateway-helm (charts/gateway-crds-helm)."""
CRD_TYPE = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"
GKE_HEALTH_CHECK_CIDRS = ("35.191.0.0/16", "130.211.0.0/22")
"""Source ranges of Google Cloud health checks, and of the global external Application Load Balancer's Google Front
Ends (for the service's NetworkPolicy on GKE)."""
GKE_PROXY_ONLY_CIDR = "10.129.0.0/23"
"""The proxy-only subnet the GKE target creates for the regional Gateway classes."""
GKE_PROXY_ONLY_CLASSES = frozenset({"gke-l7-regional-external-managed", "gke-l7-rilb"})
"""GKE Gateway classes whose load balancer is Envoy-based and regional: they need a proxy-only subnet in the region
(GKE "Deploying Gateways", requirements) and their proxies reach the pods from its addresses, not from Google's
front-end ranges (Cloud Load Balancing "Firewall rules": Envoy-based load balancers send from the proxy-only subnet)."""
PROGRAMMED_WAIT = "condition=Programmed"
"""`pulumi.com/waitFor` on the Gateway (cloud targets): pulumi-kubernetes waits, on create and every update, until the
Gateway's Programmed condition is True for its current generation (await/condition kubectl.go compares the
condition's observedGeneration)."""
WAIT_FOR_ANNOTATION = "pulumi.com/waitFor"
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"
"""On the Ingress where `wait_for_address` is off: pulumi-kubernetes awaits every Ingress (create, update, refresh)
until `.status.loadBalancer.ingress` has an address (await/ingress.go `processIngressEvent`: `ingressReady` only
with one; default timeout 10 minutes), so on a cluster whose controller never publishes one every `up` failed at the
Ingress; with it the `up` completes and `ingressAddress` stays None until one is published (REVIEW11 M3)."""
GATEWAY_ADDRESS_TIMEOUT = "20m"
"""How long an `up` waits for a cloud load balancer behind a new or changed Gateway (the provider's default is 10
minutes; a GKE load balancer's first programming takes several)."""
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class TlsGatewayArgs:
    """Arguments of `TlsGateway`."""

    namespace: str
    """Namespace of the Gateway/Ingress, routes and Certificate (the service's namespace)."""
    hostname: str
    """Public DNS name of the service (point it at the Gateway's address)."""
    service_name: str
    service_port: int
    issuer: Literal["selfsigned", "letsencrypt-staging", "letsencrypt-prod"]
    acme_email: str | None = None
    """Contact e-mail of the ACME account (required for Let's Encrypt)."""
    entry: Literal["gateway", "ingress"] = "gateway"
    gateway_class_name: str = "gke-l7-global-external-managed"
    ingress_class_name: str | None = None
    """IngressClass for the `ingress` fallback (None uses the cluster default)."""
    gateway_annotations: Mapping[str, str] = field(default_factory=dict)
    health_check_path: str = "/readyz/serving"
    """Path cloud load balancers probe on the service (GKE: a HealthCheckPolicy; "/" would 404)."""
    install_cert_manager: bool = True
    cert_manager_version: str = CERT_MANAGER_VERSION
    cert_manager_namespace: str = "cert-manager"
    leader_election_in_own_namespace: bool = False
    """Keep cert-manager's leader-election leases (and the Roles granting them) in `cert_manager_namespace` instead
    of the chart's `kube-system` (values `global.leaderElection.namespace`). GKE Autopilot denies every write to
    kube-system (GKE Warden, managed-namespaces-limitation), so there the chart's Role could not be created."""
    cert_manager: pulumi.Resource | None = None
    """A cert-manager installed elsewhere, waited for when install_cert_manager is False."""
    gateway_crds: tuple[pulumi.Resource, ...] = ()
    """Resources installing the Gateway API CRDs; the Gateway and routes wait for them."""
    issuer_kind: Literal["ClusterIssuer", "Issuer"] = "ClusterIssuer"
    """The issuer created: a ClusterIssuer (one name per cluster, so only for the stack that owns the cluster's
    cert-manager) or an Issuer in `namespace` (any number of stacks per cluster)."""
    existing_cluster_issuer: str | None = None
    """Name of a ClusterIssuer that already exists in the cluster: the Certificate uses it and no issuer is
    created (`issuer`, `acme_email` and `issuer_kind` are then unused)."""
    wait_for_address: bool = False
    """Wait (on create and every update) until the Gateway is Programmed (the Ingress: has an address), on cloud targets,
    where the entry is a cloud load balancer. Off on `existing` clusters, whose Gateway implementation may never
    assign one (a local cluster without a load balancer)."""
    backend: pulumi.Input[pulumi.Resource] | None = None
    """The Service the entry routes to (`service_name`), or an awaitable of it when it is declared after this
    component (the stack builds the service after the registry, which needs this component's cert-manager). The
    Gateway, its routes and HealthCheckPolicy (or the Ingress) wait for it, so a destroy deletes them, and the load
    balancer the Gateway's GKE finalizer tears down, before the Service: nothing else links them (the routes name it
    by string), and a Service deleted first left GKE's NEG controller retrying to delete NEGs a backend service
    still used (REVIEW9 R9). A create waits for it too (pulumi-kubernetes awaits a Service's first ready endpoint):
    a first `up` programs the load balancer once the API pods are ready, not in parallel with their start."""
    depends_on: tuple[pulumi.Resource, ...] = ()


def validate_args(args: TlsGatewayArgs) -> None:
    """Raise ComponentArgsError with a full sentence when the args cannot produce a working HTTPS entry."""
    specs.check_dns_label(args.namespace, "TlsGatewayArgs.namespace")
    specs.check_dns_label(args.service_name, "TlsGatewayArgs.service_name")
    require(
        bool(_HOSTNAME.match(args.hostname)),
        f"TlsGatewayArgs.hostname {args.hostname!r} must be a lower-case fully qualified DNS name.",
    )
    require(1 <= args.service_port <= 65535, "TlsGatewayArgs.service_port must be between 1 and 65535.")
    require(
        args.issuer in ISSUERS, f"TlsGatewayArgs.issuer {args.issuer!r} must be one of {', '.join(ISSUERS)}."
    )
    require(args.entry in ("gateway", "ingress"), "TlsGatewayArgs.entry must be 'gateway' or 'ingress'.")
    require(
        args.issuer_kind in ("ClusterIssuer", "Issuer"),
        "TlsGatewayArgs.issuer_kind must be 'ClusterIssuer' or 'Issuer'.",
    )
    if args.existing_cluster_issuer is not None:
        specs.check_dns_label(args.existing_cluster_issuer, "TlsGatewayArgs.existing_cluster_issuer")
    elif args.issuer in ACME_SERVERS:
        require(
            args.acme_email is not None and bool(_EMAIL.match(args.acme_email)),
            f"TlsGatewayArgs.acme_email must be a valid e-mail address for the {args.issuer} issuer.",
        )
    if args.entry == "gateway":
        specs.check_dns_label(args.gateway_class_name, "TlsGatewayArgs.gateway_class_name")
    require(
        args.health_check_path.startswith("/"),
        "TlsGatewayArgs.health_check_path must be an absolute URL path.",
    )


# ---------------------------------------------------------------------------------------------- pure specs
def cert_manager_values(
    gateway_api: bool = True, leader_election_namespace: str | None = None
) -> dict[str, Any]:
    """Helm values: install the CRDs with the chart (kept on uninstall); Gateway API support only when used;
    the leader-election leases in `leader_election_namespace` when given (the chart's default is kube-system).

    cert-manager with Gateway API support on exits at start-up if the Gateway API CRDs are missing (v1.21.1
    pkg/controller/context.go; the atomic release would then roll back), so it is switched on only for the
    `gateway` entry, whose CRDs the release waits for (`gateway_crds`) or which the cluster target documents as a
    prerequisite. `enableGatewayAPI` is deprecated in v1.21 for `gatewayAPI.enabled` but still read (its defaults
    copy it over when `gatewayAPI.enabled` is unset: internal/apis/config/controller/v1alpha1/defaults.go), and
    unlike the new key it is also understood by the older versions `rag:tls.certManagerVersion` may pin.
    The CRDs are chart templates (`crds.enabled`), so `helm upgrade` upgrades them with a version bump, and
    `crds.keep` annotates them `helm.sh/resource-policy: keep`: uninstalling the release (or switching
    `installCertManager` off) never deletes them and every Certificate and Issuer in them.
    """
    values: dict[str, Any] = {
        "crds": {"enabled": True, "keep": True},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    }
    if leader_election_namespace is not None:
        values["global"] = {"leaderElection": {"namespace": leader_election_namespace}}
    if gateway_api:
        values["config"] = {
            "apiVersion": "controller.config.cert-manager.io/v1alpha1",
            "kind": "ControllerConfiguration",
            "enableGatewayAPI": True,
        }
    return values


def envoy_gateway_crd_values() -> dict[str, Any]:
    """gateway-crds-helm values: the Gateway API CRDs and Envoy Gateway's own, on the experimental channel.

    Experimental because gateway-helm v1.9.0 installs that channel from its crds/ (charts/crds/crds/
    gatewayapi-crds.yaml, "Gateway API Experimental channel install"): the CRDs of a cluster first deployed with it
    stay on their channel, and the Gateway API safe-upgrade ValidatingAdmissionPolicy that gateway-helm renders
    refuses experimental CRDs over standard ones, not the reverse (charts/crds/templates/
    gatewayapi-safe-upgrade-policy.yaml at v1.9.0).
    """
    return {
        "crds": {
            "gatewayAPI": {"enabled": True, "channel": "experimental"},
            "envoyGateway": {"enabled": True},
        }
    }


def retain_crds(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
    """Keep every CustomResourceDefinition in the cluster when Pulumi deletes it (`retain_on_delete`).

    Deleting a CRD deletes every object of its kind (each Gateway, HTTPRoute, EnvoyProxy of every stack on the
    cluster), so neither removing the chart from the program, nor replacing it, nor a chart switch may do it.
    A transform on the chart applies to the children the provider creates for it."""
    if args.type_ != CRD_TYPE:
        return None
    return pulumi.ResourceTransformResult(
        props=args.props,
        opts=pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(retain_on_delete=True)),
    )


def envoy_gateway_crds(
    name: str, repository: str, version: str, opts: pulumi.ResourceOptions
) -> k8s.helm.v4.Chart:
    """Envoy Gateway's CRDs (Gateway API + gateway.envoyproxy.io) applied server-side by Pulumi, at `version`.

    Why not gateway-helm's own: they sit in its crds/ directory, which Helm installs once and never upgrades
    (pulumi-kubernetes Release `skip_crds`: "CRDs are installed if not already present"), so a raised pin would run
    the new controller against the first install's CRDs. Why not a Helm release of gateway-crds-helm: its rendered
    CRDs, stored in the release Secret, exceed Kubernetes' 1 MiB Secret limit (measured at v1.9.0: 1.19 MB gzipped
    before Helm's base64; Envoy Gateway's README for the chart says to `helm template | kubectl apply
    --server-side` for that reason). A `helm.v4.Chart` renders the chart client-side and applies each object as a
    Pulumi resource: upgraded in place on a version bump, ordered before the gateway-helm release that waits for
    it, never deleted (`retain_crds`). `opts` must carry a provider that adopts the CRDs an earlier gateway-helm
    install created (`upsert_existing_objects`) and takes over their fields (`enable_patch_force`).
    """
    return k8s.helm.v4.Chart(
        name,
        chart=f"{repository}/{ENVOY_GATEWAY_CRDS_CHART}",
        version=version,
        values=envoy_gateway_crd_values(),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(transforms=[retain_crds])),
    )


def issuer_spec(
    issuer: str,
    acme_email: str | None,
    *,
    gateway: str,
    namespace: str,
    entry: str,
    ingress_class: str | None,
) -> dict[str, Any]:
    """(Cluster)Issuer spec: self-signed, or ACME with an HTTP-01 solver through our Gateway (or the Ingress class).

    The ACME account key Secret lives in cert-manager's namespace for a ClusterIssuer, in the Issuer's own
    namespace for an Issuer.
    """
    if issuer == "selfsigned":
        return {"selfSigned": {}}
    if entry == "gateway":
        solver = {
            "http01": {
                "gatewayHTTPRoute": {
                    "parentRefs": [
                        {"name": gateway, "namespace": namespace, "kind": "Gateway", "sectionName": "http"}
                    ]
                }
            }
        }
    else:
        solver = (
            {"http01": {"ingress": {"ingressClassName": ingress_class}}}
            if ingress_class
            else {"http01": {"ingress": {}}}
        )
    return {
        "acme": {
            "server": ACME_SERVERS[issuer],
            "email": acme_email,
            "privateKeySecretRef": {"name": f"{issuer}-account-key"},
            "solvers": [solver],
        }
    }


def certificate_spec(
    hostname: str, secret_name: str, issuer_name: str, issuer_kind: str = "ClusterIssuer"
) -> dict[str, Any]:
    """cert-manager Certificate for the hostname (ECDSA P-256, rotated key on renewal)."""
    return {
        "secretName": secret_name,
        "dnsNames": [hostname],
        "issuerRef": {"name": issuer_name, "kind": issuer_kind, "group": "cert-manager.io"},
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "duration": "2160h",
        "renewBefore": "720h",
    }


def certificate_annotations(issuer: str, existing_cluster_issuer: str | None = None) -> dict[str, str]:
    """Annotations of the Certificate: the temporary certificate whenever issuance waits on something outside the
    cluster (an ACME challenge answered through the entry itself, or an issuer the stack does not know). A
    self-signed issuer signs at once: nothing to bridge."""
    if existing_cluster_issuer is None and issuer == "selfsigned":
        return {}
    return {TEMPORARY_CERTIFICATE_ANNOTATION: "true"}


def gateway_spec(class_name: str, hostname: str, tls_secret: str) -> dict[str, Any]:
    """Gateway with an HTTP listener (redirect + ACME challenges) and an HTTPS listener terminating TLS."""
    same = {"namespaces": {"from": "Same"}}
    return {
        "gatewayClassName": class_name,
        "listeners": [
            {"name": "http", "protocol": "HTTP", "port": 80, "hostname": hostname, "allowedRoutes": same},
            {
                "name": "https",
                "protocol": "HTTPS",
                "port": 443,
                "hostname": hostname,
                "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": tls_secret}]},
                "allowedRoutes": same,
            },
        ],
    }


def redirect_route_spec(gateway: str, hostname: str) -> dict[str, Any]:
    """HTTPRoute on the HTTP listener: 301 to https (the ACME solver's more specific route still wins)."""
    return {
        "parentRefs": [{"name": gateway, "sectionName": "http"}],
        "hostnames": [hostname],
        "rules": [
            {
                "filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}
                ]
            }
        ],
    }


PRIVATE_PATHS = ("/metrics",)
"""Paths the service serves for the cluster only (Prometheus scrapes them on the pod port)."""


def service_route_spec(gateway: str, hostname: str, service: str, port: int) -> dict[str, Any]:
    """HTTPRoute on the HTTPS listener: every path to the service except `PRIVATE_PATHS`.

    A private path gets its own rule with no backendRefs: the longer prefix wins over `/`, and a rule with no
    backend and no responding filter answers 404 (Gateway API HTTPRouteRule.backendRefs), so /metrics (tenants,
    routes, error rates) never leaves the cluster through the Gateway.
    """
    return {
        "parentRefs": [{"name": gateway, "sectionName": "https"}],
        "hostnames": [hostname],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": path}} for path in PRIVATE_PATHS]},
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": service, "port": port}],
            },
        ],
    }


def is_gke_class(class_name: str) -> bool:
    """GKE's managed Gateway classes (gke-l7-*) probe backends themselves and need a HealthCheckPolicy."""
    return class_name.startswith("gke-")


def uses_proxy_only_subnet(class_name: str) -> bool:
    """Whether a Gateway class's proxies run in the region's proxy-only subnet (GKE's regional classes)."""
    return class_name in GKE_PROXY_ONLY_CLASSES


def lb_source_cidrs(class_name: str) -> tuple[str, ...]:
    """Source ranges a Gateway class's load balancer reaches pods from (for RagService's NetworkPolicy:
    `NetworkAccess.gateway_cidrs`). GKE's global classes proxy from Google's front-end ranges, which are also those
    of the health checks; its regional classes proxy from the proxy-only subnet and are health-checked from those
    ranges; in-cluster implementations come from their own pods (use `gateway_namespaces`) and need none."""
    if not is_gke_class(class_name):
        return ()
    if uses_proxy_only_subnet(class_name):
        return (*GKE_HEALTH_CHECK_CIDRS, GKE_PROXY_ONLY_CIDR)
    return GKE_HEALTH_CHECK_CIDRS


def gke_health_check_policy_spec(service: str, port: int, path: str) -> dict[str, Any]:
    """networking.gke.io/v1 HealthCheckPolicy: probe the service's readiness path instead of `/`."""
    return {
        "default": {
            "checkIntervalSec": 10,
            "timeoutSec": 5,
            "healthyThreshold": 1,
            "unhealthyThreshold": 3,
            "config": {"type": "HTTP", "httpHealthCheck": {"port": port, "requestPath": path}},
        },
        "targetRef": {"group": "", "kind": "Service", "name": service},
    }


CLOSED_PORT = 80
"""Port of the `<name>-closed` Service the Ingress sends `PRIVATE_PATHS` to."""


def closed_service_spec() -> dict[str, Any]:
    """A Service with no selector and no Endpoints: what the Ingress sends private paths to.

    The Ingress API has no "answer 404" rule (Gateway API's backend-less rule); a path whose backend has no
    endpoints is the portable equivalent: ingress-nginx answers 503 and GCE's load balancer 502, and the request
    never reaches a pod.
    """
    return {"type": "ClusterIP", "ports": [{"name": "closed", "port": CLOSED_PORT, "protocol": "TCP"}]}


def ingress_spec(
    hostname: str,
    tls_secret: str,
    service: str,
    port: int,
    class_name: str | None,
    closed_service: str | None = None,
) -> dict[str, Any]:
    """networking.k8s.io/v1 Ingress fallback with TLS from the same Certificate Secret.

    Every path goes to the service except `PRIVATE_PATHS`, which go to `closed_service` (no endpoints): the longest
    matching path wins in an Ingress, so `/metrics` (and `/metrics/...`) never reaches the service's port.
    """
    paths: list[dict[str, Any]] = []
    if closed_service is not None:
        for private in PRIVATE_PATHS:
            paths.append(
                {
                    "path": private,
                    "pathType": "Prefix",
                    "backend": {"service": {"name": closed_service, "port": {"number": CLOSED_PORT}}},
                }
            )
    paths.append(
        {
            "path": "/",
            "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"number": port}}},
        }
    )
    spec: dict[str, Any] = {
        "tls": [{"hosts": [hostname], "secretName": tls_secret}],
        "rules": [{"host": hostname, "http": {"paths": paths}}],
    }
    if class_name is not None:
        spec["ingressClassName"] = class_name
    return spec


def entry_address(entry: str, status: Mapping[str, Any] | None) -> str | None:
    """The load balancer's address in the status of the deployed entry, or None while it has none.

    A Gateway lists it in `status.addresses[].value` (an IP or a hostname; Gateway API v1 GatewayStatusAddress);
    an Ingress in `status.loadBalancer.ingress[]` as `hostname` (an AWS load balancer) or `ip` (GKE, most
    bare-metal controllers). The first one is the one to point DNS at."""
    status = status or {}
    if entry == "gateway":
        for address in status.get("addresses") or []:
            if address.get("value"):
                return str(address["value"])
        return None
    for ingress in (status.get("loadBalancer") or {}).get("ingress") or []:
        value = ingress.get("hostname") or ingress.get("ip")
        if value:
            return str(value)
    return None


class LiveObject(pulumi.CustomResource):
    """A read (`get`) of a deployed Kubernetes object with its status.

    pulumi_kubernetes' `CustomResource` drops every output it does not declare, status included, so a Gateway read
    through it has no status; this declares it. Only ever read, never created.

    The read names no kind and no namespace (every value None is left out, pulumi/runtime/rpc.py
    `serialize_properties`), as pulumi_kubernetes' own `CustomResource.get` names none: pulumi-kubernetes `Read`
    (provider/pkg/provider/provider.go) takes the kind from the type token and the namespace and name from the id
    (`<namespace>/<name>`) only when the inputs carry no apiVersion/kind; with them (as this class sent before
    REVIEW10 F0) it looked the object up in the inputs' namespace, none, hence `default` (clients.go
    `NamespaceOrDefault`), found nothing in a stack's namespace, and the step failed ("resource '<ns>/<name>' does
    not exist"): every real `up` with an entry, and every preview of a deployed one. Read that way, it also returns
    the object as the cluster has it, without pulumi-kubernetes' readiness awaiters (an Ingress's would fail the read
    while it has no load balancer address).

    Its one input, `pulumi.com/skipAwait` in `metadata.annotations`, names neither kind nor namespace (so the read
    above is unchanged) and is for `pulumi refresh`: the engine keeps a read's own inputs in the state (pulumi/pulumi
    step.go `ReadStep.Apply`) and sends them, with the last live object, to the refresh's `Read` (`RefreshStep`);
    the live object names the kind, so the provider then runs the Ingress's `awaitRead`, unless those inputs skip
    it (await.go `Read`, metadata.SkipAwaitLogic). Without it a plain refresh reported the read unhealthy while the
    Ingress had no address. After a refresh the state keeps the inputs the provider prunes to the live object's
    shape (provider.go `pruneLiveState`): the annotation stays where the Ingress carries it (`existing`, where
    no address is normal); on eks/gke a second refresh in a row, with no `up` between, checks the address again, as
    the refresh of the Ingress itself does there (its `up` waits for one)."""

    status: pulumi.Output[Any]

    def __init__(
        self, name: str, api_version: str, kind: str, id: pulumi.Input[str], opts: pulumi.ResourceOptions
    ) -> None:
        super().__init__(
            f"kubernetes:{api_version}:{kind}",
            name,
            {
                "apiVersion": None,
                "kind": None,
                "metadata": {"annotations": {SKIP_AWAIT_ANNOTATION: "true"}},
                "status": None,
            },
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(id=id)),
        )


# ---------------------------------------------------------------------------------------------- component
class TlsGateway(pulumi.ComponentResource):
    """cert-manager, an issuer, a Certificate and a Gateway API entry (or Ingress) to the service."""

    url: pulumi.Output[str]
    """Public URL of the service, https://<hostname>."""
    address: pulumi.Output[str | None]
    """The load balancer's address (IP or hostname) of the deployed entry, read at every `up`; None until the
    controller assigns one (`entry_address`)."""
    cert_manager: pulumi.Resource | None
    """The cert-manager release (when installed here), for others needing its CRDs."""
    gateway_name: str
    tls_secret_name: str

    def __init__(self, name: str, args: TlsGatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        validate_args(args)
        super().__init__("rag:net:TlsGateway", name, None, opts)
        ns = args.namespace
        base = name
        object_labels = specs.labels("gateway", base, "entry")
        gateway_name = base
        tls_secret = f"{base}-tls"
        issuer_name = args.existing_cluster_issuer or f"{base}-{args.issuer}"
        issuer_kind = "ClusterIssuer" if args.existing_cluster_issuer else args.issuer_kind

        def child(*extra: pulumi.Resource) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=[*args.depends_on, *extra])

        cert_manager: pulumi.Resource | None = args.cert_manager
        self.cert_manager = None
        if args.install_cert_manager:
            cert_manager = k8s.helm.v3.Release(
                f"{name}-cert-manager",
                name="cert-manager",
                chart=CERT_MANAGER_CHART,
                version=args.cert_manager_version,
                repository_opts={"repo": CERT_MANAGER_REPO},
                namespace=args.cert_manager_namespace,
                create_namespace=True,
                atomic=True,
                timeout=600,
                values=cert_manager_values(
                    gateway_api=args.entry == "gateway",
                    leader_election_namespace=(
                        args.cert_manager_namespace if args.leader_election_in_own_namespace else None
                    ),
                ),
                # cert-manager only enables its Gateway API support if those CRDs exist when it starts.
                opts=child(*args.gateway_crds),
            )
            self.cert_manager = cert_manager
        crds = (cert_manager,) if cert_manager is not None else ()

        if args.existing_cluster_issuer is None:
            k8s.apiextensions.CustomResource(
                f"{name}-issuer",
                api_version="cert-manager.io/v1",
                kind=issuer_kind,
                metadata=specs.metadata(issuer_name, ns if issuer_kind == "Issuer" else None, object_labels),
                spec=issuer_spec(
                    args.issuer,
                    args.acme_email,
                    gateway=gateway_name,
                    namespace=ns,
                    entry=args.entry,
                    ingress_class=args.ingress_class_name,
                ),
                opts=child(*crds),
            )
        certificate = k8s.apiextensions.CustomResource(
            f"{name}-certificate",
            api_version="cert-manager.io/v1",
            kind="Certificate",
            metadata=specs.metadata(
                tls_secret,
                ns,
                object_labels,
                certificate_annotations(args.issuer, args.existing_cluster_issuer),
            ),
            spec=certificate_spec(args.hostname, tls_secret, issuer_name, issuer_kind),
            opts=child(*crds),
        )

        # Whatever routes to the backend Service waits for it (`TlsGatewayArgs.backend`): deleted before it.
        backend: list[pulumi.Input[pulumi.Resource]] = [args.backend] if args.backend is not None else []

        def routing(*extra: pulumi.Resource) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=[*args.depends_on, *extra, *backend])

        entry: pulumi.CustomResource
        if args.entry == "gateway":
            gateway_annotations = dict(args.gateway_annotations)
            gateway_opts = routing(certificate, *args.gateway_crds)
            if args.wait_for_address:
                gateway_annotations[WAIT_FOR_ANNOTATION] = PROGRAMMED_WAIT
                gateway_opts = pulumi.ResourceOptions.merge(
                    gateway_opts,
                    pulumi.ResourceOptions(
                        custom_timeouts=pulumi.CustomTimeouts(
                            create=GATEWAY_ADDRESS_TIMEOUT, update=GATEWAY_ADDRESS_TIMEOUT
                        )
                    ),
                )
            gateway = k8s.apiextensions.CustomResource(
                f"{name}-gateway",
                api_version="gateway.networking.k8s.io/v1",
                kind="Gateway",
                metadata=specs.metadata(gateway_name, ns, object_labels, gateway_annotations),
                spec=gateway_spec(args.gateway_class_name, args.hostname, tls_secret),
                # After the Certificate, whose (temporary) Secret its HTTPS listener needs to be programmed.
                opts=gateway_opts,
            )
            entry = gateway
            k8s.apiextensions.CustomResource(
                f"{name}-redirect-route",
                api_version="gateway.networking.k8s.io/v1",
                kind="HTTPRoute",
                metadata=specs.metadata(f"{base}-redirect", ns, object_labels),
                spec=redirect_route_spec(gateway_name, args.hostname),
                opts=child(gateway, *args.gateway_crds),
            )
            k8s.apiextensions.CustomResource(
                f"{name}-route",
                api_version="gateway.networking.k8s.io/v1",
                kind="HTTPRoute",
                metadata=specs.metadata(base, ns, object_labels),
                spec=service_route_spec(gateway_name, args.hostname, args.service_name, args.service_port),
                opts=routing(gateway, *args.gateway_crds),
            )
            if is_gke_class(args.gateway_class_name):
                k8s.apiextensions.CustomResource(
                    f"{name}-health-check-policy",
                    api_version="networking.gke.io/v1",
                    kind="HealthCheckPolicy",
                    metadata=specs.metadata(args.service_name, ns, object_labels),
                    spec=gke_health_check_policy_spec(
                        args.service_name, args.service_port, args.health_check_path
                    ),
                    # networking.gke.io CRDs come with GKE's Gateway API support.
                    opts=routing(*args.gateway_crds),
                )
        else:
            closed = k8s.core.v1.Service(
                f"{name}-closed",
                metadata=specs.metadata(f"{base}-closed", ns, object_labels),
                spec=closed_service_spec(),
                opts=child(),
            )
            entry = k8s.networking.v1.Ingress(
                f"{name}-ingress",
                metadata=specs.metadata(
                    base,
                    ns,
                    object_labels,
                    None if args.wait_for_address else {SKIP_AWAIT_ANNOTATION: "true"},
                ),
                spec=ingress_spec(
                    args.hostname,
                    tls_secret,
                    args.service_name,
                    args.service_port,
                    args.ingress_class_name,
                    closed_service=f"{base}-closed",
                ),
                opts=routing(closed, certificate),
            )

        self.gateway_name = gateway_name
        self.tls_secret_name = tls_secret
        self.url = pulumi.Output.from_input(f"https://{args.hostname}")
        # Read after the entry exists (its id is unknown in a preview that creates it: no read then).
        live = LiveObject(
            f"{name}-{args.entry}-live",
            "gateway.networking.k8s.io/v1" if args.entry == "gateway" else "networking.k8s.io/v1",
            "Gateway" if args.entry == "gateway" else "Ingress",
            entry.id,
            pulumi.ResourceOptions(parent=self, depends_on=[entry]),
        )
        self.address = live.status.apply(lambda status, entry=args.entry: entry_address(entry, status))
        self.register_outputs({"url": self.url, "address": self.address})
