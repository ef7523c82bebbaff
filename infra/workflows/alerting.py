"""A prod update must page someone: ``ragops up`` and ``promote`` refuse a permanent stack of environment prod with
monitoring on whose alerts reach nobody (no Alertmanager receiver) or link runbooks no pager can open; ``ragops
rollback`` (the emergency path) warns instead and goes on.

The receivers are secrets (``rag:slackWebhookUrl``, ``rag:pagerdutyRoutingKey``) or ``rag:monitoring.alerting.email
.to``; with ``monitoring.mode: existing`` the cluster's own Alertmanager routes the alerts, so only the runbook links
are checked. ``make plan`` reads no secrets, so it only warns (infra/render.py ``plan_warnings``); here the config
the update is about to apply is read (``pulumi config --show-secrets``), before anything is written (EYES9 M3).
"""

from __future__ import annotations

from pathlib import Path

from pulumi.automation import Workspace

from infra.workflows.stacks import (
    PROJECT,
    WorkflowError,
    _as_object,
    is_permanent,
    stack_environment,
    string_config,
)

#: The secret receivers (the third is rag:monitoring.alerting.email.to).
RECEIVER_KEYS = (f"{PROJECT}:slackWebhookUrl", f"{PROJECT}:pagerdutyRoutingKey")


class AlertsReachNobody(WorkflowError):
    """A prod update whose alerts would page nobody."""


def check_alerting(ws: Workspace, stack: str, work_dir: Path) -> None:
    """Raise AlertsReachNobody (one line naming the keys and the stack file) for a permanent prod-environment stack
    with monitoring on and no receiver, or with a runbookUrl that is not an http(s) URL."""
    problem = alerting_problem(ws, stack, work_dir)
    if problem is not None:
        raise AlertsReachNobody(f"Refusing to update {stack} (environment prod, monitoring on): {problem}")


def rollback_warning(ws: Workspace, stack: str, work_dir: Path) -> str | None:
    """The warning `ragops rollback` prints where `up`/`promote` refuse (`check_alerting`), or None. A rollback is
    the emergency path: it changes the image, not who is paged, so refusing it would keep a bad release running
    for a pager setting the stack already ran without."""
    problem = alerting_problem(ws, stack, work_dir)
    if problem is None:
        return None
    return (
        f"WARNING: rolling {stack} back although {problem} `ragops up` and `promote` refuse {stack} until that is "
        "fixed."
    )


def alerting_problem(ws: Workspace, stack: str, work_dir: Path) -> str | None:
    """Why a permanent prod-environment stack with monitoring on pages nobody (no receiver, or a runbookUrl that is
    not an http(s) URL), in one sentence naming the keys and the stack file; None when it pages someone."""
    # The environment from the checkout's stack file (what `pulumi up` reads): no Pulumi call for other stacks.
    if stack_environment(work_dir, stack) != "prod" or not is_permanent(work_dir, stack):
        return None
    config = ws.get_all_config(stack)
    key = f"{PROJECT}:monitoring"
    monitoring = (_as_object(config[key].value) if key in config else None) or {}
    if monitoring.get("enabled") is not True:
        return None
    problems = []
    email = ((monitoring.get("alerting") or {}).get("email") or {}).get("to")
    receivers = [k for k in RECEIVER_KEYS if string_config(config.get(k)).strip()]
    if monitoring.get("mode", "install") != "existing" and not receivers and not str(email or "").strip():
        problems.append(
            f"no alert receiver: set {RECEIVER_KEYS[0]} or {RECEIVER_KEYS[1]} (pulumi config set --secret -s "
            f"{stack}) or {key}.alerting.email.to"
        )
    runbook = str(monitoring.get("runbookUrl") or "docs/runbooks.md")  # Pulumi.yaml's default
    if not runbook.startswith(("https://", "http://")):
        problems.append(f"{key}.runbookUrl {runbook!r} is not an http(s) URL a pager can open")
    if not problems:
        return None
    return f"its alerts would page nobody: {'; '.join(problems)}, in Pulumi.{stack}.yaml (docs/runbooks.md)."
