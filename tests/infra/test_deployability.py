"""The deployability analysis (`infra.deployability`): each check fails on a deliberately broken program.

Most tests build a small synthetic recorded program (a handful of `RecordedResource`s, as the recorder would
record them) with one defect, and the same program with the defect fixed; others patch the real recorded program
(cached per session by tests/infra/conftest.py) to reintroduce a defect. The matrix test runs the analysis on
every stack file on every cluster target.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from infra import deployability as d
from infra import render
from infra.clusters.eks import METRICS_SERVER_CHART
from infra.components.gateway import CERT_MANAGER_VERSION
from infra.components.monitoring import CHART_VERSION as KUBE_PROMETHEUS_STACK_VERSION
from infra.components.postgres import CNPG_CHART_VERSION
from infra.offline import RecordedResource, StackRun
from tests.infra.conftest import run

STACK = "urn:pulumi:t::rag::pulumi:pulumi:Stack::rag-t"


def urn(type_: str, name: str) -> str:
    return f"urn:pulumi:t::rag::{type_}::{name}"


def res(
    type_: str,
    name: str,
    inputs: dict[str, Any] | None = None,
    *,
    deps: tuple[RecordedResource, ...] = (),
    parent: RecordedResource | None = None,
    provider: RecordedResource | None = None,
    custom: bool = True,
) -> RecordedResource:
    return RecordedResource(
        type=type_,
        name=name,
        urn=urn(type_, name),
        custom=custom,
        inputs=inputs or {},
        secret_keys=frozenset(),
        parent=parent.urn if parent else STACK,
        protect=False,
        provider=provider.urn if provider else None,
        depends_on=tuple(sorted(dep.urn for dep in deps)),
    )


def k8s(
    kind: str, name: str, spec: dict | None = None, *, api: str = "core/v1", ns: str | None = "rag", **kw: Any
):
    metadata: dict[str, Any] = {"name": name}
    if ns:
        metadata["namespace"] = ns
    inputs: dict[str, Any] = {"metadata": metadata}
    if spec is not None:
        inputs["spec"] = spec
    return res(f"kubernetes:{api}:{kind}", kw.pop("logical", name), inputs, **kw)


def program(*resources: RecordedResource, **config: Any) -> StackRun:
    root = RecordedResource(
        "pulumi:pulumi:Stack", "rag-t", STACK, False, {}, frozenset(), None, False, None, ()
    )
    return StackRun(
        stack="t",
        resources=[root, *resources],
        outputs={},
        secret_outputs=frozenset(),
        config={f"rag:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
    )


#: Checks about chart pins (tests/infra/test_upgrades.py): the synthetic programs here release charts the short way
#: (no CRD upgrade hook, gateway-helm with its own crds/), which those checks would rightly report.
PIN_CHECKS = frozenset({"crd-upgrade", "kube-version"})


def findings(result: StackRun, check: str | None = None) -> list[d.Finding]:
    found = d.analyse(result, waivers={}).findings
    if check is None:
        return [f for f in found if f.check not in PIN_CHECKS]
    return [f for f in found if f.check == check]


#: The versions the program pins (their values keys are recorded: the `chart-values` check needs a version).
PINNED = {
    "cert-manager": CERT_MANAGER_VERSION,
    "cloudnative-pg": CNPG_CHART_VERSION,
    "kube-prometheus-stack": KUBE_PROMETHEUS_STACK_VERSION,
    "metrics-server": METRICS_SERVER_CHART[1],
}


def release(name: str, chart: str, values: dict | None = None, **kw: Any) -> RecordedResource:
    inputs = {"chart": chart, "name": name, "namespace": kw.pop("ns", "rag"), "values": values or {}}
    inputs["version"] = kw.pop("version", PINNED.get(chart, "0.0.0"))
    return res("kubernetes:helm.sh/v3:Release", name, inputs, **kw)


def deployment(name: str, pod: dict, **kw: Any) -> RecordedResource:
    return k8s("Deployment", name, {"template": {"spec": pod}}, api="apps/v1", **kw)


def eks_cluster(**addons: dict) -> list[RecordedResource]:
    cluster = res(d.EKS_CLUSTER, "eks", {"name": "rag-t"})
    out = [cluster]
    for addon, values in addons.items():
        inputs = {"addonName": addon, "configurationValues": json.dumps(values)}
        out.append(res(d.EKS_ADDON, addon, inputs, deps=(cluster,)))
    return out


# --------------------------------------------------------------------------------------------- closure
def test_closure_follows_depends_on_provider_and_the_parents_dependencies() -> None:
    cluster = res(d.EKS_CLUSTER, "eks")
    provider = res("pulumi:providers:kubernetes", "k8s", deps=(cluster,))
    gate = release("crds", "kube-prometheus-stack", provider=provider)
    component = res("rag:app:RagService", "app", custom=False, deps=(gate,))
    child = k8s("ConfigMap", "cm", parent=component, provider=provider)
    result = program(cluster, provider, gate, component, child)
    graph = d.Graph(result)
    # The child names none of these itself: the provider brings the cluster, the parent brings its depends_on.
    assert {cluster.urn, provider.urn, gate.urn, component.urn} <= graph.closure(child.urn)
    assert child.urn not in graph.closure(gate.urn)


def test_the_recorder_keeps_output_reference_edges() -> None:
    # prod's rag-secrets has no explicit depends_on on RDS: its DATABASE_URL is built from the instance's address
    # output, and that is what the engine (and the recorder) see as a dependency.
    result = run("prod")
    secret = result.by_name("rag-secrets")
    assert result.by_name("postgres-instance").urn in secret.depends_on
    assert result.by_name("redis-replication-group").urn in d.closure(result, secret.urn)


# --------------------------------------------------------------------------------------------- crd-order
def test_a_custom_resource_must_wait_for_the_release_installing_its_crd() -> None:
    stack = release("monitoring", "kube-prometheus-stack")
    monitor = k8s("ServiceMonitor", "rag", {}, api="monitoring.coreos.com/v1")
    broken = findings(program(stack, monitor), "crd-order")
    assert [f.name for f in broken] == ["rag"]
    assert "does not wait for monitoring" in broken[0].message
    assert "depends_on=[monitoring]" in broken[0].fix

    fixed = k8s("ServiceMonitor", "rag", {}, api="monitoring.coreos.com/v1", deps=(stack,))
    assert findings(program(stack, fixed), "crd-order") == []


def test_a_custom_resource_nothing_installs_is_a_finding() -> None:
    no_crds = release("monitoring", "kube-prometheus-stack", {"crds": {"enabled": False}})
    monitor = k8s("ServiceMonitor", "rag", {}, api="monitoring.coreos.com/v1", deps=(no_crds,))
    assert [f.check for f in findings(program(no_crds, monitor))] == ["crd-order"]
    # A CustomResourceDefinition resource provides its group.
    crd = res(d.CRD_TYPE, "servicemonitors", {"spec": {"group": "monitoring.coreos.com"}})
    monitor = k8s("ServiceMonitor", "rag", {}, api="monitoring.coreos.com/v1", deps=(crd,))
    assert findings(program(crd, monitor)) == []


def test_cert_manager_with_gateway_api_needs_the_gateway_crds_first_on_eks() -> None:
    values = {"crds": {"enabled": True}, "config": {"enableGatewayAPI": True}}
    cluster = eks_cluster()
    broken = findings(program(*cluster, release("cert-manager", "cert-manager", values)), "crd-order")
    assert [f.name for f in broken] == ["cert-manager"]
    assert "gateway.networking.k8s.io" in broken[0].message

    envoy = release("envoy-gateway", "gateway-helm", ns="envoy-gateway-system")
    fixed = release("cert-manager", "cert-manager", values, deps=(envoy,))
    assert findings(program(*cluster, envoy, fixed), "crd-order") == []


def test_gke_provides_the_gateway_api_only_when_the_cluster_enables_it() -> None:
    gateway_spec = {"gatewayClassName": "gke-l7-global-external-managed", "listeners": []}

    def gke_program(cluster_inputs: dict) -> StackRun:
        cluster = res(d.GKE_CLUSTER, "gke", cluster_inputs)
        provider = res("pulumi:providers:kubernetes", "k8s", deps=(cluster,))
        gw = k8s("Gateway", "gw", gateway_spec, api="gateway.networking.k8s.io/v1", provider=provider)
        return program(cluster, provider, gw)

    broken = findings(gke_program({"datapathProvider": "ADVANCED_DATAPATH"}))
    assert sorted(f.check for f in broken) == ["class-reference", "crd-order"]
    fixed = {"datapathProvider": "ADVANCED_DATAPATH", "gatewayApiConfig": {"channel": "CHANNEL_STANDARD"}}
    assert findings(gke_program(fixed)) == []


# --------------------------------------------------------------------------------------------- reads-order
POD = {
    "serviceAccountName": "api",
    "containers": [
        {
            "name": "api",
            "envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "creds"}}],
            "env": [{"name": "PG", "valueFrom": {"secretKeyRef": {"name": "pg-app", "key": "uri"}}}],
        }
    ],
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
}


def test_a_workload_must_wait_for_everything_its_pods_read() -> None:
    operator = release("cnpg", "cloudnative-pg")
    objects = [
        k8s("ServiceAccount", "api"),
        k8s("ConfigMap", "cfg"),
        k8s("Secret", "creds"),
        k8s("PersistentVolumeClaim", "data", {"storageClassName": "standard"}),
        k8s(
            "Cluster", "pg", {"enablePDB": False}, api="postgresql.cnpg.io/v1", deps=(operator,)
        ),  # generates Secret pg-app
    ]
    broken = findings(program(operator, *objects, deployment("api", POD)), "reads-order")
    assert sorted(f.message.split(" reads ")[1].split(" (")[0] for f in broken) == [
        "ConfigMap cfg",
        "PersistentVolumeClaim data",
        "Secret creds",
        "Secret pg-app",
        "ServiceAccount api",
    ]
    fixed = deployment("api", POD, deps=tuple(objects))
    assert findings(program(operator, *objects, fixed)) == []


def test_a_reference_nothing_declares_is_missing_unless_optional() -> None:
    pod = {"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "nowhere"}}]}]}
    broken = findings(program(deployment("api", pod)))
    assert [(f.check, f.name) for f in broken] == [("missing-reference", "api")]
    pod["containers"][0]["envFrom"][0]["secretRef"]["optional"] = True
    assert findings(program(deployment("api", pod))) == []


def test_a_cronjob_and_a_helm_release_are_held_to_the_same_rule() -> None:
    script = k8s("ConfigMap", "script")
    pod = {"containers": [{"name": "b"}], "volumes": [{"name": "s", "configMap": {"name": "script"}}]}
    cron = k8s("CronJob", "backup", {"jobTemplate": {"spec": {"template": {"spec": pod}}}}, api="batch/v1")
    assert [f.name for f in findings(program(script, cron))] == ["backup"]
    admin = k8s("Secret", "grafana-admin", ns="monitoring")
    values = {"grafana": {"admin": {"existingSecret": "grafana-admin"}}}
    broken = release("stack", "kube-prometheus-stack", values, ns="monitoring")
    assert [f.name for f in findings(program(admin, broken))] == ["stack"]
    fixed = release("stack", "kube-prometheus-stack", values, ns="monitoring", deps=(admin,))
    assert findings(program(admin, fixed)) == []


def test_namespaced_objects_and_releases_wait_for_their_namespace() -> None:
    namespace = k8s("Namespace", "rag", ns=None)
    assert [f.name for f in findings(program(namespace, k8s("ConfigMap", "cfg")))] == ["cfg"]
    assert findings(program(namespace, k8s("ConfigMap", "cfg", deps=(namespace,)))) == []
    assert [f.name for f in findings(program(namespace, release("chart", "metrics-server")))] == ["chart"]
    created = res(
        "kubernetes:helm.sh/v3:Release",
        "chart",
        {"chart": "metrics-server", "namespace": "rag", "createNamespace": True},
    )
    assert findings(program(namespace, created)) == []


def test_removing_a_depends_on_from_the_real_program_is_caught() -> None:
    result = run("prod")
    monitor = result.by_name("rag-servicemonitor")
    stack = result.by_name("monitoring-stack")
    assert not [f for f in findings(result) if f.name == "rag-servicemonitor"]
    cut = dataclasses.replace(monitor, depends_on=tuple(u for u in monitor.depends_on if u != stack.urn))
    broken = dataclasses.replace(result, resources=[cut if r is monitor else r for r in result.resources])
    found = [f for f in findings(broken) if f.name == "rag-servicemonitor"]
    assert [f.check for f in found] == ["crd-order"]


# --------------------------------------------------------------------------------------------- class-reference
def test_gateway_class_must_be_declared_and_served_on_eks() -> None:
    cluster = eks_cluster(**{"vpc-cni": {"enableNetworkPolicy": "true"}})
    envoy = release("envoy-gateway", "gateway-helm", ns="envoy-gateway-system")
    gw = k8s("Gateway", "gw", {"gatewayClassName": "eg"}, api="gateway.networking.k8s.io/v1", deps=(envoy,))
    assert [f.check for f in findings(program(*cluster, envoy, gw))] == ["class-reference"]

    controller = "gateway.envoyproxy.io/gatewayclass-controller"
    klass = k8s(
        "GatewayClass", "eg", {"controllerName": controller}, api="gateway.networking.k8s.io/v1", ns=None
    )
    klass = dataclasses.replace(klass, depends_on=(envoy.urn,))
    # (Without an EnvoyProxy asking for an NLB the class also gets a cloud-args finding: test_load_balancer.py.)
    assert [f for f in findings(program(*cluster, envoy, klass, gw)) if f.check != "cloud-args"] == []
    # The class without its controller: nothing programs the Gateway.
    crds = release("gateway-crds", "gateway-crds-helm")
    gw = k8s("Gateway", "gw", {"gatewayClassName": "eg"}, api="gateway.networking.k8s.io/v1", deps=(crds,))
    klass = dataclasses.replace(klass, depends_on=(crds.urn,))
    checks = [f.check for f in findings(program(*cluster, crds, klass, gw))]
    assert [c for c in checks if c != "cloud-args"] == ["capability"]


def test_storage_classes_and_issuers_must_exist() -> None:
    cluster = eks_cluster()
    sts_spec = {
        "template": {"spec": {"containers": [{"name": "c"}]}},
        "volumeClaimTemplates": [{"spec": {"storageClassName": "gp3"}}],
    }
    sts = k8s("StatefulSet", "db", sts_spec, api="apps/v1")
    broken = findings(program(*cluster, sts))
    assert [(f.check, "gp3" in f.message) for f in broken] == [("class-reference", True)]
    gp3 = k8s("StorageClass", "gp3", {}, api="storage.k8s.io/v1", ns=None)
    assert [f.check for f in findings(program(*cluster, gp3, sts))] == ["reads-order"]
    sts = k8s("StatefulSet", "db", sts_spec, api="apps/v1", deps=(gp3,))
    assert findings(program(*cluster, gp3, sts)) == []
    # Without a class, EKS (no default StorageClass since 1.30) leaves the claim Pending.
    sts_spec["volumeClaimTemplates"] = [{"spec": {}}]
    assert [
        f.check for f in findings(program(*cluster, k8s("StatefulSet", "db", sts_spec, api="apps/v1")))
    ] == ["capability"]

    manager = release("cert-manager", "cert-manager", {"crds": {"enabled": True}})
    cert_spec = {"secretName": "tls", "issuerRef": {"name": "le", "kind": "ClusterIssuer"}}
    cert = k8s("Certificate", "tls", cert_spec, api="cert-manager.io/v1", deps=(manager,))
    assert [f.check for f in findings(program(manager, cert))] == ["class-reference"]
    issuer = k8s("ClusterIssuer", "le", {}, api="cert-manager.io/v1", ns=None, deps=(manager,))
    assert findings(program(manager, issuer, cert)) == []
    # An existing ClusterIssuer named by config is a prerequisite, not a finding.
    tls = {"enabled": True, "clusterIssuer": "le", "installCertManager": False, "issuer": "letsencrypt"}
    cert = k8s("Certificate", "tls", cert_spec, api="cert-manager.io/v1")
    assert findings(program(cert, tls=tls)) == []


# --------------------------------------------------------------------------------------------- capability
NETPOL = ("default-deny", {"podSelector": {}, "policyTypes": ["Ingress"]})


def netpol() -> RecordedResource:
    return k8s("NetworkPolicy", NETPOL[0], NETPOL[1], api="networking.k8s.io/v1")


def test_network_policies_need_an_enforcing_dataplane() -> None:
    off = findings(program(*eks_cluster(), netpol()))
    assert [(f.check, f.name) for f in off] == [("capability", "eks")]
    assert "enableNetworkPolicy" in off[0].fix
    assert findings(program(*eks_cluster(**{"vpc-cni": {"enableNetworkPolicy": "false"}}), netpol()))
    assert findings(program(*eks_cluster(**{"vpc-cni": {"enableNetworkPolicy": "true"}}), netpol())) == []

    assert [f.name for f in findings(program(res(d.GKE_CLUSTER, "gke", {}), netpol()))] == ["gke"]
    for enforcing in (
        {"datapathProvider": "ADVANCED_DATAPATH"},
        {"networkPolicy": {"enabled": True}, "addonsConfig": {"networkPolicyConfig": {"disabled": False}}},
        {"enableAutopilot": True},
    ):
        assert findings(program(res(d.GKE_CLUSTER, "gke", enforcing), netpol())) == [], enforcing


def test_an_hpa_needs_the_metrics_api() -> None:
    hpa = k8s("HorizontalPodAutoscaler", "api", {}, api="autoscaling/v2")
    assert [f.name for f in findings(program(*eks_cluster(), hpa))] == ["api"]
    assert findings(program(*eks_cluster(**{"metrics-server": {}}), hpa)) == []
    assert findings(program(*eks_cluster(), release("metrics-server", "metrics-server"), hpa)) == []
    assert findings(program(res(d.GKE_CLUSTER, "gke", {}), hpa)) == []  # GKE runs metrics-server


def test_control_plane_scrapes_are_off_on_managed_control_planes() -> None:
    on = release("monitoring", "kube-prometheus-stack")
    broken = findings(program(*eks_cluster(), on))
    assert [f.name for f in broken] == ["monitoring"]
    for component in ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy"):
        assert f"{component}.enabled: false" in broken[0].fix
    off = {name: {"enabled": False} for name in (*d.CONTROL_PLANE_SCRAPES, "kubeProxy")}
    assert findings(program(*eks_cluster(), release("monitoring", "kube-prometheus-stack", off))) == []
    # On a cluster whose control plane we run, the scrapes are the user's choice.
    assert findings(program(on)) == []


def test_the_coredns_scrape_is_off_on_gke_which_runs_kube_dns() -> None:
    off = {name: {"enabled": False} for name in (*d.CONTROL_PLANE_SCRAPES, "kubeProxy")}
    gke = res(d.GKE_CLUSTER, "gke", {"datapathProvider": "ADVANCED_DATAPATH"})
    broken = findings(program(gke, release("monitoring", "kube-prometheus-stack", off)))
    assert [f.name for f in broken] == ["monitoring"]
    assert "coreDns.enabled: false" in broken[0].fix
    fixed = {**off, "coreDns": {"enabled": False}, "kubeDns": {"enabled": True}}
    assert findings(program(gke, release("monitoring", "kube-prometheus-stack", fixed))) == []
    # EKS and kind run CoreDNS: the chart's default scrape is right there.
    assert findings(program(*eks_cluster(), release("monitoring", "kube-prometheus-stack", off))) == []


def test_the_stacks_scrape_the_dns_their_cluster_runs() -> None:
    from tests.infra.conftest import run

    def dns_scrapes(stack: str, target: str) -> tuple[bool, bool]:
        values = run(stack, target).by_name("monitoring-stack").inputs["values"]
        return values["coreDns"]["enabled"], values["kubeDns"]["enabled"]

    assert dns_scrapes("staging", "gke") == (False, True)
    assert dns_scrapes("prod", "eks") == (True, False)


def test_workload_identity_bindings_wait_for_the_gke_cluster() -> None:
    cluster = res(d.GKE_CLUSTER, "gke", {"datapathProvider": "ADVANCED_DATAPATH"})
    member = {"member": "serviceAccount:p.svc.id.goog[rag/api]", "role": "roles/iam.workloadIdentityUser"}
    binding = res("gcp:serviceaccount/iAMMember:IAMMember", "wi", member)
    assert [f.name for f in findings(program(cluster, binding))] == ["wi"]
    binding = res("gcp:serviceaccount/iAMMember:IAMMember", "wi", member, deps=(cluster,))
    assert findings(program(cluster, binding)) == []


# --------------------------------------------------------------------------------------------- exposure
def metrics_program(*rules: dict, **config: Any) -> StackRun:
    labels = {"app": "api"}
    service = k8s("Service", "api", {"ports": [{"name": "http", "port": 8000.0}], "selector": labels})
    service = dataclasses.replace(
        service, inputs={**service.inputs, "metadata": {**service.inputs["metadata"], "labels": labels}}
    )
    stack = release("monitoring", "kube-prometheus-stack")
    monitor_spec = {"selector": {"matchLabels": labels}, "endpoints": [{"port": "http", "path": "/metrics"}]}
    monitor = k8s("ServiceMonitor", "api", monitor_spec, api="monitoring.coreos.com/v1", deps=(stack,))
    route = k8s("HTTPRoute", "public", {"rules": list(rules)}, api="gateway.networking.k8s.io/v1")
    return program(service, stack, monitor, route, **config)


EVERYTHING = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
    "backendRefs": [{"name": "api", "port": 8000.0}],
}


def test_metrics_behind_a_public_route_are_an_exposure() -> None:
    broken = findings(metrics_program(EVERYTHING))
    assert [(f.check, f.name) for f in broken] == [("exposure", "public")]
    assert "/metrics" in broken[0].message
    blocked = {
        "matches": [{"path": {"type": "Exact", "value": "/metrics"}}],
        "filters": [
            {
                "type": "RequestRedirect",
                "requestRedirect": {
                    "statusCode": 302,
                    "path": {"type": "ReplaceFullPath", "replaceFullPath": "/"},
                },
            }
        ],
    }
    assert findings(metrics_program(EVERYTHING, blocked)) == []
    only_api = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
        "backendRefs": [{"name": "api", "port": 8000.0}],
    }
    assert findings(metrics_program(only_api)) == []


def ingress_program(*paths: dict) -> StackRun:
    base = metrics_program()
    ingress = k8s(
        "Ingress",
        "public",
        {"rules": [{"host": "rag.example.com", "http": {"paths": list(paths)}}]},
        api="networking.k8s.io/v1",
    )
    resources = [r for r in base.resources if not r.type.endswith(":HTTPRoute")]
    return dataclasses.replace(base, resources=[*resources, ingress])


def ingress_path(path: str, service: str, port: dict, path_type: str = "Prefix") -> dict:
    return {"path": path, "pathType": path_type, "backend": {"service": {"name": service, "port": port}}}


def test_metrics_behind_an_ingress_are_an_exposure() -> None:
    everything = ingress_path("/", "api", {"number": 8000.0})
    broken = findings(ingress_program(everything))
    assert [(f.check, f.name) for f in broken] == [("exposure", "public")]
    assert "Ingress public sends /metrics" in broken[0].message
    by_name = ingress_path("/", "api", {"name": "http"})
    assert len(findings(ingress_program(by_name))) == 1
    closed = ingress_path("/metrics", "rag-closed", {"number": 80.0})
    assert findings(ingress_program(closed, everything)) == []
    # An Exact /metrics does not cover /metrics/... but Prometheus scrapes /metrics itself: still closed.
    assert (
        findings(
            ingress_program(ingress_path("/metrics", "rag-closed", {"number": 80.0}, "Exact"), everything)
        )
        == []
    )
    # A longer prefix that is not a whole path element does not cover /metrics.
    assert (
        len(findings(ingress_program(ingress_path("/met", "rag-closed", {"number": 80.0}), everything))) == 1
    )


def test_the_real_ingress_fallback_keeps_metrics_private() -> None:
    result = run("dev", "existing", gateway={"ingress": {"enabled": True}}, monitoring={"enabled": True})
    assert result.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    assert [f for f in d.analyse(result).findings if f.check == "exposure"] == []
    ingress = result.of_type("kubernetes:networking.k8s.io/v1:Ingress")[0]
    paths = ingress.inputs["spec"]["rules"][0]["http"]["paths"]
    without_closed = dataclasses.replace(
        ingress,
        inputs={
            **ingress.inputs,
            "spec": {**ingress.inputs["spec"], "rules": [{"host": "h", "http": {"paths": paths[1:]}}]},
        },
    )
    broken = dataclasses.replace(
        result, resources=[without_closed if r is ingress else r for r in result.resources]
    )
    assert [f.check for f in d.analyse(broken).findings] == ["exposure"]


def test_prod_clusters_are_private() -> None:
    public = res(d.EKS_CLUSTER, "eks", {"vpcConfig": {"endpointPublicAccess": True}})
    assert [f.check for f in findings(program(public, environment="prod"))] == ["exposure"]
    assert findings(program(public, environment="staging")) == []  # a choice outside prod
    listed = res(
        d.EKS_CLUSTER,
        "eks",
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}},
    )
    assert findings(program(listed, environment="prod")) == []
    subnet = res("aws:ec2/subnet:Subnet", "public-0", {"mapPublicIpOnLaunch": True})
    nodes = res("aws:eks/nodeGroup:NodeGroup", "nodes", {"subnetIds": ["public-0-id"]})
    private = res(d.EKS_CLUSTER, "eks", {"vpcConfig": {"endpointPublicAccess": False}})
    assert [f.name for f in findings(program(private, subnet, nodes, environment="prod"))] == ["nodes"]

    gke = res(d.GKE_CLUSTER, "gke", {"datapathProvider": "ADVANCED_DATAPATH"})
    assert len(findings(program(gke, environment="prod"))) == 2  # public nodes, open endpoint
    private_config = {"enablePrivateNodes": True, "enablePrivateEndpoint": True}
    gke = res(
        d.GKE_CLUSTER,
        "gke",
        {"datapathProvider": "ADVANCED_DATAPATH", "privateClusterConfig": private_config},
    )
    assert findings(program(gke, environment="prod")) == []


# --------------------------------------------------------------------------------------------- the real stacks
def test_every_stack_on_every_target_is_deployable(target_run: StackRun) -> None:
    analysis = d.analyse(target_run)
    assert analysis.findings == [], "\n".join(str(f) for f in analysis.findings)
    if analysis.target == "existing":
        # What an existing cluster must already run is stated, not assumed.
        assert {c.name for c in analysis.prerequisites} >= {"api:gateway.networking.k8s.io", "network-policy"}


def test_waivers_name_an_issue() -> None:
    for key, reason in d.WAIVERS.items():
        checks = {
            "chart-values",
            "traffic",
            "alert-targets",
            "crd-order",
            "reads-order",
            "missing-reference",
            "class-reference",
            "capability",
            "exposure",
            "cloud-args",
        }
        assert key[0] in checks
        assert "issue" in reason, key


# --------------------------------------------------------------------------------------------- make plan
def test_the_render_fails_on_a_finding_and_reports_resource_and_fix(tmp_path: Path) -> None:
    result = run("prod")
    monitor = result.by_name("qdrant-servicemonitor")
    cut = dataclasses.replace(monitor, depends_on=(result.by_name("namespace").urn,), parent=STACK)
    broken = dataclasses.replace(result, resources=[cut if r is monitor else r for r in result.resources])
    report = render.render_run(broken, tmp_path, environment="prod")
    assert not report.ok
    assert [(f.check, f.name) for f in report.findings] == [("crd-order", "qdrant-servicemonitor")]
    plan = (tmp_path / "plan.md").read_text()
    assert "**FAIL**" in plan
    assert "1 deployability findings" in plan
    assert f"**crd-order** `{cut.urn}`" in plan
    assert "**Fix**: add depends_on=[monitoring-stack]" in plan
    listed = json.loads((tmp_path / "plan.json").read_text())["deployability"]
    assert listed["target"] == "eks"
    assert listed["findings"][0]["resource"] == cut.urn


def test_make_plan_lists_capabilities_and_prerequisites(tmp_path: Path) -> None:
    assert render.main(["--stack", "dev", "--out", str(tmp_path)]) == 0
    plan = (tmp_path / "plan.md").read_text()
    section = plan[plan.index("## Deployability") :]
    assert "Cluster target `existing`" in section
    assert "`gatewayclass:envoy-gateway`: prerequisite" in section
    assert "`network-policy`: prerequisite" in section
    assert "### Findings\n\n- none" in section
    # dev runs no HorizontalPodAutoscaler: metrics-server is not asked for (it was, for every existing cluster).
    assert "metrics-api" not in section


def test_an_existing_cluster_with_autoscaling_needs_metrics_server() -> None:
    from infra.offline import run_stack

    run = run_stack(
        "dev",
        config_overrides={
            "rag:service": {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}}
        },
    )
    analysis = d.analyse(run)
    assert run.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert "metrics-api" in {c.name for c in analysis.prerequisites}


def test_registry_backups_on_a_shared_operator_or_without_cert_manager_list_the_plugins_prerequisites() -> (
    None
):
    """The Barman Cloud plugin comes with the operator the stack installs, and needs cert-manager: with the operator
    installed elsewhere, or cert-manager not installed by the stack, `make plan` lists what the cluster must run."""
    staging = d.analyse(run("staging"))
    assert {"api:barmancloud.cnpg.io", "api:cert-manager.io"}.isdisjoint(
        c.name for c in staging.prerequisites
    )
    shared = run(
        "staging", postgres={"cloudnative": {"installOperator": False}}, tls={"installCertManager": False}
    )
    names = {c.name: c.detail for c in d.analyse(shared).prerequisites}
    assert "Barman Cloud plugin" in names["api:barmancloud.cnpg.io"]
    assert "api:cert-manager.io" in names
    assert not [r for r in shared.resources if r.name == "postgres-barman-cloud"]


def test_the_barman_cloud_plugins_chart_needs_cert_manager_on_a_cluster_the_stack_creates() -> None:
    """The plugin's chart always renders a cert-manager Issuer and two Certificates: on a GKE/EKS cluster this update
    creates, a stack that installs no cert-manager (tls off) would fail at the plugin's release in a real `up` while
    the offline plan listed cert-manager as a mere prerequisite. With the stack's cert-manager, the release waits."""

    def plugin_findings(stack: Any) -> list[d.Finding]:
        analysis = d.analyse(stack)
        return [
            f
            for f in d.check_crd_order(stack, analysis, d.Graph(stack))
            if f.resource.endswith("::postgres-barman-cloud")
        ]

    assert plugin_findings(run("staging")) == []
    # Without TLS nothing installs cert-manager (only dev may turn TLS off: staging's cluster, dev's rules).
    (finding,) = plugin_findings(run("staging", environment="dev", tls={"enabled": False}))
    assert "cert-manager.io" in finding.message
    assert "creates the cluster in this same update" in finding.message


