"""``ragops up --stack S``: a plain ``pulumi up`` with the policy pack (what a merge to main runs on dev)."""

from __future__ import annotations

from infra.workflows.stacks import POLICY_PACK, Context, OnEvent, OnOutput, change_counts, select


def deploy(
    ctx: Context,
    stack: str,
    *,
    policy_pack: str | None = POLICY_PACK,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
) -> dict[str, int]:
    """Update the stack and return the change counts of the update."""
    st = select(ctx.workspace(), stack)
    result = st.up(
        policy_packs=[policy_pack] if policy_pack else None,
        on_output=on_output,
        on_event=on_event,
        message=f"ragops up {stack}",
    )
    return change_counts(result.summary.resource_changes)
