"""Would the NetworkPolicies of a recorded program let through the traffic the stack needs? (`make plan`: `traffic`)

A NetworkPolicy is checked by schema and policy pack one object at a time; whether the set of them lets a
connection through depends on every policy selecting the source pods (egress) and every policy selecting the
destination pods (ingress) together. This module derives the connections the stack needs from the recorded program
and evaluates the policies on each, as the Kubernetes NetworkPolicy API defines them:

* **clients -> services**: every ``scheme://[user@]<host>.<namespace>.svc[.cluster.local]:<port>`` in a pod's
  environment (literal env values and the ConfigMaps and Secrets it reads with ``envFrom`` / ``valueFrom``) is a
  connection from that pod to the Service's pods on the Service port's ``targetPort``; the pod then also needs DNS
  (UDP 53 to kube-dns in kube-system). A Service the stack does not declare (an in-cluster LLM server) is a
  connection to pods of unknown labels in its namespace on the Service's port;
* **gateway -> backends**: each HTTPRoute backend of a Gateway, from the Gateway's data plane: GKE's global classes
  from Google's front-end and health-check ranges, its regional classes from the proxy-only subnet the program
  declares (and the health-check ranges), an in-cluster implementation from its namespace
  (``envoy-gateway-system`` for Envoy Gateway); and cert-manager's HTTP-01 solver pods (port 8089) when an ACME
  issuer solves through the Gateway;
* **Prometheus -> targets**: every ServiceMonitor and PodMonitor endpoint, from the namespace of the
  kube-prometheus-stack release. A monitor that selects nothing the stack declares (and that is not known to be
  created by a controller) is also a finding: its alerts would read series that never exist.

Pods are the pod templates of the declared workloads, plus the pods a controller creates from a declared resource
(`generated_pods`: CloudNativePG instances and cert-manager's solver). A source whose pod labels are not known
(a chart's pods: Prometheus, Envoy's proxies) only matches peers that select its whole namespace, so a policy
naming those pods by label is not credited: the finding is then conservative.
Limits: named ports are resolved through the destination's container ports; SCTP, ``endPort`` ranges and
``ipBlock`` peers for in-cluster pods (pod IPs are not known) are treated as not matching, except ``0.0.0.0/0``.
Probes from the kubelet are not evaluated (node-local traffic is allowed by the dataplanes the targets use).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infra.offline import RecordedResource, StackRun

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
DNS = ("kube-system", {"k8s-app": "kube-dns"}, 53, "UDP")
ACME_SOLVER_LABELS = {"acme.cert-manager.io/http01-solver": "true"}
ACME_SOLVER_PORT = 8089
_URL = re.compile(
    r"[a-z][a-z0-9+.-]*://(?:[^@/\s]*@)?([a-z0-9.-]+?)(?:\.cluster\.local)?:(\d+)", re.IGNORECASE
)


@dataclass(frozen=True)
class Pods:
    """A set of pods: a namespace (None: outside the cluster, an address range) and labels (None: unknown)."""

    namespace: str | None
    labels: Mapping[str, str] | None = None
    cidr: str | None = None
    ports: Mapping[str, int] | None = None
    """Container port names -> numbers (to resolve named ports)."""
    what: str = ""


@dataclass(frozen=True)
class Flow:
    """A connection the stack needs: from `source` to `target` on `port` (a number or a container port name)."""

    source: Pods
    target: Pods
    port: int | str
    protocol: str
    why: str
    resource: str
    """URN of the resource the need comes from (reported with a blocked flow)."""


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """Whether a LabelSelector selects `labels` (unknown labels: only the empty selector)."""
    selector = selector or {}
    match = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if labels is None:
        return not match and not expressions
    if any(labels.get(key) != value for key, value in match.items()):
        return False
    for expression in expressions:
        key, operator, values = (
            expression.get("key"),
            expression.get("operator"),
            expression.get("values") or [],
        )
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, pods: Pods) -> bool:
    block = peer.get("ipBlock")
    if block is not None:
        network = ipaddress.ip_network(str(block["cidr"]))
        excepts = [ipaddress.ip_network(str(e)) for e in block.get("except") or []]
        if pods.cidr is None:  # pod addresses are not known: only "everything" certainly covers them
            return network.prefixlen == 0 and not excepts
        source = ipaddress.ip_network(pods.cidr)
        return (
            source.version == network.version
            and source.subnet_of(network)  # type: ignore[arg-type]
            and not any(source.overlaps(e) for e in excepts)  # type: ignore[arg-type]
        )
    if pods.namespace is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pods.namespace})
    else:
        in_namespace = pods.namespace == policy_namespace
    return in_namespace and _selects(peer.get("podSelector"), pods.labels)


def _number(value: Any) -> int | None:
    """A port number (the recorder gives numbers as floats), or None for a port name."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return int(value) if str(value).isdigit() else None


