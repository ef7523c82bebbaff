"""What went wrong with the Pulumi CLI, for a human: its stderr alone and a one-line hint for the common causes.

The Automation API's ``CommandError`` message is the whole ``CommandResult`` (exit code, every stdout line of an
update, stderr). Operators need the stderr, and for the handful of set-up mistakes everyone makes once (not logged
in, no backend, no passphrase, a stack that was never created, a lock left by a killed run) the command that fixes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pulumi.automation.errors import CommandError
from semver import VersionInfo

#: The oldest Pulumi CLI ragops supports: the first with `config set-all --json` (pulumi/pulumi#19427, May 2025). CI
#: installs the version pinned in .github/workflows (3.272.0).
MIN_PULUMI_VERSION = VersionInfo(3, 170, 0)

MISSING_STACK = re.compile(r"no stack named '([^']+)' found", re.I)

# (pattern in stderr, hint); the first match wins. Texts are the real CLI's (pkg/cmd/pulumi, pkg/secrets/passphrase).
HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"PULUMI_ACCESS_TOKEN must be set|could not determine current cloud|not logged in", re.I),
        "not logged in to a backend: run `pulumi login <backend URL>` (e.g. s3://bucket, gs://bucket, "
        "file://path) or set PULUMI_BACKEND_URL",
    ),
    (
        re.compile(r"passphrase must be set|PULUMI_CONFIG_PASSPHRASE", re.I),
        "the stack's secrets need its passphrase: set PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE",
    ),
    (
        re.compile(r"incorrect passphrase|failed to decrypt", re.I),
        "wrong passphrase: PULUMI_CONFIG_PASSPHRASE must be the one the stack was created with",
    ),
    (MISSING_STACK, "{missing}"),
    (
        re.compile(
            r"NoSuchBucket|bucket does not exist|failed to open bucket|no such host|connection refused", re.I
        ),
        "the state backend is unreachable or missing: check PULUMI_BACKEND_URL, that the bucket/path exists "
        "and your cloud credentials",
    ),
    (
        re.compile(r"currently locked by|Another update is currently in progress", re.I),
        "another update holds the stack: wait for it, or run `pulumi cancel` if that run died",
    ),
    (
        re.compile(r"mandatory policy violation", re.I),
        "the policy pack refused the change: see the violations above; `make plan STACK=<stack>` reproduces "
        "them offline",
    ),
)


#: The program's refusal of its config (infra/config.py ConfigError: `rag:<key> in Pulumi.<stack>.yaml: ...`) as the
#: CLI shows it. The program raises it as a `pulumi.RunError`, which the Python language host logs as the message
#: alone (a traceback ending in `ConfigError: ...` for any other exception), and the display prints that error
#: under the stack's Diagnostics on stdout, as `error: <message>`. A failed program is a "bail" for the CLI, so
#: stderr has nothing of it.
PROGRAM_REFUSAL = re.compile(r"(?:error: |ConfigError: )(rag:[\w.\[\]-]+ in Pulumi\.[\w.-]+\.yaml: [^\n]+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def program_refusal(output: str) -> str | None:
    """The first config refusal of the program in a command's output (stdout and stderr), or None."""
    match = PROGRAM_REFUSAL.search(ANSI.sub("", output))
    return match[1].strip() if match else None


@dataclass(frozen=True)
class PulumiFailure:
    """A failed Pulumi command as the operator sees it."""

    stderr: str
    hint: str | None
    #: The program refused its config (one line naming the key and the stack file): what the red line says.
    refusal: str | None = None

    @property
    def headline(self) -> str:
        """The program's config refusal, else the first `error:` line of stderr (or its first line): what goes on
        the red line."""
        if self.refusal:
            return self.refusal
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        for line in lines:
            if line.lower().startswith("error:"):
                return line
        return lines[0] if lines else "the Pulumi CLI failed without saying why"


def stderr_of(exc: CommandError) -> str:
    """The stderr part of a CommandError (its message is the whole CommandResult)."""
    text = str(exc)
    marker = "\n stderr: "
    if marker in text:
        return text.split(marker, 1)[1].strip()
    return text.strip()


