"""``ragops preview``: ``pulumi preview --diff`` with the policy pack, collected into a report for a PR comment.

The engine's event stream gives the per-resource steps and policy violations; the summary event gives the counts.
A failed preview (a mandatory policy violation, a program error) still yields a report, so the PR comment can say
why; the CLI then exits 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pulumi.automation import EngineEvent, Workspace
from pulumi.automation.errors import CommandError

from infra.workflows.errors import program_refusal
from infra.workflows.registry_upgrade import (
    MajorUpgradeRefused,
    RegistryUnrecoverable,
    check_major_upgrade,
    check_registry_recoverable,
)
from infra.workflows.scaling import ScaleDownRefused, check_scale_down
from infra.workflows.secrets import SecretsDropped, check_secrets_kept
from infra.workflows.stacks import POLICY_PACK, OnEvent, OnOutput, change_counts, select

# Steps that change nothing; everything else counts as a pending change. A `read` is counted by the engine when a
# read-only resource (`ResourceOptions(id=...)`: the entry's live read for `ingressAddress`, the CRD gates of
# `monitoring.mode: existing`) reads other outputs than the state holds (pulumi/pulumi pkg/engine/update.go
# `shouldRecordReadStep`): the whole live object, `resourceVersion` included, so any controller write since the last
# `up` (GKE stamps `networking.gke.io/last-reconcile-time` on its Gateways at every reconcile) counts one. The update
# would deploy nothing for it; counting it refused every promotion from such a stack (REVIEW10 F1).
NO_CHANGE_OPS = frozenset({"same", "read"})
# Engine steps that are bookkeeping during a refresh rather than a change (kept out of step lists).
QUIET_OPS = frozenset({"same", "read", "refresh"})


@dataclass(frozen=True)
class Step:
    """One planned resource operation."""

    op: str
    urn: str
    type: str
    diffs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The logical name (the last URN segment)."""
        return self.urn.rsplit("::", 1)[-1]


@dataclass(frozen=True)
class PolicyViolation:
    """A CrossGuard policy finding reported during the preview."""

    policy: str
    pack: str
    level: str  # advisory | mandatory | remediate | disabled
    message: str
    urn: str = ""


@dataclass
class EventCollector:
    """An ``on_event`` callback that keeps steps, policy findings and the summary, and forwards every event."""

    forward: OnEvent | None = None
    steps: list[Step] = field(default_factory=list)
    violations: list[PolicyViolation] = field(default_factory=list)
    summary: dict[str, int] | None = None
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def __call__(self, event: EngineEvent) -> None:
        if event.resource_pre_event is not None:
            self._step(event.resource_pre_event.metadata)
        elif event.res_outputs_event is not None:
            self._step(event.res_outputs_event.metadata)
        elif event.policy_event is not None:
            pe = event.policy_event
            self.violations.append(
                PolicyViolation(
                    policy=pe.policy_name,
                    pack=pe.policy_pack_name,
                    level=pe.enforcement_level,
                    message=pe.message.strip(),
                    urn=pe.resource_urn or "",
                )
            )
        elif event.summary_event is not None:
            self.summary = change_counts(event.summary_event.resource_changes)
        if self.forward is not None:
            self.forward(event)

    def _step(self, meta: Any) -> None:
        op = str(getattr(meta.op, "value", meta.op))
        if op in QUIET_OPS and not meta.diffs:
            return
        if str(meta.type).startswith("pulumi:providers:") and meta.urn.rsplit("::", 1)[-1].startswith(
            "default"
        ):
            # The engine's own default providers (the program's state reads add package `pulumi`'s, infra/guards.py):
            # nothing the stack declares, and the engine's change summary leaves them out too (REVIEW6 W5).
            return
        key = (op, meta.urn)
        if key in self._seen:  # pre and outputs events describe the same step
            return
        self._seen.add(key)
        self.steps.append(Step(op=op, urn=meta.urn, type=meta.type, diffs=tuple(meta.diffs or ())))


@dataclass(frozen=True)
class PreviewReport:
    """What a preview would do to one stack."""

    stack: str
    changes: dict[str, int]
    steps: list[Step]
    violations: list[PolicyViolation]
    stdout: str = ""
    error: str | None = None  # set when the preview itself failed

    @property
    def ok(self) -> bool:
        """The preview ran to completion."""
        return self.error is None

    @property
    def refusal(self) -> str | None:
        """The program's refusal of the stack's config (one line naming the key and the stack file), when that is
        why the preview failed (infra/workflows/errors.py program_refusal)."""
        return program_refusal(self.error) if self.error else None

    @property
    def pending(self) -> dict[str, int]:
        """Change counts other than ``same`` and ``read`` (non-zero only): empty means the stack is up to date."""
        pending = {op: n for op, n in self.changes.items() if op not in NO_CHANGE_OPS and n > 0}
        if not pending and not self.changes:
            # No summary (a failed preview): fall back to the steps we saw.
            pending = dict(Counter(s.op for s in self.steps if s.op not in NO_CHANGE_OPS))
        return pending


def run_preview(
    ws: Workspace,
    stack: str,
    *,
    policy_pack: str | None = POLICY_PACK,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
    drop_secrets: Collection[str] | None = None,
) -> PreviewReport:
    """Run ``pulumi preview --diff [--policy-pack infra/policy]`` on a stack and report the planned changes.

    With `drop_secrets` (``ragops preview``), a config that lacks a secret key of the stack's last update, other
    than those named, fails the preview as ``ragops up`` would refuse it (infra/workflows/secrets.py); None skips
    that check (promote's preview of the source stack as deployed)."""
    st = select(ws, stack)
    try:
        if drop_secrets is not None:
            check_secrets_kept(ws, stack, drop_secrets, doing="preview")
        check_scale_down(ws, stack)
        check_major_upgrade(ws, stack)
        if drop_secrets is not None:  # a stack about to be updated (not promote's look at its source)
            check_registry_recoverable(ws, stack)
    except (SecretsDropped, ScaleDownRefused, MajorUpgradeRefused, RegistryUnrecoverable) as exc:
        return PreviewReport(stack=stack, changes={}, steps=[], violations=[], error=str(exc))
    collector = EventCollector(forward=on_event)
    try:
        result = st.preview(
            diff=True,
            policy_packs=[policy_pack] if policy_pack else None,
            on_output=on_output,
            on_event=collector,
        )
    except CommandError as exc:
        return PreviewReport(
            stack=stack,
            changes=collector.summary or {},
            steps=collector.steps,
            violations=collector.violations,
            error=str(exc).strip(),
        )
    changes = change_counts(result.change_summary)
    return PreviewReport(
        stack=stack,
        changes=changes,
        steps=collector.steps,
        violations=collector.violations,
        stdout=result.stdout,
    )