def test_no_disruption_budget_blocks_a_node_drain() -> None:
    """dev's single-instance CloudNativePG cluster carried the operator's minAvailable-1 budget over its only pod
    (enablePDB): the node under it (dev's, and every PR stack's) could not be drained, upgraded or scaled down."""
    dev = run("dev")
    cluster = next(r for r in dev.resources if r.type == "kubernetes:postgresql.cnpg.io/v1:Cluster")
    assert cluster.inputs["spec"]["instances"] == 1
    assert cluster.inputs["spec"]["enablePDB"] is False
    assert not d.check_drain_blocking(dev, d.Analysis(target="existing"), d.Graph(dev))
    prod_like = run("staging")
    assert not d.check_drain_blocking(prod_like, d.Analysis(target="existing"), d.Graph(prod_like))

    blocked = dataclasses.replace(
        cluster, inputs={**cluster.inputs, "spec": {**cluster.inputs["spec"], "enablePDB": True}}
    )
    pdb = next(r for r in prod_like.resources if r.type == "kubernetes:policy/v1:PodDisruptionBudget")
    spec = {k: v for k, v in pdb.inputs["spec"].items() if k not in ("maxUnavailable", "minAvailable")}
    zero = dataclasses.replace(pdb, inputs={**pdb.inputs, "spec": {**spec, "maxUnavailable": 0}})
    everything = dataclasses.replace(pdb, inputs={**pdb.inputs, "spec": {**spec, "minAvailable": 50}})
    broken = dataclasses.replace(
        prod_like,
        resources=[
            *prod_like.resources,
            blocked,
            dataclasses.replace(zero, urn=zero.urn + "-zero"),
            dataclasses.replace(everything, urn=everything.urn + "-all"),
        ],
    )
    found = d.check_drain_blocking(broken, d.Analysis(target="existing"), d.Graph(broken))
    assert {f.check for f in found} == {"drain-blocking"}
    assert sorted(f.resource for f in found) == sorted(
        [blocked.urn, zero.urn + "-zero", everything.urn + "-all"]
    )
    assert "enablePDB" in next(f for f in found if f.resource == blocked.urn).fix


