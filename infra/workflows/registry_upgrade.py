"""The managed registry's major-version guard (O6): a change of `rag:postgres.version` on an RDS / Cloud SQL stack
is refused unless the operator declared it with `rag:postgres.managed.majorUpgrade.fromVersion`.

The program cannot see the running major (a `pulumi preview` knows only the new config), so on its own it only
makes an undeclared change harmless: RDS refuses it in the middle of the `up` (no `allow_major_version_upgrade`,
and the new major's parameter group cannot attach), and Cloud SQL's `databaseVersion` is ignored, which leaves
the stack file saying one major while the instance runs another. The backend can see it: every update records
the config it ran with. The running major is read from the updates since (and including) the newest one that
succeeded, as the Qdrant scale-down guard does (a failed update may already have upgraded the instance).
`ragops preview`, `up`, `promote` and `rollback` run this check before they call Pulumi; a bare `pulumi up` does
not (the program's own protections above still hold).

The in-cluster (CloudNativePG) registry gets the same guard with `rag:postgres.cloudnative.majorUpgrade.fromVersion`:
there an undeclared `postgres.version` change is not harmless at all, since the operator upgrades in place, offline,
as soon as the Cluster's image names a higher major.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pulumi.automation import Stack, Workspace
from pulumi.automation.errors import StackNotFoundError

from infra.config import declared_defaults
from infra.workflows.scaling import HISTORY_DEPTH, _object
from infra.workflows.stacks import PROJECT, WorkflowError

POSTGRES_KEY = f"{PROJECT}:postgres"
RUNBOOK = "docs/runbooks.md#upgrade-the-managed-registrys-major-version"
CNPG_RUNBOOK = "docs/runbooks.md#upgrade-the-cloudnativepg-registrys-major-version"


class MajorUpgradeRefused(WorkflowError):
    """The config changes the managed registry's major without declaring it, or declares it from the wrong one."""


@dataclass(frozen=True)
class Registry:
    """What one `rag:postgres` value (declared defaults filled in) says about the registry."""

    managed: bool
    major: str
    upgrade_from: str
    """The declared upgrade of the registry's own mode (managed or cloudnative)."""


def registry_of(postgres: Any) -> Registry:
    """The registry a `rag:postgres` value (object or its JSON text; None: unset) asks for."""
    defaults = declared_defaults()["postgres"]
    value = {**defaults, **_object(postgres)}
    mode = "managed" if value.get("mode") == "managed" else "cloudnative"
    section = {**defaults[mode], **(value.get(mode) or {})}
    upgrade = {**defaults[mode]["majorUpgrade"], **(section.get("majorUpgrade") or {})}
    return Registry(
        managed=mode == "managed",
        major=str(value.get("version") or "").split(".")[0],
        upgrade_from=str(upgrade.get("fromVersion") or ""),
    )


def deployed_registries(ws: Workspace, stack: str) -> list[Registry]:
    """The registries the updates since the newest successful one ran with, newest first ([]: never deployed)."""
    try:
        history = Stack.select(stack, ws).history(page_size=HISTORY_DEPTH, show_secrets=False)
    except StackNotFoundError:
        return []
    seen: list[Registry] = []
    for entry in history:  # newest first
        if entry.kind != "update":
            continue
        value = (entry.config or {}).get(POSTGRES_KEY)
        seen.append(registry_of(value.value if value is not None else None))
        if entry.result == "succeeded":
            break
    return seen


def check_major_upgrade(ws: Workspace, stack: str) -> None:
    """MajorUpgradeRefused when the stack's config moves the registry (managed, or CloudNativePG) to another major
    undeclared, or declares an upgrade from a major the registry does not run."""
    value = ws.get_all_config(stack).get(POSTGRES_KEY)
    planned = registry_of(value.value if value is not None else None)
    mode = "managed" if planned.managed else "cloudnative"
    key, runbook = (
        f"rag:postgres.{mode}.majorUpgrade.fromVersion",
        RUNBOOK if planned.managed else CNPG_RUNBOOK,
    )
    deployed = [
        registry for registry in deployed_registries(ws, stack) if registry.managed == planned.managed
    ]
    if not deployed:
        return  # no registry of this mode yet: a new one simply gets the major
    running = {registry.major for registry in deployed}
    if planned.upgrade_from:
        if planned.upgrade_from in running or planned.major in running:
            return  # declared from the running major, or already done (the declaration is then cleared)
        raise MajorUpgradeRefused(
            f"Not deploying stack {stack!r}: {key} declares an "
            f"upgrade from {planned.upgrade_from}, but the registry's last updates ran PostgreSQL "
            f"{' or '.join(sorted(running))}. Set fromVersion to the major it runs ({runbook})."
        )
    if planned.major in running:
        return
    current = " or ".join(sorted(running))
    source = current if len(running) == 1 else "<the major the instance runs>"
    if not planned.managed:
        raise MajorUpgradeRefused(
            f"Not deploying stack {stack!r}: rag:postgres.version goes from {current} to {planned.major}, a major "
            "upgrade of the CloudNativePG registry (the operator runs pg_upgrade in place: every instance is down "
            f"while it runs), and none is declared. Follow {runbook}: take a base backup, then `pulumi config set "
            f"--path {key} {source} -s {stack}` and, with backups on, a new rag:postgres.cloudnative.archiveName "
            f"ending in -pg{planned.major}; or set rag:postgres.version back to {current}."
        )
    raise MajorUpgradeRefused(
        f"Not deploying stack {stack!r}: rag:postgres.version goes from {current} to {planned.major}, "
        "a major upgrade of the RDS / Cloud SQL registry (pg_upgrade: the instance is down while it runs), and "
        f"none is declared. Follow {runbook}: take a snapshot, then `pulumi config set --path "
        f"{key} {source} -s {stack}` and `pulumi config set --path "
        f"rag:postgres.managed.applyImmediately true -s {stack}`; or set rag:postgres.version back to {current}."
    )
