"""GKE upgrades on the stack's schedule, not Google's (O14): a recurring maintenance window, exclusions, and a
control-plane minimum version, declared in `rag:cluster.gke` and checked against GKE's own limits.

Without a maintenance policy GKE upgrades a cluster whenever its rollout reaches it; a control-plane or node upgrade
in prod's busiest hour was allowed. The limits come from GKE's "Configure maintenance windows and exclusions"
(>= 48 hours of availability in any 32-day span, windows >= 4 contiguous hours), its exclusion scopes (NO_UPGRADES
at most 30 days; NO_MINOR_UPGRADES / NO_MINOR_OR_NODE_UPGRADES may run to the end of the minor's support, the latter
not on Autopilot) and pulumi-gcp 10.2.0's ClusterMaintenancePolicy (RFC 3339 "Zulu" times, exactly one of
`end_time` and `exclusion_options.end_time_behavior`, at most 20 exclusions).
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError, GkeMaintenanceWindow, gke_window_hours
from infra.deployability import analyse, cluster_kubernetes_version, gke_minor_held
from infra.offline import run_stack
from tests.infra.conftest import run, target_overrides


def _policy(stack: str) -> dict[str, Any]:
    return run(stack, "gke").by_name("gke").inputs["maintenancePolicy"]


def test_every_gke_stack_gets_the_declared_weekday_window() -> None:
    policy = _policy("staging")
    assert policy["recurringWindow"] == {
        "startTime": "2026-01-05T08:00:00Z",
        "endTime": "2026-01-05T14:00:00Z",
        "recurrence": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH",
    }
    assert policy["maintenanceExclusions"] == []
    assert "minMasterVersion" not in run("staging", "gke").by_name("gke").inputs


def test_prod_takes_minors_by_hand_inside_a_midweek_window() -> None:
    cluster = run("prod", "gke").by_name("gke")
    policy = cluster.inputs["maintenancePolicy"]
    assert policy["recurringWindow"]["recurrence"] == "FREQ=WEEKLY;BYDAY=TU,WE,TH"
    (exclusion,) = policy["maintenanceExclusions"]
    # Until the end of support: no end_time (GKE takes exactly one of the two).
    assert exclusion["exclusionOptions"] == {
        "scope": "NO_MINOR_UPGRADES",
        "endTimeBehavior": "UNTIL_END_OF_SUPPORT",
    }
    assert "endTime" not in exclusion
    assert cluster.inputs["minMasterVersion"] == "1.35"
    # The plan's chart/Kubernetes check now knows prod's GKE minor.
    assert cluster_kubernetes_version(run("prod", "gke")) == ("1.35", "minMasterVersion of the GKE cluster")


def test_an_exclusion_with_an_end_reaches_the_cluster() -> None:
    exclusion = {"name": "sale", "start": "2026-11-20T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
    result = run(
        "staging", "gke", cluster={"provider": "gke", "gke": {"maintenance": {"exclusions": [exclusion]}}}
    )
    (declared,) = result.by_name("gke").inputs["maintenancePolicy"]["maintenanceExclusions"]
    assert declared == {
        "exclusionName": "sale",
        "startTime": "2026-11-20T00:00:00Z",
        "endTime": "2026-12-01T00:00:00Z",
        "exclusionOptions": {"scope": "NO_UPGRADES"},
    }


@pytest.mark.parametrize(
    ("start", "end", "recurrence", "hours"),
    [
        # Every day 4 h: 32 x 4.
        ("2026-01-05T02:00:00Z", "2026-01-05T06:00:00Z", "FREQ=DAILY", 128),
        # Saturday and Sunday 6 h: 32 days hold at least 4 weekends (the other 4 days may be Monday-Thursday).
        ("2026-01-03T02:00:00Z", "2026-01-03T08:00:00Z", "FREQ=WEEKLY;BYDAY=SA,SU", 48),
        ("2026-01-03T02:00:00Z", "2026-01-03T07:00:00Z", "FREQ=WEEKLY;BYDAY=SA,SU", 40),
        # Monday-Thursday 6 h: 4 weeks of 24 h, and the 4 extra days hold at least one of those days.
        ("2026-01-05T08:00:00Z", "2026-01-05T14:00:00Z", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH", 102),
        # A window longer than a day once a week (Saturday 00:00 to Monday 00:00): 4 x 48, at the least.
        ("2026-01-03T00:00:00Z", "2026-01-05T00:00:00Z", "FREQ=WEEKLY;BYDAY=SA", 192),
    ],
)
def test_the_fewest_hours_in_32_days(start: str, end: str, recurrence: str, hours: float) -> None:
    assert gke_window_hours(GkeMaintenanceWindow(start=start, end=end, recurrence=recurrence)) == hours


def _error(stack: str, gke: dict[str, Any]) -> ConfigError:
    overrides = target_overrides(stack, "gke")
    overrides["cluster"] = {"provider": "gke", "gke": {**overrides["cluster"].get("gke", {}), **gke}}
    with pytest.raises(ConfigError) as caught:
        run_stack(stack, config_overrides=overrides)
    return caught.value


WINDOW = "cluster.gke.maintenance.window"
EXCLUSION = "cluster.gke.maintenance.exclusions[0]"


def _window(start: str, end: str, recurrence: str = "FREQ=DAILY") -> dict[str, Any]:
    return {"maintenance": {"window": {"start": start, "end": end, "recurrence": recurrence}}}


def _exclusion(**fields: Any) -> dict[str, Any]:
    return {"maintenance": {"exclusions": [{"name": "freeze", "start": "2026-12-01T00:00:00Z", **fields}]}}


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("staging", _window("2026-01-05T08:00:00Z", "2026-01-05T11:00:00Z"), f"{WINDOW}.end", "at least 4"),
    (
        "staging",
        _window("2026-01-03T02:00:00Z", "2026-01-03T07:00:00Z", "FREQ=WEEKLY;BYDAY=SA,SU"),
        f"{WINDOW}.recurrence",
        "leaves 40 hours",
    ),
    ("staging", _window("2026-01-05T08:00:00Z", "2026-01-06T09:00:00Z"), f"{WINDOW}.end", "longer than"),
    (
        "staging",
        _window("2026-01-05T08:00:00Z", "2026-01-05T14:00:00Z", "FREQ=MONTHLY;BYDAY=1SA"),
        f"{WINDOW}.recurrence",
        "expected to match",
    ),
    # An offset GKE would store in UTC (a permanent diff), and a date that does not exist.
    ("staging", _window("2026-01-05T08:00:00+01:00", "2026-01-05T14:00:00Z"), f"{WINDOW}.start", "expected"),
    ("staging", _window("2026-02-30T08:00:00Z", "2026-02-30T14:00:00Z"), f"{WINDOW}.end", "is not a time"),
    ("staging", _exclusion(end="2027-01-15T00:00:00Z"), f"{EXCLUSION}.end", "at most 30 days"),
    ("staging", _exclusion(untilEndOfSupport=True), f"{EXCLUSION}.untilEndOfSupport", "NO_UPGRADES"),
    (
        "staging",
        _exclusion(end="2026-12-05T00:00:00Z", untilEndOfSupport=True, scope="NO_MINOR_UPGRADES"),
        f"{EXCLUSION}.end",
        "exactly one of end",
    ),
    ("staging", _exclusion(scope="NO_MINOR_UPGRADES"), f"{EXCLUSION}.end", "exactly one of end"),
    ("staging", _exclusion(end="2026-11-30T00:00:00Z"), f"{EXCLUSION}.end", "not after start"),
    (
        "staging",
        _exclusion(end="2026-12-05T00:00:00Z", scope="NO_PATCHES"),
        f"{EXCLUSION}.scope",
        "unknown value",
    ),
    (
        "staging",
        {"autopilot": True, **_exclusion(untilEndOfSupport=True, scope="NO_MINOR_OR_NODE_UPGRADES")},
        f"{EXCLUSION}.scope",
        "Autopilot",
    ),
    (
        "staging",
        {
            "maintenance": {
                "exclusions": [
                    {"name": "freeze", "start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"},
                    {"name": "freeze", "start": "2026-12-10T00:00:00Z", "end": "2026-12-12T00:00:00Z"},
                ]
            }
        },
        "cluster.gke.maintenance.exclusions[1].name",
        "listed twice",
    ),
    ("staging", {"maintenance": {"exclusions": {"name": "x"}}}, "cluster.gke.maintenance.exclusions", "list"),
    ("staging", {"minMasterVersion": "latest"}, "cluster.gke.minMasterVersion", "expected to match"),
]


@pytest.mark.parametrize(("stack", "gke", "key", "fragment"), CASES, ids=[f"{c[2]}:{c[3]}" for c in CASES])
def test_a_policy_gke_would_refuse_names_its_key_and_stack_file(
    stack: str, gke: dict[str, Any], key: str, fragment: str
) -> None:
    error = _error(stack, gke)
    assert error.key == f"rag:{key}", str(error)
    assert error.stack_file == f"Pulumi.{stack}.yaml"
    assert fragment in str(error), str(error)


def test_the_boundaries_gke_allows_pass() -> None:
    """Exactly 48 hours in 32 days, a 30-day NO_UPGRADES exclusion and a full version string are accepted."""
    gke = {
        **_window("2026-01-03T02:00:00Z", "2026-01-03T08:00:00Z", "FREQ=WEEKLY;BYDAY=SA,SU"),
        "minMasterVersion": "1.34.1-gke.1829001",
    }
    gke["maintenance"]["exclusions"] = [
        {"name": "freeze", "start": "2026-12-01T00:00:00Z", "end": "2026-12-31T00:00:00Z"}
    ]
    overrides = target_overrides("staging", "gke")
    overrides["cluster"]["gke"] = gke
    cluster = run_stack("staging", config_overrides=overrides).by_name("gke")
    assert cluster.inputs["minMasterVersion"] == "1.34.1-gke.1829001"
    assert (
        cluster.inputs["maintenancePolicy"]["maintenanceExclusions"][0]["endTime"] == "2026-12-31T00:00:00Z"
    )


# --- minMasterVersion is a floor: without an exclusion holding minors the channel may run a newer one ------------

MINOR_HOLD = {
    "name": "hold",
    "start": "2026-01-01T00:00:00Z",
    "untilEndOfSupport": True,
    "scope": "NO_MINOR_UPGRADES",
}


def _floor_warnings(exclusions: list[dict[str, Any]]) -> list[str]:
    gke = {"minMasterVersion": "1.35", "maintenance": {"exclusions": exclusions}}
    analysis = analyse(run("staging", "gke", cluster={"provider": "gke", "gke": gke}))
    assert [f for f in analysis.findings if f.check == "kube-version"] == []
    return [c.detail for c in analysis.prerequisites if c.name.startswith("kube-version:")]


def test_a_floor_the_channel_may_pass_is_a_prerequisite_to_check_not_a_pass() -> None:
    """The defect: `make plan` took minMasterVersion for the running minor, so a chart with an upper bound passed
    for a cluster its channel had already moved past that bound."""
    (warning,) = _floor_warnings([])
    assert "no NO_MINOR_UPGRADES exclusion holds the GKE cluster's minor" in warning
    assert "newer one than minMasterVersion 1.35" in warning
    assert "cert-manager v1.21.1 (1.33-1.36)" in warning  # a chart with an upper bound
    assert "Pulumi.staging.yaml" in warning


def test_an_exclusion_holding_the_minor_makes_the_floor_the_running_minor() -> None:
    assert _floor_warnings([MINOR_HOLD]) == []
    assert _floor_warnings([{**MINOR_HOLD, "scope": "NO_MINOR_OR_NODE_UPGRADES"}]) == []


def test_an_ended_exclusion_holds_nothing() -> None:
    ended = {
        "name": "old",
        "start": "2020-01-01T00:00:00Z",
        "end": "2020-01-20T00:00:00Z",
        "scope": "NO_MINOR_UPGRADES",
    }
    assert len(_floor_warnings([ended])) == 1


def test_which_exclusions_hold_the_minor_and_when() -> None:
    from datetime import UTC, datetime

    from infra.offline import RecordedResource

    def cluster(**options: Any) -> RecordedResource:
        exclusion = {"startTime": "2026-03-01T00:00:00Z", "exclusionOptions": {"scope": "NO_MINOR_UPGRADES"}}
        exclusion["exclusionOptions"].update(options.pop("opts", {}))
        exclusion.update(options)
        return RecordedResource(
            type="gcp:container/cluster:Cluster",
            name="gke",
            urn="urn:pulumi:s::rag::gcp:container/cluster:Cluster::gke",
            custom=True,
            inputs={"maintenancePolicy": {"maintenanceExclusions": [exclusion]}},
            secret_keys=frozenset(),
            parent=None,
            protect=False,
            provider=None,
            depends_on=(),
        )

    march, may = datetime(2026, 3, 15, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)
    until_end = cluster(opts={"endTimeBehavior": "UNTIL_END_OF_SUPPORT"})
    assert gke_minor_held(until_end, march)
    assert not gke_minor_held(until_end, datetime(2026, 2, 1, tzinfo=UTC))  # not started yet
    dated = cluster(endTime="2026-04-01T00:00:00Z")
    assert gke_minor_held(dated, march)
    assert not gke_minor_held(dated, may)
    assert not gke_minor_held(
        cluster(opts={"scope": "NO_NODE_UPGRADES"}, endTime="2027-01-01T00:00:00Z"), march
    )