def test_an_ingress_on_eks_needs_the_controller_the_user_installs() -> None:
    """EYES8 M6: EKS serves no Ingress (the stack's Envoy Gateway serves the Gateway API only). A named class was a
    plan FAIL (class-reference) though docs/infra.md lists it as a prerequisite, and no className passed with no
    prerequisite although nothing would serve the class-less Ingress or cert-manager's HTTP-01 solver."""
    named = d.analyse(run("prod", "eks", gateway={"ingress": {"enabled": True, "className": "nginx"}}))
    assert named.findings == [], "\n".join(str(f) for f in named.findings)
    prerequisites = {c.name: c.detail for c in named.prerequisites}
    assert "IngressClass nginx" in prerequisites["ingressclass:nginx"]

    classless = d.analyse(run("prod", "eks", gateway={"ingress": {"enabled": True}}))
    assert classless.findings == [], "\n".join(str(f) for f in classless.findings)
    detail = {c.name: c.detail for c in classless.prerequisites}["default-ingressclass"]
    assert "ingressclass.kubernetes.io/is-default-class" in detail
    assert "rag:gateway.ingress.className" in detail

    # The same class-less Ingress on an existing cluster needs the same default class (kind ships none).
    existing = d.analyse(run("dev", "existing", gateway={"ingress": {"enabled": True}}))
    assert "default-ingressclass" in {c.name for c in existing.prerequisites}
    # Without the Ingress, nothing of it is asked for.
    assert not {c.name for c in d.analyse(run("prod", "eks")).prerequisites} & {"default-ingressclass"}
