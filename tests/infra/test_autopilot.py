"""GKE Autopilot: what the stack installs must pass Autopilot's admission (GKE Warden).

Autopilot denies every write to its managed namespaces (kube-system: "GKE Warden authz [denied by
managed-namespaces-limitation]") and refuses pods with host namespaces, host ports or hostPath volumes outside
/var/log (autogke-disallow-hostnamespaces, autogke-no-host-port, autogke-no-write-mode-hostpath). cert-manager's chart
(v1.21.1 templates/rbac.yaml) puts its leader-election Role and RoleBinding in `global.leaderElection.namespace`,
kube-system by default; kube-prometheus-stack 78.3.0 runs a node exporter with hostNetwork/hostPID/hostPath and puts
its kube-dns scrape Service in kube-system (templates/exporters/kube-dns/service.yaml). Either release would fail and
roll back (atomic) in the first `up` of an Autopilot stack.
"""

from __future__ import annotations

import pytest

from infra import deployability as d
from infra.config import ConfigError
from infra.offline import run_stack
from tests.infra.conftest import run

AUTOPILOT = {"cluster": {"provider": "gke", "gke": {"autopilot": True}}}


def cert_manager_values(result) -> dict:
    return result.by_name("gateway-cert-manager").inputs["values"]


def test_autopilot_refuses_the_stacks_own_kube_prometheus_stack() -> None:
    with pytest.raises(ConfigError) as raised:
        run_stack("staging", config_overrides=AUTOPILOT)
    assert raised.value.key == "rag:monitoring.enabled"
    assert raised.value.stack_file == "Pulumi.staging.yaml"
    assert "Autopilot" in str(raised.value)


def test_autopilot_runs_without_monitoring_and_a_standard_cluster_keeps_it() -> None:
    result = run("staging", "gke", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False})
    assert result.by_name("gke").inputs["enableAutopilot"] is True
    assert result.of_type("kubernetes:helm.sh/v3:Release")  # the rest of the stack still installs
    standard = run("staging", "gke")
    assert any(r.name == "monitoring-stack" for r in standard.resources)


def test_cert_manager_keeps_its_leader_election_out_of_kube_system_on_autopilot() -> None:
    result = run("staging", "gke", cluster={"gke": {"autopilot": True}}, monitoring={"enabled": False})
    release = result.by_name("gateway-cert-manager").inputs
    assert cert_manager_values(result)["global"] == {"leaderElection": {"namespace": release["namespace"]}}
    assert release["namespace"] == "cert-manager"
    # The key exists in the pinned chart's values (a key Helm does not know would be ignored silently).
    analysis = d.analyse(result)
    assert [f for f in analysis.findings if f.check == "chart-values"] == []


@pytest.mark.parametrize(("stack", "target"), [("staging", "gke"), ("prod", "eks"), ("dev", None)])
def test_elsewhere_the_leases_stay_where_deployed_clusters_have_them(stack: str, target: str | None) -> None:
    # Moving the leases of a running cert-manager would let the old and new pods lead at once during the rollout.
    assert "global" not in cert_manager_values(run(stack, target))
