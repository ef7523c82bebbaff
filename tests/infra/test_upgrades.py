"""Chart and Kubernetes upgrades: a raised pin upgrades its CRDs before their users, and every pinned chart
supports the cluster's Kubernetes version (`make plan` checks `crd-upgrade` and `kube-version`).

The real stack files run through the real program under mocks, with each pin raised the way a user raises it
(a config key, or the constant in code), and recorded programs broken on purpose (a pin raised without its CRD
source, a cluster version outside a chart's range).
"""

from __future__ import annotations

import dataclasses

import pytest

from infra import chart_values
from infra import deployability as d
from infra.clusters import eks
from infra.components import gateway, monitoring
from infra.offline import RecordedResource, StackRun, run_stack
from tests.infra.conftest import run

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
HELM_CHART = "kubernetes:helm.sh/v4:Chart"


def findings(result: StackRun, check: str) -> list[d.Finding]:
    return [f for f in d.analyse(result).findings if f.check == check]


def replace_inputs(result: StackRun, name: str, **inputs: object) -> StackRun:
    """`result` with the inputs of resource `name` updated."""
    resources = [
        dataclasses.replace(r, inputs={**r.inputs, **inputs}) if r.name == name else r
        for r in result.resources
    ]
    return dataclasses.replace(result, resources=resources)


def by_name(result: StackRun, name: str) -> RecordedResource:
    return result.by_name(name)


# ---------------------------------------------------------------------------------------------- kube-version
def test_every_pinned_chart_has_a_range_covering_the_stacks_cluster_versions() -> None:
    """prod runs EKS 1.35 and staging-on-EKS the default, 1.35 too: each chart they install (cert-manager, kube-prometheus-stack,
    Envoy Gateway, metrics-server, cluster-autoscaler, CloudNativePG on staging) has a recorded range that covers
    it, and the checks find nothing."""
    for result, minor in ((run("prod"), "1.35"), (run("staging", "eks"), "1.35")):
        assert d.cluster_kubernetes_version(result) == (minor, "rag:cluster.eks.version")
        charts = {d._release_chart(r) for r in result.resources if r.type in d.HELM_TYPES}
        for chart in charts & set(d.CHART_VERSION_KEYS):
            (release,) = [r for r in result.resources if d._release_chart(r) == chart]
            supported = chart_values.supported_kubernetes(chart, str(release.inputs["version"]))
            assert supported is not None, chart
            assert supported.covers(minor), (chart, supported)
        assert findings(result, "kube-version") == []


def test_end_of_life_cert_manager_on_prods_kubernetes_is_a_finding_naming_chart_file_and_keys() -> None:
    """cert-manager v1.18.2 (supported 1.29-1.33) on prod's 1.35: the finding names the chart, the stack file,
    the pin's key and the cluster version's key."""
    broken = replace_inputs(run("prod"), "gateway-cert-manager", version="v1.18.2")
    (finding,) = findings(broken, "kube-version")
    assert "cert-manager v1.18.2 supports Kubernetes 1.29-1.33" in finding.message
    assert "Pulumi.prod.yaml runs 1.35 (rag:cluster.eks.version)" in finding.message
    assert "rag:tls.certManagerVersion" in finding.fix
    assert "rag:cluster.eks.version" in finding.fix


def test_a_cluster_newer_than_a_charts_range_is_a_finding() -> None:
    """An EKS cluster raised to 1.37 is past cert-manager v1.21's 1.36 (and Envoy Gateway's, reported by
    cloud-args); kube-prometheus-stack's open-ended `>=1.25` never is."""
    result = run("prod")
    (cluster,) = result.of_type(d.EKS_CLUSTER)
    broken = replace_inputs(result, cluster.name, version="1.37")
    charts = {f.name for f in findings(broken, "kube-version")}
    assert "gateway-cert-manager" in charts
    assert "monitoring-stack" not in charts


def test_a_chart_version_without_a_recorded_range_is_a_finding() -> None:
    broken = replace_inputs(run("prod"), "monitoring-stack", version="79.0.0")
    (finding,) = findings(broken, "kube-version")
    assert "kube-prometheus-stack 79.0.0 (rag:monitoring.chartVersion)" in finding.message
    assert "KUBERNETES_SUPPORT" in finding.fix


