"""Shared plumbing for the workflows: the workspace, stack selection, config values, clock and actor.

Everything goes through a ``LocalWorkspace`` over the repo root (the Pulumi project ``rag``) whose
``pulumi_command`` is injectable: production uses the real CLI on ``$PATH``; tests pass a fake runner that records
every argv. Nothing here needs Pulumi Cloud: stack metadata lives in the contract's config keys
(``rag:promotion``, ``rag:ephemeral``), which the program also exports as outputs so any machine can read them
back from the backend's state.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pulumi.automation import (
    ConfigValue,
    EngineEvent,
    LocalWorkspace,
    PulumiCommand,
    Stack,
    Workspace,
)

from infra.workflows.errors import check_cli_version

PROJECT = "rag"
REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_PACK = "infra/policy"  # relative to the work dir, where every pulumi command runs
PERMANENT_STACKS = ("dev", "staging", "prod")

Clock = Callable[[], datetime]
OnOutput = Callable[[str], Any]
OnEvent = Callable[[EngineEvent], Any]


class WorkflowError(Exception):
    """A workflow refused to act or failed; the message is a full sentence meant for the operator (exit 1)."""


class UsageError(WorkflowError):
    """The operator's input is invalid (a bad stack name, TTL, promotion order); the CLI exits 2."""


def utc_now() -> datetime:
    """The default clock: timezone-aware UTC now."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Format a moment as RFC 3339 UTC with a ``Z`` suffix and whole seconds (what the contract stores)."""
    if moment.tzinfo is None:
        raise ValueError("Timestamps must be timezone-aware so they can be stored as UTC.")
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or an offset) into an aware UTC datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"Timestamp {text!r} has no UTC offset; RFC 3339 requires one.")
    return moment.astimezone(UTC)


def current_actor(
    env: Mapping[str, str] | None = None,
    git_user: Callable[[], str | None] | None = None,
    login: Callable[[], str] = getpass.getuser,
) -> str:
    """Who is acting: ``$GITHUB_ACTOR`` in CI, else ``git config user.email``/``user.name``, else the login."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTOR"):
        return env["GITHUB_ACTOR"]
    name = (git_user or _git_user)()
    if name:
        return name
    return login()


def _git_user() -> str | None:
    for key in ("user.email", "user.name"):
        try:
            out = subprocess.run(  # noqa: S603 - fixed argv, no shell
                ["git", "config", "--get", key],  # noqa: S607 - git from PATH is the point
                capture_output=True,
                text=True,
                check=False,
                timeout=5,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


@dataclass
class Context:
    """What every workflow needs: how to reach Pulumi, what time it is and who is acting."""

    work_dir: Path = REPO_ROOT
    pulumi_command: PulumiCommand | None = None
    env_vars: Mapping[str, str] | None = None
    clock: Clock = utc_now
    actor: Callable[[], str] = current_actor

    def pulumi(self) -> PulumiCommand:
        """The Pulumi CLI, its version checked once up front (WorkflowError when it is too old)."""
        if self.pulumi_command is None:
            # Our own check below gives the better message; the SDK's would only demand its own minimum.
            self.pulumi_command = PulumiCommand(skip_version_check=True)
        problem = check_cli_version(self.pulumi_command.version)
        if problem is not None:
            raise WorkflowError(problem[0].upper() + problem[1:] + ".")
        return self.pulumi_command

    def workspace(self) -> LocalWorkspace:
        """A LocalWorkspace over the project dir; the real CLI unless a runner was injected."""
        return LocalWorkspace(
            work_dir=str(self.work_dir),
            pulumi_command=self.pulumi(),
            env_vars=dict(self.env_vars or {}),
        )


def select(ws: Workspace, name: str) -> Stack:
    """Select an existing stack (``pulumi stack select``); raises StackNotFoundError when it is absent."""
    return Stack.select(name, ws)


def config_object(ws: Workspace, stack: str, key: str) -> dict[str, Any] | None:
    """Read an object-valued config key (``rag:ephemeral`` etc.) of a stack; None when unset or empty."""
    config = ws.get_all_config(stack)
    value = config.get(key)
    if value is None:
        return None
    return _as_object(value.value)


def _as_object(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw or None
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) and parsed else None


def config_json(values: Mapping[str, Any], secret_keys: frozenset[str] = frozenset()) -> str:
    """Encode values in the ``pulumi config --json`` shape that ``config set-all --json`` reads back.

    Strings travel as ``value``; everything else (objects, lists, numbers, booleans) as a JSON-encoded ``value``
    plus the natural ``objectValue`` so the stack file keeps real types instead of stringified blobs.
    """
    encoded: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        entry: dict[str, Any] = {"secret": key in secret_keys}
        if isinstance(value, str):
            entry["value"] = value
        else:
            entry["value"] = json.dumps(value, sort_keys=True)
            entry["objectValue"] = value
        encoded[key] = entry
    return json.dumps(encoded, sort_keys=True)


def set_config_values(
    ws: Workspace, stack: str, values: Mapping[str, Any], secret_keys: frozenset[str] = frozenset()
) -> None:
    """Write several config keys in one ``pulumi config set-all --json`` call (one write, typed values)."""
    ws.set_all_config_json(stack, config_json(values, secret_keys))


def string_config(value: ConfigValue | None) -> str:
    """The plain string of a config value, '' when absent."""
    return "" if value is None else str(value.value)


def change_counts(changes: Mapping[Any, Any] | None) -> dict[str, int]:
    """Pulumi's per-operation change counts (a summary event, a preview or an update) as plain ``{op: n}``."""
    return {str(k): int(v) for k, v in (changes or {}).items()}


def describe_counts(counts: Mapping[str, int]) -> str:
    """Change counts as text, ``"1 create, 2 update"``: the non-zero ones, by operation ('' when there are none)."""
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items()) if n)
