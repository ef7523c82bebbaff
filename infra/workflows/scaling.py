"""The Qdrant scale-down guard (O13): a replica decrease is refused unless the operator acknowledged it.

A StatefulSet scale-down removes the highest ordinals. Their Qdrant peers stay in the Raft consensus (dead peers
the cluster keeps waiting for), and the shards only they held are gone: with `replicationFactor` 1 that is data
lost; with 2 and more the collections run under-replicated. The procedure (docs/runbooks.md#scale-qdrant-down)
moves the shards off those peers and removes them from the consensus through Qdrant's cluster API first, then sets
`rag:qdrant.scaleDownTo` to the new count to say so.

How ragops knows the current count before Pulumi runs: every update records the config it ran with in the stack's history, failed updates included. The deployed count is the largest
`rag:qdrant.replicas` of the updates since (and including) the newest one that succeeded: a failed update may have
scaled the StatefulSet before it failed. `ragops preview`, `up`, `promote` and `rollback` run this check before
they call Pulumi. The decision and its message are `infra.guards.scale_down_refusal`, which the program also makes
from the StatefulSet in the stack's state, so a bare `pulumi up`/`preview` refuses the same scale-down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pulumi.automation import Stack, Workspace
from pulumi.automation.errors import StackNotFoundError

from infra.config import declared_defaults
from infra.guards import QDRANT_KEY, scale_down_refusal
from infra.guards import SCALE_DOWN_RUNBOOK as RUNBOOK
from infra.workflows.stacks import WorkflowError

__all__ = ["QDRANT_KEY", "RUNBOOK", "ScaleDownRefused", "check_scale_down", "deployed_replicas", "scale_of"]

#: How many updates back the history is read (each page is one `pulumi stack history` call).
HISTORY_DEPTH = 20


class ScaleDownRefused(WorkflowError):
    """The config lowers `rag:qdrant.replicas` below what is deployed without `scaleDownTo` acknowledging it."""


@dataclass(frozen=True)
class QdrantScale:
    """`rag:qdrant.replicas` and `rag:qdrant.scaleDownTo` of one config (declared defaults filled in)."""

    replicas: int
    scale_down_to: int


def _object(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def scale_of(qdrant: Any) -> QdrantScale:
    """The scale a `rag:qdrant` value (object or its JSON text; None: unset) asks for."""
    defaults = declared_defaults()["qdrant"]
    value = {**defaults, **_object(qdrant)}
    return QdrantScale(int(value.get("replicas") or 1), int(value.get("scaleDownTo") or 0))


def deployed_replicas(ws: Workspace, stack: str) -> int | None:
    """The most Qdrant replicas the stack may be running (see the module doc); None when never deployed."""
    try:
        history = Stack.select(stack, ws).history(page_size=HISTORY_DEPTH, show_secrets=False)
    except StackNotFoundError:
        return None
    seen: list[int] = []
    for entry in history:  # newest first
        if entry.kind != "update":
            continue
        config = entry.config or {}
        value = config.get(QDRANT_KEY)
        seen.append(scale_of(value.value if value is not None else None).replicas)
        if entry.result == "succeeded":
            break
    return max(seen) if seen else None


def check_scale_down(ws: Workspace, stack: str) -> None:
    """ScaleDownRefused when the stack's config lowers Qdrant's replicas without the acknowledgement."""
    config = ws.get_all_config(stack)
    value = config.get(QDRANT_KEY)
    planned = scale_of(value.value if value is not None else None)
    problem = scale_down_refusal(stack, deployed_replicas(ws, stack), planned.replicas, planned.scale_down_to)
    if problem is not None:
        raise ScaleDownRefused(problem)
