"""The recorded values keys of the pinned charts (`infra.chart_values`) and `make plan`'s `chart-values` check.

Helm keeps a values key no template reads and renders nothing from it: a misspelt or removed key installs cleanly
and the setting never applies. These tests hold every release the program installs to the keys of its chart at
the pinned version, and show that the check catches the defect class on the real program.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import yaml

from infra import chart_values as cv
from infra import deployability as d
from infra.clusters.eks import ENVOY_GATEWAY_CHART, METRICS_SERVER_CHART
from infra.components.gateway import CERT_MANAGER_VERSION, ENVOY_GATEWAY_CRDS_CHART
from infra.components.monitoring import CHART_VERSION as KUBE_PROMETHEUS_STACK_VERSION
from infra.components.postgres import CNPG_CHART_VERSION
from infra.offline import PROJECT_DIR
from tests.infra.conftest import run


def chart_findings(result) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check == "chart-values"]


def with_values(result, name: str, values: dict):
    release = result.by_name(name)
    changed = dataclasses.replace(release, inputs={**release.inputs, "values": values})
    return dataclasses.replace(result, resources=[changed if r is release else r for r in result.resources])


def test_every_pinned_chart_version_has_a_record_from_its_tag() -> None:
    declared = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())["config"]
    pinned = {
        ("cert-manager", CERT_MANAGER_VERSION),
        ("cert-manager", declared["tls"]["default"]["certManagerVersion"]),
        ("cloudnative-pg", CNPG_CHART_VERSION),
        ("kube-prometheus-stack", KUBE_PROMETHEUS_STACK_VERSION),
        ("kube-prometheus-stack", declared["monitoring"]["default"]["chartVersion"]),
        (METRICS_SERVER_CHART[0], METRICS_SERVER_CHART[1]),
        (ENVOY_GATEWAY_CRDS_CHART, ENVOY_GATEWAY_CHART[1]),
    }
    for chart, version in pinned:
        record = cv.load(chart, version)
        assert record is not None, f"no record of {chart} {version}"
        assert (record.chart, record.version) == (chart, version)
        # Each source is a file at a commit (a tag's commit), not a branch that moves.
        for source in record.sources:
            assert re.search(r"https://github\.com/[^/]+/[^/]+/blob/[0-9a-f]{40}/\S+values\.yaml$", source), (
                source
            )


def test_the_real_program_sets_only_keys_its_charts_have() -> None:
    # The matrix test (test_deployability) runs every check on all 9 runs; here the releases are listed, so a
    # release that set no values (nothing checked) cannot pass unnoticed.
    expected = {
        ("staging", "gke"): {
            "cert-manager",
            "cloudnative-pg",
            "kube-prometheus-stack",
            "plugin-barman-cloud",  # staging backs its registry up through the Barman Cloud plugin
        },
        ("prod", "eks"): {
            "cert-manager",
            "cluster-autoscaler",
            "gateway-crds-helm",
            "kube-prometheus-stack",
            "metrics-server",
        },
    }
    for (stack, target), charts in expected.items():
        result = run(stack, target)
        releases = [r for r in result.resources if r.type in d.HELM_TYPES and r.inputs.get("values")]
        assert {d._release_chart(r) for r in releases} == charts
        assert chart_findings(result) == []


def test_a_misspelt_key_in_the_real_program_is_a_finding_with_the_near_key() -> None:
    result = run("dev")
    release = result.by_name("gateway-cert-manager")
    values = json.loads(json.dumps(release.inputs["values"]))
    values["crds"]["enable"] = values["crds"].pop("enabled")
    found = chart_findings(with_values(result, "gateway-cert-manager", values))
    assert [(f.name, f.check) for f in found] == [("gateway-cert-manager", "chart-values")]
    assert "crds.enable " in found[0].message
    assert "did you mean enabled" in found[0].message
    assert "cert-manager/cert-manager/blob/" in found[0].message


def test_a_key_renamed_between_chart_versions_is_a_finding() -> None:
    # A key the chart does not have under a known map (Grafana's admin Secret is `grafana.admin.existingSecret`), a
    # map given where the chart has a single value, and a single value where it has a map.
    result = run("staging", "gke")
    values = json.loads(json.dumps(result.by_name("monitoring-stack").inputs["values"]))
    values["grafana"]["admin"]["existingSecretName"] = values["grafana"]["admin"].pop("existingSecret")
    values["prometheus"]["prometheusSpec"]["retention"] = {"time": "7d"}
    values["kubeEtcd"] = False
    found = chart_findings(with_values(result, "monitoring-stack", values))
    messages = sorted(f.message.split(" of chart")[0] for f in found)
    assert messages == [
        "values key grafana.admin.existingSecretName",
        "values key kubeEtcd",
        "values key prometheus.prometheusSpec.retention",
    ]


def test_open_parts_of_a_chart_take_any_keys() -> None:
    # `resources: {}` and cert-manager's `config: {}` are empty maps (any keys); kube-prometheus-stack renders
    # `alertmanager.config` whole into Alertmanager's configuration (templates/alertmanager/secret.yaml).
    result = run("staging", "gke")
    values = json.loads(json.dumps(result.by_name("monitoring-stack").inputs["values"]))
    values["alertmanager"]["config"]["inhibit_rules"] = [{"source_matchers": ['severity = "critical"']}]
    values["prometheus"]["prometheusSpec"]["resources"]["claims"] = [{"name": "x"}]
    assert chart_findings(with_values(result, "monitoring-stack", values)) == []


def test_a_release_of_a_version_without_a_record_is_a_finding() -> None:
    result = run("dev")
    release = result.by_name("postgres-operator")
    bumped = dataclasses.replace(release, inputs={**release.inputs, "version": "0.99.0"})
    broken = dataclasses.replace(result, resources=[bumped if r is release else r for r in result.resources])
    found = chart_findings(broken)
    assert [f.name for f in found] == ["postgres-operator"]
    assert "cloudnative-pg 0.99.0" in found[0].message
    assert "python -m infra.chart_values cloudnative-pg 0.99.0" in found[0].fix


def test_recording_a_chart_with_a_subchart(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cv, "CHARTS_DIR", tmp_path / "charts")
    cv.load.cache_clear()
    parent = tmp_path / "values.yaml"
    parent.write_text(
        "crds:\n  enabled: true\nresources: {}\naffinity:\nsub:\n  extra: 1\nconfig:\n  route: {a: 1}\nlist: [1]\n"
    )
    sub = tmp_path / "sub.yaml"
    sub.write_text("admin:\n  existingSecret: ''\n  userKey: admin-user\n")
    url = "https://github.com/o/r/blob/" + "a" * 40 + "/values.yaml"
    assert cv.main(["demo", "1.0.0", f"{parent}={url}", f"{sub}@sub={url}", "--open", "config"]) == 0
    record = cv.load("demo", "1.0.0")
    cv.load.cache_clear()
    assert record is not None
    assert record.sources == (url, f"sub: {url}")
    assert record.tree == {
        "crds": {"enabled": "leaf"},
        "resources": "open",
        "affinity": "open",
        "sub": {"extra": "leaf", "admin": {"existingSecret": "leaf", "userKey": "leaf"}},
        "config": "open",
        "list": "leaf",
    }
    assert list(cv.unknown_keys(record.tree, {"sub": {"admin": {"userkey": "x"}}, "list": {"a": 1}})) == [
        ("sub.admin.userkey", "not a key of the chart's values (did you mean userKey?)"),
        ("list", "is a single value in the chart (a scalar or a list), not a map of keys"),
    ]
