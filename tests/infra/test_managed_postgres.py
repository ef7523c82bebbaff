"""The managed registry (RDS on eks, Cloud SQL on gke): major upgrades, maintenance, and restores the stack adopts.

Each test runs a real stack file (prod, whose registry is managed) in the mock runtime with one change of config,
and asserts on what the program declares, the way a `pulumi up` would see it: which resources exist under which
names (a changed logical name is a delete and a create), which inputs the engine leaves alone on update
(`ignore_changes`), and which instance the service's DATABASE_URL reaches.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError, deep_merge
from infra.offline import RecordedResource, StackRun
from infra.render import managed_databases
from tests.infra.conftest import run, target_overrides

GROUP = "aws:rds/parameterGroup:ParameterGroup"
RDS = "aws:rds/instance:Instance"
CLOUDSQL = "gcp:sql/databaseInstance:DatabaseInstance"
GKE: dict[str, Any] = deep_merge(
    target_overrides("prod", "gke"), {"redis": {"managed": {"tier": "STANDARD_HA"}}}
)


#: A declared upgrade from 17 (postgres.version 18), applied at `pulumi up`.
UPGRADE: dict[str, Any] = {"applyImmediately": True, "majorUpgrade": {"fromVersion": "17"}}


def managed(**keys: Any) -> dict[str, Any]:
    """Overrides of `rag:postgres.managed`."""
    return {"postgres": {"managed": keys}}


def gke(**overrides: Any) -> StackRun:
    return run("prod", **deep_merge(GKE, overrides))


def database_url(result: StackRun) -> str:
    return str(result.by_name("rag-secrets").inputs["stringData"]["DATABASE_URL"])


def group_of(result: StackRun, instance: RecordedResource) -> str:
    """The logical name of the parameter group the instance is attached to (its name output is the input)."""
    [group] = [g for g in result.of_type(GROUP) if g.urn in instance.depends_on]
    assert instance.inputs["parameterGroupName"].startswith(f"{group.name}-")
    return group.name


# ---------------------------------------------------------------------------------------------- RDS upgrades
def test_rds_runs_its_own_parameter_group_of_the_major_and_refuses_a_major_change_by_default() -> None:
    result = run("prod")
    [group] = result.of_type(GROUP)
    assert (group.name, group.inputs["family"]) == ("postgres-params-17", "postgres17")
    instance = result.by_name("postgres-instance")
    assert group_of(result, instance) == "postgres-params-17"
    assert instance.inputs["engineVersion"] == "17"
    # AWS refuses a new major without the flag: an edited postgres.version alone fails instead of upgrading.
    assert instance.inputs["allowMajorVersionUpgrade"] is False
    assert {p["name"]: p["value"] for p in group.inputs["parameters"]} == {
        "rds.force_ssl": "1",
        "log_min_duration_statement": "1000",
    }


def test_a_declared_rds_major_upgrade_keeps_the_running_group_until_the_declaration_is_cleared() -> None:
    upgrading = run("prod", postgres={"version": "18", "managed": UPGRADE})
    instance = upgrading.by_name("postgres-instance")
    assert instance.inputs["engineVersion"] == "18"
    assert instance.inputs["allowMajorVersionUpgrade"] is True
    assert group_of(upgrading, instance) == "postgres-params-18"
    # The running major's group is still declared (same name, same inputs: no change): the instance keeps it until
    # RDS applies the upgrade, now or in the maintenance window, and deleting it earlier would fail.
    before = run("prod").by_name("postgres-params-17")
    assert upgrading.by_name("postgres-params-17").inputs == before.inputs
    assert upgrading.by_name("postgres-params-18").inputs["family"] == "postgres18"
    # Cleared after the upgrade: the old group goes, nothing else about the instance changes but the flags.
    done = run("prod", postgres={"version": "18"})
    assert sorted(g.name for g in done.of_type(GROUP)) == ["postgres-params-18"]
    after = done.by_name("postgres-instance")
    assert after.inputs["allowMajorVersionUpgrade"] is False
    flags = {"allowMajorVersionUpgrade", "applyImmediately"}
    assert {k: v for k, v in after.inputs.items() if k not in flags} == {
        k: v for k, v in instance.inputs.items() if k not in flags
    }


def test_rds_applies_changes_in_the_declared_window_or_at_once_and_takes_minors_as_configured() -> None:
    instance = run("prod").by_name("postgres-instance").inputs
    assert instance["applyImmediately"] is False
    assert instance["maintenanceWindow"] == "sun:03:00-sun:04:00"
    # RDS refuses a backup window overlapping the maintenance window: the stack sets both, an hour apart.
    assert instance["backupWindow"] == "02:00-02:30"
    assert instance["autoMinorVersionUpgrade"] is True
    changed = run(
        "prod",
        **managed(
            applyImmediately=True, autoMinorVersionUpgrade=False, maintenanceWindow={"day": "sat", "hour": 23}
        ),
    ).by_name("postgres-instance")
    assert changed.inputs["applyImmediately"] is True
    assert changed.inputs["autoMinorVersionUpgrade"] is False
    assert changed.inputs["maintenanceWindow"] == "sat:23:00-sun:00:00"
    assert changed.inputs["backupWindow"] == "22:00-22:30"
    midnight = run("prod", **managed(maintenanceWindow={"day": "mon", "hour": 0})).by_name(
        "postgres-instance"
    )
    assert (midnight.inputs["maintenanceWindow"], midnight.inputs["backupWindow"]) == (
        "mon:00:00-mon:01:00",
        "23:00-23:30",
    )


# ---------------------------------------------------------------------------------------------- Cloud SQL upgrades
def test_cloud_sql_ignores_a_version_change_unless_an_upgrade_is_declared() -> None:
    instance = gke().by_name("postgres-instance")
    # Cloud SQL would run a changed databaseVersion at once as an in-place major upgrade: without a declaration the
    # engine keeps the running version (a new instance still gets the declared one).
    assert "databaseVersion" in instance.ignore_changes
    assert instance.inputs["databaseVersion"] == "POSTGRES_17"
    assert instance.inputs["settings"]["maintenanceWindow"] == {"day": 7, "hour": 3, "updateTrack": "stable"}
    upgrading = gke(
        postgres={
            "version": "18",
            "managed": {"applyImmediately": True, "majorUpgrade": {"fromVersion": "17"}},
        }
    ).by_name("postgres-instance")
    assert "databaseVersion" not in upgrading.ignore_changes
    assert upgrading.inputs["databaseVersion"] == "POSTGRES_18"


# ---------------------------------------------------------------------------------------------- Cloud SQL settings
def test_cloud_sql_takes_storage_and_backup_retention_from_the_managed_keys() -> None:
    # prod: storageGb 100, backupRetentionDays 14, tier db-custom-2-7680 (ENTERPRISE).
    settings = gke().by_name("postgres-instance").inputs["settings"]
    assert (settings["diskSize"], settings["diskAutoresize"], settings["diskAutoresizeLimit"]) == (
        100,
        True,
        400,
    )
    assert settings["diskType"] == "PD_SSD"
    backup = settings["backupConfiguration"]
    # 14 days: 15 daily backups (the oldest is the base of a restore to the window's first hour), and the point in
    # time over ENTERPRISE's most, 7 days (Cloud SQL also wants more backups than days of logs).
    assert backup["backupRetentionSettings"] == {"retainedBackups": 15, "retentionUnit": "COUNT"}
    assert backup["transactionLogRetentionDays"] == 7
    assert backup["enabled"] is True
    assert backup["pointInTimeRecoveryEnabled"] is True
    # Each key changes the instance.
    changed = (
        gke(**managed(storageGb=150, backupRetentionDays=5)).by_name("postgres-instance").inputs["settings"]
    )
    assert (changed["diskSize"], changed["diskAutoresizeLimit"]) == (150, 600)
    assert changed["backupConfiguration"]["backupRetentionSettings"]["retainedBackups"] == 6
    assert changed["backupConfiguration"]["transactionLogRetentionDays"] == 5
    # An ENTERPRISE_PLUS tier keeps the whole window as logs (up to 35 days).
    plus = gke(**managed(tier="db-perf-optimized-N-2")).by_name("postgres-instance").inputs["settings"]
    assert plus["edition"] == "ENTERPRISE_PLUS"
    assert plus["backupConfiguration"]["transactionLogRetentionDays"] == 14


def test_cloud_sql_leaves_a_running_disk_to_autoresize_and_a_clone_to_its_source() -> None:
    # A disk grown past diskSize would make a smaller declared size a replacement of the instance
    # (terraform-provider-google IsDiskShrinkage): the size is create-only, the ceiling follows storageGb.
    instance = gke().by_name("postgres-instance")
    assert "settings.diskSize" in instance.ignore_changes
    clone = gke(**managed(restore={"name": "r1"})).by_name("postgres-r1-instance")
    assert "diskSize" not in clone.inputs["settings"]
    assert clone.inputs["settings"]["diskAutoresizeLimit"] == 400
    assert clone.inputs["settings"]["backupConfiguration"]["transactionLogRetentionDays"] == 7


def test_deleting_a_cloud_sql_instance_keeps_its_backups_as_rds_keeps_a_final_snapshot() -> None:
    # Cloud SQL deletes every backup with the instance unless told otherwise (RDS: skip_final_snapshot False).
    # A destroy, or a restore with keepOriginal false, must leave the data: the automated backups are retained and
    # a final backup is taken, kept at least as long as the backups themselves.
    restored = gke(**managed(restore={"name": "r1"}, backupRetentionDays=35, tier="db-perf-optimized-N-2"))
    for instance in (gke().by_name("postgres-instance"), *restored.of_type(CLOUDSQL)):
        settings = instance.inputs["settings"]
        assert settings["retainBackupsOnDelete"] is True
        assert settings["finalBackupConfig"]["enabled"] is True
        assert settings["finalBackupConfig"]["retentionDays"] >= 35
        # Cloud SQL reads both from the instance when it deletes it: they must reach a running instance (an
        # in-place settings update; neither is ForceNew upstream), so no ignore_changes may cover them.
        assert not any(path in ("settings", "settings.finalBackupConfig") for path in instance.ignore_changes)
        assert "settings.retainBackupsOnDelete" not in instance.ignore_changes
    assert len(restored.of_type(CLOUDSQL)) == 2


def test_a_destroy_keeps_the_automated_backups_unless_a_non_prod_stack_lets_them_go() -> None:
    """pulumi-aws `rds.Instance.delete_automated_backups` defaults to true ("remove automated backups immediately
    after the DB instance is deleted"): a destroy ended point-in-time recovery. `retainBackupsOnDelete` (true by
    default) keeps them on both clouds for their retention; a throwaway stack may let them go, prod may not."""
    rds = run("prod").by_name("postgres-instance")
    assert rds.inputs["deleteAutomatedBackups"] is False
    # Read from the state at deletion, set in place: no ignore_changes may hide it from a running instance.
    assert "deleteAutomatedBackups" not in rds.ignore_changes
    assert gke().by_name("postgres-instance").inputs["settings"]["retainBackupsOnDelete"] is True

    throwaway = {"environment": "staging", **managed(retainBackupsOnDelete=False)}
    assert run("prod", **throwaway).by_name("postgres-instance").inputs["deleteAutomatedBackups"] is True
    settings = gke(**throwaway).by_name("postgres-instance").inputs["settings"]
    assert settings["retainBackupsOnDelete"] is False
    assert settings["finalBackupConfig"]["enabled"] is True  # the final backup stays, as RDS's final snapshot
    # Every RDS / Cloud SQL instance of the stack follows it, a restored one too.
    restored = run("prod", **deep_merge(throwaway, managed(restore={"name": "r1"})))
    assert [i.inputs["deleteAutomatedBackups"] for i in restored.of_type(RDS)] == [True, True]

    for overrides in ({}, GKE):
        with pytest.raises(ConfigError) as caught:
            run("prod", **deep_merge(overrides, managed(retainBackupsOnDelete=False)))
        assert caught.value.key == "rag:postgres.managed.retainBackupsOnDelete"
        assert caught.value.stack_file == "Pulumi.prod.yaml"
        assert "point-in-time recovery" in str(caught.value)


@pytest.mark.parametrize(("hour", "start"), [(3, "22:00"), (0, "19:00"), (4, "23:00"), (23, "18:00")])
def test_cloud_sql_backups_run_in_a_window_that_ends_before_the_maintenance_hour(
    hour: int, start: str
) -> None:
    # Unset, Cloud SQL picks a random 4-hour backup window, which may hold the maintenance hour (a restart mid
    # backup). Like RDS's, it is set from the maintenance window: 4 hours ending an hour before it.
    settings = (
        gke(**managed(maintenanceWindow={"day": "sat", "hour": hour}))
        .by_name("postgres-instance")
        .inputs["settings"]
    )
    assert settings["backupConfiguration"]["startTime"] == start
    assert settings["maintenanceWindow"]["hour"] == hour
    # The hours a backup may start in: none is the maintenance hour or the hour before it (left to finish).
    window = {(int(start[:2]) + offset) % 24 for offset in range(4)}
    assert not window & {hour, (hour - 1) % 24}


@pytest.mark.parametrize(
    ("keys", "key", "rds_input", "words"),
    [
        ({"backupRetentionDays": 0}, "backupRetentionDays", "backupRetentionPeriod", "Cloud SQL"),
        (
            {"autoMinorVersionUpgrade": False},
            "autoMinorVersionUpgrade",
            "autoMinorVersionUpgrade",
            "no switch",
        ),
    ],
)
def test_cloud_sql_refuses_what_it_cannot_honour_naming_the_key_and_the_stack_file(
    keys: dict[str, Any], key: str, rds_input: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        gke(**managed(**keys))
    assert caught.value.key == f"rag:postgres.managed.{key}"
    assert caught.value.stack_file == "Pulumi.prod.yaml"
    assert words in str(caught.value)
    # The same value is an RDS setting, taken on eks.
    [value] = keys.values()
    assert run("prod", **managed(**keys)).by_name("postgres-instance").inputs[rds_input] == value


def test_the_component_refuses_what_cloud_sql_cannot_honour() -> None:
    from infra.components.postgres import PostgresDatabaseArgs, validate_args
    from infra.components.specs import ComponentArgsError

    base = {"mode": "cloudsql", "password": "p", "region": "europe-west4", "private_network": "net"}
    validate_args(PostgresDatabaseArgs(**base))
    for bad in (
        {"auto_minor_version_upgrade": False},
        {"backup_retention_days": 0},
        {"allocated_storage_gb": 5},
    ):
        with pytest.raises(ComponentArgsError):
            validate_args(PostgresDatabaseArgs(**base, **bad))


# ---------------------------------------------------------------------------------------------- restores
def test_an_rds_point_in_time_restore_is_a_new_instance_the_url_follows_and_the_original_stays() -> None:
    before = run("prod")
    restored = run("prod", **managed(restore={"name": "r1", "time": "2026-11-26T03:00:00Z"}))
    original = restored.by_name("postgres-instance")
    # Unchanged, still protected: the restore is not a replacement of the original.
    assert original.inputs == before.by_name("postgres-instance").inputs
    assert original.protect
    new = restored.by_name("postgres-r1-instance")
    assert new.protect
    assert new.inputs["deletionProtection"] is True
    assert new.inputs["identifier"] == "rag-prod-postgres-r1"
    assert new.inputs["restoreToPointInTime"]["restoreTime"] == "2026-11-26T03:00:00Z"
    # The source is the original instance (its identifier output): the restore waits for it.
    assert original.urn in new.depends_on
    # Create-only inputs are ignored once the instance exists: keeping, editing or clearing them replaces nothing.
    assert {"snapshotIdentifier", "restoreToPointInTime"} <= set(new.ignore_changes)
    # The database and master user are the source's: no DBName is sent with the restore, and neither name is
    # diffed later (each is ForceNew: a source with other names would otherwise replace the restored registry).
    assert "dbName" not in new.inputs
    assert {"dbName", "username"} <= set(new.ignore_changes)
    assert original.inputs["dbName"] == "rag"
    assert not {"dbName", "username"} & set(original.ignore_changes)
    assert "rag-prod-postgres-r1." in database_url(restored)
    assert "rag-prod-postgres-r1." not in database_url(before)
    # Its own final snapshot name, drawn once for its lifetime.
    assert restored.by_name("postgres-r1-final-snapshot-suffix")


def test_an_rds_snapshot_restore_and_its_later_updates() -> None:
    snapshot = run("prod", **managed(restore={"name": "r2", "snapshot": "rds:rag-prod-2026-11-26-03-00"}))
    new = snapshot.by_name("postgres-r2-instance")
    assert new.inputs["snapshotIdentifier"] == "rds:rag-prod-2026-11-26-03-00"
    assert "restoreToPointInTime" not in new.inputs
    assert "dbName" not in new.inputs
    assert {"dbName", "username"} <= set(new.ignore_changes)
    # Later: the source keys cleared. Only ignored inputs differ, so the engine changes nothing on the instance.
    cleared = run("prod", **managed(restore={"name": "r2"})).by_name("postgres-r2-instance")
    assert cleared.urn == new.urn
    differing = {k for k in {*new.inputs, *cleared.inputs} if new.inputs.get(k) != cleared.inputs.get(k)}
    # (With no source left the program would restore the original's latest restorable time: ignored as well.)
    assert differing == {"snapshotIdentifier", "restoreToPointInTime"}
    assert differing <= set(cleared.ignore_changes)
    # Then the original dropped: it is no longer declared (prod protects it: `up` refuses until unprotected).
    dropped = run("prod", **managed(restore={"name": "r2", "keepOriginal": False}))
    assert [r.name for r in dropped.of_type(RDS)] == ["postgres-r2-instance"]
    assert "rag-prod-postgres-r2." in database_url(dropped)


def test_a_cloud_sql_restore_clones_the_original_and_declares_no_user_or_database_on_the_clone() -> None:
    before = gke()
    restored = gke(**managed(restore={"name": "r1", "time": "2026-11-26T03:00:00Z"}))
    original = restored.by_name("postgres-instance")
    assert original.inputs == before.by_name("postgres-instance").inputs
    assert original.protect
    new = restored.by_name("postgres-r1-instance")
    assert new.inputs["name"] == "rag-prod-postgres-r1"
    assert new.inputs["clone"]["pointInTime"] == "2026-11-26T03:00:00Z"
    assert original.urn in new.depends_on  # cloned from the original's name
    assert {"clone", "databaseVersion"} <= set(new.ignore_changes)
    assert new.protect
    assert new.inputs["settings"]["deletionProtectionEnabled"] is True
    # The clone carries the database and the app user (with its password): the stack creates neither again.
    assert {r.inputs["instance"] for r in restored.of_type("gcp:sql/user:User")} == {"postgres-instance"}
    assert {r.inputs["instance"] for r in restored.of_type("gcp:sql/database:Database")} == {
        "postgres-instance"
    }
    assert database_url(restored) != database_url(before)
    assert "@10.20.0.3:" in database_url(before)
    assert "@10.20.0.3:" not in database_url(restored)
    dropped = gke(**managed(restore={"name": "r1", "keepOriginal": False}))
    assert [r.name for r in dropped.of_type(CLOUDSQL)] == ["postgres-r1-instance"]
    assert dropped.of_type("gcp:sql/user:User") == []


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"postgres": {"managed": {"majorUpgrade": {"fromVersion": "18"}}}}, "majorUpgrade.fromVersion"),
        ({"postgres": {"managed": {"majorUpgrade": {"fromVersion": "17"}}}}, "majorUpgrade.fromVersion"),
        (
            {"postgres": {"managed": {"restore": {"time": "2026-11-26T03:00:00+01:00", "name": "r1"}}}},
            "restore.time",
        ),
        ({"postgres": {"managed": {"restore": {"name": "R1"}}}}, "restore.name"),
        (
            {"postgres": {"managed": {"maintenanceWindow": {"day": "sunday", "hour": 3}}}},
            "maintenanceWindow.day",
        ),
        (
            {"postgres": {"managed": {"maintenanceWindow": {"day": "sun", "hour": 24}}}},
            "maintenanceWindow.hour",
        ),
    ],
)
def test_bad_values_name_the_key_and_the_stack_file(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        run("prod", **overrides)
    assert caught.value.key == f"rag:postgres.managed.{key}"
    assert caught.value.stack_file == "Pulumi.prod.yaml"
    assert "Pulumi.prod.yaml" in str(caught.value)


def test_make_plan_says_when_each_managed_database_takes_a_change() -> None:
    [rds] = managed_databases(run("prod"))
    assert "changes wait for the maintenance window sun:03:00-sun:04:00 UTC" in rds
    assert "a major change is refused" in rds
    [now] = managed_databases(
        run(
            "prod",
            postgres={
                "version": "18",
                "managed": {"applyImmediately": True, "majorUpgrade": {"fromVersion": "17"}},
            },
        )
    )
    assert "changes apply at `pulumi up`" in now
    assert "major upgrade to 18 declared" in now
    assert "backups and point in time over 14 days" in rds
    [cloudsql] = managed_databases(gke())
    assert "a changed databaseVersion is ignored" in cloudsql
    assert "maintenance sun 03:00 UTC" in cloudsql
    # Where the edition shortens the point-in-time window below the retention, the plan says so.
    assert (
        "15 daily backups kept, point in time over 7 days (the most ENTERPRISE keeps; backups span 14 days)"
        in (cloudsql)
    )
    assert "disk 100 GB at creation, autoresize up to 400 GB" in cloudsql
    [plus] = managed_databases(gke(**managed(tier="db-perf-optimized-N-2")))
    assert "point in time over 14 days;" in plus
    restored = managed_databases(gke(**managed(restore={"name": "r1", "time": "2026-11-26T03:00:00Z"})))
    assert any("cloned from postgres-instance at 2026-11-26T03:00:00Z" in line for line in restored)
