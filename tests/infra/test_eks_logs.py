"""EKS control-plane logs: the stack owns `/aws/eks/<cluster>/cluster`, with a retention, before EKS can make its own.

With control-plane logging on and no such group, EKS creates it itself with no retention (kept and billed forever),
and deleting the cluster leaves it behind: the next stack of the same name then failed creating it. So the program
declares the group (terraform-provider-aws eks_cluster docs, "Enabling Control Plane Logging": the cluster
`depends_on` the group because EKS would otherwise create it first), and `ragops up` turns the one failure an older
stack meets (the group EKS made is already there) into the `pulumi import` that adopts it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.clusters.eks import CONTROL_PLANE_LOG_GROUP, control_plane_log_group
from infra.config import ConfigError
from infra.deployability import closure
from infra.workflows import deploy as deploy_mod
from infra.workflows.cli import app
from infra.workflows.deploy import adopt_log_group_instructions, deploy
from infra.workflows.stacks import Context, WorkflowError
from tests.infra.conftest import run
from tests.workflows.fake_pulumi import FakeBackend

EKS_RUNS = [("prod", None, 365), ("staging", "eks", 30), ("dev", "eks", 7)]

#: What terraform-provider-aws reports when CreateLogGroup finds the group (its CloudWatch Logs error wrapping).
EXISTS = (
    "  aws:cloudwatch:LogGroup (eks-control-plane-logs):\n"
    "    error: 1 error occurred:\n"
    "\t* creating CloudWatch Logs Log Group (/aws/eks/rag-dev/cluster): operation error CloudWatch Logs: "
    "CreateLogGroup, https response error StatusCode: 400, RequestID: 0f1e, ResourceAlreadyExistsException: "
    "The specified log group already exists\n"
)


@pytest.mark.parametrize(("stack", "target", "days"), EKS_RUNS)
def test_the_log_group_is_the_clusters_with_the_stacks_retention_and_comes_first(
    stack: str, target: str | None, days: int
) -> None:
    result = run(stack, target)
    cluster, group = result.by_name("eks"), result.by_name(CONTROL_PLANE_LOG_GROUP)
    # The exact name EKS writes to: any other name and EKS creates its own, unmanaged, next to it.
    assert group.inputs["name"] == control_plane_log_group(cluster.inputs["name"])
    assert group.inputs["name"] == f"/aws/eks/{cluster.inputs['name']}/cluster"
    assert group.inputs["retentionInDays"] == days
    assert cluster.inputs["enabledClusterLogTypes"] == ["api", "audit", "authenticator"]
    # Created before the cluster (no output links them), so deleted after it by destroy: EKS never finds the
    # group missing while the cluster runs.
    assert group.urn in cluster.depends_on
    assert group.urn in closure(result, result.by_name("eks-nodes").urn)
    # The audit trail is protected where the cluster is; elsewhere destroy removes it.
    assert group.protect is cluster.protect is (stack == "prod")
    assert group.provider == cluster.provider is not None


def test_retention_comes_from_config() -> None:
    result = run(
        "dev", "eks", cluster={"provider": "eks", "eks": {"controlPlaneLogs": {"retentionDays": 90}}}
    )
    assert result.by_name(CONTROL_PLANE_LOG_GROUP).inputs["retentionInDays"] == 90


@pytest.mark.parametrize("days", [0, 8, 10000, True, "30"])
def test_a_retention_cloudwatch_does_not_offer_is_refused_naming_the_key(days: object) -> None:
    with pytest.raises(ConfigError) as caught:
        run("dev", "eks", cluster={"provider": "eks", "eks": {"controlPlaneLogs": {"retentionDays": days}}})
    assert caught.value.key == "rag:cluster.eks.controlPlaneLogs.retentionDays"


def test_the_workflow_names_the_programs_log_group() -> None:
    assert deploy_mod.CONTROL_PLANE_LOG_GROUP == CONTROL_PLANE_LOG_GROUP


def test_only_the_log_group_conflict_gets_the_adoption_instructions() -> None:
    text = adopt_log_group_instructions("dev", EXISTS)
    assert text is not None
    assert (
        "pulumi import 'aws:cloudwatch/logGroup:LogGroup' eks-control-plane-logs '/aws/eks/rag-dev/cluster' "
        "--provider 'aws=urn:pulumi:dev::rag::pulumi:providers:aws::aws' --stack dev" in text
    )
    assert "--generate-code=false" in text
    # A fully qualified stack name: the URN holds its last part only.
    qualified = adopt_log_group_instructions("acme/rag/prod", EXISTS.replace("rag-dev", "rag-prod"))
    assert qualified is not None
    assert "urn:pulumi:prod::rag::" in qualified
    # Another group or another error is not this case.
    assert adopt_log_group_instructions("dev", EXISTS.replace("/aws/eks/rag-dev/cluster", "/app/x")) is None
    assert (
        adopt_log_group_instructions("dev", EXISTS.replace("ResourceAlreadyExists", "AccessDenied")) is None
    )


def _eks_stack(tmp_path: Path, up_error: str) -> tuple[FakeBackend, Context]:
    backend = FakeBackend(tmp_path)
    (tmp_path / "Pulumi.yaml").write_text("name: rag\nruntime: python\nmain: infra/\n")
    backend.add_stack("dev", config={"rag:environment": "dev"})
    backend.script("dev").up_error = up_error
    return backend, Context(
        work_dir=tmp_path, pulumi_command=backend.command(), check_build_daemon=lambda: None
    )


def test_ragops_up_meeting_ekss_own_group_says_how_to_adopt_it(tmp_path: Path) -> None:
    _, ctx = _eks_stack(tmp_path, EXISTS)
    with pytest.raises(WorkflowError, match="already exists outside the stack") as caught:
        deploy(ctx, "dev", policy_pack=None)
    assert "pulumi import 'aws:cloudwatch/logGroup:LogGroup'" in str(caught.value)
    result = CliRunner().invoke(app, ["up", "--stack", "dev", "--no-policy", "-q"], obj=ctx)
    assert result.exit_code == 1
    assert "refused:" in result.output
    assert "pulumi import" in result.output


def test_other_up_failures_are_reported_as_before(tmp_path: Path) -> None:
    from pulumi.automation.errors import CommandError

    _, ctx = _eks_stack(tmp_path, "error: AccessDenied: not authorized to perform logs:CreateLogGroup")
    with pytest.raises(CommandError):
        deploy(ctx, "dev", policy_pack=None)
