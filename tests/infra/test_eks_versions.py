"""An EKS version change is checked against what the cluster runs (O20), before anything is changed.

EKS's UpdateClusterVersion moves a control plane one minor at a time, never down, and only while every managed
node group runs the cluster's version. `rag:cluster.eks.version` two minors ahead used to pass every offline check
and fail in the middle of an `up`. The program now reads the running version from EKS (ListClusters,
DescribeCluster, ListNodegroups, DescribeNodegroup: invokes, which run in `pulumi preview` too, so a PR's preview
fails with the reason) and the cluster's version input waits for the check. The runs below give the offline mocks
what the account runs (`run_stack(live=...)`); the node group follows the control plane (its version is the
cluster's output, and it depends on the cluster explicitly).
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.clusters.eks import check_version_step
from infra.config import ConfigError
from infra.naming import cloud_name
from infra.offline import StackRun, run_stack

PROD = cloud_name("prod", limit=100)


def _live(version: str, **groups: str) -> dict[str, Any]:
    return {"eks": {"name": PROD, "version": version, "nodeGroups": groups or {"eks-nodes-1a2b": version}}}


def _prod(live: dict[str, Any] | None, version: str | None = None) -> StackRun:
    overrides = {"cluster": {"eks": {"version": version}}} if version else None
    return run_stack("prod", config_overrides=overrides, live=live)


def test_a_new_cluster_takes_the_configured_version() -> None:
    result = _prod(None)
    assert result.by_name("eks").inputs["version"] == "1.35"


def test_one_minor_up_from_what_runs_is_planned() -> None:
    result = _prod(_live("1.34"))
    assert result.by_name("eks").inputs["version"] == "1.35"
    assert result.by_name("eks-nodes").inputs["version"] == "1.35"


def test_the_node_group_is_updated_after_the_control_plane() -> None:
    result = _prod(_live("1.34"))
    cluster, nodes = result.by_name("eks"), result.by_name("eks-nodes")
    assert cluster.urn in nodes.depends_on
    assert nodes.inputs["version"] == cluster.inputs["version"]


def _refusal(live: dict[str, Any], version: str | None = None) -> str:
    with pytest.raises(ValueError, match=r"rag:cluster\.eks\.version in Pulumi\.prod\.yaml: ") as caught:
        _prod(live, version)
    return str(caught.value)


def test_two_minors_up_is_refused_with_the_next_step() -> None:
    message = _refusal(_live("1.33"))
    assert "the cluster runs 1.33, and EKS upgrades one minor at a time" in message
    assert "set 1.34" in message


def test_a_downgrade_is_refused() -> None:
    assert "EKS cannot downgrade" in _refusal(_live("1.36"))


def test_a_control_plane_upgrade_waits_for_node_groups_left_behind() -> None:
    """An `up` that updated the control plane and then failed on the nodes leaves them a minor behind: EKS refuses
    the next control-plane update until they catch up, which an `up` at the running version does."""
    behind = _live("1.34", **{"eks-nodes-1a2b": "1.33"})
    message = _refusal(behind)
    assert "eks-nodes-1a2b at 1.33" in message
    assert "Run `ragops up` with 1.34 first" in message
    catch_up = _prod(behind, "1.34")
    assert catch_up.by_name("eks").inputs["version"] == "1.34"
    assert catch_up.by_name("eks-nodes").inputs["version"] == "1.34"


@pytest.mark.parametrize(
    ("wanted", "running", "groups", "allowed"),
    [
        ("1.35", None, {}, True),
        ("1.35", "1.35", {"a": "1.34"}, True),  # no control-plane update: the nodes catch up
        ("1.35", "1.34", {"a": "1.34", "b": "1.34"}, True),
        ("1.35", "1.34", {"a": "1.34", "b": "1.33"}, False),
        ("1.36", "1.34", {}, False),
        ("1.33", "1.34", {}, False),
    ],
)
def test_the_step_rule(wanted: str, running: str | None, groups: dict[str, str], allowed: bool) -> None:
    if allowed:
        assert check_version_step(wanted, running, groups, "Pulumi.prod.yaml") == wanted
    else:
        with pytest.raises(ConfigError) as caught:
            check_version_step(wanted, running, groups, "Pulumi.prod.yaml")
        assert caught.value.key == "rag:cluster.eks.version"
        assert caught.value.stack_file == "Pulumi.prod.yaml"


@pytest.mark.parametrize("addon", ["vpc-cni", "kube-proxy", "coredns"])
def test_the_addons_are_updated_after_the_nodes(addon: str) -> None:
    """AWS's upgrade order is control plane, nodes, add-ons (EKS user guide, "Update existing cluster to new
    Kubernetes version", step 4): every add-on waits for the node group, and the node group for none of them."""
    result = _prod(_live("1.34"))
    nodes, found = result.by_name("eks-nodes"), result.by_name(addon)
    assert nodes.urn in found.depends_on
    assert found.urn not in nodes.depends_on