def _port_matches(
    rule_ports: Sequence[Mapping[str, Any]] | None, port: int, name: str | None, protocol: str
) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if str(entry.get("protocol") or "TCP") != protocol:
            continue
        value = entry.get("port")
        if value is None:
            return True
        low = _number(value)
        if low is not None:
            high = _number(entry.get("endPort")) or low
            if low <= port <= high:
                return True
        elif name is not None and str(value) == name:
            return True
    return False


def _resolve(target: Pods, port: int | str) -> tuple[int | None, str | None]:
    """(number, name) of the destination's port."""
    ports = target.ports or {}
    number = _number(port)
    if number is not None:
        names = [name for name, value in ports.items() if value == number]
        return number, names[0] if names else None
    return ports.get(str(port)), str(port)


def allowed(policies: Sequence[RecordedResource], flow: Flow) -> tuple[bool, str]:
    """Whether the flow passes the source's egress and the target's ingress policies, and if not, which side."""
    number, name = _resolve(flow.target, flow.port)
    if number is None:
        return False, f"the destination has no port named {flow.port}"
    for direction, pods, other, key in (
        ("Egress", flow.source, flow.target, "to"),
        ("Ingress", flow.target, flow.source, "from"),
    ):
        if pods.namespace is None:
            continue
        selecting = [
            p
            for p in policies
            if _namespace(p) == pods.namespace
            and _selects((p.inputs.get("spec") or {}).get("podSelector"), pods.labels)
            and direction in _policy_types(p)
        ]
        if pods.labels is None or not selecting:
            continue
        rules = [(p, rule) for p in selecting for rule in (p.inputs["spec"].get(direction.lower()) or [])]
        if not any(
            _port_matches(rule.get("ports"), number, name, flow.protocol)
            and (not rule.get(key) or any(_peer_matches(peer, _namespace(p), other) for peer in rule[key]))
            for p, rule in rules
        ):
            names = ", ".join(sorted(str(p.inputs["metadata"]["name"]) for p in selecting))
            return False, f"the {direction.lower()} of {pods.what or pods.namespace} (NetworkPolicy {names})"
    return True, ""


def _namespace(resource: RecordedResource) -> str:
    return str((resource.inputs.get("metadata") or {}).get("namespace") or "default")


def _policy_types(policy: RecordedResource) -> list[str]:
    spec = policy.inputs.get("spec") or {}
    types = spec.get("policyTypes")
    if types:
        return list(types)
    return ["Ingress", *(["Egress"] if spec.get("egress") else [])]


# ---------------------------------------------------------------------------------------------- the stack's pods
def _kind(resource: RecordedResource) -> str:
    return resource.type.rsplit(":", 1)[-1] if resource.type.startswith("kubernetes:") else ""


def _template(resource: RecordedResource) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """(pod labels, pod spec) of a workload."""
    spec = resource.inputs.get("spec") or {}
    kind = _kind(resource)
    if kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        template = spec.get("template") or {}
    else:
        return None
    return (template.get("metadata") or {}).get("labels") or {}, template.get("spec") or {}