def test_ranges_compare_minor_versions_numerically() -> None:
    supported = chart_values.KubernetesRange("1.9", "1.33", "test")
    assert supported.covers("1.10")
    assert supported.covers("1.33")
    assert not supported.covers("1.34")
    assert not supported.covers("1.8")
    assert chart_values.KubernetesRange("1.25", None, "test").covers("1.99")
    assert chart_values.supported_kubernetes("cert-manager", "v1.21.1") == chart_values.KubernetesRange(
        "1.33", "1.36", chart_values._CERT_MANAGER_MATRIX
    )
    assert chart_values.supported_kubernetes("cert-manager", "v1.2.0") is None


def test_pinned_cert_manager_is_supported_on_the_envoy_gateway_range() -> None:
    """The default cert-manager covers every Kubernetes minor the EKS target accepts (Envoy Gateway's range)."""
    supported = chart_values.supported_kubernetes("cert-manager", gateway.CERT_MANAGER_VERSION)
    assert supported is not None
    assert all(supported.covers(minor) for minor in eks.ENVOY_GATEWAY_KUBERNETES)
    assert chart_values.load("cert-manager", gateway.CERT_MANAGER_VERSION) is not None


def test_the_envoy_gateway_range_agrees_with_the_eks_targets_list() -> None:
    """infra/clusters/eks.py keeps its own list of Envoy Gateway's minors (the cloud-args check on the cluster):
    both say the same thing, so raising the pin means updating one range, not two that drift."""
    chart, version, _ = eks.ENVOY_GATEWAY_CHART
    supported = chart_values.supported_kubernetes(chart, version)
    assert supported is not None
    assert (supported.minimum, supported.maximum) == (
        eks.ENVOY_GATEWAY_KUBERNETES[0],
        eks.ENVOY_GATEWAY_KUBERNETES[-1],
    )


# ---------------------------------------------------------------------------------------------- crd-upgrade
def test_envoy_gateway_crds_come_from_its_crd_chart_before_the_controller() -> None:
    """On EKS the Gateway API and Envoy Gateway CRDs are a helm.v4.Chart of gateway-crds-helm at the controller's
    version, on a provider that adopts existing CRDs and forces field ownership; the gateway-helm release skips
    its crds/ and waits for them; the EnvoyProxy and GatewayClass wait for the release."""
    result = run("prod")
    graph = d.Graph(result)
    crds = by_name(result, "envoy-gateway-crds")
    release = by_name(result, "envoy-gateway")
    assert crds.type == HELM_CHART
    assert crds.inputs["chart"].endswith("/gateway-crds-helm")
    assert crds.inputs["version"] == release.inputs["version"] == eks.ENVOY_GATEWAY_CHART[1]
    assert crds.inputs["values"] == gateway.envoy_gateway_crd_values()
    provider = next(r for r in result.resources if r.urn == crds.provider)
    assert provider.inputs["upsertExistingObjects"] == "true"
    assert provider.inputs["enablePatchForce"] == "true"
    assert release.inputs["skipCrds"] is True
    assert crds.urn in graph.closure(release.urn)
    for user in ("envoy-proxy", "gateway-class"):
        assert release.urn in graph.closure(by_name(result, user).urn)


def test_crds_are_retained_when_pulumi_deletes_them() -> None:
    """The chart's transform marks every CRD child retain_on_delete (deleting a CRD deletes every object of its
    kind); other children are left alone."""
    import pulumi

    def args(type_: str) -> pulumi.ResourceTransformArgs:
        return pulumi.ResourceTransformArgs(
            custom=True, type_=type_, name="x", props={"a": 1}, opts=pulumi.ResourceOptions(protect=False)
        )

    kept = gateway.retain_crds(args(gateway.CRD_TYPE))
    assert kept is not None
    assert kept.opts.retain_on_delete is True
    assert kept.props == {"a": 1}
    assert gateway.retain_crds(args("kubernetes:apps/v1:Deployment")) is None


def test_kube_prometheus_stack_upgrades_its_crds_with_the_chart() -> None:
    """Its CRDs are in a subchart's crds/ (never upgraded by Helm): the chart's own pre-upgrade hook applies the
    bundled CRDs server-side, forcing conflicts with the first install's field manager; its keys exist at the
    pinned version, and the CRD users wait for the release (so for the hook)."""
    result = run("prod")
    release = by_name(result, "monitoring-stack")
    job = release.inputs["values"]["crds"]["upgradeJob"]
    assert job["enabled"] is True
    assert job["forceConflicts"] is True
    assert job["image"]["busybox"]["tag"] != "latest"
    record = chart_values.load("kube-prometheus-stack", monitoring.CHART_VERSION)
    assert record is not None
    assert list(chart_values.unknown_keys(record.tree, release.inputs["values"])) == []
    graph = d.Graph(result)
    assert release.urn in graph.closure(by_name(result, "monitoring-rules").urn)


