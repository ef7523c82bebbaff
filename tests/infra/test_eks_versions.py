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
    with pytest.raises(ConfigError, match=r"rag:cluster\.eks\.version in Pulumi\.prod\.yaml: ") as caught:
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


# --- the check runs before anything is registered (reviewer R3) ------------------------------------------------


@pytest.fixture
def invokes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(token, provider reference) of every EKS read the program makes."""
    from infra.offline import PlatformMocks

    seen: list[tuple[str, str]] = []
    original = PlatformMocks.call

    def record(self: PlatformMocks, args: Any) -> Any:
        if args.token.startswith("aws:eks/get") and "AddonVersion" not in args.token:
            seen.append((args.token, args.provider))
        return original(self, args)

    monkeypatch.setattr(PlatformMocks, "call", record)
    return seen


def test_a_refused_step_registers_no_cloud_resource(registered: list[str]) -> None:
    """The versions are read with blocking invokes before the program declares anything but the AWS provider the
    reads go through: a refused step leaves the VPC, IAM roles, RDS and the generated keys undeclared, so an `up`
    changes nothing (as Outputs, the check held back only the cluster)."""
    _refusal(_live("1.33"))
    assert registered, "the mocks saw no registration at all"
    assert set(registered) <= {"pulumi:pulumi:Stack", "pulumi:providers:aws"}, registered


def test_an_allowed_step_goes_on_to_declare_the_stack(registered: list[str]) -> None:
    _prod(_live("1.34"))
    assert "aws:ec2/vpc:Vpc" in registered
    assert registered.index("pulumi:providers:aws") < registered.index("aws:ec2/vpc:Vpc")


def test_the_reads_go_through_the_stacks_own_aws_provider(invokes: list[tuple[str, str]]) -> None:
    """Region and credentials come from the stack's explicit provider (rag:cluster.eks.region), never the default
    provider's ambient config, which may name another region or account."""
    _prod(_live("1.34", **{"eks-nodes-1a2b": "1.34", "other": "1.34"}))
    tokens = [token for token, _ in invokes]
    assert tokens == [
        "aws:eks/getClusters:getClusters",
        "aws:eks/getCluster:getCluster",
        "aws:eks/getNodeGroups:getNodeGroups",
        "aws:eks/getNodeGroup:getNodeGroup",
        "aws:eks/getNodeGroup:getNodeGroup",
    ]
    assert {provider.split("::")[-2] for _, provider in invokes} == {"aws"}
    assert all("pulumi:providers:aws" in provider for _, provider in invokes)


def test_no_cluster_yet_reads_only_the_list(invokes: list[tuple[str, str]]) -> None:
    """A first `up`: ListClusters answers without this cluster, nothing else is read (DescribeCluster would fail
    with ResourceNotFoundException), and the cluster is created at the configured version."""
    result = _prod(None)
    assert [token for token, _ in invokes] == ["aws:eks/getClusters:getClusters"]
    assert result.by_name("eks").inputs["version"] == "1.35"


def test_a_failed_read_is_refused_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, registered: list[str]
) -> None:
    """Without the read the step cannot be checked: the run stops before any resource, with the key, the stack
    file and the cause (here an AccessDenied on ListClusters), not a traceback from inside the SDK."""
    from infra.offline import PlatformMocks, ProviderError

    original = PlatformMocks.call

    def denied(self: PlatformMocks, args: Any) -> Any:
        if args.token == "aws:eks/getClusters:getClusters":
            raise ProviderError(
                args.token, "AccessDeniedException: not authorized to perform: eks:ListClusters"
            )
        return original(self, args)

    monkeypatch.setattr(PlatformMocks, "call", denied)
    message = _refusal(_live("1.34"))
    assert "could not read the version EKS cluster" in message
    assert "eks:ListClusters" in message
    assert "AccessDeniedException" in message
    assert set(registered) <= {"pulumi:pulumi:Stack", "pulumi:providers:aws"}, registered


def test_the_program_reports_a_refusal_as_one_line_to_the_language_host() -> None:
    """The CLI's Python language host logs a `pulumi.RunError` as its message alone and any other exception as a
    traceback (pulumi-language-python-exec): a ConfigError is a RunError, so `pulumi up` and `ragops` show the key
    and the stack file on one line (run as the host runs it: tests/infra/test_language_host_errors.py)."""
    import pulumi

    with pytest.raises(ConfigError) as caught:
        _prod(_live("1.33"))
    assert isinstance(caught.value, pulumi.RunError)
    assert not isinstance(caught.value, ValueError)


# --- end of standard support (R5) --------------------------------------------------------------------------------


def test_the_default_version_is_in_standard_support_for_a_quarter() -> None:
    """Pulumi.yaml's default (what staging-on-EKS and every new EKS stack runs) was 1.34, whose standard support
    ends 2026-12-02: a new cluster would bill extended support within days. The default is 1.35."""
    from datetime import date

    from infra.clusters.eks import EKS_STANDARD_SUPPORT_ENDS, support_warning
    from tests.infra.conftest import run

    (cluster,) = run("staging", "eks").of_type("aws:eks/cluster:Cluster")
    assert cluster.inputs["version"] == "1.35"
    assert support_warning("1.35", date(2026, 11, 26), "Pulumi.staging.yaml") is None
    assert EKS_STANDARD_SUPPORT_ENDS["1.35"] == date(2027, 3, 27)


