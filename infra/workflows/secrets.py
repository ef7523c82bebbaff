"""The secrets guard: an update may not silently drop a secret config key the stack's last update ran with.

With a self-managed backend a secret lives where ``pulumi config set --secret`` put it: encrypted in the
``Pulumi.<stack>.yaml`` of the checkout that ran it (or in a Pulumi ESC environment the stack file imports). The
backend keeps each update's config in its history, but ``pulumi up`` reads only the checkout's file: an API key or
alert receiver set from a laptop and never committed is gone at the next deploy from a fresh checkout (CI), with
no error (the program generates a new API key, the Qdrant key rotation reverts, the alert receivers vanish).

So ``ragops up``, ``promote`` and ``rollback`` read the names of the secret keys of the stack's latest updates
(``pulumi stack history --json`` without ``--show-secrets``: names and the ``secret`` flag, no values and no
passphrase needed) and refuse, before anything is written, when the config they are about to apply lacks one of
them, unless the operator names it with ``--drop-secret KEY`` (the removal is intended). Carrying the secrets over
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


def deployed_secret_keys(ws: Workspace, stack: str) -> set[str]:
    """The secret config keys of the stack's updates since (and including) its newest successful one."""
    try:
        history = Stack.select(stack, ws).history(page_size=HISTORY_DEPTH, show_secrets=False)
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


def check_secrets_kept(ws: Workspace, stack: str, drop: Collection[str] = ()) -> None:
    """SecretsDropped when the stack's config (this checkout's file, plus any ESC environment it imports) lacks a
    secret key of its last update that ``drop`` does not name."""
    deployed = deployed_secret_keys(ws, stack)
    if not deployed:
        return
    allowed = {qualified(key) for key in drop}
    missing = sorted(deployed - set(ws.get_all_config(stack)) - allowed)
    if not missing:
        return
    names = ", ".join(missing)
    flags = " ".join(f"--drop-secret {key}" for key in missing)
    them = "it" if len(missing) == 1 else "them"
    raise SecretsDropped(
        f"Refusing to deploy {stack}: Pulumi.{stack}.yaml lacks the secret config {names} that the stack's last "
        f"deploy ran with, so this one would run without {them}. A secret from `pulumi config set --secret` "
        f"lives only in the checkout that ran it: commit the encrypted value (and the file's encryptionsalt) to "
        f"Pulumi.{stack}.yaml, or import it from a Pulumi ESC environment (docs/delivery.md, Secrets); to "
        f"remove {them} on purpose, pass {flags}."
    )
