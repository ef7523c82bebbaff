"""Shared plumbing for the workflows: the workspace, stack selection, config values, clock and actor.

Everything goes through a ``LocalWorkspace`` over the repo root (the Pulumi project ``rag``) whose
``pulumi_command`` is injectable: production uses the real CLI on ``$PATH``; tests pass a fake runner that records
every argv. Nothing here needs Pulumi Cloud: stack metadata lives in the contract's config keys
(``rag:promotion``, ``rag:ephemeral``), which the program also exports as outputs so any machine can read them
back from the backend's state.

With a self-managed backend, config is a file in the checkout (``Pulumi.<stack>.yaml``): what one CI job writes
there, the next job's fresh checkout does not have. What the backend keeps is the config every update ran with
(each history entry carries it); :func:`deployed_config` brings that back for as long as a workflow needs it.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pulumi.automation import (
    CommandError,
    ConfigMap,
    ConfigValue,
    EngineEvent,
    LocalWorkspace,
    PulumiCommand,
    Stack,
    Workspace,
)

from infra.workflows.errors import check_cli_version, stderr_of

PROJECT = "rag"
REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_PACK = "infra/policy"  # relative to the work dir, where every pulumi command runs
#: The permanent stacks this project ships (each named after its `rag:environment`). Another permanent stack is any
#: stack with a stack file in the checkout that carries no `rag:ephemeral` key (`permanent_stacks`).
PERMANENT_STACKS = ("dev", "staging", "prod")
#: The environment a promotion moves an image along: a stack of environment E receives only from a stack of the
#: environment before it (`promotion_sources`), never a build of a checkout (config.PROMOTED_ENVIRONMENTS).
PROMOTION_CHAIN: dict[str, str] = {"dev": "staging", "staging": "prod"}
ENVIRONMENTS = ("dev", "staging", "prod")

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
    #: Checks that this machine can copy a promoted image (`ref`) into the target's registry; raises with the
    #: reason. None: `infra.components.image.check_copy_source` (skopeo on PATH, the source digest readable).
    check_image_source: Callable[[str], None] | None = None
    #: Checks that this machine has the tools a gke/eks `up` runs to tag images in the stack's own registry (`provider`
    #: -> raises with the reason). None: `infra.components.image.check_registry_tools` (skopeo and gcloud/aws on PATH).
    check_registry_tools: Callable[[str], None] | None = None
    #: Checks that a buildx builder (else a Docker daemon) answers on this machine, for an `up` that builds the image
    #: (raises with the reason). None: `infra.components.image.check_build_daemon`.
    check_build_daemon: Callable[[], None] | None = None
    #: Reads an image's labels (`ref` -> {label: value}) from its registry; raises `infra.schema.ImageLabelError`
    #: when it cannot. None: `infra.schema.read_image_labels` (skopeo, the promotion copy's logins).
    image_labels: Callable[[str], Mapping[str, str]] | None = None
    #: Waits that many seconds (a PR stack's first `up` waiting for a simultaneous creation to back out).
    sleep: Callable[[float], None] = time.sleep

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


def committed_config(work_dir: Path, stack: str) -> dict[str, Any] | None:
    """The `config` mapping of the checkout's ``Pulumi.<stack>.yaml`` (None when there is no such file)."""
    path = Path(work_dir) / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise WorkflowError(f"{path.name} is not valid YAML: {exc}") from exc
    config = doc.get("config") if isinstance(doc, dict) else None
    return dict(config) if isinstance(config, dict) else {}


def is_permanent(work_dir: Path, stack: str) -> bool:
    """Whether `stack` is a permanent stack: one of PERMANENT_STACKS, or a stack file in the checkout with config
    but no ``rag:ephemeral`` key (`ragops ephemeral up` writes that key into every PR stack's file; a committed
    stack file such as ``Pulumi.qa.yaml`` never has it). A file without config (only the passphrase provider's
    ``encryptionsalt``, which `pulumi stack init` writes) says nothing."""
    short = stack.rsplit("/", 1)[-1]
    if short in PERMANENT_STACKS:
        return True
    config = committed_config(work_dir, short)
    return bool(config) and f"{PROJECT}:ephemeral" not in config


def stack_environment(work_dir: Path, stack: str) -> str:
    """The `rag:environment` a stack deploys with, from its stack file in the checkout; a file that does not set it
    runs Pulumi.yaml's default (dev), except the three shipped stacks, which are named after their environment."""
    short = stack.rsplit("/", 1)[-1]
    value = (committed_config(work_dir, short) or {}).get(f"{PROJECT}:environment")
    if isinstance(value, str) and value:
        return value
    return short if short in PERMANENT_STACKS else "dev"


