"""REVIEW12 F3: an ElastiCache change (node type, engine version) is made at `pulumi up` unless a stack says
otherwise, and a deferred one lands in a declared hour.

Without `apply_immediately` the provider sends ModifyReplicationGroup with ApplyImmediately false (its default,
pulumi-aws ReplicationGroup docstring: "applied immediately, or during the next maintenance window. Default is
`false`"), so AWS changes the nodes at a maintenance reboot in a window AWS picked, the `up` is green and the state
keeps the old node type: every later preview and drift run repeats the change until it lands.
"""

from __future__ import annotations

import pytest

from infra.components.redis import elasticache_maintenance_window
from infra.offline import run_stack
from tests.infra.conftest import run

GROUP = "redis-replication-group"
MANAGED = {"redis": {"mode": "managed"}}


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_each_stack_applies_a_replication_group_change_at_up_in_the_hour_after_the_registrys(
    stack: str,
) -> None:
    # prod runs ElastiCache as committed; dev and staging on the eks target with a managed cache.
    deployed = run("prod") if stack == "prod" else run(stack, "eks", **MANAGED)
    group = deployed.by_name(GROUP).inputs
    assert group["applyImmediately"] is True
    registry = deployed.by_name("postgres-instance").inputs["maintenanceWindow"] if stack == "prod" else None
    assert group["maintenanceWindow"] == "sun:04:00-sun:05:00"  # the registry's default hour is sun 03:00
    if registry is not None:
        assert registry == "sun:03:00-sun:04:00"


def test_a_stack_that_defers_the_change_sends_it_for_its_declared_window() -> None:
    deferred = run_stack(
        "prod",
        config_overrides={
            "redis": {"managed": {"applyImmediately": False}},
            "postgres": {"managed": {"maintenanceWindow": {"day": "sat", "hour": 23}}},
        },
    )
    group = deferred.by_name(GROUP).inputs
    assert group["applyImmediately"] is False
    assert group["maintenanceWindow"] == "sun:00:00-sun:01:00"
    assert deferred.by_name("postgres-instance").inputs["maintenanceWindow"] == "sat:23:00-sun:00:00"


def test_the_window_is_the_hour_after_the_registrys_across_midnight_and_the_week() -> None:
    assert elasticache_maintenance_window("sun", 3) == "sun:04:00-sun:05:00"
    assert elasticache_maintenance_window("sun", 22) == "sun:23:00-mon:00:00"
    assert elasticache_maintenance_window("sat", 23) == "sun:00:00-sun:01:00"
