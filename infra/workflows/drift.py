"""``ragops drift --stack S``: has the real infrastructure drifted from the stack's state?

Runs ``pulumi refresh --preview-only --expect-no-changes``: the refresh is only previewed (state is never
written), and the CLI itself fails when the refresh would change anything. The event stream tells us which
resources drifted and how, so the report is readable; a failure without any drifted resource is a real error,
not drift, and propagates.
"""

from __future__ import annotations

from dataclasses import dataclass

from pulumi.automation.errors import CommandError

from infra.workflows.preview import NO_CHANGE_OPS, EventCollector, Step
from infra.workflows.stacks import Context, OnEvent, OnOutput, describe_counts, select


@dataclass(frozen=True)
class DriftReport:
    """The outcome of a drift check on one stack."""

    stack: str
    changes: dict[str, int]
    drifted: list[Step]

    @property
    def has_drift(self) -> bool:
        """Anything would change on refresh."""
        return bool(self.drifted) or any(n > 0 for op, n in self.changes.items() if op not in NO_CHANGE_OPS)

    def render(self) -> str:
        """A plain-text report for logs and the nightly job summary."""
        if not self.has_drift:
            return f"No drift: stack {self.stack!r} matches its state."
        lines = [f"Drift detected in stack {self.stack!r}:"]
        counts = describe_counts({op: n for op, n in self.changes.items() if op not in NO_CHANGE_OPS})
        if counts:
            lines.append(f"  changes on refresh: {counts}")
        for step in self.drifted:
            what = f" ({', '.join(step.diffs)})" if step.diffs else ""
            lines.append(f"  {step.op:<8} {step.type} {step.name}{what}")
        lines.append(
            f"Reconcile with `pulumi up -s {self.stack}` or adopt with `pulumi refresh -s {self.stack}`."
        )
        return "\n".join(lines)


def check_drift(
    ctx: Context, stack: str, *, on_output: OnOutput | None = None, on_event: OnEvent | None = None
) -> DriftReport:
    """Preview a refresh with expect-no-changes and report what drifted."""
    st = select(ctx.workspace(), stack)
    collector = EventCollector(forward=on_event)
    try:
        # The RefreshResult's summary is the stack's last *update* (a preview-only refresh writes no history),
        # so the verdict comes from this run's own events.
        st.refresh(preview_only=True, expect_no_changes=True, on_output=on_output, on_event=collector)
    except CommandError:
        report = _report(stack, collector)
        if report.has_drift:
            return report
        raise
    return _report(stack, collector)


def _report(stack: str, collector: EventCollector) -> DriftReport:
    counts = dict(collector.summary or {})
    drifted = [s for s in collector.steps if s.op not in NO_CHANGE_OPS]
    return DriftReport(stack=stack, changes=counts, drifted=drifted)
