"""``ragops drift --stack S``: has the real infrastructure drifted from the stack's state?

Runs ``pulumi refresh --preview-only --expect-no-changes``: the refresh is only previewed (state is never
written), and the CLI itself fails when the refresh would change anything. The event stream tells us which
resources drifted and how, so the report is readable; a failure without any drifted resource is a real error,
not drift, and propagates.

A resource whose provider could not read it warns instead of failing the refresh: the report lists those warnings
as "not verified", so "No drift" never hides a resource nobody looked at. The one this matters for is the image a
building stack (dev, PR stacks) pushed: pulumi-docker-build's ``Image`` refresh (``provider/internal/image.go``
``Read``, v0.0.21 on, pinned 0.0.22) inspects each pushed tag in the registry with the credentials stored in state;
a registry that answers "not found" drops the image (real drift: the digest the Deployments run is gone, so a
rescheduled pod cannot pull it and a promotion would ship a digest that no longer exists), while any other error
(registry unreachable from the drift runner, an expired ECR or gcloud token in state) leaves it unchanged with the
warning "unable to verify image tags, leaving state unchanged". The image stays in the refresh for that reason:
excluding it would hide the one drift that stops pods from starting.

What the refresh leaves out: the stack's read-only resources (`external` in its state: the entry's live read behind
`ingressAddress`, the CRD gates of `monitoring.mode: existing`). The engine compares such a resource by its outputs
alone (pulumi/pulumi pkg/resource/deploy/step.go `RefreshStep.ResultOp`), which are the whole live object, so any
controller write since the last `up` (a status condition, GKE's `networking.gke.io/last-reconcile-time` stamped on
every reconcile) was reported as drift nightly, with no resource named. The stack manages nothing there: the next
`up` reads it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pulumi.automation import EngineEvent, Workspace
from pulumi.automation.errors import CommandError

from infra.workflows.preview import NO_CHANGE_OPS, EventCollector, Step
from infra.workflows.stacks import Context, OnEvent, OnOutput, describe_counts, select


@dataclass(frozen=True)
class Unverified:
    """A resource the refresh could not read (its provider warned and kept the state)."""

    urn: str
    message: str

    @property
    def name(self) -> str:
        """The logical name (the last URN segment)."""
        return self.urn.rsplit("::", 1)[-1]

    @property
    def type(self) -> str:
        """The type token (the last `$`-separated part of the URN's type segment)."""
        parts = self.urn.split("::")
        return parts[-2].rsplit("$", 1)[-1] if len(parts) >= 2 else ""


@dataclass(frozen=True)
class DriftReport:
    """The outcome of a drift check on one stack."""

    stack: str
    changes: dict[str, int]
    drifted: list[Step]
    unverified: list[Unverified] = field(default_factory=list)

    @property
    def has_drift(self) -> bool:
        """Anything would change on refresh."""
        return bool(self.drifted) or any(n > 0 for op, n in self.changes.items() if op not in NO_CHANGE_OPS)

    def render(self) -> str:
        """A plain-text report for logs and the nightly job summary."""
        if not self.has_drift:
            lines = [f"No drift: stack {self.stack!r} matches its state."]
        else:
            lines = [f"Drift detected in stack {self.stack!r}:"]
            counts = describe_counts({op: n for op, n in self.changes.items() if op not in NO_CHANGE_OPS})
            if counts:
                lines.append(f"  changes on refresh: {counts}")
            for step in self.drifted:
                what = f" ({', '.join(step.diffs)})" if step.diffs else ""
                lines.append(f"  {step.op:<8} {step.type} {step.name}{what}")
        if self.unverified:
            lines.append(
                "Warnings from the refresh (a resource its provider could not read keeps its state: not verified):"
            )
            lines.extend(f"  {u.type} {u.name}: {u.message}" for u in self.unverified)
        if self.has_drift:
            lines.append(
                f"Reconcile with `pulumi up -s {self.stack}` or adopt with `pulumi refresh -s {self.stack}`."
            )
        return "\n".join(lines)


@dataclass
class _WarningCollector:
    """Keeps the warnings a provider attached to a resource, and forwards every event."""

    forward: EventCollector
    warnings: list[Unverified] = field(default_factory=list)

    def __call__(self, event: EngineEvent) -> None:
        diag = event.diagnostic_event
        if diag is not None and diag.severity == "warning" and diag.urn:
            found = Unverified(urn=diag.urn, message=" ".join(diag.message.split()))
            if found not in self.warnings:
                self.warnings.append(found)
        self.forward(event)


def check_drift(
    ctx: Context, stack: str, *, on_output: OnOutput | None = None, on_event: OnEvent | None = None
) -> DriftReport:
    """Preview a refresh with expect-no-changes and report what drifted (and what could not be read)."""
    ws = ctx.workspace()
    st = select(ws, stack)
    collector = _WarningCollector(EventCollector(forward=on_event))
    reads = read_only_urns(ws, stack)
    try:
        # The RefreshResult's summary is the stack's last *update* (a preview-only refresh writes no history),
        # so the verdict comes from this run's own events.
        st.refresh(
            preview_only=True,
            expect_no_changes=True,
            exclude=reads or None,
            on_output=on_output,
            on_event=collector,
        )
    except CommandError:
        report = _report(stack, collector)
        if report.has_drift:
            return report
        raise
    return _report(stack, collector)


def read_only_urns(ws: Workspace, stack: str) -> list[str]:
    """The URNs of the stack's read-only resources (`"external": true` in its state), which the drift check leaves
    out (an unreadable state leaves nothing out: the refresh then reports what it finds, as before)."""
    try:
        state = ws.export_stack(stack).deployment or {}
    except CommandError:
        return []
    return [str(r["urn"]) for r in state.get("resources") or [] if r.get("external") and r.get("urn")]


def _report(stack: str, collector: _WarningCollector) -> DriftReport:
    events = collector.forward
    counts = dict(events.summary or {})
    drifted = [s for s in events.steps if s.op not in NO_CHANGE_OPS]
    return DriftReport(stack=stack, changes=counts, drifted=drifted, unverified=list(collector.warnings))
