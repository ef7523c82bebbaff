"""The order in which a benchmark's interleaved paths take their turn, call after call.

Work one path leaves behind (an embedding that evicts the caches, a spinning thread) falls on the path timed next,
so the order itself is a bias unless each path follows each other one equally often. Rotating the list alone does
not do that: with (http, raw, raw-int8), http follows raw-int8 in two of three rounds and never follows raw
inside a round. The rotations of the list and then of its reverse (six orders for three paths) do, the
boundaries between rounds included: a benchmark cycles through ``path_orders(paths)``, round by round.
"""

from __future__ import annotations

from collections.abc import Sequence


def path_orders(paths: Sequence[str]) -> list[tuple[str, ...]]:
    """The orders a benchmark cycles through (round ``i`` takes ``orders[i % len(orders)]``): every rotation of
    ``paths``, then every rotation of its reverse. Over one whole cycle each path comes first, second ... equally
    often, and each path directly follows each other one equally often, across the rounds' boundaries too.
    That holds for up to three paths (beyond, rotations never put some pairs next to each other): more are
    refused rather than silently biased."""
    if not paths or len(set(paths)) != len(paths):
        raise ValueError(f"paths must be distinct and non-empty: {list(paths)}")
    if len(paths) > 3:
        raise ValueError(
            f"{len(paths)} paths: rotations of a list and of its reverse balance who follows whom for at most 3"
        )
    forward, backward = tuple(paths), tuple(reversed(paths))
    return [order[i:] + order[:i] for order in (forward, backward) for i in range(len(order))]
