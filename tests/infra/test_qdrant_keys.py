"""Qdrant API key rotation (O18): `rag:qdrantApiKeyNext` becomes Qdrant's `alt_api_key` (Qdrant >= 1.17), and every
key change restarts the Qdrant nodes and the service pods, so each rotation step reaches what reads the keys.

The rotation (docs/runbooks.md#rotate-the-qdrant-api-key) is three `up`s; this walks the program through them and
checks, at each, which keys the nodes accept and which one the clients send: every client's key is accepted by
every node before, during (nodes restarted one at a time, old and new side by side) and after each step."""

from __future__ import annotations

import itertools

import pytest

from infra.components import qdrant as q
from infra.config import ConfigError
from infra.offline import StackRun, run_stack

OLD = "old-qdrant-key-0123456789abcdefghij"
NEW = "new-qdrant-key-0123456789abcdefghij"
V119 = {"version": "v1.19.0"}


def step(**secrets: str) -> StackRun:
    return run_stack("dev", config_overrides={"qdrant": V119, **secrets})


def accepted(run: StackRun) -> set[str]:
    """The keys a node started from this run's Qdrant Secret accepts (api_key and, when set, alt_api_key)."""
    keys = run.by_name("qdrant-api-key").inputs["stringData"]
    env = {
        e["name"]
        for e in run.by_name("qdrant-statefulset").inputs["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    return {keys["api-key"], *([keys["alt-api-key"]] if "QDRANT__SERVICE__ALT_API_KEY" in env else [])}


def sent(run: StackRun) -> set[str]:
    """The keys this run's clients send: the service (its Secret) and the backup job / ServiceMonitor (api-key)."""
    return {
        run.by_name("rag-secrets").inputs["stringData"]["QDRANT_API_KEY"],
        run.by_name("qdrant-api-key").inputs["stringData"]["api-key"],
    }


def restarts(before: StackRun, after: StackRun) -> tuple[bool, bool]:
    """(Qdrant nodes, service pods) whose pod template changed between two runs, i.e. that roll."""

    def template(run: StackRun, name: str) -> object:
        return run.by_name(name).inputs["spec"]["template"]["metadata"].get("annotations")

    return (
        template(before, "qdrant-statefulset") != template(after, "qdrant-statefulset"),
        template(before, "rag-api") != template(after, "rag-api"),
    )


def test_the_three_step_rotation_never_leaves_a_client_key_a_node_refuses() -> None:
    start = step(qdrantApiKey=OLD)
    add = step(qdrantApiKey=OLD, qdrantApiKeyNext=NEW)
    swap = step(qdrantApiKey=NEW, qdrantApiKeyNext=OLD)
    done = step(qdrantApiKey=NEW)
    runs = [start, add, swap, done]
    for before, after in itertools.pairwise(runs):
        # While the nodes restart one at a time, some run `before`'s keys and some `after`'s; the service pods
        # roll after the StatefulSet (they wait for it), so clients send `before`'s keys, then `after`'s.
        nodes = accepted(before) & accepted(after)
        assert sent(before) <= nodes
        assert sent(after) <= accepted(after)
        qdrant_rolls, _ = restarts(before, after)
        assert qdrant_rolls  # each step's keys reach the nodes: Qdrant reads them at start only
    # The service restarts when the key it sends changes, and only then.
    assert restarts(start, add) == (True, False)
    assert restarts(add, swap) == (True, True)
    assert restarts(swap, done) == (True, False)
    assert accepted(done) == {NEW}
    assert sent(done) == {NEW}


def test_the_second_key_is_refused_on_a_qdrant_without_alt_api_key() -> None:
    with pytest.raises(ConfigError) as caught:
        run_stack("dev", config_overrides={"qdrantApiKey": OLD, "qdrantApiKeyNext": NEW})  # dev runs v1.15.4
    assert caught.value.key == "rag:qdrantApiKeyNext"
    assert caught.value.stack_file == "Pulumi.dev.yaml"
    assert "needs Qdrant >= v1.17.0" in str(caught.value)
    assert NEW not in str(caught.value)


def test_no_second_key_by_default() -> None:
    run = step(qdrantApiKey=OLD)
    assert set(run.by_name("qdrant-api-key").inputs["stringData"]) == {q.API_KEY_KEY}
    assert accepted(run) == {OLD}
