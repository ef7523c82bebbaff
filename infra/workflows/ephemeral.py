"""``ragops ephemeral up|destroy|reap``: short-lived per-PR stacks with guaranteed teardown.

- ``up`` creates (or updates) a stack from ``ephemeral.template.yaml`` (the dev stack file + overrides), records
  ``rag:ephemeral`` = {name, owner, expiresAt} and runs ``pulumi up``. A NEW stack is refused (TooManyStacksError,
  naming the live ones) when the backend already holds ``maxStacks`` ephemeral stacks (the template's, or
  $RAGOPS_EPHEMERAL_MAX_STACKS), simultaneous creations included (:func:`claim_slot`); each is bounded by its
  namespace's ResourceQuota (``rag:namespaceQuota``). If anything fails or is interrupted
  (KeyboardInterrupt included) the stack is destroyed and removed before the error propagates.
- ``destroy`` runs ``pulumi destroy`` then ``pulumi stack rm``; a stack that is already gone is success.
  The stack is only removed once its resources are gone, so a failed destroy never orphans cloud resources.
- ``reap`` lists the stacks, reads each ephemeral stack's expiry (the local stack config, the exported
  ``ephemeral`` output in the backend's state, or the config of its latest update in the backend's history) and
  destroys the expired ones. Several reapers may run at once: a stack another reaper removed or holds locked is
  skipped, not an error. A stale lock (a killed job's: see :func:`stale_lock_reason`) is cancelled first, by the
  reaper and by ``destroy --force``.

Expiry lives in the stack itself (config + output), never in Pulumi Cloud TTL features, so any backend works.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pulumi.automation import Stack, Workspace
from pulumi.automation.errors import (
    CommandError,
    ConcurrentUpdateError,
    StackAlreadyExistsError,
    StackNotFoundError,
)

from infra.workflows.secrets import check_secrets_kept
from infra.workflows.stacks import (
    PERMANENT_STACKS,
    POLICY_PACK,
    PROJECT,
    Context,
    OnEvent,
    OnOutput,
    UsageError,
    WorkflowError,
    _as_object,
    is_permanent,
    parse_rfc3339,
    rfc3339,
    set_config_values,
)

EPHEMERAL_KEY = f"{PROJECT}:ephemeral"
TEMPLATE = Path(__file__).with_name("ephemeral.template.yaml")

# A DNS label (it becomes a namespace and a hostname) short enough to leave room for resource-name suffixes.
NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")
MAX_NAME_LENGTH = 40
#: The names CI gives PR stacks (pr.yml, pr-close.yml): `destroy --force` trusts them without a record.
PR_NAME_RE = re.compile(r"pr-[0-9]+")
#: Every ephemeral stack's name starts with it, and no permanent stack file may (infra/workflows/wiring.py): a PR
#: stack can never take a permanent stack's name in the shared backend, from any checkout.
EPHEMERAL_PREFIX = "pr-"
TTL_RE = re.compile(r"(\d+)([smhd])")
TTL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MIN_TTL = timedelta(minutes=5)


class NotEphemeralError(WorkflowError):
    """The named stack exists but carries no ``rag:ephemeral`` record: not ours to adopt or destroy."""


class PermanentStackError(UsageError, NotEphemeralError):
    """The name is a permanent stack's (its stack file in the checkout carries no ``rag:ephemeral`` key)."""


MAX_TTL = timedelta(days=7)


def validate_name(name: str, work_dir: Path | None = None) -> str:
    """Return the name if it can be an ephemeral stack name, else raise UsageError saying why.

    With `work_dir` (the checkout), a name whose ``Pulumi.<name>.yaml`` there carries no ``rag:ephemeral`` key is a
    permanent stack too (a committed ``Pulumi.qa.yaml``: `stacks.is_permanent`)."""
    if name in PERMANENT_STACKS:
        raise UsageError(
            f"{name!r} is a permanent stack; ephemeral stacks need their own name (e.g. pr-123)."
        )
    if work_dir is not None and is_permanent(work_dir, name):
        raise PermanentStackError(
            f"{name!r} is not an ephemeral stack: Pulumi.{name}.yaml in this checkout has no {EPHEMERAL_KEY} "
            "record, so it is a permanent stack (docs/delivery.md#adding-a-permanent-stack); ephemeral stacks need "
            "their own name (e.g. pr-123), and `--force` does not change that."
        )
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise UsageError(
            f"Invalid ephemeral stack name {name!r}: use 1-{MAX_NAME_LENGTH} lowercase letters, digits and "
            "hyphens, starting with a letter and not ending with a hyphen (it becomes a namespace and hostname)."
        )
    return name


def validate_new_name(name: str, work_dir: Path | None = None) -> str:
    """`validate_name`, and the name is in the ephemeral namespace (`EPHEMERAL_PREFIX`): what `up` creates."""
    validate_name(name, work_dir)
    if not name.startswith(EPHEMERAL_PREFIX) or name == EPHEMERAL_PREFIX:
        raise UsageError(
            f"Invalid ephemeral stack name {name!r}: ephemeral stack names start with {EPHEMERAL_PREFIX!r} (pr.yml "
            f"names them pr-<PR number>, e.g. pr-123), a namespace no permanent stack file may use, so a PR stack "
            "can never take a permanent stack's name in the shared backend."
        )
    return name


