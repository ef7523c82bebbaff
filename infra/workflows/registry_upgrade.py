"""The registry's major-version guard (O6): a change of `rag:postgres.version` to another major is refused unless
the operator declared it, with `rag:postgres.managed.majorUpgrade.fromVersion` (RDS / Cloud SQL) or
`rag:postgres.cloudnative.majorUpgrade.fromVersion` (CloudNativePG, which upgrades in place, offline, as soon as the
Cluster's image names a higher major).

Here `ragops preview`, `up`, `promote` and `rollback` check it before they call Pulumi, from the backend's history:
every update records the config it ran with, and the running major is read from the updates since (and including)
the newest one that succeeded, as the Qdrant scale-down guard does (a failed update may already have upgraded the
instance). The decision and its message are `infra.guards.major_upgrade_refusal`, which the program also makes
from the Cluster / instance in the stack's state, so a bare `pulumi up`/`preview` refuses the same change.
"""

from __future__ import annotations

from typing import Any

from pulumi.automation import Stack, Workspace
from pulumi.automation.errors import CommandError, StackNotFoundError

from infra.config import declared_defaults
from infra.guards import CNPG_RUNBOOK, Registry, deployed_state, major_upgrade_refusal, unrecoverable_refusal
from infra.guards import MANAGED_RUNBOOK as RUNBOOK
from infra.workflows.scaling import HISTORY_DEPTH, _object
from infra.workflows.stacks import PROJECT, WorkflowError

__all__ = ["CNPG_RUNBOOK", "RUNBOOK", "MajorUpgradeRefused", "Registry", "check_major_upgrade", "registry_of"]

POSTGRES_KEY = f"{PROJECT}:postgres"


class MajorUpgradeRefused(WorkflowError):
    """The config changes the managed registry's major without declaring it, or declares it from the wrong one."""


class RegistryUnrecoverable(WorkflowError):
    """The stack's state records its CloudNativePG Cluster unrecoverable (a failed instance Job)."""


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
    problem = major_upgrade_refusal(stack, planned, deployed_registries(ws, stack))
    if problem is not None:
        raise MajorUpgradeRefused(f"Not deploying stack {stack!r}: {problem}")


def check_registry_recoverable(ws: Workspace, stack: str) -> None:
    """RegistryUnrecoverable when the stack's state records its CloudNativePG Cluster in CloudNativePG's
    unrecoverable phase (`infra.guards.unrecoverable_refusal`, the program's own refusal and message). Read from
    `pulumi stack export`, which also holds what a failed FIRST `up` recorded: the program reads resource outputs
    only once an update completed (infra/guards.py `read_state`: the builtin read of a stack with no deployment
    dereferences a nil snapshot on the DIY backend), so without this the second `up` after a failed first one
    waited the Cluster's update timeout again. A stack never deployed, or a state that cannot be read, passes."""
    try:
        deployment = ws.export_stack(stack).deployment or {}
    except CommandError:
        return
    entries = {
        str(resource["urn"]): {"type": resource.get("type"), "outputs": resource.get("outputs") or {}}
        for resource in deployment.get("resources") or []
        if isinstance(resource, dict) and resource.get("urn")
    }
    problem = unrecoverable_refusal(stack, deployed_state(entries).postgres_phase)
    if problem is not None:
        raise RegistryUnrecoverable(f"Not deploying stack {stack!r}: {problem}")