#: The ragops commands that deploy a stack the backend may not have yet (a first `up`, a PR's `preview`): only for
#: these is "create it" the likely fix. Every other command reads or operates a deployed stack, where a missing
#: stack almost always means the wrong backend (another `pulumi login`, PULUMI_BACKEND_URL unset or different).
CREATING_COMMANDS = frozenset({"up", "preview"})


def missing_stack_hint(
    name: str,
    roles: Mapping[str, str] | None = None,
    work_dir: Path | None = None,
    *,
    creates: bool = True,
    backend: str | None = None,
) -> str:
    """What to do about stack `name` missing from the backend. `creates`: the command deploys it (`up`,
    `preview`), so `pulumi stack init` is offered (a permanent stack -- dev, staging, prod, or another stack file
    of the checkout `work_dir` without a ``rag:ephemeral`` record, such as ``Pulumi.qa.yaml`` -- with that only,
    since `ragops ephemeral` refuses those; any other name may also be an ephemeral PR stack). Otherwise the
    command reads or operates a deployed stack, and the hint points at the backend (`backend`: its URL when
    known), never at creating an empty stack. `roles` says what each stack of the command is (promote: the
    source and the target)."""
    from infra.workflows.stacks import REPO_ROOT, is_permanent

    short = name.rsplit("/", 1)[-1]
    role = (roles or {}).get(short)
    which = f"{short} ({role})" if role else "the stack"
    where = f"the backend you are logged in to ({backend})" if backend else "the backend you are logged in to"
    permanent = is_permanent(work_dir or REPO_ROOT, short)
    if not creates:
        hint = (
            f"{which} is not in {where}: you are probably logged in to another backend than the one it was "
            "deployed to; check `pulumi whoami -v` and `pulumi stack ls`, and set PULUMI_BACKEND_URL (or "
            "`pulumi login <url>`) to the backend CI deploys with"
        )
        if not permanent:
            hint += "; a PR stack may also have been destroyed or reaped (`ragops ephemeral list`)"
        return hint
    here = f"this backend ({backend})" if backend else "this backend"
    hint = f"{which} does not exist in {here}: create it with `pulumi stack init {name}`"
    if not permanent:
        hint += f" (ephemeral PR stacks: `ragops ephemeral up --name {short}`)"
    return hint


def hint_for(
    stderr: str,
    roles: Mapping[str, str] | None = None,
    work_dir: Path | None = None,
    *,
    creates: bool = True,
    backend: str | None = None,
) -> str | None:
    """A one-line fix for a common cause, or None. `roles` names what each stack of the command is; `work_dir`
    is the checkout whose stack files say which stacks are permanent; `creates` and `backend` as for
    `missing_stack_hint`."""
    for pattern, hint in HINTS:
        match = pattern.search(stderr)
        if match:
            if pattern is MISSING_STACK:
                return missing_stack_hint(match.group(1), roles, work_dir, creates=creates, backend=backend)
            return hint.format(*match.groups())
    return None


def describe(
    exc: CommandError,
    roles: Mapping[str, str] | None = None,
    work_dir: Path | None = None,
    *,
    creates: bool = True,
    backend: str | None = None,
) -> PulumiFailure:
    """The stderr and hint of a failed command."""
    stderr = stderr_of(exc)
    return PulumiFailure(
        stderr=stderr,
        hint=hint_for(stderr, roles, work_dir, creates=creates, backend=backend),
        refusal=program_refusal(str(exc)),
    )


def check_cli_version(version: VersionInfo | None) -> str | None:
    """A sentence when the Pulumi CLI is older than ragops supports (None when fine or unknown)."""
    if version is not None and version.compare(MIN_PULUMI_VERSION) < 0:
        return (
            f"the Pulumi CLI is {version}, ragops needs {MIN_PULUMI_VERSION} or newer: "
            "upgrade it (https://www.pulumi.com/docs/install/)"
        )
    return None