def parse_ttl(text: str) -> timedelta:
    """Parse a TTL like ``90m``, ``24h``, ``1d12h``; between MIN_TTL and MAX_TTL, else UsageError."""
    cleaned = text.strip().lower()
    if not cleaned or TTL_RE.sub("", cleaned):
        raise UsageError(
            f"Invalid TTL {text!r}: use a number with a unit s, m, h or d, e.g. 30m, 24h, 2d, 1d12h."
        )
    ttl = timedelta()
    for amount, unit in TTL_RE.findall(cleaned):
        ttl += timedelta(**{TTL_UNITS[unit]: int(amount)})
    if ttl < MIN_TTL or ttl > MAX_TTL:
        raise UsageError(
            f"TTL {text!r} is out of range: it must be between {ttl_text(MIN_TTL)} and {ttl_text(MAX_TTL)}."
        )
    return ttl


def ttl_text(ttl: timedelta) -> str:
    """A TTL as ``parse_ttl`` reads it (``5m``, ``7d``, ``1d12h``), not Python's ``7 days, 0:00:00``."""
    seconds = int(ttl.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def expires_at(now: datetime, ttl: timedelta) -> str:
    """The RFC 3339 UTC expiry of a stack created at ``now`` with ``ttl``."""
    return rfc3339(now + ttl)


def is_expired(info: dict[str, Any], now: datetime) -> bool:
    """An ephemeral record is expired at or after its ``expiresAt``; ValueError when it has none."""
    raw = info.get("expiresAt")
    if not isinstance(raw, str):
        raise ValueError("the ephemeral record has no expiresAt")
    return parse_rfc3339(raw) <= now


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _drop_secure(value: Any) -> Any:
    """Remove encrypted leaves (``{secure: ...}``); return None when the value itself is one."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return None
        return {k: v for k, v in ((k, _drop_secure(v)) for k, v in value.items()) if v is not None}
    if isinstance(value, list):
        return [v for v in (_drop_secure(v) for v in value) if v is not None]
    return value


def _substitute(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in values.items():
            value = value.replace(f"{{{key}}}", replacement)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    return value


DOMAIN_ENV = "RAGOPS_PREVIEW_DOMAIN"
DOMAIN_RE = re.compile(r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# Names that resolve to the machine itself: a reviewer's browser would reach their own laptop, not the PR stack.
LOOPBACK_DOMAINS = ("localhost", "localtest.me", "lvh.me", "localho.st", "vcap.me")
LOOPBACK_WILDCARD_DNS = re.compile(r"(^|\.)127(-|\.)\d+(-|\.)\d+(-|\.)\d+\.(nip\.io|sslip\.io|xip\.io)$")


def is_loopback_name(host: str) -> bool:
    """Whether a DNS name resolves to the local machine by convention (localhost, *.localtest.me, 127.0.0.1.nip.io)."""
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in LOOPBACK_DOMAINS) or bool(
        LOOPBACK_WILDCARD_DNS.search(host)
    )


def validate_domain(domain: str) -> str:
    """A preview domain a reviewer can reach: a DNS name (wildcard record to the gateway), not a loopback name."""
    cleaned = domain.strip().lower().rstrip(".")
    if not cleaned:
        raise UsageError(
            f"No preview domain: pass --domain or set {DOMAIN_ENV} to a DNS zone whose wildcard record "
            "(*.<domain>) points at the dev cluster's gateway, so reviewers can open https://pr-<n>.<domain>."
        )
    if not DOMAIN_RE.match(cleaned):
        raise UsageError(f"Invalid preview domain {domain!r}: expected a DNS name like preview.example.com.")
    if any(
        cleaned == d or cleaned.endswith("." + d) for d in LOOPBACK_DOMAINS
    ) or LOOPBACK_WILDCARD_DNS.search(cleaned):
        raise UsageError(
            f"Preview domain {domain!r} resolves to 127.0.0.1: a reviewer would reach their own machine. "
            "Use a domain whose wildcard record points at the dev cluster's gateway."
        )
    return cleaned


NAMESPACE_MODE_ENV = "RAGOPS_EPHEMERAL_NAMESPACE_MODE"
NAMESPACE_ENV = "RAGOPS_EPHEMERAL_NAMESPACE"
NAMESPACE_MODES = ("create", "patch", "existing")
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DEFAULT_NAMESPACE = "rag"
"""Pulumi.yaml's default `rag:namespace` (a base stack file that sets none deploys there)."""


def namespace_choice(
    values: dict[str, Any],
    *,
    mode: str | None,
    namespace: str | None,
    base_namespace: str | None,
    cap: int,
    template: Path = TEMPLATE,
) -> dict[str, Any]:
    """`values` with the operator's `rag:namespaceMode` / `rag:namespace` for the PR stack (not yet substituted).

    Where deployers may not create namespaces, the platform team gives PR stacks one (or one per PR): `existing`
    deploys into it and never writes it, `patch` adds the stack's labels with server-side apply. A namespace
    without `{name}` is shared by every PR stack, whose objects have fixed names (`qdrant`, `rag`, ...): two at
    once would overwrite each other, so it needs a cap of one live stack. The base stack's own namespace is
    refused (a PR stack there would take over dev's objects, and its destroy delete them)."""
    mode = (mode or "").strip() or None
    namespace = (namespace or "").strip() or None
    out = dict(values)
    if mode is not None:
        if mode not in NAMESPACE_MODES:
            raise UsageError(
                f"Namespace mode {mode!r} (--namespace-mode / ${NAMESPACE_MODE_ENV}) must be one of "
                f"{', '.join(NAMESPACE_MODES)}."
            )
        out[f"{PROJECT}:namespaceMode"] = mode
    if namespace is not None:
        out[f"{PROJECT}:namespace"] = namespace
    pattern = str(out.get(f"{PROJECT}:namespace") or "{name}")
    probe = pattern.replace("{name}", "a" * MAX_NAME_LENGTH)
    if not NAMESPACE_RE.match(probe):
        raise UsageError(
            f"PR stack namespace {pattern!r} (--namespace / ${NAMESPACE_ENV}) must be a DNS label of at most 63 "
            f"characters once {{name}} becomes a stack name of up to {MAX_NAME_LENGTH}."
        )
    if "{name}" not in pattern:
        if pattern == (base_namespace or DEFAULT_NAMESPACE):
            raise UsageError(
                f"PR stack namespace {pattern!r} is the base stack's own: a PR stack there would replace its "
                "objects and its destroy would delete them. Give PR stacks a namespace of their own."
            )
        if cap > 1:
            raise UsageError(
                f"PR stack namespace {pattern!r} has no {{name}}: every PR stack would deploy into it, and their "
                f"objects (same names) would overwrite each other. Use a name with {{name}} (one namespace per "
                f"PR), or allow one live stack (${MAX_STACKS_ENV}=1 or maxStacks: 1 in {template.name})."
            )
    return out


def template_config(
    work_dir: Path,
    name: str,
    template: Path = TEMPLATE,
    *,
    domain: str | None = None,
    namespace_mode: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The config of a new ephemeral stack: the base stack file's values, secure ones dropped, then overrides.

    `{name}` becomes the stack name and `{domain}` the preview domain: the argument, else $RAGOPS_PREVIEW_DOMAIN,
    else the template's `domain`. `namespace_mode` / `namespace` (else $RAGOPS_EPHEMERAL_NAMESPACE_MODE /
    $RAGOPS_EPHEMERAL_NAMESPACE, else the template's) set `rag:namespaceMode` / `rag:namespace`
    (`namespace_choice`).
    """
    spec = yaml.safe_load(template.read_text()) or {}
    chosen = validate_domain(domain or os.environ.get(DOMAIN_ENV) or str(spec.get("domain") or ""))
    base: dict[str, Any] = {}
    base_file = spec.get("base")
    if base_file:
        path = work_dir / base_file
        if path.exists():
            base = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    cleaned = {k: v for k, v in ((k, _drop_secure(v)) for k, v in base.items()) if v is not None}
    overrides = spec.get("config") or {}
    merged = namespace_choice(
        _without_other_clouds_keys(_deep_merge(cleaned, overrides), overrides),
        mode=namespace_mode or os.environ.get(NAMESPACE_MODE_ENV),
        namespace=namespace or os.environ.get(NAMESPACE_ENV),
        base_namespace=str(cleaned.get(f"{PROJECT}:namespace") or DEFAULT_NAMESPACE),
        cap=max_stacks(template),
        template=template,
    )
    return _substitute(merged, {"name": name, "domain": chosen})


def _without_other_clouds_keys(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`values` without the base stack's `aws:*` / `gcp:*` keys when the PR stack's cluster target builds no
    provider of that cloud (a cloud dev's PR stacks run on `existing`): the program refuses such keys as guarding
    nothing (infra/clusters/__init__.py `check_no_cloud_keys`), and a template cannot remove a key its base sets,
    so a dev that pins its account (`aws:allowedAccountIds`) could have no PR stacks. Keys the template sets itself
    stay, and are refused by the program like any other stack's."""
    from infra.clusters import CLOUD_NAMESPACES

    provider = str((values.get(f"{PROJECT}:cluster") or {}).get("provider", "existing"))
    return {
        key: value
        for key, value in values.items()
        if key in overrides or CLOUD_NAMESPACES.get(key.partition(":")[0], provider) == provider
    }


def base_stack_name(template: Path = TEMPLATE) -> str | None:
    """The stack whose file the template starts from (``Pulumi.dev.yaml`` -> ``dev``), or None without a base."""
    base_file = (yaml.safe_load(template.read_text()) or {}).get("base")
    if not base_file:
        return None
    return Path(str(base_file)).name.removeprefix("Pulumi.").removesuffix(".yaml")


def require_shared_cluster(values: dict[str, Any], base: str) -> dict[str, Any]:
    """Refuse a PR stack config whose cluster target is not ``existing`` (UsageError naming what to set).

    Only the ``existing`` target shares a cluster: on ``gke``/``eks`` the program CREATES one (network, NAT,
    node pools), where the template's "dev already installed cert-manager and CloudNativePG" is false and
    `up` fails after building a whole cluster. A cloud dev stack's PR stacks must therefore name dev's cluster
    in the template. Its gateway class must be one whose Gateways share dev's address: GKE-managed classes give
    every Gateway its own load balancer (and the config refuses them on an ``existing`` target).
    """
    provider = (values.get("rag:cluster") or {}).get("provider", "existing")
    if provider == "existing":
        return values
    raise UsageError(
        f"Pulumi.{base}.yaml targets provider {provider!r}: a PR stack built from it would create a cluster of "
        f"its own instead of sharing {base}'s, without the cluster-wide pieces {base} installs. Name {base}'s "
        f"cluster in {TEMPLATE.name}'s config: `rag:cluster: {{provider: existing, existing: {{kubeconfig, "
        f"context, registry, storageClass}}}}` (the kubeconfig: `pulumi stack output kubeconfig --show-secrets "
        f"-s {base}` or a path the runner has; a registry the nodes pull from and the runner can push to) and "
        '`rag:gateway.className` served there with merged Gateways (docs/delivery.md, "PR stacks on a cloud '
        'dev cluster").'
    )


MAX_STACKS_ENV = "RAGOPS_EPHEMERAL_MAX_STACKS"
DEFAULT_MAX_STACKS = 5


class TooManyStacksError(WorkflowError):
    """A new ephemeral stack would take the backend past its cap of live ephemeral stacks."""


def max_stacks(template: Path = TEMPLATE) -> int:
    """The cap on live ephemeral stacks: $RAGOPS_EPHEMERAL_MAX_STACKS, else the template's `maxStacks` (else 5).

    Each PR stack is bounded by its namespace's quota (rag:namespaceQuota); this bounds how many there are, so the
    shared cluster holds N x quota at most."""
    raw = os.environ.get(MAX_STACKS_ENV)
    where = f"${MAX_STACKS_ENV}"
    if raw is None:
        raw = (yaml.safe_load(template.read_text()) or {}).get("maxStacks", DEFAULT_MAX_STACKS)
        where = f"maxStacks in {template.name}"
    try:
        cap = int(raw)
    except (TypeError, ValueError):
        cap = 0
    if isinstance(raw, bool) or cap < 1:
        raise UsageError(f"{where} must be a whole number of stacks, at least 1; got {raw!r}.")
    return cap


def live_stacks(ws: Workspace, names: list[str], *, exclude: str) -> list[tuple[str, dict[str, Any]]]:
    """The ephemeral stacks (a `rag:ephemeral` record) among the backend's stack `names`, expired or not, except
    `exclude`. An expired stack the reaper has not destroyed yet still holds its namespace's resources: it counts."""
    found = []
    for full in names:
        short = full.rsplit("/", 1)[-1]
        if short == exclude or short in PERMANENT_STACKS or not NAME_RE.match(short):
            continue
        try:
            record = read_ephemeral(ws, full)
        except StackNotFoundError:
            continue
        if record is not None:
            found.append((short, record))
    return sorted(found)


def refuse_past_cap(ws: Workspace, name: str, cap: int, now: datetime) -> None:
    """TooManyStacksError when stack `name` does not exist yet and `cap` other ephemeral stacks are live, naming
    them and what frees a slot. An existing stack (a new push to a live PR) is never refused.

    A first check before anything is created (the count is a read: :func:`claim_slot` settles simultaneous
    creations once the stack exists)."""
    names = [summary.name for summary in ws.list_stacks()]
    if any(full.rsplit("/", 1)[-1] == name for full in names):
        return
    others = live_stacks(ws, names, exclude=name)
    if len(others) < cap:
        return
    expired = []
    rows = []
    for other, record in others:
        try:
            gone = is_expired(record, now)
        except ValueError:
            gone = False
        if gone:
            expired.append(other)
        rows.append(
            f"{other} (owner {record.get('owner', '?')}, expires {record.get('expiresAt', '?')}"
            + (", EXPIRED" if gone else "")
            + ")"
        )
    hint = (
        f"`ragops ephemeral reap` destroys the {len(expired)} expired one(s) ({', '.join(expired)}); "
        if expired
        else ""
    )
    raise TooManyStacksError(
        f"Refusing to create ephemeral stack {name!r}: {len(others)} ephemeral stacks are live and the cap is "
        f"{cap} (maxStacks in {TEMPLATE.name}, or ${MAX_STACKS_ENV}); each takes up to its namespace quota "
        f"(rag:namespaceQuota) of the shared cluster. Live: {'; '.join(rows)}. {hint}"
        "`ragops ephemeral destroy NAME` frees a slot; a new push to an existing PR updates its stack and is "
        "never refused."
    )


#: How many times a new stack that may take a slot a simultaneous creation also wants counts again, and how long
#: apart (seconds), before it backs out: the other side backs out with one `stack rm` of an empty stack, or its
#: first update completes and it counts as live.
CLAIM_RECOUNTS = 20
CLAIM_WAIT = 3.0


def census(ws: Workspace, name: str) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(live ephemeral stacks but `name`, with their records; the stacks being created right now, `name` included).

    A stack being created has no record the backend shows yet (its config is in the creating runner's checkout;
    the record reaches the backend with the first update's history) and no history at all: any valid ephemeral
    name with neither counts, a never-deployed stack made by hand too (it shows in `ragops ephemeral list`)."""
    live: list[tuple[str, dict[str, Any]]] = []
    creating = {name}
    for summary in ws.list_stacks():
        short = summary.name.rsplit("/", 1)[-1]
        if short == name or short in PERMANENT_STACKS or not NAME_RE.match(short):
            continue
        try:
            record = read_ephemeral(ws, summary.name)
            if record is not None:
                live.append((short, record))
            elif not Stack.select(summary.name, ws).history(page_size=1, show_secrets=False):
                creating.add(short)
        except StackNotFoundError:
            continue  # removed meanwhile: a creation that backed out, a teardown
    return sorted(live), sorted(creating)


def slot_decision(name: str, live: int, creating: list[str], cap: int) -> str:
    """ "take" (everyone being created fits), "wait" (`name` is among the first by name of those the free slots
    fit: the others back out) or "back out".

    Safe whatever the timing: a stack that takes a slot never leaves it, and counts in every later census (being
    created, then live), so a later census sees it. Deterministic: runners that see each other order them the
    same way, so one of two simultaneous creations for one slot takes it and the other backs out; one that saw
    none (it counted first and took its slot) is never displaced, the other runner then waits in vain and backs
    out."""
    free = cap - live
    if len(creating) <= free:
        return "take"
    if sorted(creating).index(name) < free:
        return "wait"
    return "back out"


def claim_slot(ctx: Context, ws: Workspace, name: str, cap: int) -> None:
    """Run right after `name` was created: take a slot under the cap, or remove the stack again and raise
    TooManyStacksError. Any other way out (an interrupt while waiting) removes it too."""
    try:
        for _attempt in range(CLAIM_RECOUNTS):
            live, creating = census(ws, name)
            decision = slot_decision(name, len(live), creating, cap)
            if decision == "take":
                return
            if decision == "back out":
                break
            ctx.sleep(CLAIM_WAIT)
        others = [other for other in creating if other != name]
        raise TooManyStacksError(
            f"Refusing to create ephemeral stack {name!r}: {len(live)} ephemeral stacks are live and the cap is "
            f"{cap} (maxStacks in {TEMPLATE.name}, or ${MAX_STACKS_ENV}), and {', '.join(others)} "
            f"{'is' if len(others) == 1 else 'are'} being created at the same moment (or never deployed), taking the free "
            f"slot(s) first (the first names in order win). Live: {', '.join(n for n, _ in live) or 'none'}. "
            f"Retry once a slot is free: `ragops ephemeral destroy NAME` or `ragops ephemeral reap`."
        )
    except BaseException:
        with contextlib.suppress(StackNotFoundError):
            ws.remove_stack(name)
        raise


def check_runner_tools(ctx: Context, ws: Workspace, name: str, values: dict[str, Any]) -> None:
    """Refuse before anything is created when the stack's `up` would tag images in a gke/eks registry of its own on
    this machine without skopeo and the registry's CLI (`deploy.check_registry_tools_here`, from the config the
    stack is about to get): a PR stack builds, and a failure there would come after the cluster's namespace, the
    databases and the build. A PR stack on `existing` (what a template with a base demands) tags nothing."""
    from infra.workflows.deploy import (
        COPYING_PROVIDERS,
        protect_existing_done,
        registry_tagging,
        require_build_daemon,
        require_registry_tools,
    )

    provider = str((values.get(f"{PROJECT}:cluster") or {}).get("provider", "existing"))
    image = str(values.get(f"{PROJECT}:image") or "")
    if not image:
        require_build_daemon(ctx, name)
    if provider not in COPYING_PROVIDERS:
        return
    exists = any(summary.name.rsplit("/", 1)[-1] == name for summary in ws.list_stacks())
    what = registry_tagging(
        provider,
        building=not image,
        copying=image or None,
        tagged_before=exists and protect_existing_done(ws, name),
    )
    require_registry_tools(ctx, name, provider, what)


@dataclass(frozen=True)
class EphemeralStack:
    """The ``rag:ephemeral`` record of a stack."""

    name: str
    owner: str
    expires_at: str

    def record(self) -> dict[str, str]:
        """The config/output value."""
        return {"name": self.name, "owner": self.owner, "expiresAt": self.expires_at}


#: Why an ephemeral stack cannot keep a secret set on it by hand (the secrets guard's advice for it).
EPHEMERAL_SECRETS_REMEDY = (
    "An ephemeral stack's config is written again from {template} at every `ragops ephemeral up`, its secure "
    "values dropped, so a secret set on the stack by hand does not survive the next push"
)


def up(
    ctx: Context,
    name: str,
    ttl: str,
    *,
    owner: str | None = None,
    domain: str | None = None,
    template: Path = TEMPLATE,
    namespace_mode: str | None = None,
    namespace: str | None = None,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
    drop_secrets: Collection[str] = (),
    policy_pack: str | None = POLICY_PACK,
) -> EphemeralStack:
    """Create or update the ephemeral stack and ``up`` it with the policy pack (as ``ragops up``, ``promote`` and
    ``rollback`` do: the PR preview's pack ran against dev's config, not the PR stack's); on any failure or
    interrupt, a mandatory policy violation included, tear it down first.

    An existing stack whose last update ran with a secret key the template's config lacks (set on it by hand) is
    refused first, unless ``drop_secrets`` names it (infra/workflows/secrets.py): before its config is written or
    anything torn down."""
    validate_new_name(name, ctx.work_dir)
    lifetime = parse_ttl(ttl)
    record = EphemeralStack(
        name=name, owner=owner or ctx.actor(), expires_at=expires_at(ctx.clock(), lifetime)
    )
    values = template_config(
        ctx.work_dir, name, template, domain=domain, namespace_mode=namespace_mode, namespace=namespace
    )
    ws = ctx.workspace()
    base = base_stack_name(template)
    if base is not None:
        values = require_shared_cluster(values, base)
    values[EPHEMERAL_KEY] = record.record()
    check_runner_tools(ctx, ws, name, values)
    cap = max_stacks(template)
    refuse_past_cap(ws, name, cap, ctx.clock())
    owned = False  # only a stack we created, or one already marked ephemeral, may be torn down on failure
    try:
        try:
            stack = Stack.create(name, ws)
        except StackAlreadyExistsError:
            # A new push to the same PR updates the stack and extends its expiry -- but never adopt a stack
            # somebody made by hand: tearing that down on a failure would destroy what is not ours.
            if read_ephemeral(ws, name) is None:
                raise NotEphemeralError(
                    f"Stack {name!r} already exists and is not an ephemeral stack (no {EPHEMERAL_KEY} record); "
                    "refusing to adopt it. Pick another name."
                ) from None
            stack = Stack.select(name, ws)
            # Before it is ours to tear down: a refusal leaves the stack as it is.
            check_secrets_kept(
                ws,
                name,
                drop_secrets,
                planned=values,
                remedy=EPHEMERAL_SECRETS_REMEDY.format(template=template.name),
                selected=stack,
            )
            owned = True
        else:
            claim_slot(ctx, ws, name, cap)  # removes the stack again when it is past the cap
            owned = True
        set_config_values(ws, name, values)
        stack.up(
            policy_packs=[policy_pack] if policy_pack else None,
            on_output=on_output,
            on_event=on_event,
            message=f"ephemeral {name} until {record.expires_at}",
        )
    except BaseException as exc:
        if not owned:
            raise
        try:
            teardown(ws, name, on_output=on_output, on_event=on_event)
        except BaseException as cleanup_exc:  # the original error must still propagate
            exc.add_note(
                f"Teardown of ephemeral stack {name!r} also failed ({cleanup_exc}); "
                f"run `ragops ephemeral destroy {name}` or let the reaper retry."
            )
        else:
            exc.add_note(f"Ephemeral stack {name!r} was destroyed and removed after the failure.")
        raise
    return record


#: A backend lock older than this was left by a process that cannot still be running: twice the longest job
#: that holds one (the PR job's and the deploy jobs' `timeout-minutes: 120`).
STALE_LOCK_AFTER = timedelta(hours=4)
# One line per lock file in a self-managed backend's "currently locked" error (pulumi/pulumi
# pkg/backend/diy/lock.go checkForLock: "\n  <url>: created by <user>@<host> (pid <pid>) at <RFC 3339>").
LOCK_LINE_RE = re.compile(
    r"created by (?P<user>[^@\s]*)@(?P<host>\S+) \(pid (?P<pid>-?\d+)\) at (?P<at>\S+?)\s*$", re.MULTILINE
)


@dataclass(frozen=True)
class BackendLock:
    """One lock file of a self-managed (file/S3/GCS) backend, as its "currently locked" error describes it."""

    user: str
    host: str
    pid: int
    created: datetime


def parse_locks(error_text: str) -> list[BackendLock]:
    """The lock files named in a ConcurrentUpdateError (none for Pulumi Cloud's 409, which names no lock)."""
    locks = []
    for match in LOCK_LINE_RE.finditer(error_text):
        try:
            created = parse_rfc3339(match["at"])
        except ValueError:
            continue
        locks.append(BackendLock(match["user"], match["host"], int(match["pid"]), created))
    return locks


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknowable: never call such a lock dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_lock_reason(
    locks: list[BackendLock],
    now: datetime,
    *,
    stale_after: timedelta = STALE_LOCK_AFTER,
    hostname: str | None = None,
    alive: Callable[[int], bool] = _pid_alive,
) -> str | None:
    """Why every lock is stale (its process is gone), or None when any may belong to a running operation.

    A lock taken on this machine is stale exactly when its process no longer exists (a CI step killed by a cancel
    or timeout: the next step of the job runs on the same runner); one taken elsewhere, when it is older than
    `stale_after`.
    No lock named (Pulumi Cloud, an unreadable error) is never stale: that backend ends its own leases.
    """
    if not locks:
        return None
    here = hostname if hostname is not None else socket.gethostname()
    reasons = []
    for lock in locks:
        who = f"{lock.user}@{lock.host} (pid {lock.pid}) at {rfc3339(lock.created)}"
        if lock.host == here:
            if alive(lock.pid):
                return None
            reasons.append(f"{who}: that process on this machine is gone")
        elif now - lock.created >= stale_after:
            reasons.append(f"{who}: older than {stale_after}")
        else:
            return None
    return "; ".join(reasons)


def describe_locks(error: BaseException) -> str:
    """The lock holders an error names, for messages ("" when it names none)."""
    locks = parse_locks(str(error))
    return "; ".join(
        f"{lock.user}@{lock.host} (pid {lock.pid}) since {rfc3339(lock.created)}" for lock in locks
    )


def _cancelling_stale_lock(
    ws: Workspace,
    name: str,
    operation: Callable[[], Any],
    *,
    now: datetime | None,
    stale_after: timedelta,
    on_output: OnOutput | None,
) -> Any:
    """Run `operation`; if a stale lock stops it, `pulumi cancel` (delete the lock files) and run it once more.

    `pulumi cancel` on a self-managed backend deletes every lock file of the stack (pulumi/pulumi
    pkg/backend/diy/backend.go CancelCurrentUpdate), so it is only run when each lock the error names is stale.
    """
    try:
        return operation()
    except ConcurrentUpdateError as exc:
        if now is None:
            raise
        reason = stale_lock_reason(parse_locks(str(exc)), now, stale_after=stale_after)
        if reason is None:
            raise
        if on_output is not None:
            on_output(f"ragops: stack {name} has a stale lock ({reason}); running `pulumi cancel`")
        Stack.select(name, ws).cancel()
    return operation()


#: The resource whose delete waits, with kubectl, for the cloud disks of the deleted claims (infra/clusters/volumes.py;
#: declared by the gke and eks targets).
VOLUMES_RELEASED = "volumes-released"


def require_destroy_tools(ws: Workspace, name: str) -> None:
    """Raise WorkflowError, before anything is deleted, when the stack's state holds the `volumes-released` step and
    kubectl is not on PATH: its delete would fail only after every namespace of the stack was gone."""
    try:
        state = ws.export_stack(name).deployment or {}
    except CommandError:
        return  # the destroy reports what is wrong with the stack
    waits = any(str(r.get("urn", "")).endswith(f"::{VOLUMES_RELEASED}") for r in state.get("resources") or [])
    if waits and shutil.which("kubectl") is None:
        raise WorkflowError(
            f"kubectl not found on PATH: destroying stack {name!r} waits with it for its released cloud volumes "
            f"(the {VOLUMES_RELEASED} resource); install kubectl and run the destroy again (nothing was changed)."
        )


def teardown(
    ws: Workspace,
    name: str,
    *,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
    now: datetime | None = None,
    stale_after: timedelta = STALE_LOCK_AFTER,
) -> bool:
    """Destroy the stack's resources, then remove the stack. False when it did not exist.

    With `now`, a stale backend lock (see :func:`stale_lock_reason`) is cancelled first. Raises
    ConcurrentUpdateError when another operation holds the stack, CommandError when destroy fails (the stack is
    then kept, so its resources stay tracked and a later destroy can finish the job).
    """
    try:
        stack = Stack.select(name, ws)
    except StackNotFoundError:
        return False
    require_destroy_tools(ws, name)
    _cancelling_stale_lock(
        ws,
        name,
        lambda: stack.destroy(
            on_output=on_output, on_event=on_event, message=f"teardown of ephemeral {name}"
        ),
        now=now,
        stale_after=stale_after,
        on_output=on_output,
    )
    # A concurrent teardown may remove it between our destroy and rm: the goal is reached either way.
    with contextlib.suppress(StackNotFoundError):
        ws.remove_stack(name)
    return True


def destroy(
    ctx: Context,
    name: str,
    *,
    force: bool = False,
    stale_after: timedelta = STALE_LOCK_AFTER,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
) -> bool:
    """``ragops ephemeral destroy NAME``: True when destroyed, False when it was already gone.

    Refuses a stack without a ``rag:ephemeral`` record unless ``force``: a by-hand stack that happens to have a
    valid name is not ours to destroy. (CI passes ``--force`` for ``pr-<number>``, a name only ephemeral stacks
    use, so a stack whose first update was killed before recording anything is still cleaned up.) With
    ``force`` a stale backend lock (a killed job's, see :func:`stale_lock_reason`) is cancelled first.

    ``force`` never destroys a permanent stack: one whose stack file in the checkout has no ``rag:ephemeral`` key
    (a committed ``Pulumi.qa.yaml``), or, unless named ``pr-<number>`` (CI's names, which only PR stacks use), one
    whose latest update ran without that key (every update `up` runs has it: :func:`_updated_as_ephemeral`).
    """
    validate_name(name, ctx.work_dir)
    ws = ctx.workspace()
    try:
        if force:
            try:
                updated = _updated_as_ephemeral(ws, name)
            except StackNotFoundError:
                return False
            if updated is False and not PR_NAME_RE.fullmatch(name):
                raise NotEphemeralError(
                    f"Stack {name!r} was last updated without a {EPHEMERAL_KEY} record (not by `ragops ephemeral "
                    "up`), so it is not an ephemeral stack; refusing to destroy it, --force or not. Destroy a "
                    f"permanent stack with `pulumi destroy -s {name}`."
                )
        else:
            try:
                record = read_ephemeral(ws, name)
            except StackNotFoundError:
                return False
            if record is None:
                raise NotEphemeralError(
                    f"Stack {name!r} has no {EPHEMERAL_KEY} record, so it is not a (finished) ephemeral stack; "
                    "refusing to destroy it. Pass --force if you are sure it is a leftover."
                )
        return teardown(
            ws,
            name,
            on_output=on_output,
            on_event=on_event,
            now=ctx.clock() if force else None,
            stale_after=stale_after,
        )
    except ConcurrentUpdateError as exc:
        holders = describe_locks(exc)
        raise WorkflowError(
            f"Stack {name!r} is locked by another operation"
            + (f" ({holders})" if holders else "")
            + f"; retry when it finishes. A lock whose process is gone is cancelled by `destroy --force` run on "
            f"the same machine, or once older than {stale_after} (the reaper does, too)."
        ) from exc


def read_ephemeral(ws: Workspace, stack: str) -> dict[str, Any] | None:
    """The stack's ``rag:ephemeral`` record: the local config if present, else the exported output (state), else
    the config the latest update ran with (the backend's history).

    A fresh CI checkout has no ``Pulumi.<stack>.yaml`` (a self-managed backend keeps config in the working
    directory), and the outputs exist only once an update completed; a stack whose first ``up`` failed still has
    the config it ran with in its update history (pulumi/pulumi pkg/backend/diy/backend.go ``apply`` records
    ``UpdateInfo.Config`` for failed updates too).
    """
    config = ws.get_all_config(stack)
    if EPHEMERAL_KEY in config:
        record = _as_object(config[EPHEMERAL_KEY].value)
        if record:
            return record
    outputs = ws.stack_outputs(stack)
    if "ephemeral" in outputs:
        record = _as_object(outputs["ephemeral"].value)
        if record:
            return record
    return _history_record(ws, stack)


def _updated_as_ephemeral(ws: Workspace, stack: str) -> bool | None:
    """Whether the stack's latest update (not a destroy or refresh: a fresh CI checkout's teardown records an empty
    config) ran with a ``rag:ephemeral`` key, as every update of `up` does; None when it never ran an update (a
    first `up` killed before it started)."""
    for entry in Stack.select(stack, ws).history(page_size=20, show_secrets=False):
        if entry.kind == "update":
            return EPHEMERAL_KEY in (entry.config or {})
    return None


def _history_record(ws: Workspace, stack: str) -> dict[str, Any] | None:
    history = Stack.select(stack, ws).history(page_size=1, show_secrets=False)
    if not history:
        return None
    # UpdateSummary.config: ConfigValue per key, an object's value as its JSON text.
    entry = (history[0].config or {}).get(EPHEMERAL_KEY)
    return _as_object(entry.value) if entry is not None else None


@dataclass(frozen=True)
class Listed:
    """One stack as `ragops ephemeral list` shows it."""

    name: str
    owner: str | None
    expires_at: str | None
    expired: bool | None
    """None when the expiry cannot be read (not an ephemeral stack, or a broken record)."""
    note: str = ""


def list_stacks(ctx: Context, *, now: datetime | None = None) -> list[Listed]:
    """Every ephemeral stack of the backend with its owner and expiry (permanent stacks are left out)."""
    moment = now or ctx.clock()
    ws = ctx.workspace()
    rows: list[Listed] = []
    for summary in ws.list_stacks():
        short = summary.name.rsplit("/", 1)[-1]
        if short in PERMANENT_STACKS or not NAME_RE.match(short):
            continue
        try:
            record = read_ephemeral(ws, summary.name)
        except StackNotFoundError:
            continue
        if record is None:
            rows.append(Listed(summary.name, None, None, None, "not ephemeral (no rag:ephemeral record)"))
            continue
        try:
            expired = is_expired(record, moment)
        except ValueError as exc:
            rows.append(Listed(summary.name, record.get("owner"), None, None, f"unreadable expiry ({exc})"))
            continue
        rows.append(Listed(summary.name, record.get("owner"), record.get("expiresAt"), expired))
    return sorted(rows, key=lambda row: row.name)


@dataclass
class ReapReport:
    """What one reaper run did; ``failed`` makes the command exit 1."""

    destroyed: list[str] = field(default_factory=list)
    would_destroy: list[str] = field(default_factory=list)
    """With dry_run: the expired stacks a real run would destroy."""
    kept: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason (gone, locked, unreadable)
    failed: dict[str, str] = field(default_factory=dict)


def reap(
    ctx: Context,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    stale_after: timedelta = STALE_LOCK_AFTER,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
) -> ReapReport:
    """Destroy every expired ephemeral stack (only list them with `dry_run`). Idempotent and safe to run
    concurrently."""
    moment = now or ctx.clock()
    ws = ctx.workspace()
    report = ReapReport()
    for summary in ws.list_stacks():
        name = summary.name
        short = name.rsplit("/", 1)[-1]
        if short in PERMANENT_STACKS or not NAME_RE.match(short):
            continue
        try:
            record = read_ephemeral(ws, name)
            if record is None:
                report.skipped[name] = (
                    "not an ephemeral stack (no rag:ephemeral record in config, outputs or history)"
                )
                continue
            try:
                expired = is_expired(record, moment)
            except ValueError as exc:
                report.skipped[name] = f"unreadable expiry ({exc})"
                continue
            if not expired:
                report.kept.append(name)
                continue
            if dry_run:
                report.would_destroy.append(name)
                continue
            if teardown(
                ws, name, on_output=on_output, on_event=on_event, now=moment, stale_after=stale_after
            ):
                report.destroyed.append(name)
            else:
                report.skipped[name] = "already removed"
        except StackNotFoundError:
            report.skipped[name] = "already removed"
        except ConcurrentUpdateError:
            report.skipped[name] = "locked by another operation (another reaper?)"
        except CommandError as exc:
            report.failed[name] = str(exc).strip()
    return report