def _container_ports(spec: Mapping[str, Any]) -> dict[str, int]:
    return {
        str(port["name"]): int(port["containerPort"])  # a float from the recorder
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        for port in container.get("ports") or []
        if port.get("name") and port.get("containerPort")
    }


@dataclass(frozen=True)
class Workload:
    resource: RecordedResource
    pods: Pods
    spec: Mapping[str, Any]


def workloads(run: StackRun) -> list[Workload]:
    out: list[Workload] = []
    for resource in run.resources:
        template = _template(resource) if resource.custom else None
        if template is None:
            continue
        labels, spec = template
        name = str((resource.inputs.get("metadata") or {}).get("name"))
        pods = Pods(
            _namespace(resource), dict(labels), ports=_container_ports(spec), what=f"{_kind(resource)} {name}"
        )
        out.append(Workload(resource, pods, spec))
    return out


def generated_pods(run: StackRun) -> list[Pods]:
    """Pods a controller creates from a declared resource (labels and ports as that controller sets them)."""
    out: list[Pods] = []
    for resource in run.resources:
        kind = _kind(resource)
        if resource.type == "kubernetes:postgresql.cnpg.io/v1:Cluster":
            # CloudNativePG 1.30 instance pods: labels and container ports of pkg/specs/pods.go at v1.30.0 (port
            # 9187 named `metrics`; the instance manager's status port 8000).
            name = str(resource.inputs["metadata"]["name"])
            labels = {
                "cnpg.io/cluster": name,
                "cnpg.io/podRole": "instance",
                "cnpg.io/instanceRole": "primary",
            }
            ports = {"postgresql": 5432, "metrics": 9187, "status": 8000}
            out.append(
                Pods(_namespace(resource), labels, ports=ports, what=f"CloudNativePG {name} instances")
            )
        elif kind in ("Issuer", "ClusterIssuer") and resource.type.startswith("kubernetes:cert-manager.io/"):
            for solver in ((resource.inputs.get("spec") or {}).get("acme") or {}).get("solvers") or []:
                route = (solver.get("http01") or {}).get("gatewayHTTPRoute")
                if route is None:
                    continue
                for ref in route.get("parentRefs") or []:
                    namespace = ref.get("namespace") or _namespace(resource)
                    ports = {"http": ACME_SOLVER_PORT}
                    out.append(
                        Pods(namespace, dict(ACME_SOLVER_LABELS), ports=ports, what="the ACME HTTP-01 solver")
                    )
    return out


