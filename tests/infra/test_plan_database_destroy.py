"""`make plan`'s DATABASE lines say what a `pulumi destroy` leaves of each registry database (stop 16's "Found and
left"), read from the same recorded inputs the program sends: RDS's final snapshot and automated backups, Cloud SQL's
final backup and retained backups, CloudNativePG's volumes and its archive in the backup bucket."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from infra.config import deep_merge
from infra.offline import StackRun
from infra.render import managed_databases
from tests.infra.conftest import run, target_overrides

RDS = "aws:rds/instance:Instance"
CLOUDSQL = "gcp:sql/databaseInstance:DatabaseInstance"
GKE_PROD: dict[str, Any] = deep_merge(
    target_overrides("prod", "gke"), {"redis": {"managed": {"tier": "STANDARD_HA"}}}
)


def with_inputs(result: StackRun, type_: str, change: Any) -> StackRun:
    """The run with one resource's recorded inputs changed (`change` edits a deep copy), protect dropped."""
    (resource,) = result.of_type(type_)
    inputs = copy.deepcopy(resource.inputs)
    change(inputs)
    new = dataclasses.replace(resource, inputs=inputs, protect=False)
    return dataclasses.replace(result, resources=[new if r is resource else r for r in result.resources])


def test_rds_leaves_its_final_snapshot_and_its_automated_backups() -> None:
    [line] = managed_databases(run("prod"))
    assert line.endswith(
        "on delete: refused while protected in the state and deletion protection; once lifted, the final snapshot "
        "rag-prod-postgres-final-<8 hex> is kept until deleted by hand; its automated backups are kept by their "
        "retention (once an `up` has recorded it)"
    )
    # The line follows the inputs: the prefix is the program's, and a skipped snapshot or deleted backups would show.
    [changed] = managed_databases(
        with_inputs(
            run("prod"),
            RDS,
            lambda i: i.update(skipFinalSnapshot=True, deleteAutomatedBackups=True, deletionProtection=False),
        )
    )
    assert changed.endswith("on delete: no final snapshot (skipFinalSnapshot); its automated backups go")


def test_cloud_sql_leaves_its_final_backup_and_its_retained_backups() -> None:
    [line] = managed_databases(run("prod", **GKE_PROD))
    assert (
        "on delete: refused while protected in the state and deletion protection; once lifted, a final backup kept "
        "365 days and the 15 automated backups kept by their retention (once an `up` has set them on the instance)"
    ) in line

    def nothing_kept(inputs: dict[str, Any]) -> None:
        inputs["deletionProtection"] = False
        inputs["settings"].update(
            finalBackupConfig={"enabled": False}, retainBackupsOnDelete=False, deletionProtectionEnabled=False
        )

    [changed] = managed_databases(with_inputs(run("prod", **GKE_PROD), CLOUDSQL, nothing_kept))
    assert "on delete: no final backup and the automated backups go with it" in changed


def test_cloudnative_says_the_volumes_go_and_whether_the_archive_survives() -> None:
    # dev: no backups, nothing survives.
    [dev] = managed_databases(run("dev"))
    assert dev.startswith(
        "postgres-cluster: CloudNativePG PostgreSQL 17 in the cluster, 1 instance(s) of 10Gi"
    )
    assert dev.endswith(
        "on destroy: its volumes (PVCs the Cluster owns) are deleted with it; no archive (backups.enabled false): "
        "nothing survives"
    )
    # staging (gke): the archive is in the stack's bucket, created with force_destroy outside prod.
    [staging] = managed_databases(run("staging"))
    assert (
        "the archive (base backups and WAL) in gs://rag-staging-qdrant-backups-rag-staging/postgres/postgres/ is "
        "deleted with the stack's bucket (forceDestroy outside prod)"
    ) in staging
    # A bucket the stack does not create stays.
    [own] = managed_databases(run("staging", backups={"bucket": "team-archive"}))
    assert own.endswith(
        "in gs://team-archive/postgres/postgres/ stays (backups.bucket: a bucket the stack does not create)"
    )
    # prod in the cluster (eks): the Cluster and the bucket are protected; the S3 name's account is not invented.
    [prod] = managed_databases(run("prod", "eks", postgres={"mode": "cloudnative"}))
    assert "on destroy: refused while protected in the state; once lifted, its volumes" in prod
    assert prod.endswith("/postgres/postgres/ survives (the bucket is protected)")
    assert "s3://rag-prod-qdrant-backups-<account>-" in prod
    # After a recovery the archive is the new server name's.
    [renamed] = managed_databases(run("staging", postgres={"cloudnative": {"archiveName": "postgres-r1"}}))
    assert "/postgres/postgres-r1/ is deleted" in renamed