def test_a_pin_raised_without_its_crd_source_is_a_finding() -> None:
    result = run("prod")
    raised = replace_inputs(result, "envoy-gateway", version="v1.10.0")
    messages = [f.message for f in findings(raised, "crd-upgrade")]
    assert any(
        "gateway-helm is pinned at v1.10.0 but its CRDs come from gateway-crds-helm v1.9.0" in m
        for m in messages
    )
    # gateway-helm installing its own crds/ again (skip_crds off) is one too.
    unskipped = replace_inputs(result, "envoy-gateway", skipCrds=False)
    (finding,) = findings(unskipped, "crd-upgrade")
    assert "never upgrades" in finding.message
    # kube-prometheus-stack without its upgrade hook.
    values = dict(by_name(result, "monitoring-stack").inputs["values"])
    values["crds"] = {"enabled": True}
    (finding,) = findings(replace_inputs(result, "monitoring-stack", values=values), "crd-upgrade")
    assert "crds.upgradeJob.enabled" in finding.fix
    assert findings(result, "crd-upgrade") == []


def test_a_gateway_helm_release_skipping_crds_no_longer_counts_as_installing_them() -> None:
    """With skip_crds the Gateway API CRDs come from the CRD chart alone: take it away and the Gateway API users
    have no CRD source (crd-order)."""
    result = run("prod")
    resources = [r for r in result.resources if r.name != "envoy-gateway-crds"]
    resources = [
        dataclasses.replace(r, depends_on=tuple(u for u in r.depends_on if "envoy-gateway-crds" not in u))
        for r in resources
    ]
    broken = dataclasses.replace(result, resources=resources)
    assert any("gateway.networking.k8s.io" in f.message for f in findings(broken, "crd-order"))


@pytest.fixture
def bumped_envoy_gateway(monkeypatch: pytest.MonkeyPatch) -> StackRun:
    monkeypatch.setattr(eks, "ENVOY_GATEWAY_CHART", ("gateway-helm", "v1.9.9", eks.ENVOY_GATEWAY_CHART[2]))
    return run_stack(
        "prod",
        config_overrides={"tls": {"certManagerVersion": "v1.21.9"}, "monitoring": {"chartVersion": "78.3.9"}},
    )


def test_a_simulated_bump_of_every_pin_moves_each_crd_source_and_keeps_the_order(
    bumped_envoy_gateway: StackRun,
) -> None:
    """Raise Envoy Gateway (in code), cert-manager and kube-prometheus-stack (config keys) the way a user would:
    the CRD chart follows Envoy Gateway's pin and stays before the controller; cert-manager's CRDs are templates of
    the bumped release (kept on uninstall) and its Issuer and Certificate wait for it; kube-prometheus-stack keeps
    its CRD hook. `make plan` then asks for each new version's values record, nothing else."""
    result = bumped_envoy_gateway
    graph = d.Graph(result)
    crds, release = by_name(result, "envoy-gateway-crds"), by_name(result, "envoy-gateway")
    assert crds.inputs["version"] == release.inputs["version"] == "v1.9.9"
    assert crds.urn in graph.closure(release.urn)
    cert_manager = by_name(result, "gateway-cert-manager")
    assert cert_manager.inputs["version"] == "v1.21.9"
    assert cert_manager.inputs["values"]["crds"] == {"enabled": True, "keep": True}
    for user in ("gateway-issuer", "gateway-certificate"):
        assert cert_manager.urn in graph.closure(by_name(result, user).urn)
    stack = by_name(result, "monitoring-stack")
    assert stack.inputs["version"] == "78.3.9"
    assert stack.inputs["values"]["crds"]["upgradeJob"]["enabled"] is True
    # A patch release keeps its minor's Kubernetes range; each bumped chart with values needs its keys recorded.
    analysis = d.analyse(result)
    assert {f.check for f in analysis.findings} == {"chart-values"}
    unrecorded = {f.name for f in analysis.findings}
    assert unrecorded == {"gateway-cert-manager", "monitoring-stack", "envoy-gateway-crds"}
