"""The CloudNativePG operator can be upgraded one minor per `up` (`rag:postgres.cloudnative.operatorChartVersion`).

Upstream supports the direct move from 1.27 to 1.30 (no release between them is marked "not directly upgradable")
but recommends, when releases were skipped, "upgrading through each version in sequential order"
(cloudnative-pg docs/src/installation_upgrade.md at v1.30.0, "Compatibility among versions"). A stack still on
1.27.1 pins chart 0.27.1 (1.28.1), then 0.28.3 (1.29.1), then clears the key (0.29.0, 1.30.0): each step is a chart
the repository recorded (values keys, supported Kubernetes range), and `make plan` holds each to the cluster's
Kubernetes version, naming this key.
"""

from __future__ import annotations

import pytest

from infra import chart_values
from infra import deployability as d
from infra.components.postgres import CNPG_CHART_VERSION
from infra.config import ConfigError
from infra.offline import StackRun
from tests.infra.conftest import run

#: prod with its registry in the cluster (EKS 1.35), where the stack installs the operator.
CNPG = {"mode": "cloudnative"}


def operator_version(result: StackRun) -> str:
    return str(result.by_name("postgres-operator").inputs["version"])


def checks(result: StackRun, check: str) -> list[d.Finding]:
    return [f for f in d.analyse(result, waivers={}).findings if f.check == check]


def test_each_step_installs_its_chart_with_recorded_values_and_a_supported_kubernetes() -> None:
    assert operator_version(run("prod", postgres=CNPG)) == CNPG_CHART_VERSION == "0.29.0"
    for step, operator in (("0.27.1", "1.28"), ("0.28.3", "1.29")):
        result = run("prod", postgres={**CNPG, "cloudnative": {"operatorChartVersion": step}})
        assert operator_version(result) == step
        record = chart_values.load("cloudnative-pg", step)
        assert record is not None
        # Recorded from the chart's values.yaml at its tag's commit (like every pinned chart).
        assert record.sources[0].startswith("https://github.com/cloudnative-pg/charts/blob/")
        assert f"runs operator {operator}." in str(
            chart_values.supported_kubernetes("cloudnative-pg", step).source
        )
        assert checks(result, "chart-values") == []
        assert checks(result, "kube-version") == []  # prod's EKS 1.35 is in 1.28's and 1.29's ranges


def test_a_step_the_cluster_version_is_outside_of_is_a_finding_naming_the_key() -> None:
    # 1.29 supports Kubernetes 1.33-1.35: on EKS 1.36 that step is not a supported one.
    result = run(
        "prod",
        postgres={**CNPG, "cloudnative": {"operatorChartVersion": "0.28.3"}},
        cluster={"eks": {"version": "1.36"}},
    )
    found = [f for f in checks(result, "kube-version") if "cloudnative-pg 0.28.3" in f.message]
    assert len(found) == 1
    assert "supports Kubernetes 1.33-1.35" in found[0].message
    assert "rag:postgres.cloudnative.operatorChartVersion" in found[0].fix


@pytest.mark.parametrize(
    ("cloudnative", "words"),
    [
        ({"operatorChartVersion": "0.28.9"}, "has no values record"),
        ({"operatorChartVersion": "0.27.1", "installOperator": False}, "installOperator is false"),
        (
            {"operatorChartVersion": "1.30.0"},
            "has no values record",
        ),  # the operator's version, not the chart's
        ({"operatorChartVersion": "v0.28.3"}, "expected to match"),
    ],
)
def test_a_step_the_stack_cannot_install_is_refused_naming_the_key_and_the_stack_file(
    cloudnative: dict, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        run("prod", postgres={**CNPG, "cloudnative": cloudnative})
    assert caught.value.key == "rag:postgres.cloudnative.operatorChartVersion"
    assert caught.value.stack_file == "Pulumi.prod.yaml"
    assert words in str(caught.value)
