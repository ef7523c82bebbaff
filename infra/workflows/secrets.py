"""The secrets guard: an update may not silently drop a secret config key the stack's last update ran with.

With a self-managed backend a secret lives where ``pulumi config set --secret`` put it: encrypted in the
``Pulumi.<stack>.yaml`` of the checkout that ran it (or in a Pulumi ESC environment the stack file imports). The
backend keeps each update's config in its history, but ``pulumi up`` reads only the checkout's file: an API key or
alert receiver set from a laptop and never committed is gone at the next deploy from a fresh checkout (CI), with
no error (the program generates a new API key, the Qdrant key rotation reverts, the alert receivers vanish).

So ``ragops up``, ``promote`` and ``rollback`` read the names of the secret keys of the stack's latest updates
(``pulumi stack history --json`` without ``--show-secrets``: names and the ``secret`` flag, no values and no
passphrase needed) and refuse, before anything is written, when the config they are about to apply lacks one of
them, unless the operator names it with ``--drop-secret KEY`` (the removal is intended). ``ragops preview`` fails
the same way (the PR comment says which key the update it previews would drop, instead of the deploy after the
merge being refused), and so does ``ragops ephemeral up`` for a PR stack that exists: its config is written again
from the template at every push, secure values dropped, so a secret set on it by hand is gone at the next push;
the check runs before the stack is touched, so a refusal does not tear the stack down. Carrying the secrets over
from the backend instead (as ``keep_promoted`` does for the promotion) would hide the defect: the committed file
is what the next bare ``pulumi up`` uses, and the docs say where secrets must live (docs/delivery.md).
"""

from __future__ import annotations

from collections.abc import Collection

from pulumi.automation import Stack, Workspace
from pulumi.automation.errors import StackNotFoundError

from infra.workflows.stacks import PROJECT, UsageError, WorkflowError

#: How many updates back the history is read: up to and including the newest one that succeeded.
HISTORY_DEPTH = 20


class SecretsDropped(WorkflowError):
    """The config to apply lacks secret keys the stack's last update ran with."""


def qualified(key: str) -> str:
    """``slackWebhookUrl`` -> ``rag:slackWebhookUrl`` (a key with a namespace is kept as is)."""
    key = key.strip()
    if not key:
        raise UsageError("--drop-secret needs a config key, e.g. rag:slackWebhookUrl.")
    return key if ":" in key else f"{PROJECT}:{key}"


def deployed_secret_keys(ws: Workspace, stack: str, selected: Stack | None = None) -> set[str]:
    """The secret config keys of the stack's updates since (and including) its newest successful one (`selected`:
    the stack, already selected by the caller)."""
    try:
        history = (selected or Stack.select(stack, ws)).history(page_size=HISTORY_DEPTH, show_secrets=False)
    except StackNotFoundError:
        return set()
    keys: set[str] = set()
    for entry in history:  # newest first
        if entry.kind != "update":
            continue
        keys |= {key for key, value in (entry.config or {}).items() if value.secret}
        if entry.result == "succeeded":
            break
    return keys


def check_secrets_kept(
    ws: Workspace,
    stack: str,
    drop: Collection[str] = (),
    *,
    doing: str = "deploy",
    planned: Collection[str] = (),
    remedy: str | None = None,
    selected: Stack | None = None,
) -> None:
    """SecretsDropped when the stack's config (this checkout's file, plus any ESC environment it imports, plus the
    keys in `planned` the command is about to set) lacks a secret key of its last update that ``drop`` does not
    name. `doing` is what is refused (deploy, preview); `remedy` replaces the advice on keeping the secret."""
    deployed = deployed_secret_keys(ws, stack, selected)
    if not deployed:
        return
    allowed = {qualified(key) for key in drop}
    missing = sorted(deployed - set(ws.get_all_config(stack)) - set(planned) - allowed)
    if not missing:
        return
    names = ", ".join(missing)
    flags = " ".join(f"--drop-secret {key}" for key in missing)
    them = "it" if len(missing) == 1 else "them"
    this = "the update it previews" if doing == "preview" else "this one"
    keep = remedy or (
        f"A secret from `pulumi config set --secret` lives only in the checkout that ran it: commit the encrypted "
        f"value (and the file's encryptionsalt) to Pulumi.{stack}.yaml, or import it from a Pulumi ESC environment "
        "(docs/delivery.md, Secrets)"
    )
    raise SecretsDropped(
        f"Refusing to {doing} {stack}: Pulumi.{stack}.yaml lacks the secret config {names} that the stack's last "
        f"deploy ran with, so {this} would run without {them}. {keep}; to remove {them} on purpose, pass {flags}."
    )