def _services(run: StackRun) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(namespace, name) -> Service spec, declared or generated (CloudNativePG's -rw/-ro/-r)."""
    services: dict[tuple[str, str], Mapping[str, Any]] = {}
    for resource in run.resources:
        if resource.type == "kubernetes:core/v1:Service":
            services[(_namespace(resource), str(resource.inputs["metadata"]["name"]))] = dict(
                resource.inputs.get("spec") or {}, labels=(resource.inputs["metadata"].get("labels") or {})
            )
        elif resource.type == "kubernetes:postgresql.cnpg.io/v1:Cluster":
            name = str(resource.inputs["metadata"]["name"])
            for suffix in ("-rw", "-ro", "-r"):
                services[(_namespace(resource), name + suffix)] = {
                    "selector": {"cnpg.io/cluster": name},
                    "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432}],
                    "labels": {"cnpg.io/cluster": name},
                }
    return services


def _backends(
    service: Mapping[str, Any], namespace: str, pods: Sequence[Pods], port: int | str
) -> Iterator[tuple[Pods, int | str]]:
    """The pods behind a Service and the pod port a Service port maps to."""
    selector = service.get("selector") or {}
    entry = next(
        (p for p in service.get("ports") or [] if p.get("port") == port or p.get("name") == port),
        None,
    )
    if entry is None or not selector:
        return
    target = entry.get("targetPort") or entry.get("port")
    for candidate in pods:
        if (
            candidate.namespace == namespace
            and candidate.labels is not None
            and all(candidate.labels.get(k) == v for k, v in selector.items())
        ):
            number = _number(target)
            yield candidate, number if number is not None else str(target)


def _env_values(run: StackRun, workload: Workload) -> Iterator[tuple[str, str]]:
    """(variable, value) of every env value a workload's pods see."""
    by_name: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for resource in run.resources:
        kind = _kind(resource)
        if kind in ("ConfigMap", "Secret") and resource.type.startswith("kubernetes:core/v1:"):
            data = {**(resource.inputs.get("data") or {}), **(resource.inputs.get("stringData") or {})}
            by_name[(kind, _namespace(resource), str(resource.inputs["metadata"]["name"]))] = data
    namespace = workload.pods.namespace or "default"
    for container in [*(workload.spec.get("initContainers") or []), *(workload.spec.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in source:
                    yield from (
                        (k, str(v))
                        for k, v in by_name.get((kind, namespace, source[key].get("name")), {}).items()
                    )
        for env in container.get("env") or []:
            if "value" in env:
                yield str(env.get("name")), str(env["value"])
            value_from = env.get("valueFrom") or {}
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in value_from:
                    ref = value_from[key]
                    value = by_name.get((kind, namespace, ref.get("name")), {}).get(ref.get("key"))
                    if value is not None:
                        yield str(env.get("name")), str(value)


def _llm_target_port(run: StackRun) -> int:
    """`rag:llm.targetPort` (0: unset): the port an in-cluster LLM server's pods listen on, which a NetworkPolicy
    sees instead of its Service's port (the ClusterIP is rewritten to a pod's IP and targetPort first)."""
    import json

    raw = run.config.get("rag:llm")
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return 0
    port = value.get("targetPort", 0) if isinstance(value, dict) else 0
    return port if isinstance(port, int) else 0


def flows(run: StackRun) -> list[Flow]:
    """Every connection the recorded program needs (see the module docstring)."""
    found: list[Flow] = []
    declared = workloads(run)
    pods = [w.pods for w in declared] + generated_pods(run)
    services = _services(run)

    # clients -> services (and DNS)
    from infra.components.rag_service import API_ONLY_SETTINGS as api_only

    component = "app.kubernetes.io/component"
    for workload in declared:
        needs_dns = False
        for variable, value in _env_values(run, workload):
            for host, port in _URL.findall(value):
                parts = host.lower().split(".")
                if len(parts) < 3 or parts[-1] != "svc":
                    continue
                service_name, namespace = parts[-3], parts[-2]
                service = services.get((namespace, service_name))
                if service is None:
                    if variable in api_only and (workload.pods.labels or {}).get(component) == "worker":
                        continue  # the worker reads the shared settings but never calls the LLM
                    # A Service the stack does not declare (an in-cluster LLM server): its pods' labels and
                    # targetPort are not known, so only a rule admitting its whole namespace on that port (or
                    # on any port) is credited.
                    needs_dns = True
                    outside = Pods(
                        namespace, None, what=f"Service {service_name}.{namespace} (not in the stack)"
                    )
                    why = f"{variable} connects to {service_name}.{namespace}:{port}"
                    pod_port = _llm_target_port(run) if variable == "LLM_BASE_URL" else 0
                    if pod_port:
                        why += f" (its pods' port {pod_port}, rag:llm.targetPort)"
                    found.append(
                        Flow(workload.pods, outside, pod_port or int(port), "TCP", why, workload.resource.urn)
                    )
                    continue
                needs_dns = True
                for target, target_port in _backends(service, namespace, pods, int(port)):
                    if target == workload.pods:
                        continue
                    found.append(
                        Flow(
                            workload.pods,
                            target,
                            target_port,
                            "TCP",
                            f"{variable} connects to {service_name}.{namespace}:{port}",
                            workload.resource.urn,
                        )
                    )
        if needs_dns:
            namespace, labels, port, protocol = DNS
            kube_dns = Pods(namespace, labels, ports={"dns": 53}, what="kube-dns")
            found.append(Flow(workload.pods, kube_dns, port, protocol, "cluster DNS", workload.resource.urn))

    found.extend(_gateway_flows(run, pods, services))
    found.extend(_monitor_flows(run, pods, services))
    unique: dict[tuple[Any, ...], Flow] = {}
    for flow in found:
        key = (
            flow.resource,
            flow.source.what,
            flow.source.cidr,
            flow.target.what,
            flow.port,
            flow.protocol,
            flow.why,
        )
        unique.setdefault(key, flow)
    return list(unique.values())


# ---------------------------------------------------------------------------------------------- gateway
GKE_FRONT_ENDS = ("35.191.0.0/16", "130.211.0.0/22")
"""Google's front-end and health-check ranges (Cloud Load Balancing, "Firewall rules")."""
GKE_REGIONAL_CLASSES = frozenset({"gke-l7-regional-external-managed", "gke-l7-rilb"})
IN_CLUSTER_GATEWAY_NAMESPACES = {"envoy-gateway-system": "Envoy Gateway's proxies"}


def _gateway_sources(run: StackRun, class_name: str) -> list[Pods]:
    if class_name.startswith("gke-"):
        sources = [Pods(None, cidr=c, what=f"Google front end / health check {c}") for c in GKE_FRONT_ENDS]
        if class_name in GKE_REGIONAL_CLASSES:
            for subnet in run.of_type("gcp:compute/subnetwork:Subnetwork"):
                if subnet.inputs.get("purpose") == "REGIONAL_MANAGED_PROXY":
                    cidr = str(subnet.inputs.get("ipCidrRange"))
                    sources.append(Pods(None, cidr=cidr, what=f"the proxy-only subnet {cidr}"))
        return sources
    return [Pods(ns, None, what=what) for ns, what in IN_CLUSTER_GATEWAY_NAMESPACES.items()]


def _gateway_flows(
    run: StackRun, pods: Sequence[Pods], services: Mapping[tuple[str, str], Any]
) -> list[Flow]:
    found: list[Flow] = []
    gateways = {
        (_namespace(g), str(g.inputs["metadata"]["name"])): str(
            (g.inputs.get("spec") or {}).get("gatewayClassName")
        )
        for g in run.resources
        if g.type == "kubernetes:gateway.networking.k8s.io/v1:Gateway"
    }
    for route in run.resources:
        if route.type != "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute":
            continue
        namespace = _namespace(route)
        spec = route.inputs.get("spec") or {}
        classes = {
            gateways[(ref.get("namespace") or namespace, ref.get("name"))]
            for ref in spec.get("parentRefs") or []
            if (ref.get("namespace") or namespace, ref.get("name")) in gateways
        }
        for class_name in classes:
            for rule in spec.get("rules") or []:
                for ref in rule.get("backendRefs") or []:
                    service = services.get((ref.get("namespace") or namespace, ref.get("name")))
                    if service is None:
                        continue
                    for target, port in _backends(service, namespace, pods, ref.get("port")):
                        for source in _gateway_sources(run, class_name):
                            why = f"the {class_name} Gateway routes to {ref.get('name')}:{_number(ref.get('port'))}"
                            found.append(Flow(source, target, port, "TCP", why, route.urn))
    # cert-manager's HTTP-01 solver, answered through the Gateway.
    for solver in (p for p in pods if p.labels == ACME_SOLVER_LABELS):
        for class_name in {c for (ns, _), c in gateways.items() if ns == solver.namespace}:
            for source in _gateway_sources(run, class_name):
                found.append(
                    Flow(
                        source,
                        solver,
                        ACME_SOLVER_PORT,
                        "TCP",
                        f"the {class_name} Gateway sends Let's Encrypt's HTTP-01 challenge to the solver",
                        _issuer_urn(run),
                    )
                )
    return found


def _issuer_urn(run: StackRun) -> str:
    """The issuer that makes the solver (the resource a blocked challenge is reported on)."""
    for resource in run.resources:
        if _kind(resource) in ("Issuer", "ClusterIssuer"):
            return resource.urn
    return ""


# ---------------------------------------------------------------------------------------------- monitoring
def _prometheus(run: StackRun) -> Pods | None:
    for release in run.resources:
        chart = str(release.inputs.get("chart") or "").rsplit("/", 1)[-1]
        if release.type.startswith("kubernetes:helm.sh/") and chart == "kube-prometheus-stack":
            return Pods(str(release.inputs.get("namespace") or "default"), None, what="Prometheus")
    # The cluster's own Prometheus (`rag:monitoring.mode` existing) scrapes from the namespace the config names.
    monitoring = json.loads(run.config.get("rag:monitoring") or "{}")
    if monitoring.get("enabled") and monitoring.get("mode") == "existing":
        return Pods(
            str((monitoring.get("existing") or {}).get("namespace") or "monitoring"), None, what="Prometheus"
        )
    return None


def _monitor_namespaces(spec: Mapping[str, Any], own: str) -> set[str] | None:
    selector = spec.get("namespaceSelector") or {}
    if selector.get("any"):
        return None
    return set(selector.get("matchNames") or [own])


def _monitor_flows(
    run: StackRun, pods: Sequence[Pods], services: Mapping[tuple[str, str], Any]
) -> list[Flow]:
    found: list[Flow] = []
    prometheus = _prometheus(run)
    for monitor in run.resources:
        kind = _kind(monitor)
        if kind not in ("ServiceMonitor", "PodMonitor") or not monitor.type.startswith(
            "kubernetes:monitoring"
        ):
            continue
        spec = monitor.inputs.get("spec") or {}
        namespaces = _monitor_namespaces(spec, _namespace(monitor))
        name = str(monitor.inputs["metadata"]["name"])
        targets: list[tuple[Pods, int | str]] = []
        selected = False  # a declared Service (pod) with the monitor's port is selected
        candidates = 0  # declared Services (pods) in the namespaces the monitor looks at
        if kind == "ServiceMonitor":
            for (namespace, _), service in services.items():
                if namespaces is not None and namespace not in namespaces:
                    continue
                candidates += 1
                if not _selects(spec.get("selector"), service.get("labels")):
                    continue
                for endpoint in spec.get("endpoints") or []:
                    port = endpoint.get("port")
                    if any(p.get("name") == port for p in service.get("ports") or []):
                        selected = True
                    targets.extend(_backends(service, namespace, pods, port))
        else:
            for candidate in pods:
                if candidate.labels is None or (
                    namespaces is not None and candidate.namespace not in namespaces
                ):
                    continue
                candidates += 1
                if not _selects(spec.get("selector"), candidate.labels):
                    continue
                for endpoint in spec.get("podMetricsEndpoints") or []:
                    port = endpoint.get("port") or endpoint.get("targetPort")
                    if port in (candidate.ports or {}) or _number(port) is not None:
                        selected = True
                        targets.append((candidate, port))
        if not selected and candidates and namespaces is not None:
            found.append(
                Flow(
                    Pods(None, what="nothing"),
                    Pods(None, what="nothing"),
                    0,
                    "TCP",
                    f"{kind} {name} selects no Service or pod port the stack declares: its series never exist",
                    monitor.urn,
                )
            )
        if prometheus is None:
            continue
        for target, port in targets:
            found.append(
                Flow(prometheus, target, port, "TCP", f"Prometheus scrapes {kind} {name}", monitor.urn)
            )
    return found


def blocked(run: StackRun) -> list[tuple[Flow, str]]:
    """The needed flows the program's NetworkPolicies do not let through, with the side that drops each."""
    policies = run.of_type(NETWORK_POLICY)
    out: list[tuple[Flow, str]] = []
    for flow in flows(run):
        if flow.source.what == "nothing":
            out.append((flow, "nothing is selected"))
            continue
        ok, where = allowed(policies, flow)
        if not ok:
            out.append((flow, where))
    return out