@pytest.mark.parametrize(
    ("version", "today", "expected"),
    [
        ("1.35", "2026-12-26", None),  # 91 days left
        ("1.35", "2026-12-27", "leaves EKS standard support on 2027-03-27 (90 days)"),
        ("1.34", "2026-11-26", "leaves EKS standard support on 2026-12-02 (6 days)"),
        ("1.33", "2026-11-26", "left EKS standard support on 2026-07-29"),
        ("1.36", "2026-11-26", None),  # no recorded date
    ],
)
def test_a_minor_near_its_end_of_standard_support_is_a_warning(
    version: str, today: str, expected: str | None
) -> None:
    from datetime import date

    from infra.clusters.eks import support_warning

    warning = support_warning(version, date.fromisoformat(today), "Pulumi.prod.yaml")
    if expected is None:
        assert warning is None
        return
    assert warning is not None
    assert warning.startswith(f"rag:cluster.eks.version in Pulumi.prod.yaml: {version} {expected}")
    assert "extended support" in warning
    if version == "1.33":
        assert "next: 1.34" in warning


def test_make_plan_warns_for_a_stack_on_a_minor_near_its_end() -> None:
    """A warning, not a refusal: the plan still passes (a 1.33 cluster's only way off is through 1.34)."""
    from datetime import date

    from infra.render import plan_warnings
    from tests.infra.conftest import run

    today = date(2026, 11, 26)
    warned = plan_warnings(run("prod", None, cluster={"eks": {"version": "1.34"}}), today)
    assert any(w.startswith("rag:cluster.eks.version in Pulumi.prod.yaml: 1.34 ") for w in warned), warned
    assert not any("rag:cluster.eks.version" in w for w in plan_warnings(run("prod"), today))


def test_make_plan_prints_the_support_warning_once(tmp_path: Any) -> None:
    """EYES8 L8: the program's pulumi.log.warn reached stderr raw (logging's last resort) next to the plan's own
    WARNING line. 1.33 left standard support on 2026-07-29, so it warns on any day this test runs. A process of its
    own, as `make plan` runs: under pytest, the logging plugin's handler would swallow the raw line."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "infra.render", "--stack", "prod", "--out", str(tmp_path)]
    command += ["--set", 'cluster.eks.version="1.33"']
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    assert both.count("1.33 left EKS standard support on 2026-07-29") == 1, both
    assert "WARNING" in result.stdout


@pytest.mark.parametrize(
    ("error", "key", "says", "not_says"),
    [
        (
            # aws-sdk-go-base VerifyAccountIDAllowed, through the provider's configure.
            "1 error occurred:\n\t* AWS account ID not allowed: 444455556666\n",
            "aws:allowedAccountIds",
            "reach account 444455556666",
            "eks:ListClusters",
        ),
        (
            # pulumi-aws's own pre-configure check (pulumi/pulumi-aws#3310), several lines.
            "pulumi:providers:aws resource 'aws' has a problem:\nInvalid credentials configured.\n"
            "Please see https://www.pulumi.com/docs/intro/cloud-providers/aws/setup/",
            "rag:cluster.eks.version",
            "missing, expired or rejected (Invalid credentials configured.)",
            "eks:ListClusters",
        ),
        (
            "operation error EKS: ListClusters, https response error StatusCode: 403, "
            "api error ExpiredTokenException: The security token included in the request is expired",
            "rag:cluster.eks.version",
            "missing, expired or rejected",
            "eks:ListClusters",
        ),
        (
            "AccessDeniedException: not authorized to perform: eks:ListClusters",
            "rag:cluster.eks.version",
            "needs eks:ListClusters",
            "credentials in the environment",
        ),
    ],
)
def test_a_failed_first_read_says_what_failed(
    monkeypatch: pytest.MonkeyPatch, registered: list[str], error: str, key: str, says: str, not_says: str
) -> None:
    """Every failure of the first read through the stack's AWS provider said "needs eks:ListClusters": a deploy
    with another account's credentials (the provider's aws:allowedAccountIds guard) or with expired ones was sent
    to fix IAM permissions. The refusal names what failed, on one line, with the key and the stack file."""
    from infra.offline import PlatformMocks, ProviderError

    original = PlatformMocks.call

    def failing(self: PlatformMocks, args: Any) -> Any:
        if args.token == "aws:eks/getClusters:getClusters":
            raise ProviderError(args.token, error)
        return original(self, args)

    monkeypatch.setattr(PlatformMocks, "call", failing)
    with pytest.raises(ConfigError) as caught:
        _prod(_live("1.34"))
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{key} in Pulumi.prod.yaml: ")
    assert "\n" not in message
    assert says in message
    assert not_says not in message
    assert set(registered) <= {"pulumi:pulumi:Stack", "pulumi:providers:aws"}, registered
