"""The consolidation's replay limits as settings: EDGE_CONSOLIDATE_REPLAY_MAX_POINTS, EDGE_CONSOLIDATE_TRICKLE_POINTS,
EDGE_CONSOLIDATE_TRICKLE_WAIT_SECONDS (until 2026-11-26 constants: 4,096 logged points, 512 points a trickle,
ten times EDGE_CONSOLIDATE_IDLE_SECONDS).

Each key reaches the store the service opens (EdgeVectorStore.from_settings) and its optimizer, and the replay
limit set through the settings gives a merge up exactly where it says; impossible combinations are refused naming
the keys. The mechanics themselves (replay, trickle start) are tests/service/test_edge_store.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.app.core.config import Settings, SettingsError
from service.app.core.metrics import EDGE_CONSOLIDATIONS
from service.app.store.edge import EdgeVectorStore
from tests.service.test_edge_store import distinct_points


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_the_defaults_are_the_former_constants(tmp_path: Path) -> None:
    store = EdgeVectorStore.from_settings(settings(tmp_path), model_name="m", dimension=16)
    assert store.replay_max_points == 4096
    assert store.trickle_points == 512
    assert store.trickle_wait_seconds is None  # ten times EDGE_CONSOLIDATE_IDLE_SECONDS


def test_each_key_reaches_the_store_and_its_optimizer(tmp_path: Path) -> None:
    chosen = settings(
        tmp_path,
        edge_consolidate_idle_seconds=20,
        edge_consolidate_replay_max_points=900,
        edge_consolidate_trickle_points=90,
        edge_consolidate_trickle_wait_seconds=45,
        edge_optimize_idle_seconds=3600,
    )
    store = EdgeVectorStore.from_settings(chosen, model_name="m", dimension=16)
    store.ensure_collection()
    try:
        assert store.replay_max_points == 900
        assert store._optimizer is not None
        assert store._optimizer._trickle_points == 90
        assert store._optimizer._consolidate_wait == 45
        # A re-index's sibling shard takes the same limits.
        sibling = store.sibling("other", 16)
        assert (sibling.replay_max_points, sibling.trickle_points, sibling.trickle_wait_seconds) == (
            900,
            90,
            45,
        )
    finally:
        store.close()


def test_without_a_wait_the_trickle_start_is_ten_idle_waits(tmp_path: Path) -> None:
    chosen = settings(tmp_path, edge_consolidate_idle_seconds=7, edge_optimize_idle_seconds=3600)
    store = EdgeVectorStore.from_settings(chosen, model_name="m", dimension=16)
    store.ensure_collection()
    try:
        assert store._optimizer is not None
        assert store._optimizer._consolidate_wait == 70
    finally:
        store.close()


def test_the_replay_limit_from_the_settings_gives_a_merge_up_past_it(tmp_path: Path) -> None:
    chosen = settings(
        tmp_path,
        edge_optimize_chunk_points=64,
        edge_segment_points=128,
        edge_consolidate_segment_points=20480,
        edge_consolidate_idle_seconds=3600,
        edge_consolidate_replay_max_points=5,
        edge_consolidate_trickle_points=0,
    )
    store = EdgeVectorStore.from_settings(chosen, model_name="m", dimension=16)
    store.ensure_collection()
    try:
        for n in range(5):
            store.upsert(distinct_points(f"doc-{n}", 64))
            store.optimize()
        abandoned = EDGE_CONSOLIDATIONS.labels(outcome="replay_limit")._value.get()

        def meanwhile(point: str) -> None:
            if point == "merging":
                store.upsert(distinct_points("meanwhile", 5))  # at the limit: still replayable
                store.upsert(distinct_points("more", 1))  # one past it

        store.consolidation_hook = meanwhile
        assert not store.consolidate()
        assert EDGE_CONSOLIDATIONS.labels(outcome="replay_limit")._value.get() == abandoned + 1
        assert store.count("t") == 5 * 64 + 6
    finally:
        store.close()


@pytest.mark.parametrize(
    ("values", "names"),
    [
        (
            {"edge_consolidate_replay_max_points": 100, "edge_consolidate_trickle_points": 200},
            ["EDGE_CONSOLIDATE_TRICKLE_POINTS", "EDGE_CONSOLIDATE_REPLAY_MAX_POINTS"],
        ),
        (
            {"edge_consolidate_idle_seconds": 60, "edge_consolidate_trickle_wait_seconds": 30},
            ["EDGE_CONSOLIDATE_TRICKLE_WAIT_SECONDS", "EDGE_CONSOLIDATE_IDLE_SECONDS"],
        ),
    ],
)
def test_impossible_combinations_are_refused_naming_the_keys(
    values: dict[str, object], names: list[str]
) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, **values)  # type: ignore[arg-type]
    assert isinstance(raised.value.errors()[0]["ctx"]["error"], SettingsError)
    for name in names:
        assert name in str(raised.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("edge_consolidate_replay_max_points", -1),
        ("edge_consolidate_replay_max_points", 65537),
        ("edge_consolidate_trickle_points", -1),
        ("edge_consolidate_trickle_wait_seconds", 0),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None, **{field: value})  # type: ignore[arg-type]