def permanent_stacks(work_dir: Path) -> list[str]:
    """Every permanent stack of the checkout (PERMANENT_STACKS plus each other non-ephemeral stack file), in
    promotion order: by environment (dev, staging, prod), then by name."""
    names = set(PERMANENT_STACKS)
    for path in Path(work_dir).glob("Pulumi.*.yaml"):
        name = path.name[len("Pulumi.") : -len(".yaml")]
        try:
            permanent = bool(name) and is_permanent(work_dir, name)
        except WorkflowError:
            # Not YAML: a committed or shipped file is everyone's problem; an untracked scratch file takes part in
            # no promotion (as an uncommitted one never does) and must not stop one.
            if name in PERMANENT_STACKS or _tracked(work_dir, path.name):
                raise
            continue
        if permanent:
            names.add(name)

    def order(name: str) -> tuple[int, int, str]:
        env = stack_environment(work_dir, name)
        rank = ENVIRONMENTS.index(env) if env in ENVIRONMENTS else len(ENVIRONMENTS)
        return (
            rank,
            PERMANENT_STACKS.index(name) if name in PERMANENT_STACKS else len(PERMANENT_STACKS),
            name,
        )

    return sorted(names, key=order)


def _tracked(work_dir: Path, file: str) -> bool:
    """Whether `file` is in `work_dir`'s git index (False without git)."""
    try:
        listed = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", "-C", str(work_dir), "ls-files", "--error-unmatch", "--", file],  # noqa: S607 - git from PATH
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0


def committed_environment(work_dir: Path, stack: str) -> str | None:
    """The `rag:environment` of ``Pulumi.<stack>.yaml`` as committed at HEAD in `work_dir`'s git checkout (what
    the team reviewed, not a file only this runner has or edited), or None when it is not committed there (or
    there is no git). A committed file that does not set it is refused (UsageError naming the key and the file)."""
    try:
        shown = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", "-C", str(work_dir), "show", f"HEAD:./Pulumi.{stack}.yaml"],  # noqa: S607 - git from PATH
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shown.returncode != 0:
        return None
    try:
        doc = yaml.safe_load(shown.stdout) or {}
    except yaml.YAMLError:
        return None
    config = doc.get("config") if isinstance(doc, dict) else None
    value = config.get(f"{PROJECT}:environment") if isinstance(config, dict) else None
    if not isinstance(value, str) or not value:
        # Pulumi.yaml's default would make it a dev stack, so a promotion source into staging, by omission.
        raise UsageError(
            f"{PROJECT}:environment in Pulumi.{stack}.yaml: missing: a permanent stack file names its environment "
            "under `config:` (dev, staging or prod) to take part in a promotion "
            "(docs/delivery.md#adding-a-permanent-stack)."
        )
    return value


def promotion_environment(work_dir: Path, stack: str) -> str | None:
    """The environment a promotion judges `stack` by: the shipped stacks' from their files (as always), any other
    permanent stack's from its committed file only (`committed_environment`). Otherwise an untracked
    ``Pulumi.mine.yaml`` saying `rag:environment: staging`, a hand-set image and one `up` would open a path to
    prod (`promote --from mine --to prod`)."""
    if stack in PERMANENT_STACKS:
        return stack_environment(work_dir, stack)
    return committed_environment(work_dir, stack)


def allowed_promotions(work_dir: Path) -> list[tuple[str, str]]:
    """Every (source, target) pair a promotion may take in this checkout: from a permanent stack of environment E
    to a permanent stack of PROMOTION_CHAIN[E] (dev -> staging, staging -> prod, by `rag:environment`); a stack
    other than the shipped three by its committed stack file only (`promotion_environment`)."""
    envs = {
        name: env
        for name in permanent_stacks(work_dir)
        if (env := promotion_environment(work_dir, name)) is not None
    }
    stacks = list(envs)
    return [
        (source, target)
        for source in stacks
        for target in stacks
        if source != target and PROMOTION_CHAIN.get(envs[source]) == envs[target]
    ]


def select(ws: Workspace, name: str) -> Stack:
    """Select an existing stack (``pulumi stack select``); raises StackNotFoundError when it is absent."""
    return Stack.select(name, ws)


def stack_file(ws: Workspace, stack: str) -> Path:
    """The stack's config file in the workspace's checkout (where `pulumi config` reads and writes it)."""
    return Path(ws.work_dir) / f"Pulumi.{stack}.yaml"


def stack_file_restorer(ws: Workspace, stack: str) -> Callable[[], None]:
    """A call that puts the stack's file in this checkout back as it is now, byte for byte (removes it when there
    is none now): what a run that writes config only for its own use leaves behind."""
    path = stack_file(ws, stack)
    saved = path.read_bytes() if path.is_file() else None

    def restore() -> None:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)

    return restore


@contextmanager
def deployed_config(ws: Workspace, stack: str) -> Iterator[ConfigMap]:
    """The config the stack's latest update ran with, in this checkout's stack file while the block runs.

    ``pulumi config refresh --force`` writes it from the backend (pulumi/pulumi: ``GetLatestConfiguration`` = the
    config of the latest history entry, which the self-managed backend records for every update; the secrets
    provider state comes back with it), so a preview or a config read in the block sees the stack as deployed,
    not the committed file a fresh CI checkout has. The checkout's file is put back afterwards, byte for byte
    (or removed when there was none): an operator's local edits survive a promotion run from their laptop.
    """
    restore = stack_file_restorer(ws, stack)
    try:
        try:
            ws.refresh_config(stack)
        except CommandError as exc:
            raise WorkflowError(
                f"Could not read the config stack {stack!r} was last deployed with (`pulumi config refresh "
                f"--force -s {stack}`): {stderr_of(exc).strip() or exc}"
            ) from exc
        yield ws.get_all_config(stack)
    finally:
        restore()


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
